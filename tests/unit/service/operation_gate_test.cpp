// OperationGate: a bound on changing operations in flight, refused at once past it.
#include "agent/service/operation_gate.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <thread>

namespace hvagent::service {
namespace {

using ::testing::HasSubstr;

TEST(OperationGateTest, RefusesPastTheBoundAndFreesOnRelease) {
  OperationGate gate(2);
  auto a = gate.Enter();
  auto b = gate.Enter();
  ASSERT_TRUE(a.ok() && b.ok());
  auto c = gate.Enter();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("limits.max_operations_in_flight"));
  EXPECT_EQ(gate.in_flight(), 2);  // the refused one does not count
  { auto moved = std::move(*a); }  // released
  EXPECT_EQ(gate.in_flight(), 1);
  EXPECT_TRUE(gate.Enter().ok());
  EXPECT_EQ(gate.in_flight(), 1);  // that slot was a temporary, released at once
}

TEST(OperationGateTest, AfterCloseNothingIsAdmittedAndWaitIdleWaitsForTheAdmitted) {
  OperationGate gate(8);
  std::optional<OperationGate::Slot> running;
  running.emplace(*gate.Enter());
  gate.Close();
  auto refused = gate.Enter();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("shutting down"));
  EXPECT_EQ(gate.in_flight(), 1);
  EXPECT_FALSE(gate.WaitIdle(std::chrono::milliseconds(50)));  // the admitted one still runs
  std::thread finisher([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    running.reset();
  });
  EXPECT_TRUE(gate.WaitIdle(std::chrono::seconds(10)));
  EXPECT_EQ(gate.in_flight(), 0);
  finisher.join();
}

}  // namespace
}  // namespace hvagent::service
