#pragma once
// RecordFile: an append-only file of protobuf messages, one JSON object per line, each line
// written with one write(2) and made durable with fdatasync(2) before Append returns. The
// journal and the idempotency store keep their state in such files (docs/reliability.md).
//
// Why not SQLite: both stores have a single writer (this process), append small records, and
// read the whole file once at start; neither needs queries or transactions over several
// records. An fsynced append-only log gives the same durability with no dependency and a file
// an operator can read with `cat`. A line torn by a crash in the middle of a write can only be
// the last one: Load skips it (and any other line that does not parse) with a warning.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/message.h>

#include "absl/status/statusor.h"

namespace hvagent::service {

class RecordFile {
 public:
  // Opens (creating, mode 0600) the file at `path`; its directory must exist.
  static absl::StatusOr<std::unique_ptr<RecordFile>> Open(const std::string& path);
  ~RecordFile();
  RecordFile(const RecordFile&) = delete;
  RecordFile& operator=(const RecordFile&) = delete;

  // Calls `each` with every line of the file that parses into `prototype`'s type (a fresh
  // copy per line). Returns how many lines were skipped as unreadable.
  absl::StatusOr<size_t> Load(const google::protobuf::Message& prototype,
                              const std::function<void(const google::protobuf::Message&)>& each) const;
  // Appends one record durably.
  absl::Status Append(const google::protobuf::Message& record);
  // Replaces the whole file with `records` (written to a temporary file, synced, renamed over
  // the old one, directory synced): a crash leaves either the old file or the new one.
  absl::Status Rewrite(const std::vector<const google::protobuf::Message*>& records);
  const std::string& path() const { return path_; }

 private:
  RecordFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  static absl::StatusOr<std::string> Line(const google::protobuf::Message& record);

  std::string path_;
  int fd_;
};

}  // namespace hvagent::service
