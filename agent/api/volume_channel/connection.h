#pragma once
// The volume channel's wire (proto/hvagent/v1/migration.proto, ReceiveVolumeResult): one TCP
// connection per volume, under TLS between agents (plain only in the development mode, on
// loopback), carrying ReceiveVolume's stream as bare frames. A cold migration's bytes take it
// instead of gRPC: OpenSSL encrypts each block straight from the sender's buffer onto the socket
// and decrypts straight into the receiver's, without HTTP/2's framing and protobuf's copies
// (docs/performance.md, "The volume channel").

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "google/protobuf/message_lite.h"

namespace hvagent::api::volume_channel {

inline constexpr size_t kMaxData = 1 << 20;        // one 'D' frame's bytes at most
inline constexpr size_t kMaxMessage = 64 << 10;    // a header, trailer or result message at most
inline constexpr char kData = 'D', kZeros = 'Z', kTrailer = 'T';

// What both ends set on the socket: no Nagle delay for the small frames, and a dead peer or a
// cut link noticed within about 30 s (keepalive probes while idle, TCP_USER_TIMEOUT while data
// waits unacknowledged), as gRPC's keepalive does for its streams.
void TuneSocket(int fd);

struct SslDeleter {
  void operator()(SSL* s) const { SSL_free(s); }
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using SslPtr = std::unique_ptr<SSL, SslDeleter>;
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslDeleter>;

// One connection: a socket, with `ssl` on it (handshake done) or without. Owns `ssl`; the
// socket stays the caller's to close. Reads and writes block; shutdown(2) of the socket from
// another thread (Abort) unblocks them.
class Connection {
 public:
  Connection(int fd, SslPtr ssl) : fd_(fd), ssl_(std::move(ssl)) {}
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Exactly `n` bytes. OutOfRange when the peer closed before them (at a frame's start or
  // inside one), Unavailable for a failed read (naming the reason).
  absl::Status ReadFull(char* buf, size_t n);
  absl::Status WriteAll(const char* buf, size_t n);
  // Whether something can be read now, without blocking (the receiver's early answer).
  bool Readable();
  // Ends this side's writing (TLS close_notify, then the socket's write half).
  void CloseWrite();
  // Shuts the socket both ways: blocked reads and writes of other threads return.
  void Abort();
  SSL* ssl() const { return ssl_.get(); }

 private:
  int fd_;
  SslPtr ssl_;
};

// A 4-byte big-endian length, then the message (at most kMaxMessage).
absl::Status WriteMessage(Connection& c, const google::protobuf::MessageLite& m);
// InvalidArgument naming `what` for a length over kMaxMessage or bytes that do not parse.
absl::Status ReadMessage(Connection& c, google::protobuf::MessageLite* m, const char* what);

struct FrameHead {
  char kind = 0;
  uint64_t value = 0;
};
absl::Status WriteFrameHead(Connection& c, char kind, uint64_t value);
absl::StatusOr<FrameHead> ReadFrameHead(Connection& c);
// The stream's last frame: 'T' and a ReceiveVolumeTrailer carrying the sender's sha256.
absl::Status WriteTrailer(Connection& c, const std::string& sha256);

// OpenSSL's queued errors as text ("" when none), and the queue emptied.
std::string SslErrors();

}  // namespace hvagent::api::volume_channel
