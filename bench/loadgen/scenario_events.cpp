// Scenario 5: how late a libvirt lifecycle event reaches a gRPC Watch subscriber, against the
// same event on the benchmark's own libvirt connection.

#include <google/protobuf/util/time_util.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

#include "absl/strings/str_cat.h"
#include "bench/loadgen/grpc_load.h"
#include "bench/loadgen/processes.h"
#include "bench/loadgen/scenarios.h"
#include "bench/loadgen/watch_streams.h"

namespace hvagent::bench {

using Clock = std::chrono::steady_clock;

namespace {

// The benchmark's own libvirt event callback: when each lifecycle event arrived here.
struct DirectEvents {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Clock::time_point> arrivals;

  static void Callback(virConnectPtr, virDomainPtr, int, int, void* opaque) {
    auto* self = static_cast<DirectEvents*>(opaque);
    auto now = Clock::now();
    {
      std::lock_guard lock(self->mu);
      self->arrivals.push_back(now);
    }
    self->cv.notify_all();
  }
  std::optional<Clock::time_point> Next(std::chrono::seconds timeout) {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, timeout, [this] { return !arrivals.empty(); })) return std::nullopt;
    auto t = arrivals.front();
    arrivals.pop_front();
    return t;
  }
};

}  // namespace

absl::Status RunEvents(const Settings& s, Report& report) {
  report.Section("events", "5. Events: a libvirt lifecycle event on its way to a gRPC Watch subscriber",
                 {"interval", "p50 us", "p99 us", "max us", "samples"});
  auto daemon = PrivateLibvirtd::Start();
  if (!daemon.ok()) return daemon.status();
  auto agent =
      AgentProcess::Start({.binary = s.hvagentd, .hypervisor_uri = daemon->uri(), .log_level = s.agent_log_level});
  if (!agent.ok()) return agent.status();
  virConnectPtr conn = virConnectOpen(daemon->uri().c_str());
  if (conn == nullptr) return absl::UnavailableError(virGetLastErrorMessage());
  const std::string name = "bench-ev-0";
  if (auto st = DefineTestDomains(conn, "bench-ev-", 1); !st.ok()) {
    virConnectClose(conn);
    return st;
  }
  DirectEvents direct;
  int cb = virConnectDomainEventRegisterAny(conn, nullptr, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                            VIR_DOMAIN_EVENT_CALLBACK(DirectEvents::Callback), &direct, nullptr);
  auto channels = MakeChannels(agent->grpc_address(), 1);
  WatchStreams stream(channels, 1, {name});
  if (stream.AwaitSubscribed(std::chrono::seconds(10)) != 1 || cb < 0) {
    virConnectClose(conn);
    return absl::UnavailableError("could not subscribe (Watch or libvirt event callback)");
  }
  virDomainPtr dom = virDomainLookupByName(conn, name.c_str());
  Latencies grpc_vs_direct, grpc_vs_return, direct_vs_return, stamp_to_subscriber;
  const int events = s.smoke ? 10 : 1000;
  int lost = 0;
  for (int i = 0; i < events; ++i) {
    bool suspend = i % 2 == 0;
    int rc = suspend ? virDomainSuspend(dom) : virDomainResume(dom);
    auto returned = Clock::now();
    if (rc < 0) {
      virDomainFree(dom);
      virConnectClose(conn);
      return absl::InternalError(absl::StrCat("suspend/resume: ", virGetLastErrorMessage()));
    }
    v1::DomainEvent ev;
    bool got = stream.Read(0, &ev, std::chrono::system_clock::now() + std::chrono::seconds(5));
    auto grpc_at = Clock::now();
    auto grpc_wall = std::chrono::system_clock::now();
    auto direct_at = direct.Next(std::chrono::seconds(5));
    if (!got || !direct_at) {
      ++lost;
      continue;
    }
    grpc_vs_direct.Add(grpc_at - *direct_at);
    grpc_vs_return.Add(grpc_at - returned);
    direct_vs_return.Add(*direct_at - returned);
    auto stamped = google::protobuf::util::TimeUtil::TimestampToMicroseconds(ev.time());
    auto now_us = std::chrono::duration_cast<std::chrono::microseconds>(grpc_wall.time_since_epoch()).count();
    stamp_to_subscriber.AddMicros(static_cast<double>(now_us - stamped));
  }
  virDomainFree(dom);
  virConnectDomainEventDeregisterAny(conn, cb);
  virConnectClose(conn);
  auto row = [&](const char* what, Latencies& l) {
    report.Row({what, Cell(l.p50(), 0), Cell(l.p99(), 0), Cell(l.Quantile(1.0), 0), static_cast<uint64_t>(l.count())});
  };
  row("libvirt event: direct callback -> gRPC subscriber", grpc_vs_direct);
  row("suspend/resume returned -> direct libvirt callback", direct_vs_return);
  row("suspend/resume returned -> gRPC subscriber", grpc_vs_return);
  row("agent's event stamp -> gRPC subscriber", stamp_to_subscriber);
  report.Note(
      absl::StrCat("a private libvirtd (test driver) emits each event once to two clients: the agent and this "
                   "benchmark's own libvirt connection; the first row is the difference, i.e. what the agent adds "
                   "(its libvirt event thread, EventHub, the gRPC stream). ",
                   events, " alternating suspend/resume, one at a time; lost: ", lost));
  report.Note("target: p99 <= 5 ms (libvirt event -> subscriber)");
  return absl::OkStatus();
}

}  // namespace hvagent::bench
