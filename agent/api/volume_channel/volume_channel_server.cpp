#include "agent/api/volume_channel/volume_channel_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <list>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "agent/api/volume_channel/connection.h"
#include "common/log.h"
#include "hvagent/v1/migration.pb.h"

namespace hvagent::api {
namespace {

namespace vc = volume_channel;
constexpr const char* kOperation = "hvagent.v1.MigrationService/ReceiveVolume";

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("migration");
  return logger;
}

void SetReceiveTimeout(int fd, int seconds) {
  timeval tv{seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

// The server side's TLS: the agent's certificate, a client certificate asked for and taken
// whatever its chain, which the Authorizer then checks (as gRPC's path does), so a refused
// caller hears why instead of a failed handshake.
absl::StatusOr<vc::SslCtxPtr> ServerContext(const VolumeChannelServer::Tls& tls) {
  vc::SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) return absl::InternalError(absl::StrCat("TLS: ", vc::SslErrors()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), tls.cert_file.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx.get(), tls.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx.get()) != 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("tls.cert_file / tls.key_file: cannot be used: ", vc::SslErrors()));
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, [](int, X509_STORE_CTX*) { return 1; });
  // No TLS 1.3 session tickets: one connection per volume resumes nothing, and a ticket after
  // the handshake would read to the sender as the early answer it looks for between frames.
  SSL_CTX_set_num_tickets(ctx.get(), 0);
  return ctx;
}

std::string Pem(X509* cert) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) return "";
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

absl::StatusOr<auth::Caller> CallerOf(const vc::Connection& c, const auth::Authorizer* authz) {
  if (authz == nullptr) return auth::Caller{"-", auth::Role::kController};
  std::string leaf, chain;
  if (c.ssl() != nullptr) {
    if (X509* cert = SSL_get0_peer_certificate(c.ssl())) leaf = Pem(cert);
    if (STACK_OF(X509)* more = SSL_get_peer_cert_chain(c.ssl())) {
      for (int i = 0; i < sk_X509_num(more); ++i) chain += Pem(sk_X509_value(more, i));
    }
  }
  return authz->FromPeerCertificate(leaf, chain);
}

// The frames after the header, as IncomingMigrations takes a stream.
class ChannelVolumeStream final : public service::VolumeStream {
 public:
  explicit ChannelVolumeStream(vc::Connection& c) : c_(c) {}
  bool ended() const { return ended_; }

  absl::StatusOr<service::VolumePiece> Next() override {
    auto head = vc::ReadFrameHead(c_);
    if (!head.ok()) return Gone(head.status());
    service::VolumePiece p;
    switch (head->kind) {
      case vc::kData:
        if (head->value > vc::kMaxData) {
          return absl::InvalidArgumentError(
              absl::StrCat("data: a frame of ", head->value, " bytes, more than ", vc::kMaxData));
        }
        p.kind = service::VolumePiece::Kind::kData;
        p.data.resize(head->value);
        if (auto s = c_.ReadFull(p.data.data(), p.data.size()); !s.ok()) return Gone(s);
        return p;
      case vc::kZeros:
        p.kind = service::VolumePiece::Kind::kZeros;
        p.zeros = head->value;
        return p;
      case vc::kTrailer: {
        if (head->value > vc::kMaxMessage) return absl::InvalidArgumentError("trailer: too long");
        std::string body(head->value, '\0');
        if (auto s = c_.ReadFull(body.data(), body.size()); !s.ok()) return Gone(s);
        v1::ReceiveVolumeTrailer trailer;
        if (!trailer.ParseFromString(body)) return absl::InvalidArgumentError("trailer: does not parse");
        p.kind = service::VolumePiece::Kind::kEnd;
        p.sha256 = trailer.sha256();
        ended_ = true;
        return p;
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("frame: kind ", static_cast<int>(static_cast<unsigned char>(head->kind)),
                         " is none of 'D', 'Z', 'T'"));
    }
  }

 private:
  static absl::Status Gone(const absl::Status& s) {
    return absl::CancelledError(absl::StrCat("the sender went away (", s.message(), ")"));
  }
  vc::Connection& c_;
  bool ended_ = false;
};

}  // namespace

struct VolumeChannelServer::Impl {
  const ops::Pipeline& pipeline;
  Options options;
  int listen_fd = -1;
  int port = 0;
  std::thread acceptor;
  std::atomic<bool> stopping{false};

  struct Worker {
    std::thread thread;
    std::atomic<bool> done{false};
    int fd = -1;  // the connection's socket while it is open, under mu
  };
  std::mutex mu;
  std::list<Worker> workers;

  Impl(const ops::Pipeline& p, Options o) : pipeline(p), options(std::move(o)) {}

  void Accept() {
    for (;;) {
      const int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (stopping) {
        if (fd >= 0) close(fd);
        return;
      }
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE) {
          if (errno == EMFILE || errno == ENFILE) std::this_thread::sleep_for(std::chrono::milliseconds(100));
          continue;
        }
        Log()->error("volume channel: accept: {}", std::strerror(errno));
        return;
      }
      std::lock_guard lock(mu);
      Reap();
      if (static_cast<int>(workers.size()) >= options.max_connections) {
        Log()->warn("volume channel: {} connections already; one refused", options.max_connections);
        close(fd);
        continue;
      }
      Worker& w = workers.emplace_back();
      w.fd = fd;
      w.thread = std::thread([this, &w, fd] {
        Serve(w, fd);
        w.done = true;
      });
    }
  }

  void Reap() {  // under mu
    for (auto it = workers.begin(); it != workers.end();) {
      if (it->done) {
        it->thread.join();
        it = workers.erase(it);
      } else {
        ++it;
      }
    }
  }

  void Serve(Worker& w, int fd) {
    ServeConnection(fd);
    std::lock_guard lock(mu);
    w.fd = -1;  // before the close: Stop() shuts only sockets still ours
    close(fd);
  }

  void ServeConnection(int fd) {
    vc::TuneSocket(fd);
    // The handshake and the header come at once from a real sender; a silent client is cut.
    SetReceiveTimeout(fd, 30);
    vc::SslPtr ssl;
    if (options.tls) {
      auto ctx = ServerContext(*options.tls);
      if (!ctx.ok()) {
        Log()->error("volume channel: {}", ctx.status().message());
        return;
      }
      ssl.reset(SSL_new(ctx->get()));
      if (!ssl || SSL_set_fd(ssl.get(), fd) != 1 || SSL_accept(ssl.get()) != 1) {
        Log()->warn("volume channel: TLS handshake failed: {}", vc::SslErrors());
        return;
      }
    }
    vc::Connection conn(fd, std::move(ssl));
    ServeVolume(conn, fd);
  }

  void ServeVolume(vc::Connection& conn, int fd) {
    v1::ReceiveVolumeResult result;
    ChannelVolumeStream stream(conn);
    absl::Status s = Receive(conn, fd, stream, result);
    result.set_code(static_cast<uint32_t>(s.code()));
    result.set_message(std::string(s.message()));
    if (auto w = vc::WriteMessage(conn, result); !w.ok()) {
      Log()->warn("volume channel: the answer did not reach the sender: {}", w.message());
      return;
    }
    if (!s.ok() && !stream.ended()) {
      // Answered before the stream's end: the sender looks for the answer between its frames.
      // Read on until it closes (30 s at most), so that closing here does not reset the
      // connection under it and lose the answer.
      SetReceiveTimeout(fd, 30);
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      std::string sink(64 << 10, '\0');
      while (std::chrono::steady_clock::now() < until && conn.ReadFull(sink.data(), sink.size()).ok()) {
      }
    }
    conn.CloseWrite();
  }

  absl::Status Receive(vc::Connection& conn, int fd, ChannelVolumeStream& stream, v1::ReceiveVolumeResult& result) {
    const ops::Operation* op = ops::Find(kOperation);
    if (op == nullptr || !ops::Available(*op, pipeline.services())) {
      return absl::UnimplementedError("this agent takes no incoming migrations");
    }
    const absl::StatusOr<auth::Caller> caller = CallerOf(conn, pipeline.authorizer());
    auto slot = pipeline.AdmitStream(*op, caller);
    if (!slot.ok()) {
      Log()->warn("volume channel: a sender refused: {}", slot.status().ToString());
      return slot.status();
    }
    v1::ReceiveVolumeHeader header;
    if (auto s = vc::ReadMessage(conn, &header, "header"); !s.ok()) {
      return absl::IsOutOfRange(s) || absl::IsUnavailable(s)
                 ? absl::CancelledError(absl::StrCat("the sender went away before the header (", s.message(), ")"))
                 : s;
    }
    // From here a sender is silent only while it reads its disk or the link is gone (keepalive
    // ends that sooner).
    SetReceiveTimeout(fd, 120);
    auto r = pipeline.services().incoming->Receive(header.transfer_id(), header.disk(), header.size_bytes(), stream);
    if (!r.ok()) {
      Log()->warn("volume channel: transfer {} disk {}: {}", header.transfer_id(), header.disk(), r.status().ToString());
      return r.status();
    }
    Log()->info("volume channel: transfer {} disk {} received from {} ({} bytes)", header.transfer_id(), header.disk(),
                caller->identity, r->bytes);
    result.mutable_response()->set_sha256(r->sha256);
    result.mutable_response()->set_size_bytes(r->bytes);
    return absl::OkStatus();
  }
};

VolumeChannelServer::VolumeChannelServer(const ops::Pipeline& pipeline, Options options)
    : impl_(std::make_unique<Impl>(pipeline, std::move(options))) {}

VolumeChannelServer::~VolumeChannelServer() { Stop(); }

absl::Status VolumeChannelServer::Start() {
  const std::string& host = impl_->options.host;
  const std::string where = absl::StrCat(host, " port ", impl_->options.port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(impl_->options.port);
  if (int e = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found); e != 0) {
    return absl::InvalidArgumentError(absl::StrCat("migration.data_port: ", where, ": ", gai_strerror(e)));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> list(found, freeaddrinfo);
  int fd = -1;
  std::string why = "no address";
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 16) != 0) {
      why = std::strerror(errno);
      close(fd);
      fd = -1;
    }
  }
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("migration.data_port: cannot listen on ", where, ": ", why));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  impl_->port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                                   : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  impl_->listen_fd = fd;
  impl_->acceptor = std::thread([this] { impl_->Accept(); });
  return absl::OkStatus();
}

int VolumeChannelServer::port() const { return impl_->port; }

void VolumeChannelServer::Stop() {
  if (impl_->listen_fd < 0 || impl_->stopping.exchange(true)) return;
  shutdown(impl_->listen_fd, SHUT_RDWR);
  impl_->acceptor.join();
  close(impl_->listen_fd);
  std::list<Impl::Worker> workers;
  {
    std::lock_guard lock(impl_->mu);
    for (auto& w : impl_->workers) {
      if (w.fd >= 0) shutdown(w.fd, SHUT_RDWR);
    }
    workers.splice(workers.end(), impl_->workers);
  }
  for (auto& w : workers) w.thread.join();
}

}  // namespace hvagent::api
