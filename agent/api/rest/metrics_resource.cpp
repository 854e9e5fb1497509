// GET /metrics (Prometheus text format) and GET /v1/stats/domains[/{name}] (JSON), both from
// the collector's shared sample.
#include "absl/strings/str_cat.h"
#include "agent/api/convert.h"
#include "agent/api/prometheus.h"
#include "agent/api/rest/json.h"
#include "agent/api/rest/rest_router.h"
#include "agent/api/status_mapping.h"

namespace hvagent::api {

HttpResponse HandlePrometheus(service::MetricsCollector& metrics, const HttpRequest& req) {
  if (req.method != "GET") return MethodNotAllowed(req);
  return {200, RenderPrometheus(*metrics.Latest()), kPrometheusContentType};
}

HttpResponse HandleDomainStats(service::MetricsCollector& metrics, const HttpRequest& req, absl::string_view rest) {
  if (req.method != "GET") return MethodNotAllowed(req);
  std::string name;
  if (!rest.empty()) {
    if (rest[0] != '/' || rest.size() == 1 || rest.find('/', 1) != absl::string_view::npos) {
      return {404, ErrorBody("NOT_FOUND", absl::StrCat("no resource at ", req.path))};
    }
    name = std::string(rest.substr(1));
  }
  auto sample = metrics.Latest();
  if (!sample->domains.ok()) return ErrorResponse(sample->domains.status());
  v1::GetDomainStatsResponse resp = ToDomainStatsProto(*sample, name);
  if (!name.empty()) {
    if (resp.domains_size() == 0) {
      return ErrorResponse(absl::NotFoundError(absl::StrCat("name: domain '", name, "' not found")));
    }
  }
  return JsonResponse(200, resp);
}

HttpResponse HandleEventChannels(service::MetricsCollector& metrics, const HttpRequest& req) {
  if (req.method != "GET") return MethodNotAllowed(req);
  auto sample = metrics.Latest();
  if (!sample->event_channels.ok()) return ErrorResponse(sample->event_channels.status());
  return JsonResponse(200, ToProto(*sample->event_channels, sample->time));
}

}  // namespace hvagent::api
