#include "common/periodic_thread.h"

namespace hvagent {

PeriodicThread::PeriodicThread(std::chrono::milliseconds interval, std::function<void()> tick)
    : interval_(interval), tick_(std::move(tick)) {
  if (interval_.count() > 0) thread_ = std::thread([this] { Loop(); });
}

PeriodicThread::~PeriodicThread() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void PeriodicThread::Loop() {
  std::unique_lock lock(mu_);
  while (!cv_.wait_for(lock, interval_, [this] { return stop_; })) {
    lock.unlock();
    tick_();
    lock.lock();
  }
}

}  // namespace hvagent
