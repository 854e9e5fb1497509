#pragma once
// HostService: what the host is and how much of it is left for guests.

#include "absl/status/statusor.h"
#include "hypervisor/hypervisor.h"

namespace hvagent::service {

struct Capacity {
  uint32_t cpus = 0;
  uint64_t memory_total_bytes = 0;
  uint64_t memory_free_bytes = 0;
  uint32_t allocated_vcpus = 0;         // running domains only
  uint64_t allocated_memory_bytes = 0;  // running domains only
  uint32_t domains_total = 0;
  uint32_t domains_running = 0;
};

class HostService {
 public:
  explicit HostService(hv::Hypervisor& hypervisor) : hv_(hypervisor) {}
  absl::StatusOr<hv::HostInfo> GetHost() { return hv_.GetHostInfo(); }
  absl::StatusOr<Capacity> GetCapacity();
  bool HypervisorConnected() const { return hv_.Connected(); }

 private:
  hv::Hypervisor& hv_;
};

}  // namespace hvagent::service
