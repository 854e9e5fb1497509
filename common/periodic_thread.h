#pragma once
// PeriodicThread: runs `tick` on its own thread every `interval` until destroyed. Destruction
// wakes the thread at once (no waiting out the interval) and joins it, so whatever `tick` uses
// must outlive the PeriodicThread. An interval of zero runs nothing (the thread is not started).

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

namespace hvagent {

class PeriodicThread {
 public:
  PeriodicThread(std::chrono::milliseconds interval, std::function<void()> tick);
  ~PeriodicThread();
  PeriodicThread(const PeriodicThread&) = delete;
  PeriodicThread& operator=(const PeriodicThread&) = delete;

 private:
  void Loop();

  const std::chrono::milliseconds interval_;
  const std::function<void()> tick_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace hvagent
