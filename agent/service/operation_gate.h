#pragma once
// OperationGate: a bound on the changing operations (create, delete, start, volume create, ...)
// the agent runs at once. Past it a request is refused at once with UNAVAILABLE (REST 503 and
// Retry-After), which every controller retries, instead of queueing without bound behind slow
// tools: a host whose lvm2 hangs must not collect an unbounded pile of waiting requests and
// threads. Reads are not counted (they are cheap and served from caches or one libvirt call).

#include <atomic>
#include <chrono>

#include "absl/status/statusor.h"

namespace hvagent::service {

class OperationGate {
 public:
  explicit OperationGate(int max_in_flight, std::chrono::seconds retry_after = std::chrono::seconds(1))
      : max_(max_in_flight), retry_after_(retry_after) {}

  // Held for the length of one operation.
  class Slot {
   public:
    Slot(Slot&& o) noexcept : gate_(o.gate_) { o.gate_ = nullptr; }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot() {
      if (gate_ != nullptr) gate_->in_flight_.fetch_sub(1);
    }

   private:
    friend class OperationGate;
    explicit Slot(OperationGate* gate) : gate_(gate) {}
    OperationGate* gate_;
  };

  // A slot, or UNAVAILABLE saying how many operations run (or that the agent is shutting
  // down) and when to retry.
  absl::StatusOr<Slot> Enter();
  std::chrono::seconds retry_after() const { return retry_after_; }
  int in_flight() const { return in_flight_.load(); }

  // Shutdown (SIGTERM): after Close() every Enter() is refused; WaitIdle() then answers true
  // once the operations already admitted have all ended, false if `timeout` passed first.
  void Close() { closed_.store(true); }
  bool WaitIdle(std::chrono::milliseconds timeout) const;

 private:
  const int max_;
  const std::chrono::seconds retry_after_;
  std::atomic<int> in_flight_{0};
  std::atomic<bool> closed_{false};
};

}  // namespace hvagent::service
