#pragma once
// CheckHostPaths: every host path a DomainSpec names goes through the HostPathPolicy before
// anything is touched (DomainService::Create). Disks given as pool volumes are not checked:
// their paths are filled in by the agent from the pool, never by the caller.

#include <cstddef>
#include <set>

#include "absl/status/status.h"
#include "common/host_path_policy.h"
#include "hypervisor/model.h"

namespace hvagent::service {

// PermissionDenied naming the field ("spec.disks[1].source_path", "spec.kernel.kernel_path",
// "spec.kernel.initrd_path", "spec.firmware.loader_path") and the allowed directories.
// `volume_disks`: indexes of the disks backed by pool volumes. A null policy allows no path.
absl::Status CheckHostPaths(const HostPathPolicy* policy, const hv::DomainSpec& spec,
                            const std::set<size_t>& volume_disks);

}  // namespace hvagent::service
