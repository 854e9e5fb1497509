#include "agent/api/rest/rest_server.h"

#include "absl/strings/str_cat.h"
#include "agent/api/status_mapping.h"
#include "common/log.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

// After spdlog/fmt: cpprestsdk's U() macro must not leak into them.
#include <boost/asio/ssl.hpp>
#include <cpprest/containerstream.h>
#include <cpprest/http_listener.h>
#include <cpprest/producerconsumerstream.h>
#include <cpprest/uri.h>

namespace hvagent::api {
namespace {

namespace http = web::http;

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("rest");
  return logger;
}

bool ValidRequestId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') return false;
  }
  return true;
}

std::string OpenSslError() {
  unsigned long e = ERR_get_error();
  if (e == 0) return "unknown error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct StoreDeleter {
  void operator()(X509_STORE* s) const { X509_STORE_free(s); }
};
struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};

// One consistent set of TLS material, swapped whole on reload.
struct TlsMaterial {
  std::unique_ptr<X509, X509Deleter> cert;
  std::vector<std::unique_ptr<X509, X509Deleter>> chain;
  std::unique_ptr<EVP_PKEY, KeyDeleter> key;
  std::unique_ptr<X509_STORE, StoreDeleter> client_ca;  // null: no client certificates asked
};

absl::StatusOr<std::shared_ptr<const TlsMaterial>> LoadTls(const RestTls& files) {
  auto m = std::make_shared<TlsMaterial>();
  std::unique_ptr<BIO, BioDeleter> cert_bio(BIO_new_file(files.cert_file.c_str(), "r"));
  if (!cert_bio) return absl::FailedPreconditionError(absl::StrCat("tls.cert_file: cannot read ", files.cert_file));
  m->cert.reset(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
  if (!m->cert) return absl::InvalidArgumentError(absl::StrCat("tls.cert_file: no PEM certificate in ", files.cert_file));
  while (X509* extra = PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr)) m->chain.emplace_back(extra);
  ERR_clear_error();  // the loop ends on "no start line"
  std::unique_ptr<BIO, BioDeleter> key_bio(BIO_new_file(files.key_file.c_str(), "r"));
  if (!key_bio) return absl::FailedPreconditionError(absl::StrCat("tls.key_file: cannot read ", files.key_file));
  m->key.reset(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (!m->key) return absl::InvalidArgumentError(absl::StrCat("tls.key_file: no PEM private key in ", files.key_file));
  if (X509_check_private_key(m->cert.get(), m->key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("tls.key_file: the key does not belong to tls.cert_file");
  }
  if (!files.client_ca_file.empty()) {
    m->client_ca.reset(X509_STORE_new());
    if (X509_STORE_load_locations(m->client_ca.get(), files.client_ca_file.c_str(), nullptr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("tls.client_ca_file: cannot load ", files.client_ca_file, ": ", OpenSslError()));
    }
  }
  return std::shared_ptr<const TlsMaterial>(std::move(m));
}

// How long an upload waits for the client's next bytes, and how far the body may run ahead of
// the pool. cpprestsdk reads a body off the socket as fast as it arrives into an unbounded
// buffer (it has no flow control to the reader), so a client faster than the pool would pile
// the image up in memory: past kMaxAhead bytes waiting the upload is failed and the body's
// buffer closed, which makes cpprestsdk drop the connection instead of reading on.
constexpr auto kUploadStall = std::chrono::seconds(60);
constexpr size_t kMaxAhead = 64 << 20;
constexpr size_t kUploadChunk = 1 << 20;

// A REST upload's body, read from cpprestsdk's stream on the upload's own thread (never a
// cpprestsdk pool thread: that one waits here for the pool to fill the buffer).
class CpprestUploadBody final : public service::UploadBody {
 public:
  explicit CpprestUploadBody(concurrency::streams::istream stream) : stream_(std::move(stream)) {}

  absl::StatusOr<bool> Next(std::string* chunk) override {
    try {
      if (static_cast<size_t>(stream_.streambuf().in_avail()) > kMaxAhead) {
        Close();
        return absl::ResourceExhaustedError(
            absl::StrCat("body: arrives faster than the pool takes it (over ", kMaxAhead >> 20,
                         " MiB waiting); upload over gRPC (ImageService.UploadImage), whose flow control paces "
                         "the sender"));
      }
      // The read's outcome, shared with its continuation, which may outlive a timed-out wait.
      struct Read {
        std::mutex mu;
        std::condition_variable done_cv;
        bool done = false;
        size_t count = 0;
        std::exception_ptr error;
        concurrency::streams::container_buffer<std::string> buf;
      };
      auto r = std::make_shared<Read>();
      stream_.read(r->buf, kUploadChunk).then([r](pplx::task<size_t> t) {
        std::lock_guard lock(r->mu);
        try {
          r->count = t.get();
        } catch (...) {
          r->error = std::current_exception();
        }
        r->done = true;
        r->done_cv.notify_all();
      });
      std::unique_lock lock(r->mu);
      if (!r->done_cv.wait_for(lock, kUploadStall, [&] { return r->done; })) {
        lock.unlock();
        Close();
        return absl::DeadlineExceededError(absl::StrCat("body: no bytes from the client for ",
                                                        kUploadStall.count(), " s"));
      }
      if (r->error) std::rethrow_exception(r->error);
      if (r->count == 0) return false;  // the body's end
      std::string& got = r->buf.collection();
      got.resize(r->count);  // the container may hold more than the bytes read
      chunk->swap(got);
      return true;
    } catch (const std::exception& e) {
      return absl::CancelledError(absl::StrCat("body: the client's connection failed: ", e.what()));
    }
  }

  // Reads what is left of the body and drops it. A refused upload (a bad header, a name that
  // exists) is answered only once cpprestsdk has the whole body, which it would otherwise gather
  // in memory however large the announced image; read here, at most a chunk is held at a time.
  void DiscardRest() {
    std::string chunk;
    for (;;) {
      auto more = Next(&chunk);
      if (!more.ok() || !*more) return;
    }
  }

 private:
  // Makes cpprestsdk's next write into the body fail, which ends the connection: no more of the
  // body is taken into memory. Only for a body that runs away or stalls (a refused upload's
  // remainder is read and dropped instead: cpprestsdk must finish reading it to write a reply).
  void Close() {
    try {
      stream_.streambuf().close(std::ios_base::in | std::ios_base::out).wait();
    } catch (const std::exception&) {
    }
  }
  concurrency::streams::istream stream_;
};

// An export's body: cpprestsdk pulls it from a producer_consumer_buffer as the socket takes it
// (4 KiB chunks, chunked encoding), and Write waits while more than kExportQueued bytes are
// waiting there, so memory stays bounded whatever the disk's size and the client's speed. A
// client that reads nothing for kExportStall fails the export; one that went away stops it at
// the next Write. Runs on the export's own thread (ServeExport), never a cpprestsdk pool thread.
constexpr size_t kExportQueued = 8 << 20;
constexpr auto kExportStall = std::chrono::seconds(60);
constexpr auto kExportPoll = std::chrono::milliseconds(2);

class CpprestBodyWriter final : public HttpBodyWriter {
 public:
  // `on_reply` runs when the reply has been written or failed (the shutdown bookkeeping).
  CpprestBodyWriter(http::http_request request, std::string rid, std::function<void()> on_sent,
                    std::function<void()> on_reply)
      : request_(std::move(request)), rid_(std::move(rid)), on_sent_(std::move(on_sent)),
        on_reply_(std::move(on_reply)) {}
  ~CpprestBodyWriter() override {
    if (started_ && !closed_) Abort("the export ended without finishing its body");
  }

  absl::Status Start(const HttpResponse& head) override {
    try {
      http::http_response out(static_cast<http::status_code>(head.status));
      out.headers().add("X-Request-Id", rid_);
      for (const auto& [name, value] : head.headers) out.headers().add(name, value);
      out.set_body(buf_.create_istream(), head.content_type);  // no length: chunked
      on_sent_();
      started_ = true;
      request_.reply(out).then([sent = sent_, on_reply = on_reply_](pplx::task<void> t) {
        try {
          t.get();
        } catch (const std::exception& e) {
          sent->failed = true;
          Log()->warn("export body not delivered: {}", e.what());
        }
        sent->done = true;
        on_reply();
      });
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("starting the export's reply: ", e.what()));
    }
  }

  absl::Status Write(absl::string_view bytes) override {
    if (auto s = WaitForRoom(); !s.ok()) return s;
    try {
      buf_.putn_nocopy(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()).wait();
    } catch (const std::exception& e) {
      return absl::CancelledError(absl::StrCat("the client went away: ", e.what()));
    }
    return absl::OkStatus();
  }

  void Finish() override { Close(nullptr); }
  void Abort(const std::string& why) override {
    Log()->warn("export body cut short: {}", why);
    Close(std::make_exception_ptr(std::runtime_error(why)));
  }

 private:
  struct Sent {
    std::atomic<bool> done{false};
    std::atomic<bool> failed{false};
  };

  absl::Status WaitForRoom() {
    size_t last = buf_.in_avail();
    auto progress_at = std::chrono::steady_clock::now();
    for (;;) {
      if (sent_->done.load()) return absl::CancelledError("the client went away (export stopped)");
      const size_t queued = buf_.in_avail();
      if (queued <= kExportQueued) return absl::OkStatus();
      const auto now = std::chrono::steady_clock::now();
      if (queued != last) {
        last = queued;
        progress_at = now;
      } else if (now - progress_at > kExportStall) {
        return absl::DeadlineExceededError(
            absl::StrCat("the client read nothing for ", kExportStall.count(), " s (export stopped)"));
      }
      std::this_thread::sleep_for(kExportPoll);
    }
  }

  // Ends the body: cleanly (the last chunk) or, with `error`, by failing cpprestsdk's next read,
  // which closes the connection without the last chunk.
  void Close(std::exception_ptr error) {
    if (closed_) return;
    closed_ = true;
    try {
      if (error) {
        buf_.close(std::ios_base::out, error).wait();
      } else {
        buf_.close(std::ios_base::out).wait();
      }
    } catch (const std::exception&) {
    }
  }

  http::http_request request_;
  std::string rid_;
  std::function<void()> on_sent_;
  std::function<void()> on_reply_;
  concurrency::streams::producer_consumer_buffer<uint8_t> buf_;
  std::shared_ptr<Sent> sent_ = std::make_shared<Sent>();
  bool started_ = false;
  bool closed_ = false;
};

}  // namespace

struct RestServer::Impl {
  std::string listen;
  RestRouter& router;
  size_t max_body;
  std::optional<RestTls> tls;
  std::unique_ptr<http::experimental::listener::http_listener> listener;
  std::mutex material_mu;
  std::shared_ptr<const TlsMaterial> material;

  // Shutdown bookkeeping: requests whose handler runs, and replies not yet written. Shared with
  // the reply continuations, which may outlive this object when a reply is never written.
  struct Drain {
    std::mutex mu;
    std::condition_variable changed;
    bool draining = false;
    int handlers = 0;
    int replies = 0;
  };
  std::shared_ptr<Drain> drain = std::make_shared<Drain>();
  // False (and the request answered 503) once draining; otherwise counts a handler in.
  bool Admit(http::http_request& request, const std::string& rid);
  void HandlerDone();

  std::shared_ptr<const TlsMaterial> Material() {
    std::lock_guard lock(material_mu);
    return material;
  }
  void ConfigureSsl(boost::asio::ssl::context& ctx);
  // SSL_CTX_set_cert_cb: hands each handshake the current material.
  static int OnHandshake(SSL* ssl, void* arg);

  void Serve(http::http_request request);
  // PUT of an image: runs on a thread of its own, reading the body as the import writes it.
  void ServeUpload(http::http_request request, const std::string& rid);
  // GET of an export: runs on a thread of its own, writing the body as the disk is read.
  void ServeExport(http::http_request request, const std::string& rid);
  std::optional<HttpResponse> TooLarge(const http::http_request& request) const;
  HttpResponse Dispatch(const http::http_request& request, std::string body);
  // Takes the response: its body (the JSON made once from the protobuf) moves into the reply.
  void Reply(http::http_request& request, const std::string& rid, HttpResponse resp);
};

std::optional<HttpResponse> RestServer::Impl::TooLarge(const http::http_request& request) const {
  const auto& headers = request.headers();
  if (headers.has(http::header_names::content_length) && headers.content_length() > max_body) {
    return HttpResponse{413, ErrorBody("RESOURCE_EXHAUSTED", absl::StrCat("request body: ", headers.content_length(),
                                                                          " bytes is over the limit of ", max_body))};
  }
  return std::nullopt;
}

namespace {

// Method, path, query and the headers the router reads; no body. Throws on a malformed URI.
HttpRequest HeadOf(const http::http_request& request) {
  HttpRequest req;
  req.method = request.method();
  const web::uri& uri = request.relative_uri();
  req.path = web::uri::decode(uri.path());
  for (const auto& [k, v] : web::uri::split_query(uri.query())) {
    req.query[web::uri::decode(k)] = web::uri::decode(v);
  }
  const auto& headers = request.headers();
  if (headers.has(http::header_names::authorization)) req.authorization = headers.find(http::header_names::authorization)->second;
  if (auto it = headers.find("Idempotency-Key"); it != headers.end()) req.idempotency_key = it->second;
  if (headers.has(http::header_names::content_length)) req.content_length = headers.content_length();
  return req;
}

}  // namespace

HttpResponse RestServer::Impl::Dispatch(const http::http_request& request, std::string body) {
  HttpRequest req = HeadOf(request);
  // Chunked bodies have no length up front: read, then check.
  if (body.size() > max_body) {
    return {413, ErrorBody("RESOURCE_EXHAUSTED",
                           absl::StrCat("request body: over the limit of ", max_body, " bytes"))};
  }
  req.body = std::move(body);
  return router.Handle(req);
}

void RestServer::Impl::ServeUpload(http::http_request request, const std::string& rid) {
  std::thread([this, request, rid]() mutable {
    log::ScopedRequestId scoped(rid);
    HttpResponse resp;
    try {
      CpprestUploadBody body(request.body());
      resp = router.HandleUpload(HeadOf(request), body);
      if (resp.status >= 400) body.DiscardRest();
    } catch (const std::exception& e) {
      resp = {400, ErrorBody("INVALID_ARGUMENT", absl::StrCat("malformed request: ", e.what()))};
    }
    Reply(request, rid, std::move(resp));
    HandlerDone();
  }).detach();
}

void RestServer::Impl::ServeExport(http::http_request request, const std::string& rid) {
  std::thread([this, request, rid]() mutable {
    log::ScopedRequestId scoped(rid);
    std::optional<HttpResponse> refused;
    {
      auto drain_ref = drain;
      CpprestBodyWriter out(
          request, rid,
          [drain_ref] {
            std::lock_guard lock(drain_ref->mu);
            ++drain_ref->replies;
          },
          [drain_ref] {
            std::lock_guard lock(drain_ref->mu);
            --drain_ref->replies;
            drain_ref->changed.notify_all();
          });
      try {
        refused = router.HandleExport(HeadOf(request), out);
        if (!refused) Log()->info("{} {} -> 200 (streamed)", request.method(), request.relative_uri().to_string());
      } catch (const std::exception& e) {
        refused = HttpResponse{400, ErrorBody("INVALID_ARGUMENT", absl::StrCat("malformed request: ", e.what()))};
      }
    }
    if (refused) Reply(request, rid, *refused);
    HandlerDone();
  }).detach();
}

// Never blocks a cpprestsdk thread on cpprestsdk: reading the body and writing the reply need
// threads of the same pool, so a handler that waited for them could, with every pool thread
// waiting (40 concurrent requests did it), wedge the server for good. The body is handled in a
// continuation and the reply is not waited for.
void RestServer::Impl::Serve(http::http_request request) {
  std::string rid = request.headers().has("X-Request-Id") ? request.headers()["X-Request-Id"] : "";
  if (!ValidRequestId(rid)) rid = log::NewRequestId();
  if (!Admit(request, rid)) return;
  bool upload = false;
  try {
    upload = router.IsUpload(request.method(), web::uri::decode(request.relative_uri().path()));
  } catch (const std::exception&) {
    // A malformed path: Dispatch answers it as for any request.
  }
  if (upload) {  // exempt from max_body_bytes: bounded by its Content-Length and the image limits
    ServeUpload(std::move(request), rid);
    return;
  }
  bool export_body = false;
  try {
    export_body = router.IsExport(request.method(), web::uri::decode(request.relative_uri().path()));
  } catch (const std::exception&) {
  }
  if (export_body) {
    ServeExport(std::move(request), rid);
    return;
  }
  if (auto too_large = TooLarge(request)) {
    Reply(request, rid, std::move(*too_large));
    HandlerDone();
    return;
  }
  request.extract_utf8string(true).then([this, request, rid](pplx::task<std::string> body) mutable {
    log::ScopedRequestId scoped(rid);
    HttpResponse resp;
    try {
      resp = Dispatch(request, body.get());  // complete: get() does not wait
    } catch (const std::exception& e) {
      // Malformed requests surface as exceptions from cpprestsdk (bad URI encoding, body decoding).
      resp = {400, ErrorBody("INVALID_ARGUMENT", absl::StrCat("malformed request: ", e.what()))};
    }
    Reply(request, rid, std::move(resp));
    HandlerDone();
  });
}

bool RestServer::Impl::Admit(http::http_request& request, const std::string& rid) {
  {
    std::lock_guard lock(drain->mu);
    if (!drain->draining) {
      ++drain->handlers;
      return true;
    }
  }
  HttpResponse resp{503, ErrorBody("UNAVAILABLE", "the agent is shutting down; retry against its successor")};
  resp.headers["Retry-After"] = "1";
  Reply(request, rid, std::move(resp));
  return false;
}

void RestServer::Impl::HandlerDone() {
  std::lock_guard lock(drain->mu);
  --drain->handlers;
  drain->changed.notify_all();
}

void RestServer::Impl::Reply(http::http_request& request, const std::string& rid, HttpResponse resp) {
  log::ScopedRequestId scoped(rid);
  // The access log: a GET that succeeded at debug (the operation's own line says the rest).
  const bool quiet = request.method() == http::methods::GET && resp.status < 400;
  const auto level = quiet ? spdlog::level::debug : spdlog::level::info;
  if (Log()->should_log(level)) {
    Log()->log(level, "{} {} -> {}", request.method(), request.relative_uri().to_string(), resp.status);
  }
  http::http_response out(static_cast<http::status_code>(resp.status));
  out.headers().add("X-Request-Id", rid);
  for (const auto& [name, value] : resp.headers) out.headers().add(name, value);
  if (!resp.body.empty()) out.set_body(std::move(resp.body), resp.content_type);
  {
    std::lock_guard lock(drain->mu);
    ++drain->replies;
  }
  request.reply(out).then([drain = drain](pplx::task<void> sent) {
    try {
      sent.get();
    } catch (const std::exception& e) {
      Log()->warn("reply failed: {}", e.what());
    }
    std::lock_guard lock(drain->mu);
    --drain->replies;
    drain->changed.notify_all();
  });
}

int RestServer::Impl::OnHandshake(SSL* ssl, void* arg) {
  auto m = static_cast<Impl*>(arg)->Material();
  if (!m || SSL_use_certificate(ssl, m->cert.get()) != 1 || SSL_use_PrivateKey(ssl, m->key.get()) != 1) return 0;
  SSL_clear_chain_certs(ssl);
  for (const auto& c : m->chain) SSL_add1_chain_cert(ssl, c.get());
  if (m->client_ca) {
    SSL_set1_verify_cert_store(ssl, m->client_ca.get());
    SSL_set_verify(ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  return 1;
}

void RestServer::Impl::ConfigureSsl(boost::asio::ssl::context& ctx) {
  SSL_CTX* c = ctx.native_handle();
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_cipher_list(c, "ECDHE+AESGCM:ECDHE+CHACHA20");
  SSL_CTX_set_cert_cb(c, &Impl::OnHandshake, this);
}

RestServer::RestServer(std::string listen, RestRouter& router, size_t max_body_bytes, std::optional<RestTls> tls)
    : impl_(new Impl{std::move(listen), router, max_body_bytes, std::move(tls), nullptr, {}, nullptr}) {}

absl::Status RestServer::ReloadTls() {
  if (!impl_->tls) return absl::OkStatus();
  auto m = LoadTls(*impl_->tls);
  if (!m.ok()) return m.status();
  std::lock_guard lock(impl_->material_mu);
  impl_->material = *m;
  Log()->info("REST TLS material reloaded from {}", impl_->tls->cert_file);
  return absl::OkStatus();
}

RestServer::~RestServer() { Stop(); }

absl::Status RestServer::Start() {
  http::experimental::listener::http_listener_config config;
  if (impl_->tls) {
    auto m = LoadTls(*impl_->tls);
    if (!m.ok()) return m.status();
    impl_->material = *m;
    config.set_ssl_context_callback([impl = impl_.get()](boost::asio::ssl::context& ctx) { impl->ConfigureSsl(ctx); });
  }
  const char* scheme = impl_->tls ? "https" : "http";
  try {
    impl_->listener = std::make_unique<http::experimental::listener::http_listener>(
        web::uri(absl::StrCat(scheme, "://", impl_->listen)), config);
    impl_->listener->support([this](http::http_request r) { impl_->Serve(std::move(r)); });
    // cpprestsdk answers OPTIONS and TRACE itself unless they have handlers of their own (TRACE
    // would echo the request, Authorization header included): route them like any method, so
    // they get the same checks and a 405.
    for (const auto& method : {http::methods::OPTIONS, http::methods::TRCE}) {
      impl_->listener->support(method, [this](http::http_request r) { impl_->Serve(std::move(r)); });
    }
    impl_->listener->open().wait();
  } catch (const std::exception& e) {
    impl_->listener.reset();
    return absl::UnavailableError(absl::StrCat("rest.listen ", impl_->listen, ": ", e.what()));
  }
  Log()->info("REST listening on {}://{}{}", scheme, impl_->listen,
              impl_->tls && !impl_->tls->client_ca_file.empty() ? " (client certificates required)" : "");
  return absl::OkStatus();
}

void RestServer::BeginDrain() {
  std::lock_guard lock(impl_->drain->mu);
  impl_->drain->draining = true;
}

void RestServer::Stop(std::chrono::milliseconds reply_grace) {
  if (!impl_->listener) return;
  BeginDrain();
  {
    // Handlers first, without a bound of our own: a create or delete that is half-way must run
    // to its end (every step has its deadline), never be cut off by the process exiting.
    auto& d = *impl_->drain;
    std::unique_lock lock(d.mu);
    while (!d.changed.wait_for(lock, std::chrono::seconds(5), [&] { return d.handlers == 0; })) {
      Log()->info("shutting down: waiting for {} REST request(s) still being handled", d.handlers);
    }
    // Then their replies, for a while: a client that does not read must not hold the exit.
    if (!d.changed.wait_for(lock, reply_grace, [&] { return d.replies == 0; })) {
      Log()->warn("shutting down: {} REST repl(ies) not written within {} ms", d.replies, reply_grace.count());
    }
  }
  try {
    impl_->listener->close().wait();
  } catch (const std::exception& e) {
    Log()->warn("closing REST listener: {}", e.what());
  }
  impl_->listener.reset();
}

}  // namespace hvagent::api
