#pragma once
// Clock: the only way service code reads time or waits, so unit tests can run deadlines
// (shutdown timeouts, reconnect backoff) without sleeping. SystemClock is the real one.

#include <chrono>

namespace hvagent {

class Clock {
 public:
  using Duration = std::chrono::steady_clock::duration;
  using TimePoint = std::chrono::steady_clock::time_point;
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
  virtual void SleepFor(Duration d) = 0;
};

class SystemClock final : public Clock {
 public:
  TimePoint Now() const override;
  void SleepFor(Duration d) override;
};

}  // namespace hvagent
