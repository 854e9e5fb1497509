#include "agent/service/admission.h"

#include <algorithm>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace hvagent::service {
namespace {

// The payload's type URL: a name of ours, read only by CapacityKindOf.
constexpr char kCapacityPayload[] = "type.hvagent.dev/capacity";
constexpr uint64_t kMiB = 1024 * 1024;

std::string Ratio(double r) {
  std::string s = absl::StrCat(r);
  return s;
}

}  // namespace

absl::Status CapacityExhausted(CapacityKind kind, absl::string_view message) {
  absl::Status s = absl::ResourceExhaustedError(message);
  s.SetPayload(kCapacityPayload, absl::Cord(CapacityKindName(kind)));
  return s;
}

std::optional<CapacityKind> CapacityKindOf(const absl::Status& s) {
  if (s.code() != absl::StatusCode::kResourceExhausted) return std::nullopt;
  auto p = s.GetPayload(kCapacityPayload);
  if (!p.has_value()) return std::nullopt;
  if (*p == CapacityKindName(CapacityKind::kCompute)) return CapacityKind::kCompute;
  if (*p == CapacityKindName(CapacityKind::kStorage)) return CapacityKind::kStorage;
  return std::nullopt;
}

const char* CapacityKindName(CapacityKind kind) {
  return kind == CapacityKind::kCompute ? "capacity: compute" : "capacity: storage";
}

ComputeAdmission::Hold& ComputeAdmission::Hold::operator=(Hold&& o) noexcept {
  if (this != &o) {
    Release();
    owner_ = o.owner_;
    it_ = o.it_;
    o.owner_ = nullptr;
  }
  return *this;
}

void ComputeAdmission::Hold::Release() {
  if (owner_ == nullptr) return;
  std::lock_guard lock(owner_->mu_);
  owner_->holds_.erase(it_);
  owner_ = nullptr;
}

absl::Status ComputeAdmission::Check(const Capacity& c, const std::vector<hv::DomainInfo>& domains, uint32_t vcpus,
                                     uint64_t memory_bytes, bool running, absl::string_view what) {
  // What is taken: defined domains for a new definition, running ones for a start, plus the
  // holds of the same kind still in flight. A hold whose domain the hypervisor already lists in
  // that state (its start returned, its caller has not yet released it) is in the figures once
  // already and is not counted twice.
  uint64_t used_vcpus = running ? c.allocated_vcpus : c.defined_vcpus;
  uint64_t used_memory = running ? c.allocated_memory_bytes : c.defined_memory_bytes;
  auto listed = [&](const Claim& h) {
    return std::any_of(domains.begin(), domains.end(), [&](const hv::DomainInfo& d) {
      if (d.name != h.name || (running && !hv::IsActive(d.state))) return false;
      return !h.growth || (d.vcpus >= h.to_vcpus && d.memory_mib >= h.to_memory_mib);
    });
  };
  for (const Claim& h : holds_) {
    if (running ? !h.runs : !h.defines) continue;
    if (listed(h)) continue;
    used_vcpus += h.vcpus;
    used_memory += h.memory_bytes;
  }
  const char* taken = running ? "running" : "defined";
  if (used_vcpus + vcpus > c.vcpus_schedulable) {
    uint64_t available = c.vcpus_schedulable > used_vcpus ? c.vcpus_schedulable - used_vcpus : 0;
    return CapacityExhausted(
        CapacityKind::kCompute,
        absl::StrCat(what == "spec" ? "spec.vcpus" : what == "growth" ? "vcpus" : what, ": not enough vCPUs on this host: asked ", vcpus, ", available ", available, " of a limit of ",
                     c.vcpus_schedulable, " (", used_vcpus, " ", taken, "; ", c.cpus, " CPUs, ",
                     policy_.reserved_cpus, " reserved, cpu_allocation_ratio ", Ratio(policy_.cpu_allocation_ratio),
                     ")"));
  }
  if (used_memory + memory_bytes > c.memory_schedulable_bytes) {
    uint64_t available = c.memory_schedulable_bytes > used_memory ? c.memory_schedulable_bytes - used_memory : 0;
    return CapacityExhausted(
        CapacityKind::kCompute,
        absl::StrCat(what == "spec" ? "spec.memory_mib" : what == "growth" ? "memory_mib" : what, ": not enough memory on this host: asked ", memory_bytes / kMiB, " MiB, available ",
                     available / kMiB, " MiB of a limit of ", c.memory_schedulable_bytes / kMiB, " MiB (",
                     used_memory / kMiB, " MiB ", taken, "; ", c.memory_total_bytes / kMiB, " MiB total, ",
                     policy_.reserved_memory_bytes / kMiB, " MiB reserved, memory_allocation_ratio ",
                     Ratio(policy_.memory_allocation_ratio), ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::pair<Capacity, std::vector<hv::DomainInfo>>> ComputeAdmission::ReadHost() {
  auto host = hv_.GetHostInfo();
  if (!host.ok()) return host.status();
  auto domains = hv_.ListDomains();
  if (!domains.ok()) return domains.status();
  Capacity c = ComputeCapacity(*host, *domains, policy_);
  return std::make_pair(std::move(c), *std::move(domains));
}

absl::StatusOr<ComputeAdmission::Hold> ComputeAdmission::AdmitCreate(const std::string& name, uint32_t vcpus,
                                                                      uint64_t memory_mib, bool start) {
  std::lock_guard lock(mu_);
  auto now = ReadHost();
  if (!now.ok()) return now.status();
  const auto& [c, domains] = *now;
  const uint64_t memory_bytes = memory_mib * kMiB;
  if (auto s = Check(c, domains, vcpus, memory_bytes, /*running=*/false, "spec"); !s.ok()) return s;
  // Defined covers running (every running domain is defined), so a create that fits the first
  // also fits the second; it still holds "running" so that a concurrent start counts it.
  holds_.push_back({name, vcpus, memory_bytes, /*defines=*/true, /*runs=*/start});
  return Hold(this, std::prev(holds_.end()));
}

absl::StatusOr<ComputeAdmission::Hold> ComputeAdmission::AdmitStart(const std::string& name) {
  std::lock_guard lock(mu_);
  auto now = ReadHost();
  if (!now.ok()) return now.status();
  const auto& [c, domains] = *now;
  auto it = std::find_if(domains.begin(), domains.end(), [&](const hv::DomainInfo& d) { return d.name == name; });
  if (it == domains.end() || hv::IsActive(it->state)) return Hold();
  const uint64_t memory_bytes = it->memory_mib * kMiB;
  if (auto s = Check(c, domains, it->vcpus, memory_bytes, /*running=*/true, absl::StrCat("domain '", name, "'")); !s.ok()) {
    return s;
  }
  holds_.push_back({name, it->vcpus, memory_bytes, /*defines=*/false, /*runs=*/true});
  return Hold(this, std::prev(holds_.end()));
}

absl::StatusOr<ComputeAdmission::Hold> ComputeAdmission::AdmitGrowth(const std::string& name, uint32_t vcpus,
                                                                      uint64_t memory_mib, bool running) {
  if (vcpus == 0 && memory_mib == 0) return Hold();
  std::lock_guard lock(mu_);
  auto now = ReadHost();
  if (!now.ok()) return now.status();
  const auto& [c, domains] = *now;
  const uint64_t memory_bytes = memory_mib * kMiB;
  for (bool r : {false, true}) {
    if (r && !running) continue;
    // "growth" names the request's own fields (UpdateDomainRequest.vcpus / memory_mib).
    if (auto s = Check(c, domains, vcpus, memory_bytes, r, "growth"); !s.ok()) return s;
  }
  Claim claim{name, vcpus, memory_bytes, /*defines=*/true, /*runs=*/running, /*growth=*/true};
  auto it = std::find_if(domains.begin(), domains.end(), [&](const hv::DomainInfo& d) { return d.name == name; });
  if (it != domains.end()) {
    claim.to_vcpus = it->vcpus + vcpus;
    claim.to_memory_mib = it->memory_mib + memory_mib;
  } else {
    claim.to_vcpus = UINT32_MAX;  // not listed: counts until released
    claim.to_memory_mib = UINT64_MAX;
  }
  holds_.push_back(std::move(claim));
  return Hold(this, std::prev(holds_.end()));
}

absl::Status CheckPoolFloor(const std::string& pool, uint64_t free_bytes, uint64_t asked_bytes, uint64_t floor_bytes,
                            absl::string_view field) {
  const uint64_t usable = free_bytes > floor_bytes ? free_bytes - floor_bytes : 0;
  if (asked_bytes <= usable) return absl::OkStatus();
  return CapacityExhausted(
      CapacityKind::kStorage,
      absl::StrCat(field, ": not enough space in pool '", pool, "': asked ", asked_bytes, " bytes, available ", usable,
                   " bytes (", free_bytes, " free, less the pool's floor of ", floor_bytes,
                   " bytes: capacity.pool_free_floor_mib)"));
}

}  // namespace hvagent::service
