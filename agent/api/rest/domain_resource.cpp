// /v1/domains, /v1/domains/{name}, /v1/domains/{name}:{action}
#include "absl/strings/str_cat.h"
#include "agent/api/convert.h"
#include "agent/api/rest/json.h"
#include "agent/api/rest/rest_router.h"
#include "agent/api/status_mapping.h"

namespace hvagent::api {
namespace {

HttpResponse Render(const absl::StatusOr<hv::DomainInfo>& r, int ok_status = 200) {
  if (!r.ok()) return ErrorResponse(r.status());
  return JsonResponse(ok_status, ToProto(*r));
}

HttpResponse Collection(service::DomainService& domains, const HttpRequest& req) {
  if (req.method == "GET") {
    auto list = domains.List();
    if (!list.ok()) return ErrorResponse(list.status());
    v1::ListDomainsResponse resp;
    for (const auto& d : *list) *resp.add_domains() = ToProto(d);
    return JsonResponse(200, resp);
  }
  if (req.method == "POST") {
    v1::CreateDomainRequest create;
    if (auto s = FromJson(req.body, &create); !s.ok()) return ErrorResponse(s);
    if (!create.has_spec()) return ErrorResponse(absl::InvalidArgumentError("spec: is required"));
    auto spec = FromProto(create.spec());
    if (!spec.ok()) return ErrorResponse(spec.status());
    return Render(domains.Create(*spec, create.start(), VolumesFromProto(create.spec())), 201);
  }
  return MethodNotAllowed(req);
}

absl::StatusOr<bool> QueryBool(const HttpRequest& req, const std::string& key) {
  auto it = req.query.find(key);
  if (it == req.query.end()) return false;
  if (it->second == "true" || it->second == "1") return true;
  if (it->second == "false" || it->second == "0") return false;
  return absl::InvalidArgumentError(absl::StrCat(key, ": must be true or false"));
}

HttpResponse Item(service::DomainService& domains, const HttpRequest& req, const std::string& name) {
  if (req.method == "GET") return Render(domains.Get(name));
  if (req.method == "DELETE") {
    auto force = QueryBool(req, "force");
    if (!force.ok()) return ErrorResponse(force.status());
    auto delete_volumes = QueryBool(req, "delete_volumes");
    if (!delete_volumes.ok()) return ErrorResponse(delete_volumes.status());
    if (auto s = domains.Delete(name, *force, *delete_volumes); !s.ok()) return ErrorResponse(s);
    return {204, ""};
  }
  return MethodNotAllowed(req);
}

HttpResponse Action(service::DomainService& domains, const HttpRequest& req, const std::string& name,
                    absl::string_view action) {
  if (req.method != "POST") return MethodNotAllowed(req);
  if (action == "shutdown") {
    v1::ShutdownDomainRequest body;
    if (!req.body.empty()) {
      if (auto s = FromJson(req.body, &body); !s.ok()) return ErrorResponse(s);
    }
    auto r = domains.Shutdown(name, std::chrono::seconds(body.timeout_seconds()));
    if (!r.ok()) return ErrorResponse(r.status());
    v1::ShutdownDomainResponse resp;
    *resp.mutable_domain() = ToProto(r->domain);
    resp.set_forced(r->forced);
    return JsonResponse(200, resp);
  }
  if (!req.body.empty()) {
    // Actions other than shutdown take no parameters; accept an empty object.
    v1::DomainRef ignored;
    if (auto s = FromJson(req.body, &ignored); !s.ok()) return ErrorResponse(s);
  }
  if (action == "start") return Render(domains.Start(name));
  if (action == "destroy") return Render(domains.Destroy(name));
  if (action == "reboot") return Render(domains.Reboot(name));
  if (action == "suspend") return Render(domains.Suspend(name));
  if (action == "resume") return Render(domains.Resume(name));
  return {404, ErrorBody("NOT_FOUND", absl::StrCat("unknown action '", action,
                                                   "'; expected start, shutdown, destroy, reboot, suspend, resume"))};
}

}  // namespace

HttpResponse HandleDomains(service::DomainService& domains, const HttpRequest& req, absl::string_view rest) {
  if (rest.empty() || rest == "/") return Collection(domains, req);
  absl::string_view item = rest.substr(1);
  if (item.find('/') != absl::string_view::npos) {
    return {404, ErrorBody("NOT_FOUND", absl::StrCat("no resource at ", req.path))};
  }
  size_t colon = item.rfind(':');
  if (colon == absl::string_view::npos) return Item(domains, req, std::string(item));
  return Action(domains, req, std::string(item.substr(0, colon)), item.substr(colon + 1));
}

}  // namespace hvagent::api
