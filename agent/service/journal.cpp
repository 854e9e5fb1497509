#include "agent/service/journal.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace hvagent::service {

absl::StatusOr<std::unique_ptr<Journal>> Journal::Open(const std::string& path) {
  std::unique_ptr<Journal> j(new Journal());
  if (path.empty()) return j;
  auto file = RecordFile::Open(path);
  if (!file.ok()) return file.status();
  auto skipped = (*file)->Load(internal::JournalRecord(), [&](const google::protobuf::Message& m) {
    const auto& r = static_cast<const internal::JournalRecord&>(m);
    if (r.op() >= j->next_id_) j->next_id_ = r.op() + 1;
    switch (r.record_case()) {
      case internal::JournalRecord::kBegin: j->open_[r.op()] = Operation{r.op(), r.begin(), {}}; break;
      case internal::JournalRecord::kStep:
        if (auto it = j->open_.find(r.op()); it != j->open_.end()) it->second.steps.push_back(r.step());
        break;
      case internal::JournalRecord::kEnd: j->open_.erase(r.op()); break;
      default: break;
    }
  });
  if (!skipped.ok()) return skipped.status();
  j->skipped_ = *skipped;
  j->file_ = std::move(*file);
  return j;
}

std::vector<Journal::Operation> Journal::Unfinished() const {
  std::lock_guard lock(mu_);
  std::vector<Operation> out;
  for (const auto& [id, op] : open_) out.push_back(op);
  return out;
}

absl::Status Journal::Write(const internal::JournalRecord& r) {
  if (file_ == nullptr) return absl::OkStatus();
  auto s = file_->Append(r);
  if (!s.ok()) return absl::InternalError(absl::StrCat("operation journal: ", s.message()));
  return s;
}

absl::StatusOr<uint64_t> Journal::Begin(internal::JournalBegin begin) {
  std::lock_guard lock(mu_);
  begin.set_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count());
  internal::JournalRecord r;
  r.set_op(next_id_);
  *r.mutable_begin() = begin;
  if (auto s = Write(r); !s.ok()) return s;
  open_[next_id_] = Operation{next_id_, std::move(begin), {}};
  return next_id_++;
}

absl::Status Journal::Step(uint64_t op, internal::JournalStep step) {
  std::lock_guard lock(mu_);
  internal::JournalRecord r;
  r.set_op(op);
  *r.mutable_step() = step;
  if (auto s = Write(r); !s.ok()) return s;
  if (auto it = open_.find(op); it != open_.end()) it->second.steps.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status Journal::End(uint64_t op, const std::string& outcome) {
  std::lock_guard lock(mu_);
  const bool last = open_.size() == 1 && open_.contains(op);
  if (last && file_ != nullptr) {
    // Nothing else in flight: the file is emptied (an atomic replace), which ends this
    // operation as durably as an end record would; what it held is history nobody needs.
    if (auto s = file_->Rewrite({}); !s.ok()) return absl::InternalError(absl::StrCat("operation journal: ", s.message()));
  } else {
    internal::JournalRecord r;
    r.set_op(op);
    r.mutable_end()->set_outcome(outcome);
    if (auto s = Write(r); !s.ok()) return s;
  }
  open_.erase(op);
  return absl::OkStatus();
}

}  // namespace hvagent::service
