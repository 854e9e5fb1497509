#include "agent/service/metrics_collector.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "agent/service/domain_service.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"

namespace hvagent::service {
namespace {

using namespace std::chrono_literals;

class MetricsCollectorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(domains_.Create({.name = "web1", .vcpus = 2, .memory_mib = 256}, true).ok());
  }
  void SetCounters(uint64_t cpu_ns, uint64_t disk_read, uint64_t rx) {
    hv::DomainStats s;
    s.cpu_time_ns = cpu_ns;
    s.disks.push_back({.target = "vda", .read_bytes = disk_read});
    s.nics.push_back({.name = "vnet0", .rx_bytes = rx});
    hv_.stats["web1"] = s;
  }
  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  DomainService domains_{hv_, clock_, {}};
  HostService host_{hv_};
  MetricsCollector metrics_{hv_, host_, clock_, {.max_age = 1000ms}};
};

TEST_F(MetricsCollectorTest, OneSampleServesEveryReaderWithinMaxAge) {
  auto a = metrics_.Latest();
  clock_.SleepFor(999ms);
  auto b = metrics_.Latest();
  EXPECT_EQ(a.get(), b.get());
  EXPECT_EQ(hv_.stats_calls, 1);
  clock_.SleepFor(1ms);
  auto c = metrics_.Latest();
  EXPECT_NE(a.get(), c.get());
  EXPECT_EQ(hv_.stats_calls, 2);
}

// A Watch stream passes the sample it sent last: it gets a new one even within max_age, so two
// writes an interval apart never carry the same sample.
TEST_F(MetricsCollectorTest, AStreamNeverGetsTheSampleItSentAgain) {
  auto sent = metrics_.Latest();
  clock_.SleepFor(500ms);
  auto next = metrics_.Latest(sent);
  EXPECT_NE(sent.get(), next.get());
  EXPECT_EQ(hv_.stats_calls, 2);
  EXPECT_EQ(metrics_.Latest().get(), next.get());  // other readers share the new one
  EXPECT_EQ(hv_.stats_calls, 2);
}

TEST_F(MetricsCollectorTest, ConcurrentReadersOfAStaleSampleShareOneCollection) {
  std::vector<std::thread> readers;
  std::vector<const MetricsSample*> seen(8);
  for (int i = 0; i < 8; ++i) {
    readers.emplace_back([&, i] { seen[i] = metrics_.Latest().get(); });
  }
  for (auto& t : readers) t.join();
  EXPECT_EQ(hv_.stats_calls, 1);
  for (auto* s : seen) EXPECT_EQ(s, seen[0]);
}

TEST_F(MetricsCollectorTest, RatesComeFromTheDifferenceBetweenSamples) {
  SetCounters(1'000'000'000, 1000, 50);
  auto first = metrics_.Latest();
  ASSERT_TRUE(first->domains.ok());
  EXPECT_FALSE(first->rates[0].cpu_usage.has_value());  // nothing to compare with yet
  EXPECT_EQ(first->interval_seconds, 0);

  clock_.SleepFor(2s);
  SetCounters(2'000'000'000, 5000, 250);
  auto second = metrics_.Latest();
  EXPECT_DOUBLE_EQ(second->interval_seconds, 2.0);
  ASSERT_EQ(second->rates.size(), 1u);
  EXPECT_DOUBLE_EQ(*second->rates[0].cpu_usage, 0.5);  // 1 s of CPU in 2 s
  EXPECT_DOUBLE_EQ(*second->rates[0].disks[0].read_bytes, 2000.0);
  EXPECT_DOUBLE_EQ(*second->rates[0].nics[0].rx_bytes, 100.0);
  EXPECT_FALSE(second->rates[0].disks[0].write_bytes.has_value());
}

TEST_F(MetricsCollectorTest, CountersThatWentBackwardsGiveNoRate) {
  SetCounters(5'000'000'000, 9000, 900);
  metrics_.Latest();
  clock_.SleepFor(2s);
  SetCounters(1'000'000, 10, 1);  // the domain restarted
  auto s = metrics_.Latest();
  EXPECT_FALSE(s->rates[0].cpu_usage.has_value());
  EXPECT_FALSE(s->rates[0].disks[0].read_bytes.has_value());
  EXPECT_FALSE(s->rates[0].nics[0].rx_bytes.has_value());
}

TEST_F(MetricsCollectorTest, HypervisorDownIsAnErrorInTheSampleNotZeros) {
  hv_.connected = false;
  auto s = metrics_.Latest();
  EXPECT_FALSE(s->hypervisor_connected);
  EXPECT_EQ(s->domains.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s->capacity.status().code(), absl::StatusCode::kUnavailable);
}

TEST(ComputeRatesTest, DisksAreMatchedByTargetNotPosition) {
  hv::DomainStats before, now;
  before.disks = {{.target = "vda", .read_bytes = 100}, {.target = "vdb", .read_bytes = 1000}};
  now.disks = {{.target = "vdb", .read_bytes = 3000}};  // vda was detached
  DomainRates r = ComputeRates(before, now, 1.0);
  ASSERT_EQ(r.disks.size(), 1u);
  EXPECT_DOUBLE_EQ(*r.disks[0].read_bytes, 2000.0);
}

}  // namespace
}  // namespace hvagent::service

namespace hvagent::service {
namespace {

// Returns whatever report the test sets; counts reads.
class ScriptedProbe final : public hv::EventChannelProbe {
 public:
  absl::StatusOr<hv::EventChannelReport> next = hv::EventChannelReport{};
  int reads = 0;
  bool Supported() const override { return true; }
  absl::StatusOr<hv::EventChannelReport> Read() override {
    ++reads;
    return next;
  }
};

hv::EventChannelReport Report(uint32_t domid, uint32_t bound, uint32_t limit) {
  hv::EventChannelReport r;
  hv::DomainEventChannels d;
  d.domid = domid;
  d.ports_bound = bound;
  d.port_limit = limit;
  r.domains.push_back(d);
  r.host_ports_bound = bound;
  return r;
}

class EvtchnCollectorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(domains_.Create({.name = "web1", .vcpus = 1, .memory_mib = 64}, true).ok());
    auto stats = hv_.GetAllDomainStats();
    hv::DomainStats s;
    s.id = 7;
    hv_.stats["web1"] = s;
    uuid_ = (*stats)[0].uuid;
  }
  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  DomainService domains_{hv_, clock_, {}};
  HostService host_{hv_};
  ScriptedProbe probe_;
  std::vector<hv::DomainEvent> events_;
  std::string uuid_;
  MetricsCollector metrics_{hv_,
                            host_,
                            clock_,
                            {.max_age = std::chrono::milliseconds(1000),
                             .evtchn_alert = {.share = 0.8},
                             .evtchn_max_age = std::chrono::milliseconds(10000)},
                            &probe_,
                            [this](const hv::DomainEvent& e) { events_.push_back(e); }};
};

TEST_F(EvtchnCollectorTest, NamesComeFromTheDomainIdAndCrossingsBecomeEventsOnce) {
  probe_.next = Report(7, 100, 1023);
  auto s = metrics_.Latest();
  ASSERT_TRUE(s->event_channels.ok());
  EXPECT_EQ(s->event_channels->domains[0].name, "web1");
  EXPECT_TRUE(events_.empty());

  probe_.next = Report(7, 900, 1023);  // 88%
  clock_.SleepFor(std::chrono::seconds(10));
  metrics_.Latest();
  ASSERT_EQ(events_.size(), 1u);
  EXPECT_EQ(events_[0].type, hv::DomainEventType::kEventChannelsHigh);
  EXPECT_EQ(events_[0].domain_name, "web1");
  EXPECT_EQ(events_[0].domain_uuid, uuid_);
  EXPECT_THAT(events_[0].detail, ::testing::HasSubstr("900 of 1023"));

  clock_.SleepFor(std::chrono::seconds(10));
  metrics_.Latest();  // still above: no second event
  EXPECT_EQ(events_.size(), 1u);

  probe_.next = Report(7, 10, 1023);
  clock_.SleepFor(std::chrono::seconds(10));
  metrics_.Latest();
  ASSERT_EQ(events_.size(), 2u);
  EXPECT_EQ(events_[1].type, hv::DomainEventType::kEventChannelsCleared);
}

TEST_F(EvtchnCollectorTest, PortsAreWalkedAtTheirOwnSlowerInterval) {
  const int stats_before = hv_.stats_calls;
  metrics_.Latest();
  clock_.SleepFor(std::chrono::seconds(2));
  metrics_.Latest();  // a new sample, but the event channels are reused
  EXPECT_EQ(hv_.stats_calls - stats_before, 2);
  EXPECT_EQ(probe_.reads, 1);
  clock_.SleepFor(std::chrono::seconds(9));
  metrics_.Latest();
  EXPECT_EQ(probe_.reads, 2);
}

TEST_F(EvtchnCollectorTest, WithoutAProbeTheSampleSaysUnsupported) {
  MetricsCollector plain(hv_, host_, clock_, {});
  EXPECT_EQ(plain.Latest()->event_channels.status().code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace hvagent::service
