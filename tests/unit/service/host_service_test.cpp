#include "agent/service/host_service.h"

#include <gtest/gtest.h>

#include <fstream>

#include "agent/service/domain_service.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"
#include "tests/fakes/fake_storage_backend.h"
#include "agent/service/storage_service.h"

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

TEST(HostServiceTest, GetHost_UptimeFromTheUptimeFile) {
  testing::FakeHypervisor hv;
  HostService host(hv);
  const std::string path = ::testing::TempDir() + "/uptime-ok";
  std::ofstream(path) << "86461.93 170000.10\n";
  host.SetUptimeFile(path);
  auto h = host.GetHost();
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_TRUE(h->uptime.has_value());
  EXPECT_EQ(h->uptime->count(), 86461);
}

TEST(HostServiceTest, GetHost_NoUptimeWhenTheFileIsMissingOrGarbage) {
  testing::FakeHypervisor hv;
  HostService host(hv);
  host.SetUptimeFile(::testing::TempDir() + "/uptime-absent");
  auto h = host.GetHost();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_FALSE(h->uptime.has_value());
  const std::string path = ::testing::TempDir() + "/uptime-bad";
  std::ofstream(path) << "up 3 days\n";
  EXPECT_FALSE(ReadUptime(path).has_value());
  std::ofstream(path) << "-5 1\n";
  EXPECT_FALSE(ReadUptime(path).has_value());
}

}  // namespace
}  // namespace hvagent::service

namespace hvagent::service {
namespace {

hv::HostInfo Host(uint32_t cpus, uint64_t memory) {
  hv::HostInfo h;
  h.cpus = cpus;
  h.memory_bytes = memory;
  return h;
}

hv::DomainInfo Dom(uint32_t vcpus, uint64_t mib, hv::DomainState state) {
  hv::DomainInfo d;
  d.vcpus = vcpus;
  d.memory_mib = mib;
  d.state = state;
  return d;
}

TEST(CapacityTest, RatiosAndReservationsShapeWhatIsSchedulable) {
  CapacityPolicy p{.cpu_allocation_ratio = 4.0, .memory_allocation_ratio = 1.5, .reserved_cpus = 2,
                   .reserved_memory_bytes = 2ULL << 30};
  Capacity c = ComputeCapacity(Host(16, 34ULL << 30), {}, p);
  EXPECT_EQ(c.vcpus_schedulable, 56u);                     // (16 - 2) * 4
  EXPECT_EQ(c.memory_schedulable_bytes, 48ULL << 30);      // (34 - 2) GiB * 1.5
  EXPECT_EQ(c.vcpus_available, 56u);
  EXPECT_EQ(c.memory_available_bytes, 48ULL << 30);
}

TEST(CapacityTest, StoppedDomainsKeepTheirClaimRunningOnesAreAllocated) {
  CapacityPolicy p{.cpu_allocation_ratio = 2.0, .memory_allocation_ratio = 1.0, .reserved_cpus = 0,
                   .reserved_memory_bytes = 0};
  Capacity c = ComputeCapacity(Host(4, 8ULL << 30),
                               {Dom(2, 1024, hv::DomainState::kRunning), Dom(3, 2048, hv::DomainState::kShutoff),
                                Dom(1, 512, hv::DomainState::kPaused)},
                               p);
  EXPECT_EQ(c.allocated_vcpus, 3u);  // running + paused
  EXPECT_EQ(c.allocated_memory_bytes, 1536ULL << 20);
  EXPECT_EQ(c.defined_vcpus, 6u);
  EXPECT_EQ(c.defined_memory_bytes, 3584ULL << 20);
  EXPECT_EQ(c.vcpus_available, 2u);  // 8 - 6
  EXPECT_EQ(c.memory_available_bytes, (8ULL << 30) - (3584ULL << 20));
  EXPECT_EQ(c.domains_total, 3u);
  EXPECT_EQ(c.domains_running, 2u);
}

// Found by the Xen ARM64 system tier: dom0, listed with the host's whole memory as its maximum,
// left room for no guest. Only the real control domain is left out; a guest named like it is not.
TEST(CapacityTest, XensControlDomainIsTheHostsReservationNotAGuest) {
  CapacityPolicy p{.cpu_allocation_ratio = 1.0, .memory_allocation_ratio = 1.0, .reserved_cpus = 0,
                   .reserved_memory_bytes = 0};
  hv::HostInfo xen = Host(2, 2ULL << 30);
  xen.hypervisor_type = "Xen";
  hv::DomainInfo dom0 = Dom(2, 2048, hv::DomainState::kRunning);
  dom0.name = "Domain-0";
  dom0.uuid = "00000000-0000-0000-0000-000000000000";
  hv::DomainInfo guest = Dom(1, 256, hv::DomainState::kRunning);
  guest.name = "g1";
  guest.uuid = "6f1c2a8e-5b1d-4a51-9d7e-0c3b2e1f4a55";
  Capacity c = ComputeCapacity(xen, {dom0, guest}, p);
  EXPECT_EQ(c.defined_memory_bytes, 256ULL << 20);
  EXPECT_EQ(c.allocated_vcpus, 1u);
  EXPECT_EQ(c.memory_available_bytes, (2ULL << 30) - (256ULL << 20));

  hv::DomainInfo impostor = dom0;
  impostor.uuid = "11111111-2222-4333-8444-555555555555";
  EXPECT_EQ(ComputeCapacity(xen, {impostor}, p).defined_memory_bytes, 2ULL << 30);
  hv::HostInfo kvm = Host(2, 2ULL << 30);
  kvm.hypervisor_type = "QEMU";
  EXPECT_EQ(ComputeCapacity(kvm, {dom0}, p).defined_memory_bytes, 2ULL << 30);
}

TEST(CapacityTest, OvercommittedHostReportsZeroAvailableNotAWrappedNumber) {
  CapacityPolicy p{.cpu_allocation_ratio = 1.0, .memory_allocation_ratio = 1.0, .reserved_cpus = 8,
                   .reserved_memory_bytes = 16ULL << 30};
  Capacity c = ComputeCapacity(Host(4, 8ULL << 30), {Dom(2, 1024, hv::DomainState::kRunning)}, p);
  EXPECT_EQ(c.vcpus_schedulable, 0u);  // more reserved than the host has
  EXPECT_EQ(c.memory_schedulable_bytes, 0u);
  EXPECT_EQ(c.vcpus_available, 0u);
  EXPECT_EQ(c.memory_available_bytes, 0u);
}

TEST(CapacityTest, FractionalRatiosRoundDown) {
  CapacityPolicy p{.cpu_allocation_ratio = 1.5, .memory_allocation_ratio = 0.5, .reserved_cpus = 0,
                   .reserved_memory_bytes = 0};
  Capacity c = ComputeCapacity(Host(3, 3), {}, p);
  EXPECT_EQ(c.vcpus_schedulable, 4u);         // 4.5 -> 4
  EXPECT_EQ(c.memory_schedulable_bytes, 1u);  // 1.5 -> 1
}

TEST(CapacityTest, PoolsAreReportedAndABrokenPoolIsNamedNotFatal) {
  testing::FakeHypervisor hv;
  std::vector<std::unique_ptr<storage::StorageBackend>> backends;
  backends.push_back(std::make_unique<testing::FakeStorageBackend>(storage::PoolConfig{.name = "vg0"}, 1ULL << 30));
  auto broken = std::make_unique<testing::FakeStorageBackend>(storage::PoolConfig{.name = "sick"});
  broken->fail_get_pool = absl::InternalError("lvm2 fullreport failed (exit 5): read error");
  backends.push_back(std::move(broken));
  StorageService storage(hv, std::move(backends));
  ASSERT_TRUE(storage.CreateVolume("vg0", {"a", 256 << 20}).ok());
  HostService host(hv, {}, &storage);
  auto c = host.GetCapacity();
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->pools.size(), 1u);
  EXPECT_EQ(c->pools[0].capacity_bytes, 1ULL << 30);
  EXPECT_EQ(c->pools[0].free_bytes, (1ULL << 30) - (256 << 20));
  ASSERT_EQ(c->pool_errors.size(), 1u);
  EXPECT_EQ(c->pool_errors[0], "sick: lvm2 fullreport failed (exit 5): read error");
  EXPECT_EQ(c->cpus, 8u);  // the host figures are still there
}

}  // namespace
}  // namespace hvagent::service
