// GET /healthz: served to everybody, before any authorization (probes carry no credentials).
#include "agent/api/rest/rest_router.h"

namespace hvagent::api {

HttpResponse HandleHealth(service::HostService& host) {
  bool connected = host.HypervisorConnected();
  return {connected ? 200 : 503,
          connected ? R"({"status":"SERVING","hypervisor_connected":true})"
                    : R"({"status":"NOT_SERVING","hypervisor_connected":false})"};
}

}  // namespace hvagent::api
