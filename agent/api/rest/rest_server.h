#pragma once
// RestServer: serves RestRouter over HTTP with cpprestsdk's http_listener. Enforces the body
// size limit (413), tags each request with an id (X-Request-Id in and out) and catches every
// exception cpprestsdk throws at this edge.

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "agent/api/rest/rest_router.h"

namespace hvagent::api {

// HTTPS: the server's certificate and key (PEM), and, when `client_ca_file` is set, client
// certificates required and verified against it. TLS 1.2 at least; ECDHE with AES-GCM or
// ChaCha20 for TLS 1.2. Files are re-read by ReloadTls() (SIGHUP) without closing the listener:
// each new handshake takes the current certificate, key and CA.
struct RestTls {
  std::string cert_file;
  std::string key_file;
  std::string client_ca_file;
};

class RestServer {
 public:
  // listen: "HOST:PORT" (IPv4 literal or "localhost"). Without `tls`: plain HTTP.
  RestServer(std::string listen, RestRouter& router, size_t max_body_bytes, std::optional<RestTls> tls = {});
  ~RestServer();
  absl::Status Start();
  // Shutdown, in two steps. BeginDrain(): from now on every new request is answered 503
  // UNAVAILABLE with Retry-After (the agent is going away); requests already being handled go
  // on. Stop(): waits until no handler runs any more (each is bounded by its own tool and
  // libvirt deadlines), then up to `reply_grace` for their replies to be written, then closes
  // the listener. Stop() alone drains too.
  void BeginDrain();
  void Stop(std::chrono::milliseconds reply_grace = std::chrono::seconds(5));
  // Re-reads the TLS files; on an error the current ones stay in use.
  absl::Status ReloadTls();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hvagent::api
