#pragma once
// GuestQuiescer: holds a running guest still while its disk is snapshotted, and lets it go
// again whatever happens. With a QEMU guest agent channel (Hypervisor::HasGuestAgent) the
// guest's filesystems are frozen (consistent on disk, the guest keeps running); without one, or
// when the freeze fails (no agent inside, Xen's libxl without agent support), it is paused.
// Each hold is journalled (a step of the caller's operation) before it is done, so that a
// crash never leaves a paused or frozen guest: Recover resumes (thaws) what an unfinished
// operation held. Release is also the destructor's, so an early return cannot skip it.
// Used by StorageService::CreateSnapshot; one instance per hold, one thread.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "agent/service/journal.h"
#include "hypervisor/hypervisor.h"

namespace hvagent::service {

enum class QuiesceMode { kNone, kFreeze, kPause };

class GuestQuiescer {
 public:
  // `journal` may be null (nothing survives a crash then); `op` is the caller's operation.
  GuestQuiescer(hv::Hypervisor& hv, Journal* journal, uint64_t op, std::string domain)
      : hv_(hv), journal_(journal), op_(op), domain_(std::move(domain)) {}
  ~GuestQuiescer() { (void)Release(); }
  GuestQuiescer(const GuestQuiescer&) = delete;
  GuestQuiescer& operator=(const GuestQuiescer&) = delete;

  // Freezes, or pauses. Fails only when neither could be done (nothing is held then).
  absl::Status Hold();
  // Thaws or resumes; a second call does nothing. The time held is measured up to here.
  absl::Status Release();

  QuiesceMode mode() const { return mode_; }
  uint64_t held_ms() const { return held_ms_; }
  // Why the mode is a pause when a guest agent is configured ("" otherwise).
  const std::string& note() const { return note_; }

  // For recovery: what the journalled steps of an unfinished operation say was held is let go
  // (a guest paused by it and still paused is resumed; a freeze is thawed). Returns what it did.
  static std::string Recover(hv::Hypervisor& hv, const Journal::Operation& op);

 private:
  void Step(const char* name);

  hv::Hypervisor& hv_;
  Journal* journal_;
  const uint64_t op_;
  const std::string domain_;
  QuiesceMode mode_ = QuiesceMode::kNone;
  bool held_ = false;
  std::chrono::steady_clock::time_point since_;
  uint64_t held_ms_ = 0;
  std::string note_;
};

}  // namespace hvagent::service
