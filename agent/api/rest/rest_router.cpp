#include "agent/api/rest/rest_router.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/api/auth/audit.h"
#include "agent/api/rest/json.h"
#include "agent/api/status_mapping.h"

namespace hvagent::api {

HttpResponse MethodNotAllowed(const HttpRequest& req) {
  return {405, ErrorBody("UNIMPLEMENTED", absl::StrCat("method ", req.method, " is not allowed on ", req.path))};
}

namespace {

std::string Op(absl::string_view service, absl::string_view method) {
  return absl::StrCat("hvagent.v1.", service, "/", method);
}

// "/web1:start" -> {"web1", "start"}; "/web1" -> {"web1", ""}; nullopt for more segments.
std::optional<std::pair<std::string, std::string>> ItemAction(absl::string_view rest) {
  if (rest.size() < 2 || rest[0] != '/' || rest.find('/', 1) != absl::string_view::npos) return std::nullopt;
  rest.remove_prefix(1);
  size_t colon = rest.rfind(':');
  if (colon == absl::string_view::npos) return std::make_pair(std::string(rest), std::string());
  return std::make_pair(std::string(rest.substr(0, colon)), std::string(rest.substr(colon + 1)));
}

std::optional<std::string> DomainOperation(const std::string& m, absl::string_view rest) {
  if (rest.empty()) {
    if (m == "GET") return Op("DomainService", "ListDomains");
    if (m == "POST") return Op("DomainService", "CreateDomain");
    return std::nullopt;
  }
  auto item = ItemAction(rest);
  if (!item) return std::nullopt;
  const std::string& action = item->second;
  if (action.empty()) {
    if (m == "GET") return Op("DomainService", "GetDomain");
    if (m == "DELETE") return Op("DomainService", "DeleteDomain");
    return std::nullopt;
  }
  if (m != "POST") return std::nullopt;
  for (const char* a : {"start", "shutdown", "destroy", "reboot", "suspend", "resume"}) {
    if (action == a) {
      std::string name = a;
      name[0] = static_cast<char>(name[0] - 'a' + 'A');
      return Op("DomainService", absl::StrCat(name, "Domain"));
    }
  }
  return std::nullopt;
}

std::optional<std::string> StorageOperation(const std::string& m, absl::string_view rest) {
  std::vector<absl::string_view> parts = absl::StrSplit(rest, '/');  // "", pool, "volumes", item
  if (rest.empty()) return m == "GET" ? std::optional(Op("StorageService", "ListPools")) : std::nullopt;
  for (size_t i = 1; i < parts.size(); ++i) {
    if (parts[i].empty()) return std::nullopt;  // a trailing or doubled slash names no resource
  }
  if (parts.size() == 2) return m == "GET" ? std::optional(Op("StorageService", "GetPool")) : std::nullopt;
  if (parts.size() == 3 && parts[2] == "volumes") {
    if (m == "GET") return Op("StorageService", "ListVolumes");
    if (m == "POST") return Op("StorageService", "CreateVolume");
    return std::nullopt;
  }
  if (parts.size() != 4 || parts[2] != "volumes") return std::nullopt;
  auto item = ItemAction(absl::StrCat("/", parts[3]));
  if (!item) return std::nullopt;
  if (item->second.empty()) {
    if (m == "GET") return Op("StorageService", "GetVolume");
    if (m == "DELETE") return Op("StorageService", "DeleteVolume");
    return std::nullopt;
  }
  if (m != "POST") return std::nullopt;
  if (item->second == "resize") return Op("StorageService", "ResizeVolume");
  if (item->second == "attach") return Op("StorageService", "AttachVolume");
  if (item->second == "detach") return Op("StorageService", "DetachVolume");
  return std::nullopt;
}

}  // namespace

std::optional<std::string> RestOperation(const HttpRequest& req) {
  absl::string_view path = req.path;
  const std::string& m = req.method;
  if (path == "/v1/host") return m == "GET" ? std::optional(Op("HostService", "GetHost")) : std::nullopt;
  if (path == "/v1/host/capacity") return m == "GET" ? std::optional(Op("HostService", "GetCapacity")) : std::nullopt;
  if (path == "/v1/host/event-channels") {
    return m == "GET" ? std::optional(Op("MetricsService", "GetEventChannels")) : std::nullopt;
  }
  if (path == "/metrics") return m == "GET" ? std::optional(Op("MetricsService", "Prometheus")) : std::nullopt;
  if (path == "/v1/stats/domains" || absl::StartsWith(path, "/v1/stats/domains/")) {
    return m == "GET" ? std::optional(Op("MetricsService", "GetDomainStats")) : std::nullopt;
  }
  if (path == "/v1/domains" || absl::StartsWith(path, "/v1/domains/")) {
    return DomainOperation(m, path.substr(absl::string_view("/v1/domains").size()));
  }
  if (path == "/v1/pools" || absl::StartsWith(path, "/v1/pools/")) {
    return StorageOperation(m, path.substr(absl::string_view("/v1/pools").size()));
  }
  return std::nullopt;
}

namespace {

// Only decides whether an error reply is kept for replay (retryable ones are not); the reply
// itself is replayed byte for byte.
absl::Status StatusFromHttp(const HttpResponse& r) {
  switch (r.status) {
    case 429: return absl::ResourceExhaustedError(r.body);
    case 500: return absl::InternalError(r.body);
    case 503: return absl::UnavailableError(r.body);
    case 504: return absl::DeadlineExceededError(r.body);
    default: return absl::FailedPreconditionError(r.body);
  }
}

// 405 when another method on the same path is an operation, else 404.
HttpResponse NoOperation(const HttpRequest& req) {
  for (const char* m : {"GET", "POST", "DELETE"}) {
    HttpRequest other = req;
    other.method = m;
    if (RestOperation(other)) return MethodNotAllowed(req);
  }
  return {404, ErrorBody("NOT_FOUND", absl::StrCat("no resource at ", req.path))};
}

}  // namespace

HttpResponse RestRouter::RouteOnce(const HttpRequest& req, const std::optional<std::string>& op) {
  std::optional<absl::StatusOr<service::OperationGate::Slot>> slot;
  if (gate_ != nullptr && op && auth::IsMutating(*op)) {
    slot.emplace(gate_->Enter());
    if (!slot->ok()) {
      HttpResponse busy = ErrorResponse(slot->status());  // 503
      busy.headers["Retry-After"] = std::to_string(gate_->retry_after().count());
      return busy;
    }
  }
  if (!req.idempotency_key || idem_ == nullptr || !op || !auth::IsMutating(*op)) return Route(req);
  if (auto s = service::IdempotencyStore::ValidateKey(*req.idempotency_key); !s.ok()) return ErrorResponse(s);
  std::string request = absl::StrCat(req.method, "\n", req.path, "\n");
  for (const auto& [k, v] : req.query) absl::StrAppend(&request, k, "=", v, "&");  // std::map: sorted
  absl::StrAppend(&request, "\n", req.body);
  HttpResponse fresh;
  auto outcome = idem_->Run(*req.idempotency_key, *op, auth::Sha256Hex(request), [&] {
    fresh = Route(req);
    service::IdempotencyStore::Outcome o;
    // The HTTP status carries the outcome: 2xx is success; errors keep their gRPC code so that
    // retryable ones (503, 429, 500) are not stored.
    o.status = fresh.status < 400 ? absl::OkStatus() : StatusFromHttp(fresh);
    o.response = absl::StrCat(fresh.status, "\n", fresh.content_type, "\n", fresh.body);
    return o;
  });
  if (!outcome.replayed) {
    if (outcome.response.empty()) return ErrorResponse(outcome.status);  // refused by the store itself
    return fresh;
  }
  std::vector<std::string> parts = absl::StrSplit(outcome.response, absl::MaxSplits('\n', 2));
  HttpResponse replay;
  if (parts.size() != 3 || !absl::SimpleAtoi(parts[0], &replay.status)) {
    return ErrorResponse(absl::InternalError("idempotency store: the stored reply does not parse"));
  }
  replay.content_type = parts[1];
  replay.body = parts[2];
  replay.headers["Idempotent-Replay"] = "true";
  return replay;
}

HttpResponse RestRouter::Handle(const HttpRequest& req) {
  // /healthz answers everybody (load balancers and probes carry no credentials); it tells only
  // whether the agent serves.
  if (req.path == "/healthz") return Route(req);
  if (authz_ == nullptr) return RouteOnce(req, RestOperation(req));
  const auto start = std::chrono::steady_clock::now();
  auth::Caller caller = authz_->FromBearerToken(req.authorization);
  std::optional<std::string> op = RestOperation(req);
  absl::Status allowed;
  if (op) {
    allowed = authz_->Admit(caller, *op);
  } else if (caller.identity.empty()) {
    // Unknown routes answer 404/405 only to authenticated callers.
    allowed = absl::UnauthenticatedError(absl::StrCat(req.method, " ", req.path,
                                                      ": no valid client certificate or bearer token was presented"));
  }
  HttpResponse resp;
  if (!allowed.ok()) {
    resp = ErrorResponse(allowed);
  } else if (!op) {
    // Only a request that names an operation reaches a resource: every route is checked
    // against the caller's role, with no path spelling (a trailing slash, an empty segment)
    // that a resource would accept but the check would not recognise.
    resp = NoOperation(req);
  } else {
    resp = RouteOnce(req, op);
  }
  if (absl::IsResourceExhausted(allowed)) resp.status = 429;  // the caller's rate limit
  if (!allowed.ok() || (op && auth::IsMutating(*op))) {
    auth::Audit(caller, op.value_or(absl::StrCat(req.method, " ", req.path)), req.body,
                absl::StrCat("HTTP ", resp.status), allowed.ok() ? "" : allowed.message(),
                std::chrono::steady_clock::now() - start);
  }
  return resp;
}

HttpResponse RestRouter::Route(const HttpRequest& req) {
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
