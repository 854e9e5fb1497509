#pragma once
// RestRouter: one HTTP request in, one response out. It finds the request's row in the route
// table (route_table.h), binds the request message from path, query and body, and runs it
// through the operations pipeline (operations/pipeline.h) that gRPC uses too; then it renders
// the answer as protobuf's JSON. Pure: no sockets, so the whole REST surface is unit-testable.

#include <atomic>
#include <optional>

#include "agent/api/operations/pipeline.h"
#include "agent/api/rest/http_types.h"
#include "agent/api/rest/route_table.h"

namespace hvagent::api {

class RestRouter {
 public:
  explicit RestRouter(const ops::Pipeline& pipeline);
  // The caller (bearer token) is checked for the route's operation before anything else:
  // 401 / 403 before a body is parsed. Unknown paths answer 404/405 to authenticated callers
  // only. Changes and refusals are audited (by the pipeline).
  HttpResponse Handle(const HttpRequest& request) const;
  // Whether `method path` is an upload (its body is an image's bytes, read as a stream by the
  // transport rather than gathered: exempt from max_body_bytes, bounded by Content-Length).
  bool IsUpload(const std::string& method, const std::string& path) const;
  // An upload: path and query bind the header, Content-Length is its size_bytes, and the bytes
  // come from `body` as the import asks for them (request.body is not read).
  HttpResponse HandleUpload(const HttpRequest& request, service::UploadBody& body) const;
  // Whether `method path` streams its response body (an export: GET ...:export).
  bool IsExport(const std::string& method, const std::string& path) const;
  // An export (export_resource.cpp): the caller admitted as for the gRPC stream (role, rate,
  // streams per caller), the request bound from path and query, then the bytes written to
  // `out`. Returns the answer to send when `out` was never started (a refusal, 4xx/5xx);
  // nullopt when the body went to `out` (finished, or aborted on a failure mid-way).
  std::optional<HttpResponse> HandleExport(const HttpRequest& request, HttpBodyWriter& out) const;
  // While starting, /healthz answers 503 "STARTING": REST listens first (it checks the TLS files
  // both servers use), so it must not call the agent healthy before gRPC listens too. main()
  // sets it before the REST listener opens and clears it once every listener serves.
  void SetStarting(bool starting) { starting_.store(starting); }

 private:
  HttpResponse NoRoute(const HttpRequest& request, const auth::Caller& caller) const;
  auth::Caller CallerOf(const HttpRequest& request) const;
  // The HTTP answer to an operation's outcome.
  HttpResponse Render(const absl::Status& s, const ops::Pipeline::Call& call, const Route& route,
                      const google::protobuf::Message& response) const;
  // Whether this agent serves the route (its operation's subsystem exists).
  bool Served(const Route& route) const { return served_[&route - Routes().data()]; }
  const ops::Pipeline pipeline_;
  std::vector<bool> served_;  // per row of Routes(), fixed by the services this agent runs
  std::atomic<bool> starting_{false};
};

// The pages that are not proto messages, one file each.
HttpResponse HandleHealth(service::HostService& host);
HttpResponse HandlePrometheus(service::MetricsCollector& metrics);

}  // namespace hvagent::api
