#pragma once
// Transport-neutral HTTP request/response, so REST resources are plain functions that unit
// tests call directly; RestServer adapts cpprestsdk to these.

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace hvagent::api {

struct HttpRequest {
  std::string method;  // "GET", "POST", "DELETE"
  std::string path;    // decoded, without query, e.g. "/v1/domains/web1:start"
  std::map<std::string, std::string> query;
  std::string body;
  std::string authorization;  // the Authorization header, "" when absent
  std::optional<std::string> idempotency_key;  // the Idempotency-Key header
  std::optional<uint64_t> content_length;      // the Content-Length header (uploads are sized by it)
};

struct HttpResponse {
  int status = 200;
  std::string body;  // JSON, or empty (204)
  std::string content_type = "application/json";
  std::map<std::string, std::string> headers;  // extra response headers
};

// A response whose body streams out (an export): status and headers first, then the bytes.
// The transport holds at most a bounded amount of the body in memory: Write waits while the
// client is slower than the producer.
class HttpBodyWriter {
 public:
  virtual ~HttpBodyWriter() = default;
  // Sends `head` (status, headers, content type; its body is ignored). Once, before any Write.
  virtual absl::Status Start(const HttpResponse& head) = 0;
  // Cancelled when the client went away; DeadlineExceeded when it stopped reading.
  virtual absl::Status Write(absl::string_view bytes) = 0;
  // The body's proper end (the last chunk).
  virtual void Finish() = 0;
  // Ends the body broken (the connection closes before the last chunk): the client sees a
  // truncated transfer, never a short body it could take for whole.
  virtual void Abort(const std::string& why) = 0;
};

}  // namespace hvagent::api
