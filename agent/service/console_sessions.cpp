#include "agent/service/console_sessions.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace hvagent::service {

// One domain's open console and who is attached to it. Lock order: ConsoleSessions::mu_, then
// Session::mu_, then an Attachment's listener lock, then its buffer lock. The channel's
// callbacks take Session::mu_ from the hypervisor's event thread; ~Session closes the channel
// first, which waits for a callback in progress, so no callback outlives the session.
class ConsoleSessions::Session {
 public:
  explicit Session(std::string domain) : domain_(std::move(domain)) {}
  ~Session() {
    if (channel_) channel_->Close();
  }

  void SetChannel(std::unique_ptr<hv::ConsoleChannel> channel) { channel_ = std::move(channel); }

  void Output(std::string_view bytes) {
    std::lock_guard lock(mu_);
    for (Attachment* a : attachments_) a->Push(bytes);
  }

  void Closed(const absl::Status& why) {
    std::lock_guard lock(mu_);
    ended_ = true;
    for (Attachment* a : attachments_) a->End(why);
  }

  bool ended() const {
    std::lock_guard lock(mu_);
    return ended_;
  }

  // Adds `a`; as the writer when `write`, replacing (and ending) the writer with `take_over`.
  absl::Status Add(Attachment* a, bool write, bool take_over) {
    std::lock_guard lock(mu_);
    if (write && writer_ != nullptr) {
      if (!take_over) {
        return absl::FailedPreconditionError(
            absl::StrCat("write: the console of ", domain_,
                         " has a writer already; attach with take_over to replace it, or without write to read"));
      }
      writer_->End(absl::AbortedError(absl::StrCat("the console of ", domain_, " was taken over by another writer")));
    }
    if (write) writer_ = a;
    attachments_.push_back(a);
    return absl::OkStatus();
  }

  void Remove(Attachment* a) {
    std::lock_guard lock(mu_);
    if (writer_ == a) writer_ = nullptr;
    attachments_.erase(std::remove(attachments_.begin(), attachments_.end(), a), attachments_.end());
  }

  bool IsWriter(const Attachment* a) const {
    std::lock_guard lock(mu_);
    return writer_ == a;
  }

  absl::Status Write(const Attachment* a, std::string_view bytes) {
    std::lock_guard lock(mu_);
    if (writer_ != a) {
      return absl::FailedPreconditionError(
          absl::StrCat("data: this caller is not the writer of the console of ", domain_));
    }
    if (ended_ || !channel_) return absl::FailedPreconditionError(absl::StrCat("the console of ", domain_, " is closed"));
    return channel_->Write(bytes);
  }

 private:
  const std::string domain_;
  std::unique_ptr<hv::ConsoleChannel> channel_;  // set once, right after opening
  mutable std::mutex mu_;
  std::vector<Attachment*> attachments_;  // each removes itself when destroyed
  Attachment* writer_ = nullptr;
  bool ended_ = false;
};

// ---- Attachment ----

ConsoleSessions::Attachment::~Attachment() { session_->Remove(this); }

std::optional<ConsoleSessions::Attachment::Output> ConsoleSessions::Attachment::TryNext() {
  std::lock_guard lock(mu_);
  if (buffer_.empty()) return std::nullopt;
  Output out{std::move(buffer_), dropped_};
  buffer_.clear();
  dropped_ = 0;
  return out;
}

std::optional<absl::Status> ConsoleSessions::Attachment::ended() const {
  std::lock_guard lock(mu_);
  return ended_;
}

absl::Status ConsoleSessions::Attachment::Write(std::string_view bytes) {
  {
    std::lock_guard lock(mu_);
    if (ended_ && !ended_->ok()) return absl::FailedPreconditionError(ended_->message());
  }
  return session_->Write(this, bytes);
}

bool ConsoleSessions::Attachment::writer() const { return session_->IsWriter(this); }

void ConsoleSessions::Attachment::SetListener(std::function<void()> listener) {
  std::lock_guard lock(listener_mu_);
  listener_ = std::move(listener);
}

void ConsoleSessions::Attachment::Push(std::string_view bytes) {
  {
    std::lock_guard lock(mu_);
    if (ended_) return;
    // Keep the newest `capacity_` bytes: a reader that fell behind sees the guest's latest
    // output (what a person at a console needs), told how much it missed.
    if (bytes.size() >= capacity_) {
      dropped_ += buffer_.size() + (bytes.size() - capacity_);
      buffer_.assign(bytes.substr(bytes.size() - capacity_));
    } else {
      size_t over = buffer_.size() + bytes.size() > capacity_ ? buffer_.size() + bytes.size() - capacity_ : 0;
      if (over > 0) {
        buffer_.erase(0, over);
        dropped_ += over;
      }
      buffer_.append(bytes);
    }
  }
  Notify();
}

void ConsoleSessions::Attachment::End(absl::Status why) {
  {
    std::lock_guard lock(mu_);
    if (ended_) return;
    ended_ = std::move(why);
  }
  Notify();
}

void ConsoleSessions::Attachment::Notify() {
  std::lock_guard lock(listener_mu_);
  if (listener_) listener_();
}

// ---- ConsoleSessions ----

ConsoleSessions::~ConsoleSessions() = default;

absl::StatusOr<std::shared_ptr<ConsoleSessions::Attachment>> ConsoleSessions::Attach(const std::string& domain,
                                                                                    bool write, bool take_over) {
  if (take_over && !write) return absl::InvalidArgumentError("take_over: only a writer can take a console over");
  std::lock_guard lock(mu_);
  std::shared_ptr<Session> session = sessions_[domain].lock();
  if (session == nullptr || session->ended()) {
    session = std::make_shared<Session>(domain);
    Session* raw = session.get();  // outlives every callback: ~Session closes the channel first
    auto channel = opener_.OpenConsole(
        domain, {.on_output = [raw](std::string_view bytes) { raw->Output(bytes); },
                 .on_closed = [raw](const absl::Status& why) { raw->Closed(why); }});
    if (!channel.ok()) {
      sessions_.erase(domain);
      return channel.status();
    }
    session->SetChannel(std::move(*channel));
    sessions_[domain] = session;
  }
  std::shared_ptr<Attachment> a(new Attachment(session, options_.reader_buffer_bytes));
  if (auto s = session->Add(a.get(), write, take_over); !s.ok()) {
    // Not added: its destructor's Remove is a no-op.
    return s;
  }
  log::ComponentLogger("console")->info("attached to the console of {} as {}", domain, write ? "writer" : "reader");
  return a;
}

size_t ConsoleSessions::open_consoles() const {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (const auto& [name, weak] : sessions_) n += weak.expired() ? 0 : 1;
  return n;
}

}  // namespace hvagent::service
