// XenEventChannelProbe against FakeXenCtrlCalls (both ABIs, limits, host totals, vanishing
// domains, permission errors, the walk caps), and the unsupported probe.

#include "hypervisor/xen/xenctrl_probe.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <filesystem>

#include "tests/unit/hypervisor/xen/fake_xenctrl_calls.h"

namespace hvagent::hv {
namespace {

using ::hvagent::testing::FakeXenCtrlCalls;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Domain = FakeXenCtrlCalls::Domain;

const DomainEventChannels* Find(const EventChannelReport& r, uint32_t domid) {
  for (const auto& d : r.domains) {
    if (d.domid == domid) return &d;
  }
  return nullptr;
}

TEST(XenEventChannelProbe, TwoLevelRangeDomainOnArmHasTheToolstackCapAsExactLimit) {
  FakeXenCtrlCalls fake;
  Domain d;  // Arm guest: the width call is ENOSYS, so 64-bit words
  d.valid_ports = 64;
  FakeXenCtrlCalls::BindRange(d, 1, 7);
  fake.domains[3] = d;
  XenEventChannelProbe probe(fake);

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->domains.size(), 1u);
  const DomainEventChannels& got = report->domains[0];
  EXPECT_EQ(got.domid, 3u);
  EXPECT_EQ(got.abi, EvtchnAbi::kUnknown);  // nothing dom0 can read proves 2-level
  EXPECT_EQ(got.abi_limit, 4095u);          // 64 * 64 ports, port 0 reserved
  EXPECT_EQ(got.max_evtchn_port, std::optional<uint32_t>(1023));
  EXPECT_EQ(got.port_limit, 1023u);
  EXPECT_TRUE(got.limit_exact);  // 1023 is below both ABIs' limits
  EXPECT_EQ(got.ports_bound, 7u);
  EXPECT_EQ(got.ports_valid, 64u);
  EXPECT_EQ(got.highest_bound_port, 7u);
  EXPECT_EQ(got.headroom(), 1016u);
  EXPECT_FALSE(got.walk_truncated);
  EXPECT_FALSE(report->truncated);
  // Ports 0..63, then the EINVAL that ends the walk.
  EXPECT_EQ(report->status_calls, 65u);
  EXPECT_EQ(fake.status_calls, 65u);
  EXPECT_THAT(fake.width_calls, ElementsAre(3u));
}

TEST(XenEventChannelProbe, ThirtyTwoBitPvGuestHasTheSmallTwoLevelLimit) {
  FakeXenCtrlCalls fake;
  Domain d;
  d.width_errno = 0;
  d.width_bytes = 4;  // x86 32-bit PV: 32-bit event words
  FakeXenCtrlCalls::BindRange(d, 1, 10);
  fake.domains[5] = d;
  XenEventChannelProbe::Options options;
  options.max_evtchn_port[5] = std::nullopt;  // uncapped
  XenEventChannelProbe probe(fake, options);

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  const DomainEventChannels* got = Find(*report, 5);
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(got->abi, EvtchnAbi::kUnknown);
  EXPECT_EQ(got->abi_limit, 1023u);
  EXPECT_EQ(got->port_limit, 1023u);
  EXPECT_FALSE(got->limit_exact);  // uncapped and the ABI is unknown: the conservative figure
  EXPECT_EQ(got->max_evtchn_port, std::nullopt);
}

TEST(XenEventChannelProbe, Dom0IsUncappedAndGetsTheTwoLevelFigure) {
  FakeXenCtrlCalls fake;
  Domain dom0;
  dom0.valid_ports = 128;
  FakeXenCtrlCalls::BindRange(dom0, 1, 100);
  fake.domains[0] = dom0;
  XenEventChannelProbe probe(fake);

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  const DomainEventChannels* got = Find(*report, 0);
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(got->max_evtchn_port, std::nullopt);
  EXPECT_EQ(got->port_limit, 4095u);
  EXPECT_FALSE(got->limit_exact);
  EXPECT_EQ(got->headroom(), 3995u);
}

TEST(XenEventChannelProbe, BoundPortBeyondTwoLevelReachProvesFifo) {
  FakeXenCtrlCalls fake;
  Domain d;
  d.valid_ports = 5056;
  FakeXenCtrlCalls::BindRange(d, 1, 3);
  d.bound[5000] = EvtchnPortState::kIpi;
  fake.domains[7] = d;
  XenEventChannelProbe::Options options;
  options.max_evtchn_port[7] = 8191;  // xl max_event_channels = 8191
  XenEventChannelProbe probe(fake, options);

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  const DomainEventChannels* got = Find(*report, 7);
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(got->abi, EvtchnAbi::kFifo);
  EXPECT_EQ(got->abi_limit, 131071u);  // 2^17 ports, port 0 reserved
  EXPECT_EQ(got->port_limit, 8191u);
  EXPECT_TRUE(got->limit_exact);
  EXPECT_FALSE(got->cap_exceeded);
  EXPECT_EQ(got->ports_bound, 4u);
  EXPECT_EQ(got->ports_valid, 5056u);
  EXPECT_EQ(got->highest_bound_port, 5000u);
  EXPECT_EQ(got->headroom(), 8187u);
  EXPECT_TRUE(fake.width_calls.empty());  // FIFO is proven without it
}

TEST(XenEventChannelProbe, FifoUncappedHasTheFifoLimit) {
  FakeXenCtrlCalls fake;
  Domain d;
  d.valid_ports = 4160;
  d.bound[4100] = EvtchnPortState::kInterdomain;
  fake.domains[0] = d;
  XenEventChannelProbe probe(fake);

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->domains.size(), 1u);
  EXPECT_EQ(report->domains[0].abi, EvtchnAbi::kFifo);
  EXPECT_EQ(report->domains[0].port_limit, 131071u);
  EXPECT_TRUE(report->domains[0].limit_exact);
}

TEST(XenEventChannelProbe, TwoLevelEdgeIsPort4095AndFifoStartsAt4096) {
  FakeXenCtrlCalls fake;
  Domain edge;  // the last port a 64-bit 2-level guest can address
  edge.valid_ports = 4096;
  edge.bound[4095] = EvtchnPortState::kInterdomain;
  Domain beyond;  // the first port only FIFO can address
  beyond.valid_ports = 4160;
  beyond.bound[4096] = EvtchnPortState::kInterdomain;
  fake.domains = {{1, edge}, {2, beyond}};
  XenEventChannelProbe::Options options;
  options.max_evtchn_port = {{1, std::nullopt}, {2, std::nullopt}};
  XenEventChannelProbe probe(fake, options);

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->domains.size(), 2u);
  EXPECT_EQ(report->domains[0].abi, EvtchnAbi::kUnknown);
  EXPECT_EQ(report->domains[0].port_limit, 4095u);
  EXPECT_EQ(report->domains[1].abi, EvtchnAbi::kFifo);
  EXPECT_EQ(report->domains[1].port_limit, 131071u);
}

TEST(XenEventChannelProbe, ThirtyTwoBitGuestPastTenTwentyThreeIsFifo) {
  FakeXenCtrlCalls fake;
  Domain d;
  d.width_errno = 0;
  d.width_bytes = 4;
  d.valid_ports = 2048;
  d.bound[2000] = EvtchnPortState::kVirq;
  fake.domains[9] = d;
  XenEventChannelProbe::Options options;
  options.max_evtchn_port[9] = 4095;
  XenEventChannelProbe probe(fake, options);

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->domains[0].abi, EvtchnAbi::kFifo);
  EXPECT_EQ(report->domains[0].port_limit, 4095u);
}

TEST(XenEventChannelProbe, SixtyFourBitGuestPastTenTwentyThreeIsNotProvenFifo) {
  FakeXenCtrlCalls fake;
  Domain d;
  d.width_errno = 0;
  d.width_bytes = 8;
  d.valid_ports = 2048;
  d.bound[2000] = EvtchnPortState::kVirq;
  fake.domains[9] = d;
  XenEventChannelProbe::Options options;
  options.max_evtchn_port[9] = 4095;
  XenEventChannelProbe probe(fake, options);

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->domains[0].abi, EvtchnAbi::kUnknown);
  EXPECT_EQ(report->domains[0].port_limit, 4095u);
  EXPECT_TRUE(report->domains[0].limit_exact);  // 4095 = the 2-level limit, below FIFO's
}

TEST(XenEventChannelProbe, BoundPortAboveConfiguredCapDiscardsTheCap) {
  FakeXenCtrlCalls fake;
  Domain d;
  d.valid_ports = 2048;
  d.bound[1500] = EvtchnPortState::kInterdomain;
  fake.domains[4] = d;
  XenEventChannelProbe probe(fake);  // default cap 1023: wrong for this domain

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  const DomainEventChannels& got = report->domains[0];
  EXPECT_TRUE(got.cap_exceeded);
  EXPECT_EQ(got.max_evtchn_port, std::optional<uint32_t>(1023));  // what was configured
  EXPECT_EQ(got.port_limit, 4095u);
  EXPECT_FALSE(got.limit_exact);
}

TEST(XenEventChannelProbe, HostTotalsSumDomainsAndSkipDyingOnes) {
  FakeXenCtrlCalls fake;
  Domain dom0;
  FakeXenCtrlCalls::BindRange(dom0, 1, 40);
  Domain a;
  FakeXenCtrlCalls::BindRange(a, 1, 12);
  Domain fifo;
  fifo.valid_ports = 4224;
  FakeXenCtrlCalls::BindRange(fifo, 4096, 5);
  Domain dying;
  dying.dying = true;
  FakeXenCtrlCalls::BindRange(dying, 1, 30);
  fake.domains = {{0, dom0}, {1, a}, {2, fifo}, {3, dying}};
  XenEventChannelProbe::Options options;
  options.max_evtchn_port[2] = 10000;
  XenEventChannelProbe probe(fake, options);

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->domains.size(), 3u);
  EXPECT_EQ(report->domains[0].domid, 0u);
  EXPECT_EQ(report->domains[1].domid, 1u);
  EXPECT_EQ(report->domains[2].domid, 2u);
  EXPECT_EQ(report->host_ports_bound, 40u + 12u + 5u);
  EXPECT_EQ(report->host_port_limit, 4095u + 1023u + 10000u);
  EXPECT_EQ(fake.status_calls_by_domain.count(3), 0u);  // dying: not walked
  EXPECT_EQ(report->domains_vanished, 0u);
  EXPECT_FALSE(report->truncated);
}

TEST(DomainEventChannels, HeadroomAndShareArithmetic) {
  DomainEventChannels d;
  d.port_limit = 1023;
  d.ports_bound = 0;
  EXPECT_EQ(d.headroom(), 1023u);
  EXPECT_DOUBLE_EQ(d.used_share(), 0.0);
  d.ports_bound = 818;
  EXPECT_EQ(d.headroom(), 205u);
  EXPECT_NEAR(d.used_share(), 818.0 / 1023.0, 1e-12);
  d.ports_bound = 1023;
  EXPECT_EQ(d.headroom(), 0u);
  EXPECT_DOUBLE_EQ(d.used_share(), 1.0);
  d.ports_bound = 1100;  // the limit assumption was wrong: no wrap-around
  EXPECT_EQ(d.headroom(), 0u);
  EXPECT_GT(d.used_share(), 1.0);
  d.port_limit = 0;
  EXPECT_DOUBLE_EQ(d.used_share(), 1.0);
  EXPECT_EQ(d.headroom(), 0u);
}

TEST(XenEventChannelProbe, DomainDestroyedMidWalkIsDroppedAndCounted) {
  FakeXenCtrlCalls fake;
  Domain stays;
  FakeXenCtrlCalls::BindRange(stays, 1, 5);
  Domain goes;
  FakeXenCtrlCalls::BindRange(goes, 1, 20);
  goes.fail_from_port = 10;  // ESRCH from port 10 on
  Domain goes_later;
  goes_later.width_errno = ESRCH;  // gone between the walk and the width call
  fake.domains = {{1, stays}, {2, goes}, {3, goes_later}};
  XenEventChannelProbe probe(fake);

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->domains.size(), 1u);
  EXPECT_EQ(report->domains[0].domid, 1u);
  EXPECT_EQ(report->domains_vanished, 2u);
  EXPECT_EQ(report->host_ports_bound, 5u);  // none of the vanished domain's 9 ports seen
  EXPECT_EQ(fake.status_calls_by_domain[2], 11u);  // ports 0..10, stopped at the ESRCH
}

TEST(XenEventChannelProbe, PermissionDeniedOnPortZeroFailsTheRead) {
  for (int err : {EPERM, EACCES}) {
    FakeXenCtrlCalls fake;
    Domain d;
    d.fail_from_port = 0;
    d.port_errno = err;
    fake.domains[6] = d;
    XenEventChannelProbe probe(fake);

    auto report = probe.Read();
    ASSERT_FALSE(report.ok());
    EXPECT_EQ(report.status().code(), absl::StatusCode::kPermissionDenied) << report.status();
    EXPECT_THAT(report.status().message(), HasSubstr("xc_evtchn_status(domain 6, port 0)"));
    EXPECT_THAT(report.status().message(), HasSubstr("dom0"));
  }
}

TEST(XenEventChannelProbe, PermissionDeniedListingDomains) {
  FakeXenCtrlCalls fake;
  fake.list_errno = EPERM;
  XenEventChannelProbe probe(fake);
  auto report = probe.Read();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(report.status().message(), HasSubstr("xc_domain_getinfolist"));
}

TEST(XenEventChannelProbe, EpermLaterInTheWalkIsAlsoDenied) {
  FakeXenCtrlCalls fake;
  Domain d;
  d.fail_from_port = 3;
  d.port_errno = EPERM;
  fake.domains[1] = d;
  XenEventChannelProbe probe(fake);
  auto report = probe.Read();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(report.status().message(), HasSubstr("port 3"));
}

TEST(XenEventChannelProbe, XenConsumedPortsCountAsBound) {
  FakeXenCtrlCalls fake;
  Domain d;
  FakeXenCtrlCalls::BindRange(d, 1, 4);
  d.xen_ports = {8, 9};
  fake.domains[2] = d;
  XenEventChannelProbe probe(fake);
  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->domains[0].ports_bound, 6u);
  EXPECT_EQ(report->domains[0].ports_xen, 2u);
  EXPECT_EQ(report->domains[0].highest_bound_port, 9u);
}

TEST(XenEventChannelProbe, OtherErrorsNameTheCall) {
  FakeXenCtrlCalls fake;
  Domain d;
  d.fail_from_port = 2;
  d.port_errno = EFAULT;
  fake.domains[1] = d;
  XenEventChannelProbe probe(fake);
  auto report = probe.Read();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(report.status().message(), HasSubstr("xc_evtchn_status(domain 1, port 2)"));
}

TEST(XenEventChannelProbe, PerDomainCapStopsAnEndlessWalk) {
  FakeXenCtrlCalls fake;
  Domain endless;
  endless.valid_ports = FakeXenCtrlCalls::kEndless;  // never says EINVAL
  FakeXenCtrlCalls::BindRange(endless, 1, 3);
  fake.domains[1] = endless;
  XenEventChannelProbe::Options options;
  options.max_ports_per_domain = 1000;
  XenEventChannelProbe probe(fake, options);

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(fake.status_calls, 1000u);
  EXPECT_EQ(report->domains[0].ports_valid, 1000u);
  EXPECT_TRUE(report->domains[0].walk_truncated);
  EXPECT_TRUE(report->truncated);
}

TEST(XenEventChannelProbe, DefaultCapIsTheFifoPortCountAndThenComplete) {
  FakeXenCtrlCalls fake;
  Domain endless;
  endless.valid_ports = FakeXenCtrlCalls::kEndless;
  fake.domains[1] = endless;
  XenEventChannelProbe probe(fake);

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(fake.status_calls, uint64_t{1} << 17);
  EXPECT_EQ(report->domains[0].ports_valid, uint32_t{1} << 17);
  // Xen never has more ports than that, so the walk saw everything.
  EXPECT_FALSE(report->domains[0].walk_truncated);
}

TEST(XenEventChannelProbe, PerReadBudgetTruncatesAndSkipsTheRest) {
  FakeXenCtrlCalls fake;
  Domain d;
  d.valid_ports = 64;
  FakeXenCtrlCalls::BindRange(d, 1, 50);
  fake.domains = {{1, d}, {2, d}, {3, d}};
  XenEventChannelProbe::Options options;
  options.max_status_calls_per_read = 100;
  XenEventChannelProbe probe(fake, options);

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(fake.status_calls, 100u);
  ASSERT_EQ(report->domains.size(), 2u);
  EXPECT_FALSE(report->domains[0].walk_truncated);  // 65 calls
  EXPECT_TRUE(report->domains[1].walk_truncated);   // the remaining 35: ports 0..34
  EXPECT_EQ(report->domains[1].ports_valid, 35u);
  EXPECT_EQ(report->domains[1].ports_bound, 34u);
  EXPECT_EQ(report->domains_not_walked, 1u);
  EXPECT_TRUE(report->truncated);
}

TEST(XenEventChannelProbe, ListsDomainsInBatches) {
  FakeXenCtrlCalls fake;
  for (uint32_t id : {0u, 1u, 4u, 9u, 12u}) fake.domains[id] = Domain{};
  XenEventChannelProbe::Options options;
  options.list_batch = 2;
  XenEventChannelProbe probe(fake, options);

  auto report = probe.Read();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->domains.size(), 5u);
  EXPECT_THAT(fake.list_calls, ElementsAre(0u, 2u, 10u));
}

TEST(XenEventChannelProbe, OutOfOrderDomainListIsAnErrorNotALoop) {
  FakeXenCtrlCalls fake;
  fake.domains[0] = Domain{};
  fake.list_out_of_order = true;  // always answers domain 0
  XenEventChannelProbe::Options options;
  options.list_batch = 1;
  XenEventChannelProbe probe(fake, options);
  auto report = probe.Read();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(fake.list_calls.size(), 2u);
}

TEST(XenEventChannelProbe, InvalidOptionsAreRejected) {
  FakeXenCtrlCalls fake;
  XenEventChannelProbe::Options options;
  options.max_ports_per_domain = 0;
  EXPECT_EQ(XenEventChannelProbe(fake, options).Read().status().code(), absl::StatusCode::kInvalidArgument);
  options = {};
  options.default_evtchn_word_bits = 48;
  EXPECT_EQ(XenEventChannelProbe(fake, options).Read().status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(fake.list_calls.size(), 0u);
}

TEST(XenEventChannelProbe, IsSupported) {
  FakeXenCtrlCalls fake;
  EXPECT_TRUE(XenEventChannelProbe(fake).Supported());
}

TEST(UnsupportedEventChannelProbe, ReadIsUnimplementedNamingTheHypervisor) {
  UnsupportedEventChannelProbe probe("qemu");
  EXPECT_FALSE(probe.Supported());
  auto report = probe.Read();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(report.status().message(), "event channels: only on Xen hosts (hypervisor is qemu)");
}

// Not a fake of libxenctrl: the real open, which on a host without Xen must fail cleanly.
TEST(OpenRealXenCtrlCalls, FailsCleanlyWithoutXen) {
  if (std::filesystem::exists("/dev/xen/privcmd") || std::filesystem::exists("/proc/xen/privcmd")) {
    GTEST_SKIP() << "a Xen host: covered by the Xen ARM64 system test";
  }
  auto calls = OpenRealXenCtrlCalls();
  ASSERT_FALSE(calls.ok());
  if (XenCtrlBuiltIn()) {
    EXPECT_NE(calls.status().code(), absl::StatusCode::kUnimplemented) << calls.status();
    EXPECT_THAT(calls.status().message(), HasSubstr("xc_interface_open"));
  } else {
    EXPECT_EQ(calls.status().code(), absl::StatusCode::kUnimplemented);
  }
}

}  // namespace
}  // namespace hvagent::hv
