#include "agent/service/operation_gate.h"

#include "absl/strings/str_cat.h"

#include <thread>

namespace hvagent::service {

absl::StatusOr<OperationGate::Slot> OperationGate::Enter() {
  int now = in_flight_.fetch_add(1) + 1;
  // Checked after counting in, so WaitIdle() cannot miss an operation admitted as Close() ran.
  if (closed_.load()) {
    in_flight_.fetch_sub(1);
    return absl::UnavailableError(
        absl::StrCat("the agent is shutting down; retry in ", retry_after_.count(), " s (against its successor)"));
  }
  if (now > max_) {
    in_flight_.fetch_sub(1);
    return absl::UnavailableError(absl::StrCat("agent busy: ", max_, " changing operations already in flight ",
                                               "(limits.max_operations_in_flight); retry in ",
                                               retry_after_.count(), " s"));
  }
  return Slot(this);
}

bool OperationGate::WaitIdle(std::chrono::milliseconds timeout) const {
  // Polled: only shutdown waits, and a slot's release stays one atomic decrement.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (in_flight_.load() > 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

}  // namespace hvagent::service
