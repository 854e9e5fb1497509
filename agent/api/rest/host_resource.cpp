// /healthz, /v1/host, /v1/host/capacity
#include "agent/api/convert.h"
#include "agent/api/rest/json.h"
#include "agent/api/rest/rest_router.h"

namespace hvagent::api {

HttpResponse HandleHealth(service::HostService& host, const HttpRequest& req) {
  if (req.method != "GET") return MethodNotAllowed(req);
  bool connected = host.HypervisorConnected();
  return {connected ? 200 : 503,
          connected ? R"({"status":"SERVING","hypervisor_connected":true})"
                    : R"({"status":"NOT_SERVING","hypervisor_connected":false})"};
}

HttpResponse HandleHost(service::HostService& host, const HttpRequest& req, bool capacity) {
  if (req.method != "GET") return MethodNotAllowed(req);
  if (capacity) {
    auto c = host.GetCapacity();
    if (!c.ok()) return ErrorResponse(c.status());
    return JsonResponse(200, ToProto(*c));
  }
  auto h = host.GetHost();
  if (!h.ok()) return ErrorResponse(h.status());
  return JsonResponse(200, ToProto(*h, host.HypervisorConnected()));
}

}  // namespace hvagent::api
