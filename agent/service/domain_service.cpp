#include "agent/service/domain_service.h"

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "hypervisor/domain_spec_validator.h"

namespace hvagent::service {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("service");
  return logger;
}

bool IsActive(hv::DomainState s) {
  return s == hv::DomainState::kRunning || s == hv::DomainState::kBlocked || s == hv::DomainState::kPaused ||
         s == hv::DomainState::kShuttingDown || s == hv::DomainState::kPmSuspended;
}

}  // namespace

DomainService::DomainService(hv::Hypervisor& hypervisor, Clock& clock, Options options)
    : hv_(hypervisor), clock_(clock), options_(options) {}

absl::StatusOr<hv::DomainInfo> DomainService::Create(const hv::DomainSpec& spec, bool start) {
  if (auto s = hv::ValidateDomainSpec(spec); !s.ok()) return s;
  std::lock_guard lock(define_mu_);
  if (auto s = hv_.DefineDomain(spec); !s.ok()) return s;
  Log()->info("defined domain {} ({} vCPU, {} MiB)", spec.name, spec.vcpus, spec.memory_mib);
  if (start) {
    if (auto s = hv_.StartDomain(spec.name); !s.ok()) {
      // Leave nothing behind: a create that cannot start is undone.
      if (auto u = hv_.UndefineDomain(spec.name); !u.ok()) {
        Log()->error("rollback of {} failed: {}", spec.name, u.message());
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

absl::Status DomainService::Delete(const std::string& name, bool force) {
  std::lock_guard lock(define_mu_);
  auto info = hv_.GetDomain(name);
  if (!info.ok()) return info.status();
  if (IsActive(info->state)) {
    if (!force) {
      return absl::FailedPreconditionError(
          absl::StrCat("domain '", name, "' is running; stop it first or set force"));
    }
    if (auto s = hv_.DestroyDomain(name); !s.ok()) return s;
  }
  if (auto s = hv_.UndefineDomain(name); !s.ok()) return s;
  Log()->info("deleted domain {}", name);
  return absl::OkStatus();
}

}  // namespace hvagent::service
