#pragma once
// Backoff: exponential delays between reconnect attempts, doubling from `initial` up to `max`.

#include <algorithm>
#include <chrono>

namespace hvagent::hv {

class Backoff {
 public:
  using ms = std::chrono::milliseconds;
  Backoff(ms initial, ms max) : initial_(initial), max_(max), next_(initial) {}
  ms Next() {
    ms current = next_;
    next_ = std::min(max_, next_ * 2);
    return current;
  }
  void Reset() { next_ = initial_; }

 private:
  ms initial_, max_, next_;
};

}  // namespace hvagent::hv
