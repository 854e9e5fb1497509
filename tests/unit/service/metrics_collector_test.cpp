#include "agent/service/metrics_collector.h"

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
