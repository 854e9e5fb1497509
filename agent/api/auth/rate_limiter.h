#pragma once
// Per-caller limits (docs/security.md): a token bucket of requests per caller identity, and a
// cap on the streams (Watch calls) one caller may hold open. Over a limit the call is refused
// with RESOURCE_EXHAUSTED (gRPC) / 429 (REST) before it does anything.

#include <chrono>
#include <map>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "common/clock.h"

namespace hvagent::api::auth {

class RateLimiter {
 public:
  struct Options {
    double requests_per_second = 50;  // refill rate per caller
    double burst = 100;               // bucket size per caller
    int max_streams_per_caller = 8;
  };
  RateLimiter(Options options, Clock& clock) : options_(options), clock_(clock) {}

  // Takes one request from `caller`'s bucket; RESOURCE_EXHAUSTED when it is empty.
  absl::Status Allow(const std::string& caller);

  // Holds one stream slot for `caller` while alive; `status()` says whether it was granted.
  class StreamSlot {
   public:
    StreamSlot(RateLimiter* limiter, std::string caller, absl::Status status)
        : limiter_(limiter), caller_(std::move(caller)), status_(std::move(status)) {}
    StreamSlot(StreamSlot&& o) noexcept
        : limiter_(o.limiter_), caller_(std::move(o.caller_)), status_(std::move(o.status_)) {
      o.limiter_ = nullptr;
    }
    StreamSlot(const StreamSlot&) = delete;
    StreamSlot& operator=(const StreamSlot&) = delete;
    ~StreamSlot();
    const absl::Status& status() const { return status_; }

   private:
    RateLimiter* limiter_;
    std::string caller_;
    absl::Status status_;
  };
  StreamSlot OpenStream(const std::string& caller);

  // Callers with a bucket (for tests): full buckets are forgotten once there are kSweepAt.
  size_t tracked_callers() {
    std::lock_guard lock(mu_);
    return buckets_.size();
  }
  static constexpr size_t kSweepAt = 4096;

 private:
  void Sweep(Clock::TimePoint now);  // drops every bucket that has refilled; mu_ held
  struct Bucket {
    double tokens;
    Clock::TimePoint at;
  };
  const Options options_;
  Clock& clock_;
  std::mutex mu_;
  std::map<std::string, Bucket> buckets_;
  std::map<std::string, int> streams_;
};

}  // namespace hvagent::api::auth
