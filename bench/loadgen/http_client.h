#pragma once
// A small HTTP/1.1 client over raw sockets with keep-alive, for measuring the agent's REST
// server rather than a client library: cpprestsdk's http_client runs every request through
// PPL tasks and its own thread pool and costs more CPU per request than the server it would
// measure, on a 2-core machine where client and server share the cores. Only what the
// benchmark needs: GET, Content-Length or chunked bodies, loopback.

#include <chrono>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "bench/loadgen/report.h"

namespace hvagent::bench {

struct HttpResponse {
  int status = 0;
  std::string body;
  bool close = false;  // the server said Connection: close
};

// Parses one response from the start of `buf`: the bytes it used, 0 while incomplete, or an
// error for a malformed one.
absl::StatusOr<size_t> ParseHttpResponse(const std::string& buf, HttpResponse* out);

// One keep-alive connection to 127.0.0.1:port, used from one thread.
class HttpConnection {
 public:
  // `timeout`: how long one answer may take (a server that stops answering is an error).
  static absl::StatusOr<HttpConnection> Connect(int port, std::chrono::milliseconds timeout = std::chrono::seconds(10));
  HttpConnection(HttpConnection&& other) noexcept;
  HttpConnection& operator=(HttpConnection&& other) noexcept;
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;
  ~HttpConnection();

  // Reconnects by itself when the server closed the connection.
  absl::StatusOr<HttpResponse> Get(const std::string& path);

 private:
  HttpConnection(int port, int fd) : port_(port), fd_(fd) {}
  void ApplyTimeout();
  int port_ = 0;
  int fd_ = -1;
  std::chrono::milliseconds timeout_{10000};
  std::string buf_;
};

// Closed loop: `concurrency` keep-alive connections, each sending the next GET as soon as the
// previous answer arrived, for `duration`, driven by one epoll thread.
struct LoadResult {
  uint64_t ok = 0;
  uint64_t errors = 0;
  double seconds = 0;
  Latencies latencies;
  double per_second() const { return seconds > 0 ? static_cast<double>(ok) / seconds : 0; }
};
LoadResult RunHttpLoad(int port, const std::string& path, int concurrency, std::chrono::milliseconds duration);

}  // namespace hvagent::bench
