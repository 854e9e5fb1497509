#include "agent/api/rest/rest_router.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/api/auth/audit.h"
#include "agent/api/rest/json.h"
#include "agent/api/rest/route_table.h"
#include "agent/api/status_mapping.h"

namespace hvagent::api {
namespace {

HttpResponse NotFound(const HttpRequest& req) {
  return {404, ErrorBody("NOT_FOUND", absl::StrCat("no resource at ", req.path))};
}

HttpResponse Refused(const absl::Status& s, bool rate_limited) {
  HttpResponse r = ErrorResponse(s);
  if (rate_limited) r.status = 429;  // the caller's own rate limit, not a full pool (507)
  return r;
}

}  // namespace

RestRouter::RestRouter(const ops::Pipeline& pipeline) : pipeline_(pipeline) {
  for (const Route& r : Routes()) {
    const ops::Operation* op = ops::Find(r.operation);
    served_.push_back(r.operation.empty() ? pipeline_.services().host != nullptr  // /healthz
                                          : op != nullptr && ops::Available(*op, pipeline_.services()));
  }
}

HttpResponse RestRouter::NoRoute(const HttpRequest& req, const auth::Caller& caller) const {
  const auth::Authorizer* authz = pipeline_.authorizer();
  if (authz != nullptr && caller.identity.empty()) {
    absl::Status s = absl::UnauthenticatedError(
        absl::StrCat(req.method, " ", req.path, ": no valid client certificate or bearer token was presented"));
    auth::Audit(caller, absl::StrCat(req.method, " ", req.path), "", s, {});
    return ErrorResponse(s);
  }
  RouteMatch m = MatchRoute(req.method, req.path, [&](const Route& r) { return Served(r); });
  if (!m.allowed.empty()) {
    HttpResponse r{405, ErrorBody("UNIMPLEMENTED", absl::StrCat("method ", req.method, " is not allowed on ", req.path))};
    r.headers["Allow"] = absl::StrJoin(m.allowed, ", ");
    return r;
  }
  if (!m.verbs.empty()) {
    return {404, ErrorBody("NOT_FOUND", absl::StrCat("no resource at ", req.path, ": unknown action; expected ",
                                                     absl::StrJoin(m.verbs, ", ")))};
  }
  return NotFound(req);
}

HttpResponse RestRouter::Handle(const HttpRequest& req) const {
  const ops::Services& services = pipeline_.services();
  // /healthz answers everybody (load balancers and probes carry no credentials); it tells only
  // whether the agent serves.
  if (req.path == "/healthz" && services.host != nullptr) {
    if (req.method != "GET") return NoRoute(req, {"-", auth::Role::kMonitor});
    return HandleHealth(*services.host);
  }
  const auth::Authorizer* authz = pipeline_.authorizer();
  const auth::Caller caller =
      authz != nullptr ? authz->FromBearerToken(req.authorization) : auth::Caller{"-", auth::Role::kController};
  RouteMatch match = MatchRoute(req.method, req.path, [&](const Route& r) { return Served(r); });
  const ops::Operation* op = match.route != nullptr ? ops::Find(match.route->operation) : nullptr;
  if (op == nullptr) return NoRoute(req, caller);

  if (op->kind == ops::Kind::kPage) {  // GET /metrics
    if (auto s = pipeline_.Admit(*op, caller); !s.ok()) return Refused(s, absl::IsResourceExhausted(s));
    return HandlePrometheus(*services.metrics);
  }
  std::unique_ptr<google::protobuf::Message> response(op->response->New());
  ops::Pipeline::Call call{caller, req.idempotency_key};
  absl::Status s = pipeline_.Run(
      *op, call, [&](google::protobuf::Message* m) { return BindRequest(*match.route, match.params, req, m); },
      response.get());
  HttpResponse out;
  if (!s.ok()) {
    out = Refused(s, !call.admitted && absl::IsResourceExhausted(s));
    if (call.retry_after) out.headers["Retry-After"] = std::to_string(call.retry_after->count());
  } else if (match.route->ok_status == 204) {
    out = {204, ""};
  } else {
    out = JsonResponse(match.route->ok_status, *response);
  }
  if (call.replayed) out.headers["Idempotent-Replay"] = "true";
  return out;
}

}  // namespace hvagent::api
