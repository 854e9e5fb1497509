#pragma once
// FakeClock: time moves only when code sleeps, so deadline logic runs instantly in tests.
#include "common/clock.h"

namespace hvagent::testing {

class FakeClock final : public Clock {
 public:
  TimePoint Now() const override { return now_; }
  void SleepFor(Duration d) override {
    now_ += d;
    ++sleeps_;
  }
  int sleeps() const { return sleeps_; }

 private:
  TimePoint now_{};
  int sleeps_ = 0;
};

}  // namespace hvagent::testing
