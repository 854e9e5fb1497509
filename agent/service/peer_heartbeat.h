#pragma once
// PeerHeartbeat: when the source of a live migration gives the destination agent up. Its
// libvirtd copies peer to peer with the destination's libvirtd, without either agent, so the
// source calls MigrationPeer::Keep every `every` and counts the answers: the destination is
// lost after `misses` failures in a row, or at once on NotFound (it holds the transfer no more:
// aborted, expired, or rolled back by its restart, which deleted the volumes being copied into).
// Pure policy over the times it is given: MigrationService::RunLive acts on it (aborting the
// hypervisor's job); it never calls anything itself.

#include <chrono>
#include <string>

#include "absl/status/status.h"
#include "common/clock.h"

namespace hvagent::service {

class PeerHeartbeat {
 public:
  // `misses` at least 1; `start`: when the copy began (the first call is due one interval on).
  PeerHeartbeat(std::chrono::milliseconds every, int misses, Clock::TimePoint start);
  // Whether a call is due at `now`.
  bool Due(Clock::TimePoint now) const { return !lost_ && now >= next_; }
  // The answer of the call made at `now`; true once the destination counts as lost (and from
  // then on).
  bool Record(Clock::TimePoint now, const absl::Status& answer);
  bool lost() const { return lost_; }
  // Why it is lost, to follow "the destination agent at HOST:PORT ": "is unreachable (3
  // heartbeats failed in a row (last: UNAVAILABLE: ...))" or "no longer holds the transfer
  // (NOT_FOUND: ...)".
  std::string Reason() const;

 private:
  const std::chrono::milliseconds every_;
  const int misses_;
  Clock::TimePoint next_;
  int failed_ = 0;  // in a row
  bool lost_ = false;
  absl::Status last_;
};

}  // namespace hvagent::service
