#include "agent/api/rest/rest_server.h"

#include "absl/strings/str_cat.h"
#include "agent/api/status_mapping.h"
#include "common/log.h"

// After spdlog/fmt: cpprestsdk's U() macro must not leak into them.
#include <cpprest/http_listener.h>
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

}  // namespace

struct RestServer::Impl {
  std::string listen;
  RestRouter& router;
  size_t max_body;
  std::unique_ptr<http::experimental::listener::http_listener> listener;

  void Serve(http::http_request request);
  HttpResponse Dispatch(http::http_request& request);
};

HttpResponse RestServer::Impl::Dispatch(http::http_request& request) {
  HttpRequest req;
  req.method = request.method();
  const web::uri& uri = request.relative_uri();
  req.path = web::uri::decode(uri.path());
  for (const auto& [k, v] : web::uri::split_query(uri.query())) {
    req.query[web::uri::decode(k)] = web::uri::decode(v);
  }
  const auto& headers = request.headers();
  if (headers.has(http::header_names::content_length) && request.body()) {
    uint64_t length = headers.content_length();
    if (length > max_body) {
      return {413, ErrorBody("RESOURCE_EXHAUSTED",
                             absl::StrCat("request body: ", length, " bytes is over the limit of ", max_body))};
    }
  }
  // Chunked bodies have no length up front: read, then check.
  std::string body = request.extract_utf8string(true).get();
  if (body.size() > max_body) {
    return {413, ErrorBody("RESOURCE_EXHAUSTED",
                           absl::StrCat("request body: over the limit of ", max_body, " bytes"))};
  }
  req.body = std::move(body);
  return router.Handle(req);
}

void RestServer::Impl::Serve(http::http_request request) {
  std::string rid = request.headers().has("X-Request-Id") ? request.headers()["X-Request-Id"] : "";
  if (!ValidRequestId(rid)) rid = log::NewRequestId();
  log::ScopedRequestId scoped(rid);
  HttpResponse resp;
  try {
    resp = Dispatch(request);
  } catch (const std::exception& e) {
    // Malformed requests surface as exceptions from cpprestsdk (bad URI encoding, body decoding).
    resp = {400, ErrorBody("INVALID_ARGUMENT", absl::StrCat("malformed request: ", e.what()))};
  }
  Log()->info("{} {} -> {}", request.method(), request.relative_uri().to_string(), resp.status);
  http::http_response out(static_cast<http::status_code>(resp.status));
  out.headers().add("X-Request-Id", rid);
  if (!resp.body.empty()) out.set_body(resp.body, resp.content_type);
  try {
    request.reply(out).wait();
  } catch (const std::exception& e) {
    Log()->warn("reply failed: {}", e.what());
  }
}

RestServer::RestServer(std::string listen, RestRouter& router, size_t max_body_bytes)
    : impl_(new Impl{std::move(listen), router, max_body_bytes, nullptr}) {}

RestServer::~RestServer() { Stop(); }

absl::Status RestServer::Start() {
  try {
    impl_->listener = std::make_unique<http::experimental::listener::http_listener>(
        web::uri(absl::StrCat("http://", impl_->listen)));
    impl_->listener->support([this](http::http_request r) { impl_->Serve(std::move(r)); });
    impl_->listener->open().wait();
  } catch (const std::exception& e) {
    impl_->listener.reset();
    return absl::UnavailableError(absl::StrCat("rest.listen ", impl_->listen, ": ", e.what()));
  }
  Log()->info("REST listening on http://{}", impl_->listen);
  return absl::OkStatus();
}

void RestServer::Stop() {
  if (!impl_->listener) return;
  try {
    impl_->listener->close().wait();
  } catch (const std::exception& e) {
    Log()->warn("closing REST listener: {}", e.what());
  }
  impl_->listener.reset();
}

}  // namespace hvagent::api
