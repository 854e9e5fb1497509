#include "agent/service/rescue_records.h"

#include <vector>

#include "absl/strings/str_cat.h"

namespace hvagent::service {

absl::StatusOr<std::unique_ptr<RescueRecords>> RescueRecords::Open(const std::string& path) {
  std::unique_ptr<RescueRecords> r(new RescueRecords());
  if (path.empty()) return r;
  auto file = RecordFile::Open(path);
  if (!file.ok()) return file.status();
  auto skipped = (*file)->Load(internal::RescueRecord(), [&](const google::protobuf::Message& m) {
    const auto& rec = static_cast<const internal::RescueRecord&>(m);
    if (!rec.domain().empty()) r->records_[rec.domain()] = rec;
  });
  if (!skipped.ok()) return skipped.status();
  r->file_ = std::move(*file);
  return r;
}

std::optional<internal::RescueRecord> RescueRecords::Find(const std::string& domain) const {
  std::lock_guard lock(mu_);
  auto it = records_.find(domain);
  if (it == records_.end()) return std::nullopt;
  return it->second;
}

absl::Status RescueRecords::Save(const std::map<std::string, internal::RescueRecord>& records) {
  if (file_ == nullptr) return absl::OkStatus();
  std::vector<const google::protobuf::Message*> all;
  for (const auto& [name, rec] : records) all.push_back(&rec);
  if (auto s = file_->Rewrite(all); !s.ok()) return absl::InternalError(absl::StrCat("rescue records: ", s.message()));
  return absl::OkStatus();
}

absl::Status RescueRecords::Put(const internal::RescueRecord& record) {
  std::lock_guard lock(mu_);
  auto next = records_;
  next[record.domain()] = record;
  if (auto s = Save(next); !s.ok()) return s;
  records_ = std::move(next);
  return absl::OkStatus();
}

absl::Status RescueRecords::Erase(const std::string& domain) {
  std::lock_guard lock(mu_);
  if (!records_.contains(domain)) return absl::OkStatus();
  auto next = records_;
  next.erase(domain);
  if (auto s = Save(next); !s.ok()) return s;
  records_ = std::move(next);
  return absl::OkStatus();
}

}  // namespace hvagent::service
