#include "common/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>

namespace hvagent {
namespace {

using namespace std::chrono_literals;

// Tasks that block until the test opens the gate.
class Gate {
 public:
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    ++waiting_;
    changed_.notify_all();
    changed_.wait(lock, [this] { return open_; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    changed_.notify_all();
  }
  // Waits (up to 10 s) until n tasks are inside Wait.
  bool AwaitWaiting(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, 10s, [&] { return waiting_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable changed_;
  int waiting_ = 0;
  bool open_ = false;
};

TEST(WorkerPoolTest, StartsNoThreadUntilATaskArrives) {
  WorkerPool pool(8);
  EXPECT_EQ(pool.threads(), 0u);
}

TEST(WorkerPoolTest, ReusesAnIdleThreadForTasksThatDoNotOverlap) {
  WorkerPool pool(8);
  for (int i = 0; i < 20; ++i) {
    std::promise<void> done;
    pool.Post([&done] { done.set_value(); });
    done.get_future().wait();
    // The thread that ran it is waiting again before the next post (else a second one is due).
    for (int spin = 0; spin < 10000 && pool.idle_threads() != 1; ++spin) std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(pool.threads(), 1u);
}

TEST(WorkerPoolTest, BlockedTasksGetThreadsUpToTheCapAndTheRestQueue) {
  Gate gate;
  std::atomic<int> ran{0};
  {
    WorkerPool pool(3);
    for (int i = 0; i < 5; ++i) {
      pool.Post([&] {
        gate.Wait();
        ++ran;
      });
    }
    ASSERT_TRUE(gate.AwaitWaiting(3));
    EXPECT_EQ(pool.threads(), 3u);
    EXPECT_EQ(ran.load(), 0);
    gate.Open();
  }  // destruction runs the two queued tasks too
  EXPECT_EQ(ran.load(), 5);
}

TEST(WorkerPoolTest, DestructionRunsEveryPostedTask) {
  std::atomic<int> ran{0};
  {
    WorkerPool pool(2);
    for (int i = 0; i < 100; ++i) pool.Post([&ran] { ++ran; });
  }
  EXPECT_EQ(ran.load(), 100);
}

TEST(WorkerPoolTest, AZeroCapStillRunsTasks) {
  std::promise<int> got;
  WorkerPool pool(0);
  pool.Post([&got] { got.set_value(7); });
  EXPECT_EQ(got.get_future().get(), 7);
}

}  // namespace
}  // namespace hvagent
