#include "agent/service/idempotency.h"

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace hvagent::service {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("service");
  return logger;
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool Retryable(absl::StatusCode c) {
  switch (c) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kCancelled: return true;
    default: return false;
  }
}

}  // namespace

absl::Status IdempotencyStore::ValidateKey(const std::string& key) {
  if (key.empty() || key.size() > 128) return absl::InvalidArgumentError("idempotency-key: must be 1-128 characters");
  for (char c : key) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == ':' || c == '-';
    if (!ok) return absl::InvalidArgumentError("idempotency-key: only letters, digits and . _ : - are allowed");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<IdempotencyStore>> IdempotencyStore::Open(const std::string& path, Options options) {
  std::unique_ptr<IdempotencyStore> st(new IdempotencyStore(options));
  if (path.empty()) return st;
  auto file = RecordFile::Open(path);
  if (!file.ok()) return file.status();
  const int64_t now = NowMs();
  std::vector<internal::IdempotencyRecord> loaded;
  auto skipped = (*file)->Load(internal::IdempotencyRecord(), [&](const google::protobuf::Message& m) {
    loaded.push_back(static_cast<const internal::IdempotencyRecord&>(m));
  });
  if (!skipped.ok()) return skipped.status();
  for (auto& r : loaded) {
    if (!st->Expired(r, now)) st->Remember(std::move(r));
  }
  std::vector<const google::protobuf::Message*> keep;
  for (const auto& key : st->order_) keep.push_back(&st->done_.at(key));
  if (auto s = (*file)->Rewrite(keep); !s.ok()) return s;
  st->file_ = std::move(*file);
  return st;
}

bool IdempotencyStore::Expired(const internal::IdempotencyRecord& r, int64_t now_ms) const {
  return now_ms - r.unix_ms() > std::chrono::duration_cast<std::chrono::milliseconds>(options_.window).count();
}

void IdempotencyStore::Remember(internal::IdempotencyRecord r) {
  std::string key = r.key();
  if (done_.erase(key) > 0) std::erase(order_, key);
  done_.emplace(key, std::move(r));
  order_.push_back(key);
  while (order_.size() > options_.max_entries) {
    done_.erase(order_.front());
    order_.pop_front();
  }
}

size_t IdempotencyStore::size() const {
  std::lock_guard lock(mu_);
  return done_.size();
}

IdempotencyStore::Outcome IdempotencyStore::Run(const std::string& key, const std::string& operation,
                                                const std::string& fingerprint, const std::function<Outcome()>& body) {
  const std::string what = operation + "\n" + fingerprint;
  {
    std::unique_lock lock(mu_);
    while (true) {
      if (auto it = done_.find(key); it != done_.end()) {
        const internal::IdempotencyRecord& r = it->second;
        if (Expired(r, NowMs())) {
          std::erase(order_, key);
          done_.erase(it);
          continue;
        }
        if (r.operation() != operation || r.fingerprint() != fingerprint) {
          return {absl::FailedPreconditionError(absl::StrCat("idempotency-key: '", key, "' was already used for ",
                                                             r.operation() == operation ? "a different request to "
                                                                                        : "",
                                                             r.operation())),
                  "", false};
        }
        return {absl::Status(static_cast<absl::StatusCode>(r.code()), r.message()), r.response(), true};
      }
      auto run = running_.find(key);
      if (run == running_.end()) break;
      if (run->second != what) {
        return {absl::FailedPreconditionError(
                    absl::StrCat("idempotency-key: '", key, "' is in use by a different request still running")),
                "", false};
      }
      cv_.wait(lock);  // the same request is running: take its outcome when it ends
    }
    running_[key] = what;
  }
  Outcome out = body();
  std::lock_guard lock(mu_);
  running_.erase(key);
  if (!Retryable(out.status.code())) {
    internal::IdempotencyRecord r;
    r.set_key(key);
    r.set_operation(operation);
    r.set_fingerprint(fingerprint);
    r.set_code(static_cast<int32_t>(out.status.code()));
    r.set_message(std::string(out.status.message()));
    r.set_response(out.response);
    r.set_unix_ms(NowMs());
    if (file_ != nullptr) {
      if (auto s = file_->Append(r); !s.ok()) {
        // The request did happen; only its replay after a restart is lost. Say so.
        Log()->error("idempotency store: cannot persist key {}: {}", key, s.message());
      } else if (++appended_since_compaction_ > options_.max_entries) {
        std::vector<const google::protobuf::Message*> keep;
        Remember(r);
        for (const auto& k : order_) keep.push_back(&done_.at(k));
        if (auto c = file_->Rewrite(keep); !c.ok()) Log()->error("idempotency store: compaction: {}", c.message());
        appended_since_compaction_ = 0;
        cv_.notify_all();
        return out;
      }
    }
    Remember(std::move(r));
  }
  cv_.notify_all();
  return out;
}

}  // namespace hvagent::service
