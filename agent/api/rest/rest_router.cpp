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

// A body already in memory, handed over in one chunk.
class StringBody final : public service::UploadBody {
 public:
  explicit StringBody(const std::string& bytes) : bytes_(bytes) {}
  absl::StatusOr<bool> Next(std::string* chunk) override {
    if (done_ || bytes_.empty()) return false;
    done_ = true;
    *chunk = bytes_;
    return true;
  }

 private:
  const std::string& bytes_;
  bool done_ = false;
};

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
    if (starting_.load()) return {503, R"({"status":"STARTING","hypervisor_connected":false})"};
    return HandleHealth(*services.host);
  }
  const auth::Caller caller = CallerOf(req);
  RouteMatch match = MatchRoute(req.method, req.path, [&](const Route& r) { return Served(r); });
  const ops::Operation* op = match.route != nullptr ? ops::Find(match.route->operation) : nullptr;
  if (op == nullptr) return NoRoute(req, caller);

  if (op->kind == ops::Kind::kPage) {  // GET /metrics
    if (auto s = pipeline_.Admit(*op, caller); !s.ok()) return Refused(s, absl::IsResourceExhausted(s));
    return HandlePrometheus(*services.metrics);
  }
  if (op->kind == ops::Kind::kStream) {  // RestServer sends these to HandleExport (IsExport)
    return {500, ErrorBody("INTERNAL", absl::StrCat(req.method, " ", req.path, " streams its body: HandleExport"))};
  }
  if (op->kind == ops::Kind::kUpload) {  // a body already gathered (unit tests, small bodies)
    StringBody body(req.body);
    HttpRequest head = req;
    head.body.clear();
    if (!head.content_length) head.content_length = req.body.size();
    return HandleUpload(head, body);
  }
  std::unique_ptr<google::protobuf::Message> response(op->response->New());
  ops::Pipeline::Call call{caller, req.idempotency_key};
  absl::Status s = pipeline_.Run(
      *op, call, [&](google::protobuf::Message* m) { return BindRequest(*match.route, match.params, req, m); },
      response.get());
  return Render(s, call, *match.route, *response);
}

auth::Caller RestRouter::CallerOf(const HttpRequest& req) const {
  const auth::Authorizer* authz = pipeline_.authorizer();
  return authz != nullptr ? authz->FromBearerToken(req.authorization) : auth::Caller{"-", auth::Role::kController};
}

HttpResponse RestRouter::Render(const absl::Status& s, const ops::Pipeline::Call& call, const Route& route,
                                const google::protobuf::Message& response) const {
  HttpResponse out;
  if (!s.ok()) {
    out = Refused(s, !call.admitted && absl::IsResourceExhausted(s));
    if (call.retry_after) out.headers["Retry-After"] = std::to_string(call.retry_after->count());
  } else if (route.ok_status == 204) {
    out = {204, ""};
  } else {
    out = JsonResponse(route.ok_status, response);
  }
  if (call.replayed) out.headers["Idempotent-Replay"] = "true";
  return out;
}

bool RestRouter::IsUpload(const std::string& method, const std::string& path) const {
  RouteMatch match = MatchRoute(method, path, [&](const Route& r) { return Served(r); });
  const ops::Operation* op = match.route != nullptr ? ops::Find(match.route->operation) : nullptr;
  return op != nullptr && op->kind == ops::Kind::kUpload;
}

HttpResponse RestRouter::HandleUpload(const HttpRequest& req, service::UploadBody& body) const {
  const auth::Caller caller = CallerOf(req);
  RouteMatch match = MatchRoute(req.method, req.path, [&](const Route& r) { return Served(r); });
  const ops::Operation* op = match.route != nullptr ? ops::Find(match.route->operation) : nullptr;
  if (op == nullptr || op->kind != ops::Kind::kUpload) return NoRoute(req, caller);
  std::unique_ptr<google::protobuf::Message> response(op->response->New());
  ops::Pipeline::Call call{caller, std::nullopt};
  auto bind = [&](google::protobuf::Message* m) -> absl::Status {
    HttpRequest head = req;
    head.body.clear();  // the bytes are the image, not a JSON request
    if (auto s = BindRequest(*match.route, match.params, head, m); !s.ok()) return s;
    if (!req.content_length) {
      return absl::InvalidArgumentError("Content-Length: an upload must announce its length (no chunked bodies)");
    }
    const auto* size = m->GetDescriptor()->FindFieldByName("size_bytes");
    if (size == nullptr) return absl::InternalError("upload header without size_bytes");
    m->GetReflection()->SetUInt64(m, size, *req.content_length);
    return absl::OkStatus();
  };
  absl::Status s = pipeline_.RunUpload(*op, call, bind, body, response.get());
  return Render(s, call, *match.route, *response);
}

}  // namespace hvagent::api
