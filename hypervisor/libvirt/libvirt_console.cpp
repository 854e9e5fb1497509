#include "hypervisor/libvirt/libvirt_console.h"

#include <algorithm>
#include <mutex>

#include <libvirt/libvirt.h>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "hypervisor/libvirt/libvirt_error.h"

namespace hvagent::hv {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("console");
  return logger;
}

// Keystrokes waiting for a guest that does not read: beyond this, Write refuses.
constexpr size_t kMaxPendingInput = 64 * 1024;
// Output read per readable event before yielding the loop to other consoles and connections.
constexpr int kMaxReadsPerEvent = 16;
constexpr int kBaseEvents = VIR_STREAM_EVENT_READABLE | VIR_STREAM_EVENT_ERROR | VIR_STREAM_EVENT_HANGUP;

// What libvirt's callback registration and the channel share. The registration holds one
// reference (released in its free callback, once libvirt will not call again), the channel
// another.
struct StreamState {
  std::string name;
  ConsoleCallbacks callbacks;
  // Held while a callback into the service runs, so Close() returns only when none does.
  // Recursive: the service may Close() from inside on_output/on_closed on the loop thread.
  std::recursive_mutex callback_mu;
  std::mutex mu;  // the fields below; libvirt stream calls that change events are made under it
  virStreamPtr stream = nullptr;  // our reference, freed in the destructor
  std::string pending;  // bytes for the guest
  bool writable_wanted = false;
  bool ended = false;  // Close()d, or ended by itself

  ~StreamState() {
    if (stream != nullptr) virStreamFree(stream);
  }
};

// Stops the stream's events and the stream itself; under st.mu. True the first time.
bool EndLocked(StreamState& st, bool abort) {
  if (st.ended) return false;
  st.ended = true;
  virStreamEventRemoveCallback(st.stream);
  if (abort) {
    virStreamAbort(st.stream);
  } else {
    virStreamFinish(st.stream);
  }
  return true;
}

// The console ended by itself: stop it and tell the service once.
void EndFromEvent(StreamState& st, const absl::Status& why) {
  std::lock_guard cb(st.callback_mu);
  bool first;
  {
    std::lock_guard lock(st.mu);
    first = EndLocked(st, !why.ok());
  }
  if (!first) return;
  Log()->info("console of {} closed: {}", st.name, why.ok() ? "end of stream" : why.message());
  if (st.callbacks.on_closed) st.callbacks.on_closed(why);
}

void DrainOutput(StreamState& st) {
  char buf[16384];
  for (int i = 0; i < kMaxReadsPerEvent; ++i) {
    int n;
    {
      std::lock_guard lock(st.mu);
      if (st.ended) return;
      n = virStreamRecv(st.stream, buf, sizeof buf);
    }
    if (n == -2) return;  // nothing more for now
    if (n == 0) return EndFromEvent(st, absl::OkStatus());
    if (n < 0) return EndFromEvent(st, LastLibvirtError(absl::StrCat("read console of ", st.name)));
    std::lock_guard cb(st.callback_mu);
    if (st.callbacks.on_output) st.callbacks.on_output(std::string_view(buf, static_cast<size_t>(n)));
  }
}

void FlushInput(StreamState& st) {
  absl::Status failed;
  {
    std::lock_guard lock(st.mu);
    if (st.ended) return;
    while (!st.pending.empty()) {
      int n = virStreamSend(st.stream, st.pending.data(), std::min<size_t>(st.pending.size(), 16384));
      if (n == -2) break;  // the guest side is full: wait for the next writable event
      if (n < 0) {
        failed = LastLibvirtError(absl::StrCat("write console of ", st.name));
        break;
      }
      st.pending.erase(0, static_cast<size_t>(n));
    }
    if (failed.ok() && st.pending.empty() && st.writable_wanted) {
      st.writable_wanted = false;
      virStreamEventUpdateCallback(st.stream, kBaseEvents);
    }
  }
  if (!failed.ok()) EndFromEvent(st, failed);
}

void OnStreamEvent(virStreamPtr, int events, void* opaque) {
  auto& st = **static_cast<std::shared_ptr<StreamState>*>(opaque);
  if (events & VIR_STREAM_EVENT_WRITABLE) FlushInput(st);
  if (events & VIR_STREAM_EVENT_READABLE) DrainOutput(st);
  if (events & (VIR_STREAM_EVENT_ERROR | VIR_STREAM_EVENT_HANGUP)) {
    // Whatever the guest wrote last is still worth reading before the end.
    DrainOutput(st);
    EndFromEvent(st, absl::OkStatus());
  }
}

void FreeRegistration(void* opaque) { delete static_cast<std::shared_ptr<StreamState>*>(opaque); }

class LibvirtConsole final : public ConsoleChannel {
 public:
  explicit LibvirtConsole(std::shared_ptr<StreamState> st) : st_(std::move(st)) {}
  ~LibvirtConsole() override { Close(); }

  absl::Status Write(std::string_view bytes) override {
    std::lock_guard lock(st_->mu);
    if (st_->ended) return absl::FailedPreconditionError(absl::StrCat("console of ", st_->name, " is closed"));
    if (st_->pending.size() + bytes.size() > kMaxPendingInput) {
      return absl::ResourceExhaustedError(
          absl::StrCat("console of ", st_->name, ": the guest is not reading its input (", st_->pending.size(),
                       " bytes waiting)"));
    }
    st_->pending.append(bytes);
    if (!st_->writable_wanted) {
      st_->writable_wanted = true;
      virStreamEventUpdateCallback(st_->stream, kBaseEvents | VIR_STREAM_EVENT_WRITABLE);
    }
    return absl::OkStatus();
  }

  void Close() override {
    std::lock_guard cb(st_->callback_mu);
    std::lock_guard lock(st_->mu);
    if (EndLocked(*st_, true)) Log()->debug("console of {} detached", st_->name);
  }

 private:
  std::shared_ptr<StreamState> st_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ConsoleChannel>> OpenLibvirtConsole(virConnectPtr conn, virDomainPtr dom,
                                                                   const std::string& name,
                                                                   ConsoleCallbacks callbacks) {
  auto st = std::make_shared<StreamState>();
  st->name = name;
  st->callbacks = std::move(callbacks);
  st->stream = virStreamNew(conn, VIR_STREAM_NONBLOCK);
  if (st->stream == nullptr) return LastLibvirtError(absl::StrCat("open console of ", name));
  if (virDomainOpenConsole(dom, nullptr, st->stream, VIR_DOMAIN_CONSOLE_FORCE) < 0) {
    absl::Status s = LastLibvirtError(absl::StrCat("open console of ", name));
    // libvirt says "operation failed" (Internal) for a domain without a console device.
    if (absl::IsInternal(s) || absl::IsInvalidArgument(s)) return absl::FailedPreconditionError(s.message());
    return s;
  }
  auto* registration = new std::shared_ptr<StreamState>(st);
  if (virStreamEventAddCallback(st->stream, kBaseEvents, OnStreamEvent, registration, FreeRegistration) < 0) {
    delete registration;
    absl::Status s = LastLibvirtError(absl::StrCat("watch console of ", name));
    virStreamAbort(st->stream);
    return s;
  }
  Log()->info("console of {} attached", name);
  return std::make_unique<LibvirtConsole>(std::move(st));
}

}  // namespace hvagent::hv
