#include "agent/api/auth/rate_limiter.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace hvagent::api::auth {

absl::Status RateLimiter::Allow(const std::string& caller) {
  std::lock_guard lock(mu_);
  const auto now = clock_.Now();
  if (buckets_.size() >= kSweepAt) Sweep(now);
  auto [it, fresh] = buckets_.try_emplace(caller, Bucket{options_.burst, now});
  Bucket& b = it->second;
  if (!fresh) {
    double elapsed = std::chrono::duration<double>(now - b.at).count();
    b.tokens = std::min(options_.burst, b.tokens + elapsed * options_.requests_per_second);
    b.at = now;
  }
  if (b.tokens < 1) {
    return absl::ResourceExhaustedError(absl::StrCat("rate limit: '", caller, "' may make ",
                                                     options_.requests_per_second, " requests per second (burst ",
                                                     options_.burst, "); retry later"));
  }
  b.tokens -= 1;
  return absl::OkStatus();
}

void RateLimiter::Sweep(Clock::TimePoint now) {
  // A bucket that has refilled says nothing a fresh one would not: forgetting it changes no
  // answer, and keeps callers that come once (peer addresses of the console listener) from
  // growing the map without bound.
  for (auto it = buckets_.begin(); it != buckets_.end();) {
    double elapsed = std::chrono::duration<double>(now - it->second.at).count();
    if (it->second.tokens + elapsed * options_.requests_per_second >= options_.burst) {
      it = buckets_.erase(it);
    } else {
      ++it;
    }
  }
}

RateLimiter::StreamSlot RateLimiter::OpenStream(const std::string& caller) {
  std::lock_guard lock(mu_);
  int& open = streams_[caller];
  if (open >= options_.max_streams_per_caller) {
    return StreamSlot(nullptr, caller,
                      absl::ResourceExhaustedError(absl::StrCat("stream limit: '", caller, "' already has ", open,
                                                                " streams open (at most ",
                                                                options_.max_streams_per_caller, ")")));
  }
  ++open;
  return StreamSlot(this, caller, absl::OkStatus());
}

RateLimiter::StreamSlot::~StreamSlot() {
  if (limiter_ == nullptr) return;
  std::lock_guard lock(limiter_->mu_);
  if (--limiter_->streams_[caller_] <= 0) limiter_->streams_.erase(caller_);
}

}  // namespace hvagent::api::auth
