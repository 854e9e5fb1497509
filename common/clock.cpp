#include "common/clock.h"

#include <thread>

namespace hvagent {

Clock::TimePoint SystemClock::Now() const { return std::chrono::steady_clock::now(); }
void SystemClock::SleepFor(Duration d) { std::this_thread::sleep_for(d); }

}  // namespace hvagent
