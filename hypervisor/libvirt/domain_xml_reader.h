#pragma once
// Reads back what the agent needs from a domain's XML as libvirt stores it (disks today).

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hypervisor/model.h"

namespace hvagent::hv {

// The <disk device='disk'> elements: source (file or dev), target, bus, type, readonly, format.
absl::StatusOr<std::vector<DiskSpec>> ParseDomainDisks(absl::string_view domain_xml);

// A whole definition read back as the model (a cold migration sends it to the destination):
// name, uuid, vCPUs (and the hot-plug maximum), memory, arch and machine, direct-kernel or
// firmware boot, CPU model (host-passthrough reads "host") and topology, GIC version, CPU shares,
// labels, disks, NICs, serial console, VNC. What the agent sets at define time itself (the VNC
// listen address and locked password, the console log) is left empty; a firmware of BIOS is
// indistinguishable from the default and reads as the default.
absl::StatusOr<DomainSpec> ParseDomainSpec(absl::string_view domain_xml);

// The devices of a definition that ParseDomainSpec's model has no field for, so a domain defined
// from that model would not have them: what an operator added behind the agent's back (virsh
// attach-device), e.g. "<rng model='virtio'>", "<channel type='unix'> org.qemu.guest_agent.0",
// "<interface type='direct'>", "<disk device='floppy'>", "<graphics type='spice'>". Each is
// described by its element and its type, model or device attribute (and a channel's target name).
// Devices libvirt adds on every define by itself (the emulator, controllers, input, video,
// memballoon, audio) and those the model carries are not listed.
absl::StatusOr<std::vector<std::string>> ParseUnmodelledDevices(absl::string_view domain_xml);

// One <interface> as libvirt stores it: what the agent models of it, the element itself
// (libvirt finds the device to detach by the MAC of the XML it is given), and its host-side
// device (<target dev>, in a running guest's XML only).
struct DomainNic {
  NicSpec spec;
  std::string xml;
  std::string host_device;
};
// The <interface> elements, in document order: mac, network / bridge / Open vSwitch bridge with
// interface id and VLAN tag, model, MTU, target device. Other kinds carry their MAC and model
// only.
absl::StatusOr<std::vector<DomainNic>> ParseDomainNics(absl::string_view domain_xml);

// What a read of a domain reports from its XML (DomainInfo's labels and NICs), from one parse.
struct DomainXmlFacts {
  std::map<std::string, std::string> labels;
  std::vector<NicInfo> nics;
};
absl::StatusOr<DomainXmlFacts> ParseDomainFacts(absl::string_view domain_xml);

// The host-side device of each <interface> (<target dev='vif3.0'/>, 'vnet0'), in document order;
// interfaces without a target (a domain that is not running) are left out.
absl::StatusOr<std::vector<std::string>> ParseInterfaceDevices(absl::string_view domain_xml);

// Whether the definition has a QEMU guest agent channel: <channel> with <target type='virtio'
// name='org.qemu.guest_agent.0'/> under <devices>.
absl::StatusOr<bool> ParseHasGuestAgent(absl::string_view domain_xml);

// The labels in the agent's <metadata> element (namespace kLabelsNamespace). Takes either a
// whole <domain> document or the element alone (virDomainGetMetadata returns it with the
// namespace stripped). A domain
// without the element has none. Entries another writer put there that the agent would not have
// accepted (bad key, over-long or control-laden value, beyond kMaxLabels) are left out, so a
// hand-edited definition cannot make a listing carry what a caller could not have sent.
absl::StatusOr<std::map<std::string, std::string>> ParseDomainLabels(absl::string_view xml);

// The first <graphics type='vnc'> of a running domain's XML, as virDomainUpdateDeviceFlags
// wants it to change the password: the element as libvirt wrote it (listen, port, keymap
// unchanged, or libvirt refuses the update) with passwd and passwdValidTo set. nullopt when the
// domain has no VNC display.
struct VncPasswordUpdate {
  VncDisplay display;
  std::string device_xml;
};
absl::StatusOr<std::optional<VncPasswordUpdate>> VncPasswordUpdateXml(absl::string_view live_domain_xml,
                                                                      const std::string& password,
                                                                      const std::string& valid_to);

}  // namespace hvagent::hv
