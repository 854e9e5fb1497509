#include "agent/service/metrics_collector.h"

#include "common/log.h"

namespace hvagent::service {
namespace {

std::optional<double> Rate(const std::optional<uint64_t>& before, const std::optional<uint64_t>& now,
                           double seconds) {
  if (!before || !now || *now < *before || seconds <= 0) return std::nullopt;
  return static_cast<double>(*now - *before) / seconds;
}

}  // namespace

DomainRates ComputeRates(const hv::DomainStats& before, const hv::DomainStats& now, double seconds) {
  DomainRates r;
  if (auto ns = Rate(before.cpu_time_ns, now.cpu_time_ns, seconds)) r.cpu_usage = *ns / 1e9;
  r.disks.resize(now.disks.size());
  for (size_t i = 0; i < now.disks.size(); ++i) {
    const hv::DiskStats& d = now.disks[i];
    for (const hv::DiskStats& b : before.disks) {
      if (b.target != d.target) continue;
      r.disks[i] = {Rate(b.read_bytes, d.read_bytes, seconds), Rate(b.write_bytes, d.write_bytes, seconds),
                    Rate(b.read_requests, d.read_requests, seconds), Rate(b.write_requests, d.write_requests, seconds)};
    }
  }
  r.nics.resize(now.nics.size());
  for (size_t i = 0; i < now.nics.size(); ++i) {
    const hv::NicStats& n = now.nics[i];
    for (const hv::NicStats& b : before.nics) {
      if (b.name != n.name) continue;
      r.nics[i] = {Rate(b.rx_bytes, n.rx_bytes, seconds), Rate(b.tx_bytes, n.tx_bytes, seconds),
                   Rate(b.rx_packets, n.rx_packets, seconds), Rate(b.tx_packets, n.tx_packets, seconds)};
    }
  }
  return r;
}

MetricsCollector::MetricsCollector(hv::Hypervisor& hypervisor, HostService& host, Clock& clock, Options options)
    : hv_(hypervisor), host_(host), clock_(clock), options_(options) {}

std::shared_ptr<const MetricsSample> MetricsCollector::Latest() {
  auto fresh = [this](const std::shared_ptr<const MetricsSample>& s) {
    return s != nullptr && clock_.Now() - s->taken_at < options_.max_age;
  };
  {
    std::lock_guard l(latest_mu_);
    if (fresh(latest_)) return latest_;
  }
  std::lock_guard collecting(collect_mu_);
  std::shared_ptr<const MetricsSample> previous;
  {
    std::lock_guard l(latest_mu_);
    if (fresh(latest_)) return latest_;  // another reader collected while this one waited
    previous = latest_;
  }
  auto sample = Collect(previous);
  std::lock_guard l(latest_mu_);
  latest_ = sample;
  return sample;
}

std::shared_ptr<const MetricsSample> MetricsCollector::Collect(const std::shared_ptr<const MetricsSample>& previous) {
  auto s = std::make_shared<MetricsSample>();
  const auto start = clock_.Now();
  s->time = std::chrono::system_clock::now();
  s->hypervisor_connected = hv_.Connected();
  s->capacity = host_.GetCapacity();
  s->domains = hv_.GetAllDomainStats();
  s->taken_at = clock_.Now();
  s->collect_duration = std::chrono::duration_cast<std::chrono::nanoseconds>(s->taken_at - start);
  if (previous != nullptr) {
    s->interval_seconds = std::chrono::duration<double>(s->taken_at - previous->taken_at).count();
  }
  if (s->domains.ok()) {
    std::map<std::string, const hv::DomainStats*> before;
    if (previous != nullptr && previous->domains.ok()) {
      for (const auto& d : *previous->domains) before[d.uuid] = &d;
    }
    s->rates.resize(s->domains->size());
    for (size_t i = 0; i < s->domains->size(); ++i) {
      const hv::DomainStats& d = (*s->domains)[i];
      if (auto it = before.find(d.uuid); it != before.end()) {
        s->rates[i] = ComputeRates(*it->second, d, s->interval_seconds);
      }
    }
  } else {
    log::ComponentLogger("metrics")->warn("domain stats: {}", s->domains.status().message());
  }
  return s;
}

}  // namespace hvagent::service
