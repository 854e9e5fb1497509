#pragma once
// The destination's definition of a domain migrating live: libvirt's migratable XML of the
// running domain with each copied disk pointed at the device the destination agent prepared.
// Everything else is left as the source runs it (libvirt checks the destination's definition for
// the same guest ABI). Used by LibvirtHypervisor::MigrateLive; no libvirt calls here.

#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace hvagent::hv {

// `xml` with every <disk> whose <target dev> is a key of `paths` made a block disk whose source
// is that path. InvalidArgument when the XML does not parse or a target is not among its disks.
absl::StatusOr<std::string> RetargetDisks(const std::string& xml, const std::map<std::string, std::string>& paths);

}  // namespace hvagent::hv
