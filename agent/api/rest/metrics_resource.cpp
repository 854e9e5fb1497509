// GET /metrics: the Prometheus text format, from the collector's shared sample (the JSON
// statistics are ordinary operations in operations/operation_table.cpp).
#include "agent/api/prometheus.h"
#include "agent/api/rest/rest_router.h"

namespace hvagent::api {

HttpResponse HandlePrometheus(service::MetricsCollector& metrics) {
  return {200, RenderPrometheus(*metrics.Latest()), kPrometheusContentType};
}

}  // namespace hvagent::api
