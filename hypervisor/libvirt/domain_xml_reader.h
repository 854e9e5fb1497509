#pragma once
// Reads back what the agent needs from a domain's XML as libvirt stores it (disks today).

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hypervisor/model.h"

namespace hvagent::hv {

// The <disk device='disk'> elements: source (file or dev), target, bus, type, readonly, format.
absl::StatusOr<std::vector<DiskSpec>> ParseDomainDisks(absl::string_view domain_xml);

}  // namespace hvagent::hv
