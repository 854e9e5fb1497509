#include "agent/service/host_service.h"

#include <gtest/gtest.h>

#include "agent/service/domain_service.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"

namespace hvagent::service {
namespace {

TEST(HostServiceTest, Capacity_CountsOnlyRunningDomainsAsAllocated) {
  testing::FakeHypervisor hv;
  testing::FakeClock clock;
  DomainService domains(hv, clock, {});
  HostService host(hv);
  hv::DomainSpec a{.name = "a", .vcpus = 2, .memory_mib = 512};
  hv::DomainSpec b{.name = "b", .vcpus = 4, .memory_mib = 1024};
  hv::DomainSpec c{.name = "c", .vcpus = 1, .memory_mib = 128};
  ASSERT_TRUE(domains.Create(a, true).ok());
  ASSERT_TRUE(domains.Create(b, true).ok());
  ASSERT_TRUE(domains.Create(c, false).ok());
  ASSERT_TRUE(domains.Suspend("b").ok());  // paused guests still hold their resources

  auto cap = host.GetCapacity();
  ASSERT_TRUE(cap.ok()) << cap.status();
  EXPECT_EQ(cap->cpus, 8u);
  EXPECT_EQ(cap->memory_total_bytes, 16ULL << 30);
  EXPECT_EQ(cap->memory_free_bytes, 12ULL << 30);
  EXPECT_EQ(cap->domains_total, 3u);
  EXPECT_EQ(cap->domains_running, 2u);
  EXPECT_EQ(cap->allocated_vcpus, 6u);
  EXPECT_EQ(cap->allocated_memory_bytes, (512ULL + 1024) << 20);
}

TEST(HostServiceTest, ReportsConnectionState) {
  testing::FakeHypervisor hv;
  HostService host(hv);
  EXPECT_TRUE(host.HypervisorConnected());
  hv.connected = false;
  EXPECT_FALSE(host.HypervisorConnected());
  EXPECT_EQ(host.GetCapacity().status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace hvagent::service
