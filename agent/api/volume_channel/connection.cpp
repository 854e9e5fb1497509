#include "agent/api/volume_channel/connection.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "hvagent/v1/migration.pb.h"

namespace hvagent::api::volume_channel {
namespace {

// A write to a socket the peer closed raises SIGPIPE, which would end the agent. OpenSSL's
// socket BIO calls write(2), so no MSG_NOSIGNAL: the signal is blocked on this thread for the
// write and, when it came, taken off again.
class NoSigpipe {
 public:
  NoSigpipe() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~NoSigpipe() {
    sigset_t pending;
    sigpending(&pending);
    if (sigismember(&pending, SIGPIPE) == 1 && sigismember(&old_, SIGPIPE) != 1) {
      const timespec none{0, 0};
      while (sigtimedwait(&pipe_, nullptr, &none) == SIGPIPE) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }

 private:
  sigset_t pipe_, old_;
};

// The wire's integers, big-endian in `n` bytes (4 for a message's length, 8 for a frame's value).
void PutBigEndian(char* out, uint64_t v, int n) {
  for (int i = n - 1; i >= 0; --i, v >>= 8) out[i] = static_cast<char>(v & 0xff);
}
uint64_t GetBigEndian(const char* in, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | static_cast<unsigned char>(in[i]);
  return v;
}

}  // namespace

std::string SslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    absl::StrAppend(&out, out.empty() ? "" : "; ", buf);
  }
  return out;
}

void TuneSocket(int fd) {
  const int on = 1, idle = 10, interval = 5, probes = 3;
  const unsigned int user_timeout_ms = 30000;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
  setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
}

Connection::~Connection() = default;

absl::Status Connection::ReadFull(char* buf, size_t n) {
  while (n > 0) {
    ssize_t got;
    if (ssl_) {
      ERR_clear_error();
      const int r = SSL_read(ssl_.get(), buf, static_cast<int>(std::min<size_t>(n, 1 << 30)));
      if (r <= 0) {
        const int e = SSL_get_error(ssl_.get(), r);
        const int saved = errno;
        if (e == SSL_ERROR_ZERO_RETURN) return absl::OutOfRangeError("the peer closed the connection");
        std::string why = SslErrors();
        // No close_notify, just the end of the socket: a peer that died or shut the socket.
        if (e == SSL_ERROR_SYSCALL && why.empty() && saved == 0) {
          return absl::OutOfRangeError("the peer closed the connection");
        }
        if (why.empty()) why = saved != 0 ? std::strerror(saved) : absl::StrCat("TLS error ", e);
        return absl::UnavailableError(absl::StrCat("read: ", why));
      }
      got = r;
    } else {
      got = recv(fd_, buf, n, 0);
      if (got == 0) return absl::OutOfRangeError("the peer closed the connection");
      if (got < 0) {
        if (errno == EINTR) continue;
        return absl::UnavailableError(absl::StrCat("read: ", std::strerror(errno)));
      }
    }
    buf += got;
    n -= static_cast<size_t>(got);
  }
  return absl::OkStatus();
}

absl::Status Connection::WriteAll(const char* buf, size_t n) {
  NoSigpipe guard;
  while (n > 0) {
    ssize_t put;
    if (ssl_) {
      ERR_clear_error();
      const int r = SSL_write(ssl_.get(), buf, static_cast<int>(std::min<size_t>(n, 1 << 30)));
      if (r <= 0) {
        const int saved = errno;
        std::string why = SslErrors();
        if (why.empty()) why = saved != 0 ? std::strerror(saved) : "TLS error";
        return absl::UnavailableError(absl::StrCat("write: ", why));
      }
      put = r;
    } else {
      put = send(fd_, buf, n, MSG_NOSIGNAL);
      if (put < 0) {
        if (errno == EINTR) continue;
        return absl::UnavailableError(absl::StrCat("write: ", std::strerror(errno)));
      }
    }
    buf += put;
    n -= static_cast<size_t>(put);
  }
  return absl::OkStatus();
}

bool Connection::Readable() {
  if (ssl_ && SSL_pending(ssl_.get()) > 0) return true;
  pollfd p{fd_, POLLIN, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
}

void Connection::CloseWrite() {
  if (ssl_) {
    NoSigpipe guard;
    ERR_clear_error();
    SSL_shutdown(ssl_.get());
    ERR_clear_error();
  }
  shutdown(fd_, SHUT_WR);
}

void Connection::Abort() { shutdown(fd_, SHUT_RDWR); }

absl::Status WriteMessage(Connection& c, const google::protobuf::MessageLite& m) {
  std::string out(4, '\0');
  if (!m.AppendToString(&out) || out.size() - 4 > kMaxMessage) {
    return absl::InternalError("a volume channel message that does not serialize");
  }
  PutBigEndian(out.data(), out.size() - 4, 4);
  return c.WriteAll(out.data(), out.size());
}

absl::Status ReadMessage(Connection& c, google::protobuf::MessageLite* m, const char* what) {
  char len[4];
  if (auto s = c.ReadFull(len, 4); !s.ok()) return s;
  const uint64_t n = GetBigEndian(len, 4);
  if (n > kMaxMessage) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", n, " bytes, more than ", kMaxMessage));
  }
  std::string body(n, '\0');
  if (auto s = c.ReadFull(body.data(), n); !s.ok()) return s;
  if (!m->ParseFromString(body)) return absl::InvalidArgumentError(absl::StrCat(what, ": does not parse"));
  return absl::OkStatus();
}

absl::Status WriteFrameHead(Connection& c, char kind, uint64_t value) {
  char head[9];
  head[0] = kind;
  PutBigEndian(head + 1, value, 8);
  return c.WriteAll(head, sizeof head);
}

absl::Status WriteTrailer(Connection& c, const std::string& sha256) {
  v1::ReceiveVolumeTrailer trailer;
  trailer.set_sha256(sha256);
  const std::string body = trailer.SerializeAsString();
  if (auto s = WriteFrameHead(c, kTrailer, body.size()); !s.ok()) return s;
  return c.WriteAll(body.data(), body.size());
}

absl::StatusOr<FrameHead> ReadFrameHead(Connection& c) {
  char head[9];
  if (auto s = c.ReadFull(head, sizeof head); !s.ok()) return s;
  return FrameHead{head[0], GetBigEndian(head + 1, 8)};
}

}  // namespace hvagent::api::volume_channel
