#include "agent/service/host_service.h"

#include <cmath>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "agent/service/storage_service.h"

namespace hvagent::service {
namespace {

// Xen's control domain runs the host itself: what it holds is what [capacity] reserved_cpus and
// reserved_memory_mib keep back, not a guest's claim (libvirt's libxl driver lists it as
// "Domain-0", with the whole host's memory as its maximum, which would leave room for nothing).
// Name and the all-zero UUID together, on a Xen host only: a guest cannot pass for it.
bool IsXenControlDomain(const hv::HostInfo& host, const hv::DomainInfo& d) {
  return host.hypervisor_type == "Xen" && d.name == "Domain-0" &&
         d.uuid == "00000000-0000-0000-0000-000000000000";
}

// floor(x * ratio), clamped to [0, max]; x and ratio are non-negative.
template <typename T>
T Scaled(uint64_t x, double ratio, T max) {
  long double v = std::floor(static_cast<long double>(x) * static_cast<long double>(ratio));
  if (v <= 0) return 0;
  if (v >= static_cast<long double>(max)) return max;
  return static_cast<T>(v);
}

}  // namespace

Capacity ComputeCapacity(const hv::HostInfo& host, const std::vector<hv::DomainInfo>& domains,
                         const CapacityPolicy& policy) {
  Capacity c;
  c.arch = host.arch;
  c.hypervisor_type = host.hypervisor_type;
  c.hypervisor_version = host.hypervisor_version;
  c.cpus = host.cpus;
  c.sockets = host.sockets;
  c.cores_per_socket = host.cores_per_socket;
  c.threads_per_core = host.threads_per_core;
  c.memory_total_bytes = host.memory_bytes;
  c.memory_free_bytes = host.free_memory_bytes;
  c.policy = policy;

  uint32_t cpus = host.cpus > policy.reserved_cpus ? host.cpus - policy.reserved_cpus : 0;
  uint64_t memory = host.memory_bytes > policy.reserved_memory_bytes ? host.memory_bytes - policy.reserved_memory_bytes : 0;
  c.vcpus_schedulable = Scaled<uint32_t>(cpus, policy.cpu_allocation_ratio, UINT32_MAX);
  c.memory_schedulable_bytes = Scaled<uint64_t>(memory, policy.memory_allocation_ratio, UINT64_MAX);

  c.domains_total = static_cast<uint32_t>(domains.size());
  for (const auto& d : domains) {
    if (IsXenControlDomain(host, d)) continue;
    uint64_t bytes = d.memory_mib * 1024 * 1024;
    c.defined_vcpus += d.vcpus;
    c.defined_memory_bytes += bytes;
    if (!hv::IsActive(d.state)) continue;
    ++c.domains_running;
    c.allocated_vcpus += d.vcpus;
    c.allocated_memory_bytes += bytes;
  }
  c.vcpus_available = c.vcpus_schedulable > c.defined_vcpus ? c.vcpus_schedulable - c.defined_vcpus : 0;
  c.memory_available_bytes =
      c.memory_schedulable_bytes > c.defined_memory_bytes ? c.memory_schedulable_bytes - c.defined_memory_bytes : 0;
  return c;
}

std::optional<std::chrono::seconds> ReadUptime(const std::string& path) {
  std::ifstream in(path);
  double seconds = -1;
  if (!(in >> seconds) || !std::isfinite(seconds) || seconds < 0) return std::nullopt;
  return std::chrono::seconds(static_cast<int64_t>(seconds));
}

absl::StatusOr<hv::HostInfo> HostService::GetHost() {
  auto host = hv_.GetHostInfo();
  if (host.ok()) host->uptime = ReadUptime(uptime_file_);
  return host;
}

absl::StatusOr<Capacity> HostService::GetCapacity() {
  auto host = hv_.GetHostInfo();
  if (!host.ok()) return host.status();
  auto domains = hv_.ListDomains();
  if (!domains.ok()) return domains.status();
  Capacity c = ComputeCapacity(*host, *domains, policy_);
  if (storage_ != nullptr) {
    auto pools = storage_->ListPoolsEach();
    for (auto& [name, pool] : pools) {
      if (pool.ok()) {
        c.pools.push_back(std::move(*pool));
      } else {
        c.pool_errors.push_back(absl::StrCat(name, ": ", pool.status().message()));
      }
    }
  }
  return c;
}

}  // namespace hvagent::service
