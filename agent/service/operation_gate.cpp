#include "agent/service/operation_gate.h"

#include "absl/strings/str_cat.h"

namespace hvagent::service {

absl::StatusOr<OperationGate::Slot> OperationGate::Enter() {
  int now = in_flight_.fetch_add(1) + 1;
  if (now > max_) {
    in_flight_.fetch_sub(1);
    return absl::UnavailableError(absl::StrCat("agent busy: ", max_, " changing operations already in flight ",
                                               "(limits.max_operations_in_flight); retry in ",
                                               retry_after_.count(), " s"));
  }
  return Slot(this);
}

}  // namespace hvagent::service
