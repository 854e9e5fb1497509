#pragma once
// Transport-neutral HTTP request/response, so REST resources are plain functions that unit
// tests call directly; RestServer adapts cpprestsdk to these.

#include <cstdint>
#include <map>
#include <optional>
#include <string>

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

}  // namespace hvagent::api
