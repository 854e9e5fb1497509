#include "agent/service/metrics_collector.h"

#include "absl/strings/str_cat.h"
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

MetricsCollector::MetricsCollector(hv::Hypervisor& hypervisor, HostService& host, Clock& clock, Options options,
                                   hv::EventChannelProbe* evtchn, hv::Hypervisor::EventSink events)
    : hv_(hypervisor), host_(host), clock_(clock), options_(options), evtchn_(evtchn), events_(std::move(events)) {
  auto watch = hv::EventChannelWatch::Create(options_.evtchn_alert);
  if (watch.ok()) {
    watch_ = std::move(*watch);
  } else {
    log::ComponentLogger("metrics")->error("event-channel alerts off: {}", watch.status().message());
  }
}

MetricsCollector::~MetricsCollector() { Stop(); }

void MetricsCollector::StartBackground(std::chrono::milliseconds interval) {
  std::lock_guard lock(bg_mu_);
  if (bg_.joinable()) return;
  bg_stop_ = false;
  bg_ = std::thread([this, interval] {
    std::unique_lock l(bg_mu_);
    while (!bg_stop_) {
      l.unlock();
      Latest();
      l.lock();
      bg_cv_.wait_for(l, interval, [this] { return bg_stop_; });
    }
  });
}

void MetricsCollector::Stop() {
  std::thread t;
  {
    std::lock_guard lock(bg_mu_);
    bg_stop_ = true;
    t = std::move(bg_);
  }
  bg_cv_.notify_all();
  if (t.joinable()) t.join();
}

void MetricsCollector::WatchEventChannels(const MetricsSample& s) {
  if (!s.event_channels.ok() || !watch_) return;
  for (const auto& c : watch_->Observe(*s.event_channels)) {
    bool high = c.direction == hv::EventChannelWatch::Direction::kAbove;
    std::string detail = absl::StrCat("domid ", c.domid, ": ", c.ports_bound, " of ", c.port_limit,
                                      " event-channel ports bound (", static_cast<int>(c.used_share * 100 + 0.5),
                                      "%), ", high ? "at or above" : "back below", " the alert share of ",
                                      static_cast<int>(watch_->options().share * 100 + 0.5), "%");
    log::ComponentLogger("metrics")->warn("domain {}: {}", c.name, detail);
    if (!events_) continue;
    hv::DomainEvent e;
    e.time = s.time;
    e.domain_name = c.name;
    e.type = high ? hv::DomainEventType::kEventChannelsHigh : hv::DomainEventType::kEventChannelsCleared;
    e.detail = detail;
    if (s.domains.ok()) {
      for (const auto& d : *s.domains) {
        if (d.id && *d.id == c.domid) e.domain_uuid = d.uuid;
      }
    }
    events_(e);
  }
}

std::shared_ptr<const MetricsSample> MetricsCollector::Latest(const std::shared_ptr<const MetricsSample>& not_this) {
  auto fresh = [&](const std::shared_ptr<const MetricsSample>& s) {
    return s != nullptr && s != not_this && clock_.Now() - s->taken_at < options_.max_age;
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
  bool evtchn_fresh = false;
  if (evtchn_ == nullptr) {
    s->event_channels = absl::UnimplementedError("event channels: only on Xen hosts");
  } else if (evtchn_last_ && start - evtchn_at_ < options_.evtchn_max_age) {
    s->event_channels = *evtchn_last_;
  } else {
    s->event_channels = evtchn_->Read();
    evtchn_last_ = s->event_channels;
    evtchn_at_ = start;
    evtchn_fresh = true;
  }
  if (s->event_channels.ok() && s->domains.ok()) {
    std::map<uint32_t, std::string> names;
    for (const auto& d : *s->domains) {
      if (d.id) names[*d.id] = d.name;
    }
    for (auto& d : s->event_channels->domains) {
      if (auto it = names.find(d.domid); it != names.end() && d.name.empty()) d.name = it->second;
    }
  }
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
  if (evtchn_fresh) WatchEventChannels(*s);
  return s;
}

}  // namespace hvagent::service
