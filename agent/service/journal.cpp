#include "agent/service/journal.h"

#include <chrono>
#include <optional>

#include "absl/strings/str_cat.h"

namespace hvagent::service {
namespace {

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Journals written before the kind was an enum said "create" or "delete".
void UpgradeLegacyKind(internal::JournalBegin& b) {
  if (b.type() != v1::OPERATION_KIND_UNSPECIFIED) return;
  if (b.kind() == "create") b.set_type(v1::OPERATION_KIND_CREATE_DOMAIN);
  if (b.kind() == "delete") b.set_type(v1::OPERATION_KIND_DELETE_DOMAIN);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Journal>> Journal::Open(const std::string& path) {
  std::unique_ptr<Journal> j(new Journal());
  if (path.empty()) return j;
  auto file = RecordFile::Open(path);
  if (!file.ok()) return file.status();
  auto skipped = (*file)->Load(internal::JournalRecord(), [&](const google::protobuf::Message& m) {
    const auto& r = static_cast<const internal::JournalRecord&>(m);
    if (r.op() >= j->next_id_) j->next_id_ = r.op() + 1;
    switch (r.record_case()) {
      case internal::JournalRecord::kBegin: {
        Operation op{r.op(), r.begin(), {}};
        UpgradeLegacyKind(op.begin);
        j->open_[r.op()] = std::move(op);
        break;
      }
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
  Operation begun;
  {
    std::lock_guard lock(mu_);
    begin.set_unix_ms(NowUnixMs());
    internal::JournalRecord r;
    r.set_op(next_id_);
    *r.mutable_begin() = begin;
    if (auto s = Write(r); !s.ok()) return s;
    begun = Operation{next_id_, std::move(begin), {}};
    open_[next_id_] = begun;
    ++next_id_;
  }
  if (observer_ != nullptr) observer_->Begun(begun);
  return begun.id;
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

std::vector<Journal::Ended> Journal::Recent() const {
  std::lock_guard lock(mu_);
  return {recent_.begin(), recent_.end()};
}

absl::Status Journal::End(uint64_t op, v1::OperationState state, const std::string& message) {
  std::optional<Ended> ended;
  if (auto s = EndRecord(op, state, message, ended); !s.ok()) return s;
  if (observer_ != nullptr && ended) observer_->Ended(*ended);
  return absl::OkStatus();
}

absl::Status Journal::EndRecord(uint64_t op, v1::OperationState state, const std::string& message,
                                std::optional<Ended>& ended) {
  std::lock_guard lock(mu_);
  const bool last = open_.size() == 1 && open_.contains(op);
  if (last && file_ != nullptr) {
    // Nothing else in flight: the file is emptied (an atomic replace), which ends this
    // operation as durably as an end record would; what it held is history nobody needs.
    if (auto s = file_->Rewrite({}); !s.ok()) return absl::InternalError(absl::StrCat("operation journal: ", s.message()));
  } else {
    internal::JournalRecord r;
    r.set_op(op);
    r.mutable_end()->set_state(state);
    r.mutable_end()->set_message(message);
    if (auto s = Write(r); !s.ok()) return s;
  }
  if (auto it = open_.find(op); it != open_.end()) {
    recent_.push_front(Ended{std::move(it->second), state, message, NowUnixMs()});
    ended = recent_.front();
    if (recent_.size() > kHistory) recent_.pop_back();
    open_.erase(it);
  }
  return absl::OkStatus();
}

}  // namespace hvagent::service
