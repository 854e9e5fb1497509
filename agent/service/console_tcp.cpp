#include "agent/service/console_tcp.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace hvagent::service {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("console");
  return logger;
}

// How often a waiting thread looks at the stop flag.
constexpr int kPollMs = 200;

// A bound, listening socket on address:port, or -1 (errno set).
int ListenOn(const std::string& address, int port) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, address.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    len = sizeof *v4;
  } else if (inet_pton(AF_INET6, address.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    len = sizeof *v6;
  } else {
    errno = EINVAL;
    return -1;
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, 1) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

// An interactive console connection: keystroke echoes go out at once (no Nagle), and the kernel
// queues little for a client that stops reading (a few KiB instead of tcp_wmem's megabytes), so
// the attachment's drop-oldest buffer, not the socket, decides what a slow client misses: it
// gets the guest's newest output and a marker, not megabytes of stale output.
void TuneConsoleSocket(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int send_buffer = 32 * 1024;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &send_buffer, sizeof send_buffer);
}

// Sends all of `bytes`; false when the client is gone or the agent is stopping. Waits for room
// kPollMs at a time, so that a client that stopped reading never keeps the agent from stopping.
bool SendAll(int fd, std::string_view bytes, const std::atomic<bool>& stopping) {
  while (!bytes.empty()) {
    if (stopping) return false;
    ssize_t n = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd, POLLOUT, 0};
      poll(&p, 1, kPollMs);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

}  // namespace

ConsoleTcpEndpoints::~ConsoleTcpEndpoints() {
  stopping_ = true;
  std::lock_guard lock(mu_);
  for (auto& e : endpoints_) e->thread.join();
}

void ConsoleTcpEndpoints::ReapLocked() {
  for (auto it = endpoints_.begin(); it != endpoints_.end();) {
    if ((*it)->done) {
      (*it)->thread.join();
      it = endpoints_.erase(it);
    } else {
      ++it;
    }
  }
}

absl::StatusOr<int> ConsoleTcpEndpoints::Open(const std::string& domain, const std::string& ticket,
                                              Clock::TimePoint expires) {
  std::lock_guard lock(mu_);
  ReapLocked();
  const int span = options_.port_max - options_.port_min + 1;
  for (int i = 0; i < span; ++i) {
    const int port = options_.port_min + (next_offset_ + i) % span;
    int fd = ListenOn(options_.address, port);
    if (fd < 0 && errno == EADDRINUSE) continue;
    if (fd < 0) {
      return absl::UnavailableError(
          absl::StrCat("console.tcp_listen ", options_.address, ": cannot listen: ", std::strerror(errno)));
    }
    next_offset_ = (next_offset_ + i + 1) % span;  // spread ports: a just-closed one is not reused at once
    auto e = std::make_unique<Endpoint>();
    Endpoint* raw = e.get();
    e->thread = std::thread([this, raw, fd, domain, ticket, expires] {
      Serve(fd, domain, ticket, expires);
      raw->done = true;
    });
    endpoints_.push_back(std::move(e));
    Log()->info("serial-tcp endpoint for {} on {}:{}", domain, options_.address, port);
    return port;
  }
  return absl::ResourceExhaustedError(absl::StrCat("console.tcp_port_min..tcp_port_max: all ", span,
                                                   " ports are in use"));
}

void ConsoleTcpEndpoints::Serve(int listen_fd, std::string domain, std::string ticket, Clock::TimePoint expires) {
  int fd = -1;
  while (!stopping_) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(expires - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{listen_fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), kPollMs))) > 0) {
      fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) break;
    }
  }
  close(listen_fd);  // exactly one connection: nobody else gets in after it
  if (fd < 0) {
    tickets_.Revoke(ticket);
    Log()->info("serial-tcp endpoint for {} closed unused", domain);
    return;
  }
  if (absl::Status s = tickets_.Redeem(ticket, domain, ConsoleKind::kSerialTcp); !s.ok()) {
    if (refused_) refused_(domain, s);
    close(fd);
    return;
  }
  TuneConsoleSocket(fd);
  Relay(fd, domain);
  close(fd);
}

void ConsoleTcpEndpoints::Relay(int fd, const std::string& domain) {
  auto attached = sessions_.Attach(domain, /*write=*/true, /*take_over=*/true);
  if (!attached.ok()) {
    SendAll(fd, absl::StrCat("hvagent: ", attached.status().message(), "\r\n"), stopping_);
    return;
  }
  auto& a = **attached;
  int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) return;
  a.SetListener([wake] {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(wake, &one, sizeof one);
  });
  Log()->info("serial-tcp client attached to {}", domain);
  char buf[4096];
  bool open = true;
  while (open && !stopping_) {
    // Output first: whatever is buffered goes out before we wait again.
    while (auto out = a.TryNext()) {
      if (out->dropped_before > 0 &&
          !SendAll(fd, absl::StrCat("\r\n[hvagent: ", out->dropped_before, " bytes of console output dropped]\r\n"),
                   stopping_)) {
        open = false;
        break;
      }
      if (!SendAll(fd, out->data, stopping_)) {
        open = false;
        break;
      }
    }
    if (!open || a.ended()) break;
    pollfd p[2] = {{fd, POLLIN, 0}, {wake, POLLIN, 0}};
    if (poll(p, 2, kPollMs) <= 0) continue;
    if (p[1].revents & POLLIN) {
      uint64_t v;
      [[maybe_unused]] ssize_t n = read(wake, &v, sizeof v);
    }
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;  // the client left
      if (absl::Status s = a.Write(std::string_view(buf, static_cast<size_t>(n))); !s.ok()) {
        Log()->debug("serial-tcp input to {} not taken: {}", domain, s.message());
      }
    }
  }
  a.SetListener(nullptr);
  close(wake);
  Log()->info("serial-tcp client of {} detached", domain);
}

}  // namespace hvagent::service
