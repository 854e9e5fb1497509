#include "agent/service/host_service.h"

namespace hvagent::service {

absl::StatusOr<Capacity> HostService::GetCapacity() {
  auto host = hv_.GetHostInfo();
  if (!host.ok()) return host.status();
  auto domains = hv_.ListDomains();
  if (!domains.ok()) return domains.status();
  Capacity c;
  c.cpus = host->cpus;
  c.memory_total_bytes = host->memory_bytes;
  c.memory_free_bytes = host->free_memory_bytes;
  c.domains_total = static_cast<uint32_t>(domains->size());
  for (const auto& d : *domains) {
    if (d.state == hv::DomainState::kShutoff || d.state == hv::DomainState::kCrashed ||
        d.state == hv::DomainState::kUnknown) {
      continue;
    }
    ++c.domains_running;
    c.allocated_vcpus += d.vcpus;
    c.allocated_memory_bytes += d.memory_mib * 1024 * 1024;
  }
  return c;
}

}  // namespace hvagent::service
