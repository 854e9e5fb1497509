#include "agent/api/volume_channel/volume_channel_client.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "agent/api/volume_channel/connection.h"

namespace hvagent::api {
namespace {

namespace vc = volume_channel;

void SetTimeout(int fd, int option, int seconds) {
  timeval tv{seconds, 0};
  setsockopt(fd, SOL_SOCKET, option, &tv, sizeof tv);
}

// A connected socket to host:port (connect bounded at 10 s), or why not.
absl::StatusOr<int> Dial(const std::string& host, int port) {
  const std::string where = absl::StrCat(host, ":", port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (int e = getaddrinfo(host.c_str(), service.c_str(), &hints, &found); e != 0) {
    return absl::UnavailableError(absl::StrCat("volume channel ", where, ": ", gai_strerror(e)));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> list(found, freeaddrinfo);
  std::string why = "no address";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    SetTimeout(fd, SO_SNDTIMEO, 10);  // Linux bounds connect(2) by it
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
      SetTimeout(fd, SO_SNDTIMEO, 0);  // from here TCP_USER_TIMEOUT bounds a stuck write
      vc::TuneSocket(fd);
      return fd;
    }
    why = std::strerror(errno);
    close(fd);
  }
  return absl::UnavailableError(absl::StrCat("volume channel: cannot connect to ", where, ": ", why));
}

// The client side's TLS on `fd`: this agent's certificate, the destination's checked against
// the CA and `host` (an IP address or a DNS name).
absl::StatusOr<vc::SslPtr> Handshake(int fd, const std::string& host, const PeerTls& tls) {
  vc::SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) return absl::InternalError(absl::StrCat("TLS: ", vc::SslErrors()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  auto bio = [](const std::string& pem) {
    return std::unique_ptr<BIO, decltype(&BIO_free)>(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())),
                                                     BIO_free);
  };
  {
    auto in = bio(tls.ca_pem);
    X509_STORE* store = SSL_CTX_get_cert_store(ctx.get());
    int added = 0;
    while (X509* ca = PEM_read_bio_X509(in.get(), nullptr, nullptr, nullptr)) {
      added += X509_STORE_add_cert(store, ca) == 1 ? 1 : 0;
      X509_free(ca);
    }
    ERR_clear_error();  // the end of the bundle reads as an error
    if (added == 0) return absl::FailedPreconditionError("migration.ca_file: no CA certificate in it");
  }
  {
    auto in = bio(tls.cert_pem);
    X509* cert = PEM_read_bio_X509(in.get(), nullptr, nullptr, nullptr);
    const bool ok = cert != nullptr && SSL_CTX_use_certificate(ctx.get(), cert) == 1;
    X509_free(cert);
    // Intermediates after the leaf, if the file has them.
    while (X509* more = PEM_read_bio_X509(in.get(), nullptr, nullptr, nullptr)) {
      if (SSL_CTX_add0_chain_cert(ctx.get(), more) != 1) X509_free(more);
    }
    ERR_clear_error();
    auto kin = bio(tls.key_pem);
    EVP_PKEY* key = PEM_read_bio_PrivateKey(kin.get(), nullptr, nullptr, nullptr);
    const bool key_ok = key != nullptr && SSL_CTX_use_PrivateKey(ctx.get(), key) == 1;
    EVP_PKEY_free(key);
    if (!ok || !key_ok || SSL_CTX_check_private_key(ctx.get()) != 1) {
      return absl::FailedPreconditionError(
          absl::StrCat("migration.cert_file / migration.key_file: cannot be used: ", vc::SslErrors()));
    }
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  vc::SslPtr ssl(SSL_new(ctx.get()));
  if (!ssl) return absl::InternalError(absl::StrCat("TLS: ", vc::SslErrors()));
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl.get());
  in6_addr ip;
  if (inet_pton(AF_INET, host.c_str(), &ip) == 1 || inet_pton(AF_INET6, host.c_str(), &ip) == 1) {
    X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str());
  } else {
    X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0);
    SSL_set_tlsext_host_name(ssl.get(), host.c_str());
  }
  ERR_clear_error();
  if (SSL_set_fd(ssl.get(), fd) != 1 || SSL_connect(ssl.get()) != 1) {
    const long verify = SSL_get_verify_result(ssl.get());
    std::string why = vc::SslErrors();
    if (verify != X509_V_OK) why = absl::StrCat("the destination's certificate: ", X509_verify_cert_error_string(verify));
    return absl::UnavailableError(absl::StrCat("volume channel: TLS handshake with ", host, " failed: ", why));
  }
  return ssl;
}

// Frames to the destination. Before each data frame it looks whether the destination answered
// already (it stops a stream it will not take: a full pool, an unknown transfer); then the
// answer is kept and the export stops.
class ChannelSink final : public storage::image::ExportSink {
 public:
  explicit ChannelSink(vc::Connection& c) : c_(c) {}
  absl::Status Data(absl::string_view bytes) override {
    for (size_t at = 0; at < bytes.size(); at += vc::kMaxData) {
      const absl::string_view slice = bytes.substr(at, vc::kMaxData);
      if (auto s = Answered(); !s.ok()) return s;
      if (auto s = vc::WriteFrameHead(c_, vc::kData, slice.size()); !s.ok()) return Broken(s);
      if (auto s = c_.WriteAll(slice.data(), slice.size()); !s.ok()) return Broken(s);
    }
    return absl::OkStatus();
  }
  absl::Status Zeros(uint64_t bytes) override {
    if (auto s = Answered(); !s.ok()) return s;
    if (auto s = vc::WriteFrameHead(c_, vc::kZeros, bytes); !s.ok()) return Broken(s);
    return absl::OkStatus();
  }
  // The destination's answer, read once it is there (or after the stream's end).
  std::optional<v1::ReceiveVolumeResult> answer;
  absl::Status Broken(const absl::Status& s) {
    // A write fails when the destination closed: its answer may be waiting all the same.
    if (c_.Readable()) (void)ReadAnswer();
    return absl::UnavailableError(absl::StrCat("the destination went away mid-volume (", s.message(), ")"));
  }
  absl::Status ReadAnswer() {
    v1::ReceiveVolumeResult r;
    if (auto s = vc::ReadMessage(c_, &r, "the destination's answer"); !s.ok()) return s;
    answer = std::move(r);
    return absl::OkStatus();
  }

 private:
  absl::Status Answered() {
    if (!c_.Readable()) return absl::OkStatus();
    if (auto s = ReadAnswer(); !s.ok()) return absl::UnavailableError(absl::StrCat("the destination went away (", s.message(), ")"));
    return absl::AbortedError("the destination answered before the stream's end");
  }
  vc::Connection& c_;
};

}  // namespace

absl::StatusOr<v1::ReceiveVolumeResult> SendVolumeOverChannel(const std::string& host, int port, const PeerTls& tls,
                                                              const v1::ReceiveVolumeHeader& header,
                                                              const service::MigrationPeer::Producer& produce,
                                                              bool* connected) {
  auto fd = Dial(host, port);
  if (connected != nullptr) *connected = fd.ok();
  if (!fd.ok()) return fd.status();
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{*fd};
  vc::SslPtr ssl;
  if (!tls.plaintext) {
    auto s = Handshake(*fd, host, tls);
    if (!s.ok()) return s.status();
    ssl = std::move(*s);
  }
  vc::Connection conn(*fd, std::move(ssl));
  ChannelSink sink(conn);
  absl::Status opened = vc::WriteMessage(conn, header);
  absl::StatusOr<storage::image::ExportResult> sent = opened.ok() ? produce(sink) : sink.Broken(opened);
  if (sink.answer) return *sink.answer;  // the destination's reason first
  if (!sent.ok()) {
    conn.Abort();  // the destination sees the stream end short and undoes the volume
    return sent.status();
  }
  if (absl::Status s = vc::WriteTrailer(conn, sent->sha256); !s.ok()) {
    (void)sink.Broken(s);
    if (sink.answer) return *sink.answer;
    return absl::UnavailableError(absl::StrCat("the destination went away before the trailer (", s.message(), ")"));
  }
  // The destination answers after its last write, its flush and the sha256 compare.
  SetTimeout(*fd, SO_RCVTIMEO, 600);
  if (auto r = sink.ReadAnswer(); !r.ok()) {
    return absl::UnavailableError(absl::StrCat("the destination went away before it answered (", r.message(), ")"));
  }
  conn.CloseWrite();
  return *sink.answer;
}

}  // namespace hvagent::api
