#include "agent/service/host_paths.h"

#include <memory>
#include <variant>

#include "absl/strings/str_cat.h"

namespace hvagent::service {

absl::Status CheckHostPaths(const HostPathPolicy* policy, const hv::DomainSpec& spec,
                            const std::set<size_t>& volume_disks) {
  static const std::unique_ptr<HostPathPolicy> nothing = HostPathPolicy::AllowNothing();
  const HostPathPolicy& p = policy != nullptr ? *policy : *nothing;
  if (const auto* kernel = std::get_if<hv::DirectKernelBoot>(&spec.boot)) {
    if (auto s = p.Check("spec.kernel.kernel_path", kernel->kernel_path, HostPathKind::kKernel); !s.ok()) return s;
    if (!kernel->initrd_path.empty()) {
      if (auto s = p.Check("spec.kernel.initrd_path", kernel->initrd_path, HostPathKind::kKernel); !s.ok()) return s;
    }
  } else if (const auto* fw = std::get_if<hv::FirmwareBoot>(&spec.boot); fw != nullptr && !fw->loader_path.empty()) {
    if (auto s = p.Check("spec.firmware.loader_path", fw->loader_path, HostPathKind::kFirmware); !s.ok()) return s;
  }
  for (size_t i = 0; i < spec.disks.size(); ++i) {
    if (volume_disks.contains(i)) continue;
    const std::string field = absl::StrCat("spec.disks[", i, "].source_path");
    if (auto s = p.Check(field, spec.disks[i].source_path, HostPathKind::kImage); !s.ok()) return s;
    if (spec.disks[i].type == hv::DiskType::kBlock) {
      return absl::PermissionDeniedError(absl::StrCat(
          "spec.disks[", i, "].type: block devices reach a guest only as pool volumes (give the disk a volume); ",
          "an image file is TYPE_FILE"));
    }
  }
  return absl::OkStatus();
}

}  // namespace hvagent::service
