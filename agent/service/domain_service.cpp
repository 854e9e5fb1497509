#include "agent/service/domain_service.h"

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "hypervisor/domain_spec_validator.h"

namespace hvagent::service {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("service");
  return logger;
}

// Stands in for a volume's device path while the spec is validated, before the volume exists.
constexpr char kPendingVolumePath[] = "/dev/hvagent-pending-volume";

bool IsActive(hv::DomainState s) {
  return s == hv::DomainState::kRunning || s == hv::DomainState::kBlocked || s == hv::DomainState::kPaused ||
         s == hv::DomainState::kShuttingDown || s == hv::DomainState::kPmSuspended;
}

}  // namespace

DomainService::DomainService(hv::Hypervisor& hypervisor, Clock& clock, Options options, StorageService* storage)
    : hv_(hypervisor), clock_(clock), options_(options), storage_(storage) {}

absl::Status DomainService::CheckVolumes(hv::DomainSpec& spec, const std::vector<DiskVolume>& volumes) const {
  if (volumes.empty()) return absl::OkStatus();
  std::set<std::pair<std::string, std::string>> seen;
  std::set<size_t> disks;
  for (const DiskVolume& v : volumes) {
    const std::string field = absl::StrCat("spec.disks[", v.disk, "].volume");
    if (v.disk >= spec.disks.size() || !disks.insert(v.disk).second) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": no such disk, or named twice"));
    }
    if (storage_ == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(field, ": this agent has no storage pools configured"));
    }
    if (v.claim.pool.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ".pool: required"));
    if (v.claim.name.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ".name: required"));
    if (!seen.insert({v.claim.pool, v.claim.name}).second) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": volume ", v.claim.pool, "/", v.claim.name,
                                                     " is used by two disks"));
    }
    hv::DiskSpec& disk = spec.disks[v.disk];
    if (!disk.source_path.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("spec.disks[", v.disk, "]: give source_path or volume, not both"));
    }
    if (!disk.format.empty() && disk.format != "raw") {
      return absl::InvalidArgumentError(absl::StrCat("spec.disks[", v.disk, "].format: a volume disk is raw"));
    }
    disk.source_path = kPendingVolumePath;
    disk.type = hv::DiskType::kBlock;
    disk.format = "raw";
  }
  return absl::OkStatus();
}

void DomainService::ReleaseClaims(const std::vector<DiskVolume>& claimed) {
  for (auto it = claimed.rbegin(); it != claimed.rend(); ++it) {
    const VolumeClaim& c = it->claim;
    if (auto s = storage_->ReleaseVolume(c.pool, c.name, /*remove=*/c.create_size_bytes > 0); !s.ok()) {
      Log()->error("rollback: releasing volume {}/{} failed: {}", c.pool, c.name, s.message());
    }
  }
}

absl::StatusOr<hv::DomainInfo> DomainService::Create(const hv::DomainSpec& request, bool start,
                                                     const std::vector<DiskVolume>& volumes) {
  hv::DomainSpec spec = request;
  if (auto s = CheckVolumes(spec, volumes); !s.ok()) return s;
  if (auto s = hv::ValidateDomainSpec(spec); !s.ok()) return s;
  std::lock_guard lock(define_mu_);
  if (!volumes.empty()) {
    // Volumes come first, so a name that is taken must be refused before any is created.
    if (auto existing = hv_.GetDomain(spec.name); existing.ok()) {
      return absl::AlreadyExistsError(absl::StrCat("spec.name: domain '", spec.name, "' already exists"));
    } else if (!absl::IsNotFound(existing.status())) {
      return existing.status();
    }
  }
  std::vector<DiskVolume> claimed;
  for (const DiskVolume& v : volumes) {
    auto volume = storage_->ClaimVolume(v.claim, spec.name);
    if (!volume.ok()) {
      ReleaseClaims(claimed);
      return absl::Status(volume.status().code(),
                          absl::StrCat("spec.disks[", v.disk, "].volume: ", volume.status().message()));
    }
    spec.disks[v.disk].source_path = volume->path;
    claimed.push_back(v);
  }
  if (auto s = hv_.DefineDomain(spec); !s.ok()) {
    ReleaseClaims(claimed);
    return s;
  }
  Log()->info("defined domain {} ({} vCPU, {} MiB, {} pool volume(s))", spec.name, spec.vcpus, spec.memory_mib,
              claimed.size());
  if (start) {
    if (auto s = hv_.StartDomain(spec.name); !s.ok()) {
      // Leave nothing behind: a create that cannot start is undone.
      if (auto u = hv_.UndefineDomain(spec.name); !u.ok()) {
        Log()->error("rollback of {} failed: {}", spec.name, u.message());
      } else {
        ReleaseClaims(claimed);
      }
      return s;
    }
    Log()->info("started domain {}", spec.name);
  }
  return hv_.GetDomain(spec.name);
}

absl::StatusOr<hv::DomainInfo> DomainService::Get(const std::string& name) { return hv_.GetDomain(name); }

absl::StatusOr<std::vector<hv::DomainInfo>> DomainService::List() { return hv_.ListDomains(); }

absl::StatusOr<hv::DomainInfo> DomainService::Apply(const std::string& name, Op op) {
  if (auto s = (hv_.*op)(name); !s.ok()) return s;
  return hv_.GetDomain(name);
}

absl::StatusOr<hv::DomainInfo> DomainService::Start(const std::string& name) {
  return Apply(name, &hv::Hypervisor::StartDomain);
}
absl::StatusOr<hv::DomainInfo> DomainService::Destroy(const std::string& name) {
  return Apply(name, &hv::Hypervisor::DestroyDomain);
}
absl::StatusOr<hv::DomainInfo> DomainService::Reboot(const std::string& name) {
  return Apply(name, &hv::Hypervisor::RebootDomain);
}
absl::StatusOr<hv::DomainInfo> DomainService::Suspend(const std::string& name) {
  return Apply(name, &hv::Hypervisor::SuspendDomain);
}
absl::StatusOr<hv::DomainInfo> DomainService::Resume(const std::string& name) {
  return Apply(name, &hv::Hypervisor::ResumeDomain);
}

absl::StatusOr<ShutdownResult> DomainService::Shutdown(const std::string& name, std::chrono::seconds timeout) {
  if (timeout.count() == 0) timeout = options_.default_shutdown_timeout;
  if (timeout > options_.max_shutdown_timeout) {
    return absl::InvalidArgumentError(
        absl::StrCat("timeout_seconds: at most ", options_.max_shutdown_timeout.count(), ", got ", timeout.count()));
  }
  if (auto s = hv_.RequestShutdown(name); !s.ok()) return s;
  const auto deadline = clock_.Now() + timeout;
  while (true) {
    auto info = hv_.GetDomain(name);
    if (!info.ok()) return info.status();
    if (!IsActive(info->state)) return ShutdownResult{*info, false};
    if (clock_.Now() >= deadline) break;
    clock_.SleepFor(options_.shutdown_poll_interval);
  }
  Log()->warn("domain {} did not shut down within {} s; forcing it off", name, timeout.count());
  if (auto s = hv_.DestroyDomain(name); !s.ok()) {
    // It may have stopped by itself between the last poll and now.
    auto info = hv_.GetDomain(name);
    if (info.ok() && !IsActive(info->state)) return ShutdownResult{*info, false};
    return s;
  }
  auto info = hv_.GetDomain(name);
  if (!info.ok()) return info.status();
  return ShutdownResult{*info, true};
}

absl::Status DomainService::Delete(const std::string& name, bool force, bool delete_volumes) {
  std::lock_guard lock(define_mu_);
  auto info = hv_.GetDomain(name);
  if (!info.ok()) return info.status();
  // Listed before anything changes: a pool that cannot be read stops the delete here.
  std::vector<storage::VolumeInfo> volumes;
  if (storage_ != nullptr) {
    auto v = storage_->VolumesOf(name);
    if (!v.ok()) {
      return absl::Status(v.status().code(), absl::StrCat("domain '", name, "' was not deleted: its volumes could not "
                                                          "be listed: ", v.status().message()));
    }
    volumes = std::move(*v);
  }
  if (IsActive(info->state)) {
    if (!force) {
      return absl::FailedPreconditionError(
          absl::StrCat("domain '", name, "' is running; stop it first or set force"));
    }
    if (auto s = hv_.DestroyDomain(name); !s.ok()) return s;
  }
  if (auto s = hv_.UndefineDomain(name); !s.ok()) return s;
  Log()->info("deleted domain {}", name);
  for (const storage::VolumeInfo& v : volumes) {
    // The domain is gone: a volume that cannot be released stays recorded as attached to it,
    // where the API shows it (and reconciliation finds it).
    if (auto s = storage_->ReleaseVolume(v.pool, v.name, delete_volumes); !s.ok()) {
      Log()->error("domain {} deleted, but volume {}/{} could not be {}: {}", name, v.pool, v.name,
                   delete_volumes ? "deleted" : "released", s.message());
    }
  }
  return absl::OkStatus();
}

}  // namespace hvagent::service
