#pragma once
// Journal: multi-step operations (create a domain with volumes, delete one) are recorded
// before each step, so that after a crash the agent can tell what was under way and finish or
// undo it (DomainService::Recover). In memory only when no state directory is configured.
//
//   op 7 begin {kind: create, domain: web1, uuid: ...}
//   op 7 step claim-volume vg0/web1-root (created)
//   op 7 step define
//   op 7 step start
//   op 7 end SUCCEEDED
//
// A step is journalled *before* it is attempted, so recovery treats every journalled step as
// possibly done and checks the real state (libvirt, the pools) before acting on it.

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/service/record_file.h"
#include "hvagent/internal/state.pb.h"

namespace hvagent::service {

class JournalObserver;

class Journal {
 public:
  struct Operation {
    uint64_t id = 0;
    internal::JournalBegin begin;
    std::vector<internal::JournalStep> steps;
  };
  // An operation that has ended, as ListOperations shows it.
  struct Ended {
    Operation op;
    v1::OperationState state = v1::OPERATION_STATE_UNSPECIFIED;
    std::string message;
    int64_t end_unix_ms = 0;
  };
  // How many ended operations Recent() keeps (in memory only).
  static constexpr size_t kHistory = 100;

  // `path` empty: in memory (nothing survives a restart). Otherwise the file is read: its
  // unfinished operations are what a crash left (Unfinished()).
  static absl::StatusOr<std::unique_ptr<Journal>> Open(const std::string& path);

  // Operations begun and never ended, oldest first.
  std::vector<Operation> Unfinished() const;
  // Ended operations, newest first (at most kHistory; none survive a restart).
  std::vector<Ended> Recent() const;
  // Stamps `begin.unix_ms` itself (callers need not).
  absl::StatusOr<uint64_t> Begin(internal::JournalBegin begin);
  absl::Status Step(uint64_t op, internal::JournalStep step);
  // Ends `op`: an end record, or, when it was the last one open, the file emptied instead
  // (the log never grows beyond the operations in flight).
  // `state` is how it ended (not RUNNING); `message` says why it failed or what recovery did.
  absl::Status End(uint64_t op, v1::OperationState state, const std::string& message = "");
  // Told of every Begin and End from now on (OperationEvents), after the record is written,
  // outside the journal's lock, on the caller's thread. Null: nobody. Set before serving.
  void SetObserver(JournalObserver* observer) { observer_ = observer; }
  // Lines skipped as unreadable when the file was opened (a torn last write).
  size_t skipped_on_open() const { return skipped_; }
  bool persistent() const { return file_ != nullptr; }

 private:
  Journal() = default;
  absl::Status Write(const internal::JournalRecord& r);
  // End's record and bookkeeping (takes mu_); `ended` set when `op` was open.
  absl::Status EndRecord(uint64_t op, v1::OperationState state, const std::string& message,
                         std::optional<Ended>& ended);

  mutable std::mutex mu_;
  std::unique_ptr<RecordFile> file_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, Operation> open_;
  std::deque<Ended> recent_;  // newest first
  size_t skipped_ = 0;
  JournalObserver* observer_ = nullptr;
};

class JournalObserver {
 public:
  virtual ~JournalObserver() = default;
  virtual void Begun(const Journal::Operation& op) = 0;
  virtual void Ended(const Journal::Ended& ended) = 0;
};

}  // namespace hvagent::service
