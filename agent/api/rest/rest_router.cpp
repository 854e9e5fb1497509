#include "agent/api/rest/rest_router.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/api/rest/json.h"
#include "agent/api/status_mapping.h"

namespace hvagent::api {

HttpResponse MethodNotAllowed(const HttpRequest& req) {
  return {405, ErrorBody("UNIMPLEMENTED", absl::StrCat("method ", req.method, " is not allowed on ", req.path))};
}

HttpResponse RestRouter::Handle(const HttpRequest& req) {
  absl::string_view path = req.path;
  if (path == "/healthz") return HandleHealth(host_, req);
  if (path == "/v1/host") return HandleHost(host_, req, false);
  if (path == "/v1/host/capacity") return HandleHost(host_, req, true);
  if (path == "/v1/domains" || absl::StartsWith(path, "/v1/domains/")) {
    return HandleDomains(domains_, req, path.substr(absl::string_view("/v1/domains").size()));
  }
  if (storage_ != nullptr && (path == "/v1/pools" || absl::StartsWith(path, "/v1/pools/"))) {
    return HandleStorage(*storage_, req, path.substr(std::string_view("/v1/pools").size()));
  }
  if (metrics_ != nullptr && path == "/metrics") return HandlePrometheus(*metrics_, req);
  if (metrics_ != nullptr && path == "/v1/host/event-channels") return HandleEventChannels(*metrics_, req);
  if (metrics_ != nullptr && (path == "/v1/stats/domains" || absl::StartsWith(path, "/v1/stats/domains/"))) {
    return HandleDomainStats(*metrics_, req, path.substr(absl::string_view("/v1/stats/domains").size()));
  }
  return {404, ErrorBody("NOT_FOUND", absl::StrCat("no resource at ", req.path))};
}

}  // namespace hvagent::api
