#include "bench/loadgen/http_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace hvagent::bench {
namespace {

using Clock = std::chrono::steady_clock;

absl::StatusOr<int> OpenSocket(int port, bool nonblocking) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int e = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect 127.0.0.1:", port, ": ", strerror(e)));
  }
  if (nonblocking) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

std::string Request(const std::string& path) {
  return absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n");
}

bool SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// Decodes a chunked body starting at `pos`: bytes used (from pos), 0 while incomplete.
absl::StatusOr<size_t> Dechunk(const std::string& buf, size_t pos, std::string* body) {
  size_t start = pos;
  body->clear();
  while (true) {
    size_t eol = buf.find("\r\n", pos);
    if (eol == std::string::npos) return 0;
    std::string size_text(absl::StripAsciiWhitespace(buf.substr(pos, eol - pos)));
    size_text = size_text.substr(0, size_text.find(';'));
    uint64_t size = 0;
    if (!absl::SimpleHexAtoi(size_text, &size)) return absl::DataLossError("bad chunk size");
    pos = eol + 2;
    if (size == 0) {
      size_t end = buf.find("\r\n", pos);  // no trailers expected
      if (end == std::string::npos) return 0;
      return end + 2 - start;
    }
    if (buf.size() < pos + size + 2) return 0;
    body->append(buf, pos, size);
    pos += size + 2;
  }
}

}  // namespace

absl::StatusOr<size_t> ParseHttpResponse(const std::string& buf, HttpResponse* out) {
  size_t head_end = buf.find("\r\n\r\n");
  if (head_end == std::string::npos) return 0;
  std::vector<absl::string_view> lines = absl::StrSplit(absl::string_view(buf).substr(0, head_end), "\r\n");
  std::vector<absl::string_view> status = absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
  if (status.size() < 2 || !absl::StartsWith(status[0], "HTTP/1.") || !absl::SimpleAtoi(status[1], &out->status)) {
    return absl::DataLossError(absl::StrCat("bad status line: ", lines[0]));
  }
  std::optional<uint64_t> length;
  bool chunked = false;
  out->close = false;
  for (size_t i = 1; i < lines.size(); ++i) {
    size_t colon = lines[i].find(':');
    if (colon == absl::string_view::npos) continue;
    std::string name = absl::AsciiStrToLower(lines[i].substr(0, colon));
    std::string value = absl::AsciiStrToLower(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
    if (name == "content-length") {
      uint64_t n = 0;
      if (!absl::SimpleAtoi(value, &n)) return absl::DataLossError("bad Content-Length");
      length = n;
    } else if (name == "transfer-encoding") {
      chunked = absl::StrContains(value, "chunked");
    } else if (name == "connection") {
      out->close = value == "close";
    }
  }
  size_t body_start = head_end + 4;
  if (chunked) {
    auto used = Dechunk(buf, body_start, &out->body);
    if (!used.ok() || *used == 0) return used;
    return body_start + *used;
  }
  uint64_t n = length.value_or(0);
  if (buf.size() < body_start + n) return 0;
  out->body.assign(buf, body_start, n);
  return body_start + n;
}

absl::StatusOr<HttpConnection> HttpConnection::Connect(int port, std::chrono::milliseconds timeout) {
  auto fd = OpenSocket(port, false);
  if (!fd.ok()) return fd.status();
  HttpConnection c(port, *fd);
  c.timeout_ = timeout;
  c.ApplyTimeout();
  return c;
}

void HttpConnection::ApplyTimeout() {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout_.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>(timeout_.count() % 1000 * 1000);
  setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

HttpConnection::HttpConnection(HttpConnection&& other) noexcept
    : port_(other.port_), fd_(other.fd_), timeout_(other.timeout_), buf_(std::move(other.buf_)) {
  other.fd_ = -1;
}

HttpConnection& HttpConnection::operator=(HttpConnection&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    port_ = other.port_;
    fd_ = other.fd_;
    timeout_ = other.timeout_;
    buf_ = std::move(other.buf_);
    other.fd_ = -1;
  }
  return *this;
}

HttpConnection::~HttpConnection() {
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<HttpResponse> HttpConnection::Get(const std::string& path) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (fd_ < 0) {
      auto fd = OpenSocket(port_, false);
      if (!fd.ok()) return fd.status();
      fd_ = *fd;
      buf_.clear();
      ApplyTimeout();
    }
    bool fresh = attempt > 0;
    if (!SendAll(fd_, Request(path))) {
      close(fd_);
      fd_ = -1;
      if (fresh) return absl::UnavailableError("send failed");
      continue;
    }
    HttpResponse resp;
    char chunk[16384];
    while (true) {
      auto used = ParseHttpResponse(buf_, &resp);
      if (!used.ok()) return used.status();
      if (*used > 0) {
        buf_.erase(0, *used);
        if (resp.close) {
          close(fd_);
          fd_ = -1;
        }
        return resp;
      }
      ssize_t n = recv(fd_, chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        close(fd_);
        fd_ = -1;
        return absl::DeadlineExceededError(
            absl::StrCat("no answer to GET ", path, " within ", timeout_.count(), " ms"));
      }
      if (n <= 0) break;
      buf_.append(chunk, static_cast<size_t>(n));
    }
    // The server closed an idle keep-alive connection: one retry on a new one.
    close(fd_);
    fd_ = -1;
    if (!buf_.empty() || fresh) return absl::UnavailableError("connection closed mid-response");
  }
  return absl::UnavailableError("connection closed");
}

namespace {

struct LoadConnection {
  int fd = -1;
  std::string buf;
  Clock::time_point sent;
};

}  // namespace

LoadResult RunHttpLoad(int port, const std::string& path, int concurrency, std::chrono::milliseconds duration) {
  LoadResult result;
  const std::string request = Request(path);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  std::vector<LoadConnection> conns(static_cast<size_t>(concurrency));
  auto open_and_send = [&](size_t i) {
    LoadConnection& c = conns[i];
    if (c.fd < 0) {
      auto fd = OpenSocket(port, true);
      if (!fd.ok()) return false;
      c.fd = *fd;
      c.buf.clear();
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = i;
      epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
    }
    c.sent = Clock::now();
    // A request this small always fits an empty socket buffer.
    if (send(c.fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
      close(c.fd);
      c.fd = -1;
      return false;
    }
    return true;
  };
  const auto start = Clock::now();
  const auto end = start + duration;
  int active = 0;
  for (size_t i = 0; i < conns.size(); ++i) {
    if (open_and_send(i)) {
      ++active;
    } else {
      ++result.errors;
    }
  }
  std::vector<epoll_event> events(256);
  char chunk[65536];
  while (active > 0) {
    int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 1000);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // nothing for a second: the server is stuck; stop counting
    for (int k = 0; k < n; ++k) {
      size_t i = events[static_cast<size_t>(k)].data.u64;
      LoadConnection& c = conns[i];
      ssize_t got = recv(c.fd, chunk, sizeof chunk, 0);
      if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      bool done = false;
      bool failed = got <= 0;
      if (!failed) {
        c.buf.append(chunk, static_cast<size_t>(got));
        HttpResponse resp;
        auto used = ParseHttpResponse(c.buf, &resp);
        if (!used.ok()) {
          failed = true;
        } else if (*used > 0) {
          done = true;
          c.buf.erase(0, *used);
          if (resp.status == 200) {
            ++result.ok;
            result.latencies.Add(Clock::now() - c.sent);
          } else {
            ++result.errors;
          }
          if (resp.close) {
            close(c.fd);
            c.fd = -1;
          }
        }
      }
      if (failed) {
        ++result.errors;
        close(c.fd);
        c.fd = -1;
        done = true;
      }
      if (!done) continue;
      if (Clock::now() >= end || !open_and_send(i)) --active;
    }
  }
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (LoadConnection& c : conns) {
    if (c.fd >= 0) close(c.fd);
  }
  close(ep);
  return result;
}

}  // namespace hvagent::bench
