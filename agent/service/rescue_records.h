#pragma once
// RescueRecords: which domains are in rescue, and the definition each one had before, so that
// UnrescueDomain (or a delete) can put it back after any number of agent restarts. Written by
// DomainService only, under its define lock. One line per rescued domain in
// [reliability] state_dir/rescues, the whole file rewritten atomically on every change (it holds
// a handful of records); in memory only when no state directory is configured.

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "agent/service/record_file.h"
#include "hvagent/internal/state.pb.h"

namespace hvagent::service {

class RescueRecords {
 public:
  // `path` empty: in memory.
  static absl::StatusOr<std::unique_ptr<RescueRecords>> Open(const std::string& path);

  std::optional<internal::RescueRecord> Find(const std::string& domain) const;
  // Adds or replaces the record of record.domain(), durably before it returns.
  absl::Status Put(const internal::RescueRecord& record);
  // Removes the record of `domain` (none: nothing to do), durably.
  absl::Status Erase(const std::string& domain);

 private:
  RescueRecords() = default;
  absl::Status Save(const std::map<std::string, internal::RescueRecord>& records);

  mutable std::mutex mu_;
  std::unique_ptr<RecordFile> file_;
  std::map<std::string, internal::RescueRecord> records_;
};

}  // namespace hvagent::service
