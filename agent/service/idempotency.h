#pragma once
// IdempotencyStore: controllers retry. A mutating request may carry a client-chosen key
// (gRPC metadata `idempotency-key`, REST header `Idempotency-Key`); the first request with a
// key runs, and its outcome is kept for a bounded window (persisted when a state directory is
// configured), so a retry with that key gets the first outcome back and changes nothing.
//
// - The same key with a different request (other operation or other body) is refused with
//   FAILED_PRECONDITION, naming the key: a key is a promise about one request.
// - A second request with a key whose first request is still running waits for it and gets
//   its outcome (no second execution, no "in progress" error to retry on).
// - Outcomes that say "try again" (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED,
//   INTERNAL, UNKNOWN, CANCELLED) are not kept: the retry runs again, as the client intends.
// - Keys are 1-128 characters of [A-Za-z0-9._:-] (a UUID fits); others are INVALID_ARGUMENT.

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "agent/service/record_file.h"
#include "hvagent/internal/state.pb.h"

namespace hvagent::service {

class IdempotencyStore {
 public:
  struct Options {
    std::chrono::seconds window{24 * 3600};
    size_t max_entries = 10000;
  };
  // What a request produced: its status and its serialized answer (opaque to the store).
  struct Outcome {
    absl::Status status;
    std::string response;
    bool replayed = false;  // true when this is a stored outcome, not a fresh execution
  };

  // `path` empty: in memory only. Otherwise stored outcomes younger than the window are read
  // back (and the file is compacted to them).
  static absl::StatusOr<std::unique_ptr<IdempotencyStore>> Open(const std::string& path, Options options);

  static absl::Status ValidateKey(const std::string& key);

  // Runs `body` unless `key` already has an outcome for the same operation and fingerprint.
  Outcome Run(const std::string& key, const std::string& operation, const std::string& fingerprint,
              const std::function<Outcome()>& body);

  size_t size() const;

 private:
  explicit IdempotencyStore(Options options) : options_(options) {}
  bool Expired(const internal::IdempotencyRecord& r, int64_t now_ms) const;
  void Remember(internal::IdempotencyRecord r);  // with mu_ held

  const Options options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::unique_ptr<RecordFile> file_;
  std::map<std::string, internal::IdempotencyRecord> done_;
  std::deque<std::string> order_;                   // keys of done_, oldest first
  std::map<std::string, std::string> running_;      // key -> operation + fingerprint in flight
  size_t appended_since_compaction_ = 0;
};

}  // namespace hvagent::service
