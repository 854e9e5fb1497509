#include "common/worker_pool.h"

#include <cstdlib>

namespace hvagent {

WorkerPool::WorkerPool(std::size_t max_threads) : max_threads_(max_threads == 0 ? 1 : max_threads) {}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void WorkerPool::Post(std::function<void()> task) {
  std::unique_lock<std::mutex> lock(mu_);
  if (stopping_) std::abort();
  queue_.push_back(std::move(task));
  // A waiting thread takes it; otherwise one more thread, while the cap allows. Idle threads are
  // counted rather than guessed from the queue: two posts in a row must not both count on the
  // same sleeper.
  if (idle_ >= queue_.size()) {
    lock.unlock();
    cv_.notify_one();
    return;
  }
  if (threads_.size() < max_threads_) threads_.emplace_back([this] { Loop(); });
}

std::size_t WorkerPool::threads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return threads_.size();
}

std::size_t WorkerPool::idle_threads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return idle_;
}

void WorkerPool::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    ++idle_;
    cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    --idle_;
    if (queue_.empty()) return;  // stopping, and nothing left to run
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    task();
    lock.lock();
  }
}

}  // namespace hvagent
