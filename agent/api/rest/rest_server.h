#pragma once
// RestServer: serves RestRouter over HTTP with cpprestsdk's http_listener. Enforces the body
// size limit (413), tags each request with an id (X-Request-Id in and out) and catches every
// exception cpprestsdk throws at this edge.

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "agent/api/rest/rest_router.h"

namespace hvagent::api {

class RestServer {
 public:
  // listen: "HOST:PORT" (IPv4 literal or "localhost").
  RestServer(std::string listen, RestRouter& router, size_t max_body_bytes);
  ~RestServer();
  absl::Status Start();
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hvagent::api
