#pragma once
// MetricsCollector: one sample of everything the agent reports (capacity, per-domain stats from
// one bulk hypervisor call, storage pools), shared by every reader: /metrics scrapes, REST and
// gRPC reads and Watch streams. A sample younger than Options::max_age is handed out again;
// concurrent readers of a stale sample wait for one collection instead of starting their own.
// Rates (CPU usage, disk and NIC throughput) are derived between a sample and the one before
// it, per domain UUID; a counter that went backwards (the domain restarted) gives no rate.

#include <chrono>
#include <condition_variable>
#include <thread>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/service/host_service.h"
#include "common/clock.h"
#include "hypervisor/hypervisor.h"
#include "hypervisor/xen/event_channel_probe.h"

namespace hvagent::service {

struct DiskRates {
  std::optional<double> read_bytes, write_bytes, read_requests, write_requests;  // per second
};
struct NicRates {
  std::optional<double> rx_bytes, tx_bytes, rx_packets, tx_packets;  // per second
};
struct DomainRates {
  std::optional<double> cpu_usage;  // CPU seconds per second: 1.0 = one host CPU fully busy
  std::vector<DiskRates> disks;     // parallel to DomainStats::disks
  std::vector<NicRates> nics;       // parallel to DomainStats::nics
};

struct MetricsSample {
  Clock::TimePoint taken_at;                  // steady clock, for ages and rates
  std::chrono::system_clock::time_point time;  // wall clock, for clients
  std::chrono::nanoseconds collect_duration{0};
  double interval_seconds = 0;  // since the previous sample; 0 for the first
  bool hypervisor_connected = false;
  absl::StatusOr<Capacity> capacity = absl::UnknownError("not collected");
  absl::StatusOr<std::vector<hv::DomainStats>> domains = absl::UnknownError("not collected");
  std::vector<DomainRates> rates;  // parallel to *domains when ok
  // Xen event channels, with names filled from the domain stats; Unimplemented off Xen.
  absl::StatusOr<hv::EventChannelReport> event_channels = absl::UnknownError("not collected");
};

// Rates of `now` against `before` over `seconds` (exposed for unit tests).
DomainRates ComputeRates(const hv::DomainStats& before, const hv::DomainStats& now, double seconds);

class MetricsCollector {
 public:
  struct Options {
    std::chrono::milliseconds max_age{1000};
    // Event-channel threshold events (kEventChannelsHigh / kEventChannelsCleared).
    hv::EventChannelWatch::Options evtchn_alert;
    // Walking every port of every domain costs a hypercall per port: the event-channel part
    // of a sample is re-read only when older than this.
    std::chrono::milliseconds evtchn_max_age{10000};
  };
  // `evtchn` may be null (treated as a host without event channels). Events from the
  // event-channel watch go to `events` (may be empty), from the collecting thread.
  MetricsCollector(hv::Hypervisor& hypervisor, HostService& host, Clock& clock, Options options,
                   hv::EventChannelProbe* evtchn = nullptr, hv::Hypervisor::EventSink events = {});
  ~MetricsCollector();

  // A sample no older than max_age (collecting one when needed). A stream that must never send
  // the same sample twice passes the one it sent last as `not_this`: that one is never returned.
  std::shared_ptr<const MetricsSample> Latest(const std::shared_ptr<const MetricsSample>& not_this = nullptr);

  // Samples every `interval` in a background thread (so the event-channel watch fires with no
  // reader), until Stop() or destruction. Uses the real time, not the Clock.
  void StartBackground(std::chrono::milliseconds interval);
  void Stop();

 private:
  std::shared_ptr<const MetricsSample> Collect(const std::shared_ptr<const MetricsSample>& previous);
  void WatchEventChannels(const MetricsSample& s);

  hv::Hypervisor& hv_;
  HostService& host_;
  Clock& clock_;
  const Options options_;
  std::mutex collect_mu_;  // one collection at a time; held while collecting
  std::mutex latest_mu_;   // guards latest_ only (short)
  std::shared_ptr<const MetricsSample> latest_;
  hv::EventChannelProbe* evtchn_;
  hv::Hypervisor::EventSink events_;
  std::optional<hv::EventChannelWatch> watch_;  // guarded by collect_mu_
  // The last event-channel read and when it was taken; guarded by collect_mu_.
  std::optional<absl::StatusOr<hv::EventChannelReport>> evtchn_last_;
  Clock::TimePoint evtchn_at_{};

  std::mutex bg_mu_;
  std::condition_variable bg_cv_;
  bool bg_stop_ = false;
  std::thread bg_;
};

}  // namespace hvagent::service
