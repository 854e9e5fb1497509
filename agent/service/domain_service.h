#pragma once
// DomainService: the domain lifecycle as the APIs offer it, on top of a Hypervisor.
// Adds what a single hypervisor call does not give: validation before anything is touched,
// a create that either fully happens or leaves nothing behind, shutdown with a deadline that
// falls back to a forced power-off, and refusing to delete a running domain unless forced.

#include <chrono>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/service/storage_service.h"
#include "common/clock.h"
#include "hypervisor/hypervisor.h"

namespace hvagent::service {

// Disk `disk` of a DomainSpec is backed by a pool volume (its source_path is left empty).
struct DiskVolume {
  size_t disk = 0;
  VolumeClaim claim;
};

struct ShutdownResult {
  hv::DomainInfo domain;
  bool forced = false;
};

class DomainService {
 public:
  struct Options {
    std::chrono::seconds default_shutdown_timeout{60};
    std::chrono::seconds max_shutdown_timeout{3600};
    std::chrono::milliseconds shutdown_poll_interval{250};
  };

  // `storage` may be null (no pools): then disks cannot name volumes.
  DomainService(hv::Hypervisor& hypervisor, Clock& clock, Options options, StorageService* storage = nullptr);

  // With `volumes`, the named disks get pool volumes (created when the claim asks so) that are
  // recorded as attached to the new domain; when any step fails, every step before it is
  // undone (volumes created here are deleted, claimed ones released, the domain undefined).
  absl::StatusOr<hv::DomainInfo> Create(const hv::DomainSpec& spec, bool start,
                                        const std::vector<DiskVolume>& volumes = {});
  absl::StatusOr<hv::DomainInfo> Get(const std::string& name);
  absl::StatusOr<std::vector<hv::DomainInfo>> List();
  absl::StatusOr<hv::DomainInfo> Start(const std::string& name);
  // timeout 0: the configured default.
  absl::StatusOr<ShutdownResult> Shutdown(const std::string& name, std::chrono::seconds timeout);
  absl::StatusOr<hv::DomainInfo> Destroy(const std::string& name);
  absl::StatusOr<hv::DomainInfo> Reboot(const std::string& name);
  absl::StatusOr<hv::DomainInfo> Suspend(const std::string& name);
  absl::StatusOr<hv::DomainInfo> Resume(const std::string& name);
  // Volumes attached to the domain are released afterwards, or deleted with `delete_volumes`.
  absl::Status Delete(const std::string& name, bool force, bool delete_volumes = false);

 private:
  using Op = absl::Status (hv::Hypervisor::*)(const std::string&);
  absl::StatusOr<hv::DomainInfo> Apply(const std::string& name, Op op);
  // Checks the claims against the spec and fills their disks with a placeholder block path so
  // that the spec can be validated before any volume exists.
  absl::Status CheckVolumes(hv::DomainSpec& spec, const std::vector<DiskVolume>& volumes) const;
  // Undoes claimed volumes in reverse order (best effort, logged).
  void ReleaseClaims(const std::vector<DiskVolume>& claimed);

  hv::Hypervisor& hv_;
  Clock& clock_;
  const Options options_;
  StorageService* storage_;
  // Serializes create/delete so "exists?" and "define" cannot interleave between requests.
  std::mutex define_mu_;
};

}  // namespace hvagent::service
