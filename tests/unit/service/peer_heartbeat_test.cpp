// When the source of a live migration gives the destination agent up (PeerHeartbeat): after N
// failed heartbeats in a row, or at once when the destination no longer holds the transfer.
// Time is a FakeClock's: nothing sleeps.
#include "agent/service/peer_heartbeat.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/fakes/fake_clock.h"

namespace hvagent::service {
namespace {

using ::testing::HasSubstr;
using std::chrono::milliseconds;

const absl::Status kTimeout = absl::DeadlineExceededError("Deadline Exceeded");

TEST(PeerHeartbeatTest, LostOnlyAfterTheConfiguredFailuresInARow) {
  testing::FakeClock clock;
  PeerHeartbeat h(milliseconds(1000), 3, clock.Now());
  EXPECT_FALSE(h.Due(clock.Now()));  // the first call one interval after the copy began
  for (const absl::Status& answer : {kTimeout, kTimeout, absl::OkStatus(), kTimeout, kTimeout}) {
    clock.SleepFor(milliseconds(1000));
    ASSERT_TRUE(h.Due(clock.Now()));
    EXPECT_FALSE(h.Record(clock.Now(), answer));  // an answer in between starts the count again
  }
  clock.SleepFor(milliseconds(1000));
  EXPECT_TRUE(h.Record(clock.Now(), absl::UnavailableError("Socket closed")));
  EXPECT_TRUE(h.lost());
  EXPECT_THAT(h.Reason(), HasSubstr("is unreachable (3 heartbeats failed in a row (last: UNAVAILABLE: Socket closed))"));
  clock.SleepFor(milliseconds(5000));
  EXPECT_FALSE(h.Due(clock.Now()));  // lost is final: no more calls
  EXPECT_TRUE(h.Record(clock.Now(), absl::OkStatus()));
}

TEST(PeerHeartbeatTest, ADestinationThatNoLongerHoldsTheTransferIsLostAtOnce) {
  testing::FakeClock clock;
  PeerHeartbeat h(milliseconds(500), 3, clock.Now());
  clock.SleepFor(milliseconds(500));
  EXPECT_TRUE(h.Record(clock.Now(), absl::NotFoundError("transfer_id: no open transfer 'x'")));
  EXPECT_THAT(h.Reason(), ::testing::StartsWith("no longer holds the transfer (NOT_FOUND: transfer_id: no open transfer"));
}

TEST(PeerHeartbeatTest, TheNextCallIsDueOneIntervalAfterTheLastAnswer) {
  testing::FakeClock clock;
  PeerHeartbeat h(milliseconds(1000), 1, clock.Now());
  clock.SleepFor(milliseconds(1700));  // a slow answer: the interval counts from when it came
  EXPECT_FALSE(h.Record(clock.Now(), absl::OkStatus()));
  clock.SleepFor(milliseconds(999));
  EXPECT_FALSE(h.Due(clock.Now()));
  clock.SleepFor(milliseconds(1));
  EXPECT_TRUE(h.Due(clock.Now()));
  EXPECT_TRUE(h.Record(clock.Now(), kTimeout));  // misses = 1: one failure is enough
  EXPECT_THAT(h.Reason(), HasSubstr("1 heartbeat failed in a row"));
}

}  // namespace
}  // namespace hvagent::service
