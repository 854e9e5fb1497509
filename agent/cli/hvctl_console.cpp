// hvctl console: the terminal attached to a guest's console over ConsoleService.Attach. The
// terminal is put in raw mode (keys go to the guest as typed, Ctrl-C included) and restored on
// every way out; Ctrl-] detaches, as in virsh and telnet.

#include "agent/cli/hvctl_console.h"

#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <iostream>
#include <thread>

namespace hvagent::cli {
namespace {

constexpr char kDetach = 0x1d;  // Ctrl-]

// Raw mode for the life of the object when stdin is a terminal.
class RawTerminal {
 public:
  RawTerminal() {
    if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios raw = saved_;
    cfmakeraw(&raw);
    active_ = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
  }
  ~RawTerminal() {
    if (active_) tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }

 private:
  termios saved_{};
  bool active_ = false;
};

void WriteOut(const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = write(STDOUT_FILENO, bytes.data() + done, bytes.size() - done);
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

}  // namespace

grpc::Status AttachConsole(v1::ConsoleService::Stub& stub, grpc::ClientContext& ctx, const std::string& name,
                           bool write, bool take_over) {
  auto stream = stub.Attach(&ctx);
  v1::ConsoleInput attach;
  attach.mutable_attach()->set_domain_name(name);
  attach.mutable_attach()->set_write(write);
  attach.mutable_attach()->set_take_over(take_over);
  if (!stream->Write(attach)) return stream->Finish();
  std::cerr << "attached to " << name << (write ? "" : " (read only)") << "; Ctrl-] detaches\r\n";

  RawTerminal raw;
  std::atomic<bool> done{false};
  std::atomic<bool> detached{false};
  // Keys: polled, so the thread sees `done` when the agent ends the stream.
  std::thread keys([&] {
    char buf[512];
    while (!done) {
      pollfd p{STDIN_FILENO, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
      if (n <= 0) break;  // end of input: stop typing, keep reading
      std::string typed(buf, static_cast<size_t>(n));
      if (size_t at = typed.find(kDetach); at != std::string::npos) {
        typed.resize(at);
        detached = true;
      }
      if (write && !typed.empty()) {
        v1::ConsoleInput in;
        in.set_data(typed);
        if (!stream->Write(in)) break;
      }
      if (detached) {
        ctx.TryCancel();
        break;
      }
    }
    stream->WritesDone();
  });
  v1::ConsoleOutput out;
  while (stream->Read(&out)) {
    if (out.dropped_bytes() > 0) {
      WriteOut("\r\n[hvctl: " + std::to_string(out.dropped_bytes()) + " bytes of console output dropped]\r\n");
    }
    WriteOut(out.data());
  }
  done = true;
  keys.join();
  grpc::Status s = stream->Finish();
  if (detached) {
    std::cerr << "\r\ndetached\r\n";
    return grpc::Status::OK;
  }
  return s;
}

}  // namespace hvagent::cli
