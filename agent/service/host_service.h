#pragma once
// HostService: what the host is and how much of it is left for guests.
//
// Capacity arithmetic (the figures a controller places VMs by):
//   vcpus_schedulable        = floor((cpus - reserved_cpus) * cpu_allocation_ratio)
//   memory_schedulable_bytes = floor((memory_total - reserved_memory) * memory_allocation_ratio)
//   vcpus_available          = vcpus_schedulable - defined_vcpus            (never below 0)
//   memory_available_bytes   = memory_schedulable_bytes - defined_memory    (never below 0)
// "defined" sums every domain, running or not: a stopped guest keeps its claim, because it can
// be started again at any time (Nova and CloudStack count stopped instances the same way).
// "allocated" sums the running domains only: what the hypervisor gives out right now.

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hypervisor/hypervisor.h"
#include "storage/model.h"

namespace hvagent::service {

class StorageService;

// Operator settings ([capacity] in the config). Defaults follow Nova's initial allocation
// ratios and its reserved host memory.
struct CapacityPolicy {
  double cpu_allocation_ratio = 4.0;
  double memory_allocation_ratio = 1.0;
  uint32_t reserved_cpus = 0;                     // for dom0 / the host itself
  uint64_t reserved_memory_bytes = 512ULL << 20;  // for dom0 / the host itself
};

struct Capacity {
  // The host.
  std::string arch;
  std::string hypervisor_type;
  std::string hypervisor_version;
  uint32_t cpus = 0;  // online logical CPUs
  uint32_t sockets = 0;
  uint32_t cores_per_socket = 0;
  uint32_t threads_per_core = 0;
  uint64_t memory_total_bytes = 0;
  uint64_t memory_free_bytes = 0;
  // Policy and what it leaves for guests.
  CapacityPolicy policy;
  uint32_t vcpus_schedulable = 0;
  uint64_t memory_schedulable_bytes = 0;
  uint32_t vcpus_available = 0;
  uint64_t memory_available_bytes = 0;
  // Domains.
  uint32_t allocated_vcpus = 0;         // running domains only
  uint64_t allocated_memory_bytes = 0;  // running domains only
  uint32_t defined_vcpus = 0;           // all domains
  uint64_t defined_memory_bytes = 0;    // all domains
  uint32_t domains_total = 0;
  uint32_t domains_running = 0;
  // Storage pools (empty without storage). A pool that cannot be read is left out and named in
  // pool_errors, so one sick disk does not hide the host's CPU and memory figures.
  std::vector<storage::PoolInfo> pools;
  std::vector<std::string> pool_errors;
};

// The arithmetic above, on its own (unit-tested directly).
Capacity ComputeCapacity(const hv::HostInfo& host, const std::vector<hv::DomainInfo>& domains,
                         const CapacityPolicy& policy);

class HostService {
 public:
  explicit HostService(hv::Hypervisor& hypervisor, CapacityPolicy policy = {}, StorageService* storage = nullptr)
      : hv_(hypervisor), policy_(policy), storage_(storage) {}
  // The hypervisor's host description, with the uptime of the machine the agent runs on.
  absl::StatusOr<hv::HostInfo> GetHost();
  // Where the uptime is read (tests point it elsewhere).
  void SetUptimeFile(std::string path) { uptime_file_ = std::move(path); }
  absl::StatusOr<Capacity> GetCapacity();
  bool HypervisorConnected() const { return hv_.Connected(); }

 private:
  hv::Hypervisor& hv_;
  const CapacityPolicy policy_;
  StorageService* storage_;
  std::string uptime_file_ = "/proc/uptime";
};

// Whole seconds since boot from a /proc/uptime text ("12345.67 54321.00"); nullopt when the
// file cannot be read or does not start with a number.
std::optional<std::chrono::seconds> ReadUptime(const std::string& path);

}  // namespace hvagent::service
