#pragma once
// DomainXmlBuilder: turns a validated DomainSpec into libvirt domain XML for one hypervisor
// target (domain type, os type, arch). The only producer of domain XML in hvagent: every value
// goes through ValidateDomainSpec and XmlWriter's escaping, never string pasting.

#include <string>

#include "absl/status/statusor.h"
#include "hypervisor/model.h"

namespace hvagent::hv {

// The XML namespace of the agent's element in a domain's <metadata>: libvirt keeps one element
// per namespace URI untouched, and virDomainGetMetadata finds it by this URI. Changing it would
// orphan the labels of every domain already defined.
inline constexpr char kLabelsNamespace[] = "urn:hvagent:labels:1";

class DomainXmlBuilder {
 public:
  // InvalidArgument (naming the field) if the spec is invalid or cannot run on `target`.
  static absl::StatusOr<std::string> Build(const DomainSpec& spec, const GuestTarget& target);

  // A single <disk> element for hot-plug (virDomainAttachDeviceFlags).
  static absl::StatusOr<std::string> BuildDisk(const DiskSpec& disk, const GuestTarget& target);

  // A single <interface> element for hot-plug and unplug (virDomain{At,De}tachDeviceFlags).
  static absl::StatusOr<std::string> BuildNic(const NicSpec& nic, const GuestTarget& target);

  // The bus implied by a disk target's prefix: xvd -> xen, vd -> virtio, sd -> scsi, hd -> ide.
  static std::string DefaultBus(const std::string& target);
};

}  // namespace hvagent::hv
