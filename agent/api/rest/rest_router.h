#pragma once
// RestRouter: maps an HttpRequest to the resource that serves it (/healthz, /v1/host...,
// /v1/domains...). Pure: no sockets, so the whole REST surface is unit-testable.

#include <optional>

#include "agent/api/auth/authorizer.h"
#include "agent/api/rest/http_types.h"
#include "agent/service/domain_service.h"
#include "agent/service/host_service.h"
#include "agent/service/idempotency.h"
#include "agent/service/operation_gate.h"
#include "agent/service/metrics_collector.h"
#include "agent/service/storage_service.h"

namespace hvagent::api {

class RestRouter {
 public:
  RestRouter(service::HostService& host, service::DomainService& domains, service::StorageService* storage = nullptr,
             service::MetricsCollector* metrics = nullptr, const auth::Authorizer* authz = nullptr,
             service::IdempotencyStore* idem = nullptr, service::OperationGate* gate = nullptr)
      : host_(host), domains_(domains), storage_(storage), metrics_(metrics), authz_(authz), idem_(idem),
        gate_(gate) {}
  // Checks the caller (bearer token) for the route's operation first: 401 / 403 before any
  // resource runs. Mutating requests and refusals are written to the audit log.
  HttpResponse Handle(const HttpRequest& request);

 private:
  service::HostService& host_;
  service::DomainService& domains_;
  service::StorageService* storage_;  // null: no storage configured
  service::MetricsCollector* metrics_;  // null: no /metrics, no /v1/stats
  const auth::Authorizer* authz_;       // null: no checks (unit tests of the resources)
  service::IdempotencyStore* idem_;     // null: Idempotency-Key is ignored
  service::OperationGate* gate_;        // null: no bound on operations in flight
  HttpResponse Route(const HttpRequest& request);
  // Route, at most once per Idempotency-Key for mutating operations (service/idempotency.h).
  HttpResponse RouteOnce(const HttpRequest& request, const std::optional<std::string>& operation);
};

// The operation a REST request performs, named like the gRPC method that does the same
// ("hvagent.v1.DomainService/StartDomain"); nullopt for paths and methods that do not exist.
std::optional<std::string> RestOperation(const HttpRequest& request);

// Resources, one file each.
HttpResponse HandleHealth(service::HostService& host, const HttpRequest& req);
HttpResponse HandleHost(service::HostService& host, const HttpRequest& req, bool capacity);
// `rest` is the path after "/v1/domains" ("", "/web1", "/web1:start").
HttpResponse HandleDomains(service::DomainService& domains, const HttpRequest& req, absl::string_view rest);

// `rest` is the path after "/v1/pools".
HttpResponse HandleStorage(service::StorageService& storage, const HttpRequest& req, absl::string_view rest);

// GET /metrics; GET /v1/stats/domains[/{name}] (`rest` is the path after "/v1/stats/domains").
HttpResponse HandlePrometheus(service::MetricsCollector& metrics, const HttpRequest& req);
// GET /v1/host/event-channels (501 off Xen).
HttpResponse HandleEventChannels(service::MetricsCollector& metrics, const HttpRequest& req);
HttpResponse HandleDomainStats(service::MetricsCollector& metrics, const HttpRequest& req, absl::string_view rest);

HttpResponse MethodNotAllowed(const HttpRequest& req);

}  // namespace hvagent::api
