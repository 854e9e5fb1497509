#include "agent/api/console_ws/console_ws_server.h"

#include <openssl/ssl.h>

#include <atomic>
#include <cctype>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/api/console_ws/console_page.h"
#include "common/host_port.h"
#include "common/log.h"

namespace hvagent::api {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;
using PlainStream = beast::tcp_stream;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;
using Request = http::request<http::empty_body>;

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("console");
  return logger;
}

constexpr auto kRequestTimeout = std::chrono::seconds(10);  // TLS handshake + request headers
constexpr size_t kMaxKeystrokeMessage = 64 * 1024;
constexpr size_t kMaxAssetBytes = 4 << 20;
// Close codes the page shows: the application range (4000-4999) of RFC 6455.
constexpr uint16_t kClosedTakenOver = 4001;
constexpr uint16_t kClosedError = 4002;

// Posts work to the I/O thread until Stop(): the console's listener runs on the hypervisor's
// event thread and may fire while the server is going away.
struct PostGate {
  std::mutex mu;
  asio::io_context* ioc = nullptr;
  template <class F>
  void Post(F&& f) {
    std::lock_guard lock(mu);
    if (ioc != nullptr) asio::post(*ioc, std::forward<F>(f));
  }
  void Close() {
    std::lock_guard lock(mu);
    ioc = nullptr;
  }
};

// What every connection needs; owned by Impl, which outlives them (see Stop()).
struct Shared {
  service::ConsoleSessions& sessions;
  service::ConsoleTickets& tickets;
  ConsoleWsServer::RefusalSink refused;
  std::string asset_dir;
  int max_connections;
  auth::RateLimiter* limiter;
  std::atomic<int> connections{0};
  std::shared_ptr<PostGate> gate = std::make_shared<PostGate>();
};

// Counts one connection for its lifetime, handed from the HTTP phase to the WebSocket.
struct ConnectionSlot {
  explicit ConnectionSlot(Shared& s) : shared(s) { ++shared.connections; }
  ~ConnectionSlot() { --shared.connections; }
  Shared& shared;
};

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

struct Target {
  std::vector<std::string> segments;  // of the path, without empty ones
  std::map<std::string, std::string> query;
};

// %XX decoded (a domain name in the path is percent-encoded by the ticket's URL); a malformed
// escape is kept as is, and then names nothing.
std::string PercentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    int hi = 0;
    int lo = 0;
    if (s[i] == '%' && i + 2 < s.size() &&
        (hi = HexValue(s[i + 1])) >= 0 && (lo = HexValue(s[i + 2])) >= 0) {
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

Target ParseTarget(std::string_view target) {
  Target t;
  size_t q = target.find('?');
  const std::string_view path = target.substr(0, q);
  for (absl::string_view seg : absl::StrSplit(absl::string_view(path.data(), path.size()), '/', absl::SkipEmpty())) {
    t.segments.push_back(PercentDecode(std::string_view(seg.data(), seg.size())));
  }
  if (q != std::string_view::npos) {
    const std::string_view query = target.substr(q + 1);
    for (absl::string_view kv : absl::StrSplit(absl::string_view(query.data(), query.size()), '&', absl::SkipEmpty())) {
      std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
      t.query.emplace(std::move(p.first), std::move(p.second));  // the first of a repeated key wins
    }
  }
  return t;
}

// The domain of a request, for the audit line: it came from the caller, so only the characters
// a domain name may have, and not too many of them.
std::string ForAudit(const std::string& domain) {
  std::string out = domain.substr(0, 64);
  for (char& c : out) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_') c = '?';
  }
  return out;
}

bool Flag(const Target& t, const std::string& key) {
  auto it = t.query.find(key);
  return it != t.query.end() && (it->second == "1" || it->second == "true");
}

// The files a request can reach: this list, nothing a caller names.
struct Asset {
  const char* name;
  const char* file;  // under asset_dir; nullptr: built in
  const char* type;
};
constexpr Asset kAssets[] = {
    {"xterm.js", "xterm.js", "application/javascript"},
    {"xterm.css", "xterm.css", "text/css"},
    {"console.js", nullptr, "application/javascript"},
};

std::optional<std::string> ReadAsset(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::string data;
  char buf[16384];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    data.append(buf, static_cast<size_t>(in.gcount()));
    if (data.size() > kMaxAssetBytes) return std::nullopt;
  }
  return data;
}

template <class Stream>
auto& Tcp(Stream& s) {
  return beast::get_lowest_layer(s);
}

// ---- The WebSocket phase: one attachment to the console ----

template <class Stream>
class WsSession : public std::enable_shared_from_this<WsSession<Stream>> {
 public:
  WsSession(Stream&& stream, std::shared_ptr<asio::ssl::context> tls, std::unique_ptr<ConnectionSlot> slot,
            Shared& shared, std::string domain, std::shared_ptr<service::ConsoleSessions::Attachment> attachment)
      : tls_(std::move(tls)), slot_(std::move(slot)), shared_(shared), ws_(std::move(stream)),
        domain_(std::move(domain)), attachment_(std::move(attachment)) {}

  ~WsSession() {
    // The listener holds nothing of ours but a weak pointer; clearing it keeps the event thread
    // from posting for a connection that is gone.
    attachment_->SetListener(nullptr);
    Log()->info("serial-ws client of {} detached", domain_);
  }

  void Accept(const Request& req) {
    Tcp(ws_.next_layer()).expires_never();
    // A quiet console is normal (an idle guest, a person reading): ping the browser when nothing
    // moved for half the idle timeout, and drop it only when it does not answer.
    auto timeouts = websocket::stream_base::timeout::suggested(beast::role_type::server);
    timeouts.keep_alive_pings = true;
    ws_.set_option(timeouts);
    ws_.read_message_max(kMaxKeystrokeMessage);
    ws_.binary(true);
    ws_.async_accept(req, [self = this->shared_from_this()](beast::error_code ec) {
      if (ec) return;
      self->Attached();
    });
  }

 private:
  void Attached() {
    Log()->info("serial-ws client attached to {} as {}", domain_, attachment_->writer() ? "writer" : "reader");
    auto pending = pump_pending_;
    auto gate = shared_.gate;
    std::weak_ptr<WsSession> weak = this->shared_from_this();
    // On the hypervisor's event thread: only a flag and a post, coalesced while one waits.
    attachment_->SetListener([pending, gate, weak] {
      if (pending->exchange(true)) return;
      gate->Post([weak] {
        if (auto self = weak.lock()) self->Pump();
      });
    });
    Read();
    Pump();
  }

  void Read() {
    ws_.async_read(in_, [self = this->shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return;  // closed, or the timeout: the session ends with its last handler
      self->Typed();
    });
  }

  void Typed() {
    std::string bytes = beast::buffers_to_string(in_.data());
    in_.consume(in_.size());
    absl::Status s = attachment_->Write(bytes);
    if (!s.ok() && !attachment_->writer()) {
      if (!attachment_->ended()) Close(websocket::close_code::policy_error, "read_only: this connection only reads");
      return;
    }
    if (!s.ok()) Log()->debug("serial-ws input to {} not taken: {}", domain_, s.message());
    Read();
  }

  // On the I/O thread: sends what the attachment buffered, one frame at a time; closes once it
  // ended and everything is out.
  void Pump() {
    pump_pending_->store(false);
    if (writing_ || closing_) return;
    std::string frame;
    while (auto out = attachment_->TryNext()) {
      if (out->dropped_before > 0) {
        absl::StrAppend(&frame, "\r\n[hvagent: ", out->dropped_before, " bytes of console output dropped]\r\n");
      }
      frame += out->data;
    }
    if (frame.empty()) {
      if (auto why = attachment_->ended()) {
        if (why->ok()) {
          Close(websocket::close_code::normal, "the console closed");
        } else {
          Close(absl::IsAborted(*why) ? kClosedTakenOver : kClosedError, std::string(why->message()));
        }
      }
      return;
    }
    writing_ = true;
    out_ = std::move(frame);
    ws_.async_write(asio::buffer(out_), [self = this->shared_from_this()](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (ec) return;
      self->Pump();
    });
  }

  void Close(uint16_t code, std::string reason) {
    if (closing_) return;
    closing_ = true;
    if (reason.size() > 120) reason.resize(120);  // a close frame's reason is at most 123 bytes
    websocket::close_reason why(static_cast<websocket::close_code>(code));
    why.reason = reason;
    ws_.async_close(why, [self = this->shared_from_this()](beast::error_code) {});
  }

  const std::shared_ptr<asio::ssl::context> tls_;  // outlives the stream that uses it
  const std::unique_ptr<ConnectionSlot> slot_;
  Shared& shared_;
  websocket::stream<Stream> ws_;
  const std::string domain_;
  const std::shared_ptr<service::ConsoleSessions::Attachment> attachment_;
  const std::shared_ptr<std::atomic<bool>> pump_pending_ = std::make_shared<std::atomic<bool>>(false);
  beast::flat_buffer in_;
  std::string out_;
  bool writing_ = false;
  bool closing_ = false;
};

// ---- The HTTP phase: one request, answered or upgraded ----

template <class Stream>
class HttpConnection : public std::enable_shared_from_this<HttpConnection<Stream>> {
 public:
  HttpConnection(Stream&& stream, std::shared_ptr<asio::ssl::context> tls, std::unique_ptr<ConnectionSlot> slot,
                 Shared& shared, std::string peer)
      : tls_(std::move(tls)), slot_(std::move(slot)), shared_(shared), stream_(std::move(stream)),
        peer_(std::move(peer)) {}

  void Start() {
    Tcp(stream_).expires_after(kRequestTimeout);
    if constexpr (std::is_same_v<Stream, TlsStream>) {
      stream_.async_handshake(asio::ssl::stream_base::server, [self = this->shared_from_this()](beast::error_code ec) {
        if (ec) return;
        self->ReadRequest();
      });
    } else {
      ReadRequest();
    }
  }

 private:
  void ReadRequest() {
    parser_.emplace();
    parser_->header_limit(8 * 1024);
    http::async_read(stream_, buffer_, *parser_, [self = this->shared_from_this()](beast::error_code ec, size_t) {
      if (ec == http::error::end_of_stream) return;
      if (ec) return self->Reply(http::status::bad_request, "text/plain", "malformed HTTP request\n");
      self->Route(self->parser_->release());
    });
  }

  void Route(Request req) {
    if (shared_.limiter != nullptr) {
      // Before anything else, so that guessing tickets (or hammering the page) is bounded per peer.
      if (absl::Status s = shared_.limiter->Allow("serial-ws " + peer_); !s.ok()) {
        const Target t = ParseTarget(std::string_view(req.target().data(), req.target().size()));
        const bool names_domain = t.segments.size() >= 2 && t.segments[0] == "console" && t.segments[1] != "static";
        if (shared_.refused) shared_.refused(names_domain ? ForAudit(t.segments[1]) : "", peer_, s);
        return Reply(http::status::too_many_requests, "text/plain", absl::StrCat(s.message(), "\n"));
      }
    }
    if (req.method() != http::verb::get) {
      return Reply(http::status::method_not_allowed, "text/plain", "only GET is served here\n");
    }
    const Target t = ParseTarget(std::string_view(req.target().data(), req.target().size()));
    const auto& seg = t.segments;
    if (seg.size() == 3 && seg[0] == "console" && seg[1] == "static") return ServeAsset(seg[2]);
    if (seg.size() == 2 && seg[0] == "console") return Reply(http::status::ok, "text/html; charset=utf-8", kConsolePage);
    if (seg.size() == 3 && seg[0] == "console" && seg[2] == "ws") return Upgrade(std::move(req), seg[1], t);
    return Reply(http::status::not_found, "text/plain", "no such page\n");
  }

  void ServeAsset(const std::string& name) {
    for (const Asset& a : kAssets) {
      if (name != a.name) continue;
      if (a.file == nullptr) return Reply(http::status::ok, a.type, kConsoleScript);
      auto data = ReadAsset(shared_.asset_dir + "/" + a.file);
      if (!data) {
        return Reply(http::status::internal_server_error, "text/plain",
                     absl::StrCat(a.name, " is missing from ", shared_.asset_dir, " (package libjs-xterm)\n"));
      }
      return Reply(http::status::ok, a.type, std::move(*data));
    }
    Reply(http::status::not_found, "text/plain", "no such page\n");
  }

  void Upgrade(Request req, const std::string& domain, const Target& t) {
    if (!websocket::is_upgrade(req)) {
      return Reply(http::status::bad_request, "text/plain",
                   "this path takes only a WebSocket upgrade (the page is /console/NAME?ticket=...)\n");
    }
    auto ticket = t.query.find("ticket");
    if (ticket == t.query.end() || ticket->second.empty()) {
      absl::Status why = absl::UnauthenticatedError("ticket: is required (a serial-ws ticket, query parameter)");
      if (shared_.refused) shared_.refused(ForAudit(domain), peer_, why);
      return Reply(http::status::unauthorized, "text/plain", absl::StrCat(why.message(), "\n"));
    }
    if (absl::Status s = shared_.tickets.Redeem(ticket->second, domain, service::ConsoleKind::kSerialWs); !s.ok()) {
      if (shared_.refused) shared_.refused(ForAudit(domain), peer_, s);
      return Reply(http::status::unauthorized, "text/plain", absl::StrCat(s.message(), "\n"));
    }
    const bool write = !Flag(t, "read_only");
    auto attached = shared_.sessions.Attach(domain, write, write && Flag(t, "take_over"));
    if (!attached.ok()) {
      const absl::Status& s = attached.status();
      http::status code = absl::IsNotFound(s)             ? http::status::not_found
                          : absl::IsFailedPrecondition(s) ? http::status::conflict
                                                          : http::status::service_unavailable;
      return Reply(code, "text/plain", absl::StrCat(s.message(), "\n"));
    }
    auto ws = std::make_shared<WsSession<Stream>>(std::move(stream_), tls_, std::move(slot_), shared_, domain,
                                                  std::move(*attached));
    ws->Accept(req);
  }

  void Reply(http::status status, const char* type, std::string body) {
    auto res = std::make_shared<http::response<http::string_body>>(status, 11);
    res->set(http::field::content_type, type);
    res->set(http::field::cache_control, "no-store");
    // The page's address holds a ticket: it must not travel in a Referer.
    res->set("Referrer-Policy", "no-referrer");
    res->set("X-Content-Type-Options", "nosniff");
    res->set("Content-Security-Policy",
             "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
             "img-src 'self'; frame-ancestors 'self'");
    res->keep_alive(false);
    res->body() = std::move(body);
    res->prepare_payload();
    http::async_write(stream_, *res, [self = this->shared_from_this(), res](beast::error_code, size_t) {
      beast::error_code ignored;
      Tcp(self->stream_).socket().shutdown(tcp::socket::shutdown_send, ignored);
    });
  }

  const std::shared_ptr<asio::ssl::context> tls_;
  std::unique_ptr<ConnectionSlot> slot_;
  Shared& shared_;
  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::empty_body>> parser_;
  const std::string peer_;  // the remote IP address: the rate limit's caller and the audit's
};

absl::StatusOr<std::shared_ptr<asio::ssl::context>> LoadTls(const ConsoleWsTls& files) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  SSL_CTX* c = ctx->native_handle();
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_cipher_list(c, "ECDHE+AESGCM:ECDHE+CHACHA20");
  beast::error_code ec;
  ctx->use_certificate_chain_file(files.cert_file, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("tls.cert_file: ", files.cert_file, ": ", ec.message()));
  ctx->use_private_key_file(files.key_file, asio::ssl::context::pem, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("tls.key_file: ", files.key_file, ": ", ec.message()));
  if (SSL_CTX_check_private_key(c) != 1) {
    return absl::InvalidArgumentError("tls.key_file: the key does not belong to tls.cert_file");
  }
  return ctx;
}

absl::StatusOr<tcp::endpoint> ParseListen(const std::string& listen) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return absl::InvalidArgumentError("console.ws_listen: must be HOST:PORT");
  std::string host = HostOf(listen);
  if (host == "localhost") host = "127.0.0.1";
  int port = 0;
  try {
    port = std::stoi(listen.substr(colon + 1));
  } catch (...) {
    return absl::InvalidArgumentError("console.ws_listen: port must be 0-65535");
  }
  beast::error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (ec || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("console.ws_listen: '", listen, "' is not IP:PORT"));
  }
  return tcp::endpoint(addr, static_cast<uint16_t>(port));
}

}  // namespace

struct ConsoleWsServer::Impl {
  Impl(service::ConsoleSessions& sessions, service::ConsoleTickets& tickets, Options o, RefusalSink refused)
      : options(std::move(o)), shared{sessions, tickets, std::move(refused), options.asset_dir, options.max_connections, options.limiter} {}

  void Accept() {
    acceptor->async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (!acceptor->is_open()) return;
      if (!ec) Serve(std::move(socket));
      Accept();
    });
  }

  void Serve(tcp::socket socket) {
    if (shared.connections.load() >= shared.max_connections) {
      Log()->warn("serial-ws: {} connections already; one refused", shared.max_connections);
      return;  // closed as it goes out of scope
    }
    beast::error_code ec;
    const tcp::endpoint remote = socket.remote_endpoint(ec);
    if (ec) return;  // already gone
    std::string peer = remote.address().to_string();
    // Keystroke echoes are single small frames: send each at once rather than after the
    // client's delayed ACK of the one before (Nagle).
    socket.set_option(tcp::no_delay(true), ec);
    auto slot = std::make_unique<ConnectionSlot>(shared);
    std::shared_ptr<asio::ssl::context> ctx;
    {
      std::lock_guard lock(tls_mu);
      ctx = tls_context;
    }
    if (ctx) {
      std::make_shared<HttpConnection<TlsStream>>(TlsStream(std::move(socket), *ctx), ctx, std::move(slot), shared,
                                                 std::move(peer))
          ->Start();
    } else {
      std::make_shared<HttpConnection<PlainStream>>(PlainStream(std::move(socket)), nullptr, std::move(slot), shared,
                                                 std::move(peer))
          ->Start();
    }
  }

  const Options options;
  Shared shared;
  std::mutex tls_mu;
  std::shared_ptr<asio::ssl::context> tls_context;  // null: plain
  std::thread thread;
  int port = 0;
  // Stop() destroys the io_context, and with its pending handlers every connection (each is
  // owned by the handlers of its own operations), which detaches it from the console.
  std::optional<asio::io_context> ioc{std::in_place, 1};
  std::optional<tcp::acceptor> acceptor;
};

ConsoleWsServer::ConsoleWsServer(service::ConsoleSessions& sessions, service::ConsoleTickets& tickets, Options options,
                                 RefusalSink refused)
    : impl_(std::make_unique<Impl>(sessions, tickets, std::move(options), std::move(refused))) {}

ConsoleWsServer::~ConsoleWsServer() { Stop(); }

absl::Status ConsoleWsServer::Start() {
  auto endpoint = ParseListen(impl_->options.listen);
  if (!endpoint.ok()) return endpoint.status();
  if (impl_->options.tls) {
    auto ctx = LoadTls(*impl_->options.tls);
    if (!ctx.ok()) return ctx.status();
    impl_->tls_context = *ctx;
  }
  beast::error_code ec;
  auto& acc = impl_->acceptor.emplace(*impl_->ioc);
  acc.open(endpoint->protocol(), ec);
  if (!ec) acc.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acc.bind(*endpoint, ec);
  if (!ec) acc.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    impl_->acceptor.reset();
    return absl::UnavailableError(absl::StrCat("console.ws_listen ", impl_->options.listen, ": ", ec.message()));
  }
  impl_->port = acc.local_endpoint().port();
  {
    std::lock_guard lock(impl_->shared.gate->mu);
    impl_->shared.gate->ioc = &*impl_->ioc;
  }
  impl_->Accept();
  impl_->thread = std::thread([this] { impl_->ioc->run(); });
  Log()->info("serial-ws console listener on {} ({})", impl_->options.listen, impl_->tls_context ? "TLS" : "plain text");
  return absl::OkStatus();
}

int ConsoleWsServer::port() const { return impl_->port; }

absl::Status ConsoleWsServer::ReloadTls() {
  if (!impl_->options.tls) return absl::OkStatus();
  auto ctx = LoadTls(*impl_->options.tls);
  if (!ctx.ok()) return ctx.status();
  std::lock_guard lock(impl_->tls_mu);
  impl_->tls_context = *ctx;  // connections keep the context they started with
  return absl::OkStatus();
}

void ConsoleWsServer::Stop() {
  if (!impl_->thread.joinable()) return;
  impl_->shared.gate->Close();
  impl_->ioc->stop();
  impl_->thread.join();
  // The I/O thread is gone: what it served is ours to tear down, the listener first.
  impl_->acceptor.reset();
  impl_->ioc.reset();
}

}  // namespace hvagent::api
