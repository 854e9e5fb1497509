#pragma once
// WorkerPool: runs posted tasks on threads of its own, first posted first run. A thread is
// started only when a task arrives and every thread is busy, up to `max_threads`; started
// threads stay (an idle one sleeps on a condition variable and costs no CPU). So an agent that
// serves nothing holds no worker threads, and a burst of slow calls gets up to `max_threads` of
// them running at once, the rest queued.
//
// Destruction runs every task already posted, then joins the threads: whatever a task uses must
// outlive the pool. Post after destruction has begun is a programming error (aborts).

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace hvagent {

class WorkerPool {
 public:
  explicit WorkerPool(std::size_t max_threads);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  void Post(std::function<void()> task);

  // Threads started so far, and those of them waiting for a task (for tests and reports).
  std::size_t threads() const;
  std::size_t idle_threads() const;

 private:
  void Loop();

  const std::size_t max_threads_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::size_t idle_ = 0;  // threads waiting for a task
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace hvagent
