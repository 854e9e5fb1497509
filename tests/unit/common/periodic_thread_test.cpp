// PeriodicThread: ticks until destroyed, and destruction does not wait out the interval.
#include "common/periodic_thread.h"

#include <atomic>

#include <gtest/gtest.h>

namespace hvagent {
namespace {

TEST(PeriodicThreadTest, TicksRepeatedlyUntilDestroyed) {
  std::atomic<int> ticks{0};
  {
    PeriodicThread t(std::chrono::milliseconds(5), [&] { ticks++; });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (ticks < 3 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  }
  const int at_stop = ticks.load();
  EXPECT_GE(at_stop, 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  EXPECT_EQ(ticks.load(), at_stop);  // nothing runs after destruction
}

TEST(PeriodicThreadTest, DestructionWakesTheThreadAtOnce) {
  std::atomic<int> ticks{0};
  const auto start = std::chrono::steady_clock::now();
  { PeriodicThread t(std::chrono::hours(1), [&] { ticks++; }); }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::minutes(1));  // not the hour
  EXPECT_EQ(ticks.load(), 0);
}

TEST(PeriodicThreadTest, ZeroIntervalRunsNothing) {
  std::atomic<int> ticks{0};
  { PeriodicThread t(std::chrono::milliseconds(0), [&] { ticks++; }); }
  EXPECT_EQ(ticks.load(), 0);
}

}  // namespace
}  // namespace hvagent
