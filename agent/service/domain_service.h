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
#include "common/clock.h"
#include "hypervisor/hypervisor.h"

namespace hvagent::service {

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

  DomainService(hv::Hypervisor& hypervisor, Clock& clock, Options options);

  absl::StatusOr<hv::DomainInfo> Create(const hv::DomainSpec& spec, bool start);
  absl::StatusOr<hv::DomainInfo> Get(const std::string& name);
  absl::StatusOr<std::vector<hv::DomainInfo>> List();
  absl::StatusOr<hv::DomainInfo> Start(const std::string& name);
  // timeout 0: the configured default.
  absl::StatusOr<ShutdownResult> Shutdown(const std::string& name, std::chrono::seconds timeout);
  absl::StatusOr<hv::DomainInfo> Destroy(const std::string& name);
  absl::StatusOr<hv::DomainInfo> Reboot(const std::string& name);
  absl::StatusOr<hv::DomainInfo> Suspend(const std::string& name);
  absl::StatusOr<hv::DomainInfo> Resume(const std::string& name);
  absl::Status Delete(const std::string& name, bool force);

 private:
  using Op = absl::Status (hv::Hypervisor::*)(const std::string&);
  absl::StatusOr<hv::DomainInfo> Apply(const std::string& name, Op op);

  hv::Hypervisor& hv_;
  Clock& clock_;
  const Options options_;
  // Serializes create/delete so "exists?" and "define" cannot interleave between requests.
  std::mutex define_mu_;
};

}  // namespace hvagent::service
