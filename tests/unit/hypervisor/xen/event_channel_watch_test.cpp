// EventChannelWatch: one event per crossing (not per sample), re-arming, hysteresis, forgetting
// domains, and share validation.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "hypervisor/xen/event_channel_probe.h"

namespace hvagent::hv {
namespace {

using Direction = EventChannelWatch::Direction;

// A report with one domain per (domid, ports bound) pair, each limited to 1000 ports.
EventChannelReport Sample(std::initializer_list<std::pair<uint32_t, uint32_t>> bound, bool truncated = false) {
  EventChannelReport r;
  for (const auto& [domid, ports] : bound) {
    DomainEventChannels d;
    d.domid = domid;
    d.name = "vm" + std::to_string(domid);
    d.port_limit = 1000;
    d.ports_bound = ports;
    r.domains.push_back(d);
    r.host_ports_bound += ports;
  }
  r.truncated = truncated;
  return r;
}

EventChannelWatch Watch(EventChannelWatch::Options options) {
  auto w = EventChannelWatch::Create(options);
  EXPECT_TRUE(w.ok()) << w.status();
  return *std::move(w);
}

TEST(EventChannelWatch, FiresOnceOnTheWayUpAndNotWhileAbove) {
  EventChannelWatch w = Watch({.share = 0.8});
  EXPECT_TRUE(w.Observe(Sample({{1, 500}})).empty());
  auto up = w.Observe(Sample({{1, 800}}));  // exactly the share counts
  ASSERT_EQ(up.size(), 1u);
  EXPECT_EQ(up[0].domid, 1u);
  EXPECT_EQ(up[0].name, "vm1");
  EXPECT_EQ(up[0].direction, Direction::kAbove);
  EXPECT_DOUBLE_EQ(up[0].used_share, 0.8);
  EXPECT_EQ(up[0].ports_bound, 800u);
  EXPECT_EQ(up[0].port_limit, 1000u);
  EXPECT_TRUE(w.IsAbove(1));
  EXPECT_TRUE(w.Observe(Sample({{1, 900}})).empty());
  EXPECT_TRUE(w.Observe(Sample({{1, 850}})).empty());
  EXPECT_TRUE(w.Observe(Sample({{1, 1000}})).empty());
}

TEST(EventChannelWatch, ReArmsAfterDroppingBelow) {
  EventChannelWatch w = Watch({.share = 0.8});
  ASSERT_EQ(w.Observe(Sample({{1, 850}})).size(), 1u);  // first seen above: a crossing
  auto down = w.Observe(Sample({{1, 700}}));
  ASSERT_EQ(down.size(), 1u);
  EXPECT_EQ(down[0].direction, Direction::kCleared);
  EXPECT_FALSE(w.IsAbove(1));
  EXPECT_TRUE(w.Observe(Sample({{1, 650}})).empty());
  auto again = w.Observe(Sample({{1, 820}}));
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].direction, Direction::kAbove);
}

TEST(EventChannelWatch, ClearedEventsCanBeTurnedOffButStillReArm) {
  EventChannelWatch w = Watch({.share = 0.5, .report_cleared = false});
  ASSERT_EQ(w.Observe(Sample({{2, 600}})).size(), 1u);
  EXPECT_TRUE(w.Observe(Sample({{2, 100}})).empty());
  EXPECT_FALSE(w.IsAbove(2));
  EXPECT_EQ(w.Observe(Sample({{2, 600}})).size(), 1u);
}

TEST(EventChannelWatch, HysteresisHoldsUntilClearShare) {
  EventChannelWatch w = Watch({.share = 0.8, .clear_share = 0.7});
  ASSERT_EQ(w.Observe(Sample({{1, 810}})).size(), 1u);
  EXPECT_TRUE(w.Observe(Sample({{1, 790}})).empty());  // below share, above clear: no flapping
  EXPECT_TRUE(w.Observe(Sample({{1, 805}})).empty());
  auto down = w.Observe(Sample({{1, 699}}));
  ASSERT_EQ(down.size(), 1u);
  EXPECT_EQ(down[0].direction, Direction::kCleared);
}

TEST(EventChannelWatch, DomainsAreIndependent) {
  EventChannelWatch w = Watch({.share = 0.8});
  auto events = w.Observe(Sample({{1, 900}, {2, 100}, {3, 950}}));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].domid, 1u);
  EXPECT_EQ(events[1].domid, 3u);
  events = w.Observe(Sample({{1, 900}, {2, 900}, {3, 100}}));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].domid, 2u);
  EXPECT_EQ(events[0].direction, Direction::kAbove);
  EXPECT_EQ(events[1].domid, 3u);
  EXPECT_EQ(events[1].direction, Direction::kCleared);
}

TEST(EventChannelWatch, ForgetsDomainsMissingFromACompleteReportOnly) {
  EventChannelWatch w = Watch({.share = 0.8});
  ASSERT_EQ(w.Observe(Sample({{1, 900}, {2, 900}})).size(), 2u);
  // Truncated: domain 2 was not walked, so it is still above; no repeat when it comes back.
  EXPECT_TRUE(w.Observe(Sample({{1, 900}}, /*truncated=*/true)).empty());
  EXPECT_TRUE(w.IsAbove(2));
  EXPECT_TRUE(w.Observe(Sample({{1, 900}, {2, 900}})).empty());
  // Complete report without domain 2: it is gone; a new domain with its domid starts armed.
  EXPECT_TRUE(w.Observe(Sample({{1, 900}})).empty());
  EXPECT_FALSE(w.IsAbove(2));
  EXPECT_EQ(w.Observe(Sample({{1, 900}, {2, 900}})).size(), 1u);
}

TEST(EventChannelWatch, ShareMustBeInZeroToOne) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (double bad : {0.0, -0.1, 1.0000001, 2.0, nan}) {
    auto w = EventChannelWatch::Create({.share = bad});
    ASSERT_FALSE(w.ok()) << bad;
    EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(w.status().message(), ::testing::HasSubstr("share"));
  }
  EXPECT_TRUE(EventChannelWatch::Create({.share = 1.0}).ok());
  EXPECT_TRUE(EventChannelWatch::Create({.share = 0.01}).ok());
}

TEST(EventChannelWatch, ClearShareMustNotExceedShare) {
  EXPECT_EQ(EventChannelWatch::Create({.share = 0.8, .clear_share = 0.9}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EventChannelWatch::Create({.share = 0.8, .clear_share = 0.0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(EventChannelWatch::Create({.share = 0.8, .clear_share = 0.8}).ok());
}

TEST(EventChannelWatch, FullShareFiresOnlyAtTheLimit) {
  EventChannelWatch w = Watch({.share = 1.0});
  EXPECT_TRUE(w.Observe(Sample({{1, 999}})).empty());
  EXPECT_EQ(w.Observe(Sample({{1, 1000}})).size(), 1u);
}

}  // namespace
}  // namespace hvagent::hv
