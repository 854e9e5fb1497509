#pragma once
// ConsoleSessions: shares each domain's one open console (hv::ConsoleOpener) among every caller
// attached to it. Many readers see the guest's output; one attachment at a time, the writer,
// may type (another asking to write is refused unless it takes over, which ends the old
// writer's attachment). Guest output never waits for a reader: each reader has a bounded
// buffer, and when it is full the oldest bytes are dropped and counted, so a flooding guest
// or a stuck client cannot block the hypervisor's event thread or the other readers.
// Called by agent/api's console transports (gRPC stream); the console is opened on the first
// attachment to a domain and closed when the last one goes.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "hypervisor/console.h"

namespace hvagent::service {

class ConsoleSessions {
 public:
  struct Options {
    size_t reader_buffer_bytes = 256 * 1024;  // per attachment; oldest bytes dropped beyond it
  };

  class Session;

  // One caller's attachment. Releasing the last pointer detaches.
  class Attachment {
   public:
    struct Output {
      std::string data;
      uint64_t dropped_before = 0;  // bytes lost (reader too slow) just before `data`
    };
    ~Attachment();

    // Everything buffered, in one piece, or nullopt when nothing is; never waits.
    std::optional<Output> TryNext();
    // Once ended (the console closed, or this writer was taken over): why. OK for an orderly
    // end; Aborted for a take-over. Buffered output is still returned by TryNext first.
    std::optional<absl::Status> ended() const;
    // Keystrokes to the guest. FailedPrecondition when this attachment is not (or no longer)
    // the writer.
    absl::Status Write(std::string_view bytes);
    bool writer() const;
    // Runs after output is buffered and once when the attachment ends, on the thread that
    // caused it (often the hypervisor's event thread), outside the buffer's lock; must not
    // block. Once SetListener() returns, the previous listener is not running and won't again.
    void SetListener(std::function<void()> listener);

   private:
    friend class ConsoleSessions;
    friend class Session;
    Attachment(std::shared_ptr<Session> session, size_t capacity) : session_(std::move(session)), capacity_(capacity) {}
    void Push(std::string_view bytes);
    void End(absl::Status why);
    void Notify();

    const std::shared_ptr<Session> session_;
    const size_t capacity_;
    std::mutex listener_mu_;
    std::function<void()> listener_;
    mutable std::mutex mu_;
    std::string buffer_;
    uint64_t dropped_ = 0;
    std::optional<absl::Status> ended_;
  };

  ConsoleSessions(hv::ConsoleOpener& opener, Options options) : opener_(opener), options_(options) {}
  ~ConsoleSessions();

  // Attaches to `domain`'s console, opening it if nobody is attached. With `write`, as the
  // writer: FailedPrecondition when another attachment writes and `take_over` is false.
  // The opener's errors otherwise (NotFound, FailedPrecondition for a domain not running).
  absl::StatusOr<std::shared_ptr<Attachment>> Attach(const std::string& domain, bool write, bool take_over);

  // Domains with an open console, and attachments in all (for tests and metrics).
  size_t open_consoles() const;

 private:
  hv::ConsoleOpener& opener_;
  const Options options_;
  mutable std::mutex mu_;  // sessions_; taken before any Session's lock
  std::map<std::string, std::weak_ptr<Session>> sessions_;
};

}  // namespace hvagent::service
