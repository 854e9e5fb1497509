#include "agent/service/peer_heartbeat.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace hvagent::service {

PeerHeartbeat::PeerHeartbeat(std::chrono::milliseconds every, int misses, Clock::TimePoint start)
    : every_(every), misses_(std::max(misses, 1)), next_(start + every) {}

bool PeerHeartbeat::Record(Clock::TimePoint now, const absl::Status& answer) {
  if (lost_) return true;
  next_ = now + every_;
  if (answer.ok()) {
    failed_ = 0;
    return false;
  }
  last_ = answer;
  ++failed_;
  lost_ = absl::IsNotFound(answer) || failed_ >= misses_;
  return lost_;
}

std::string PeerHeartbeat::Reason() const {
  const std::string last = absl::StrCat(absl::StatusCodeToString(last_.code()), ": ", last_.message());
  if (absl::IsNotFound(last_)) return absl::StrCat("no longer holds the transfer (", last, ")");
  return absl::StrCat("is unreachable (", failed_, " heartbeat", failed_ == 1 ? "" : "s", " failed in a row (last: ",
                      last, "))");
}

}  // namespace hvagent::service
