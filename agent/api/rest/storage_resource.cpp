// /v1/pools, /v1/pools/{pool}, /v1/pools/{pool}/volumes, /v1/pools/{pool}/volumes/{name}[:action]
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/api/convert.h"
#include "agent/api/rest/json.h"
#include "agent/api/rest/rest_router.h"
#include "agent/api/status_mapping.h"

namespace hvagent::api {
namespace {

HttpResponse Render(const absl::StatusOr<service::VolumeStatus>& r, int ok_status = 200) {
  if (!r.ok()) return ErrorResponse(r.status());
  return JsonResponse(ok_status, ToProto(*r));
}

HttpResponse NotFound(const HttpRequest& req) {
  return {404, ErrorBody("NOT_FOUND", absl::StrCat("no resource at ", req.path))};
}

HttpResponse VolumeAction(service::StorageService& storage, const HttpRequest& req, const std::string& pool,
                          const std::string& name, absl::string_view action) {
  if (req.method != "POST") return MethodNotAllowed(req);
  if (action == "resize") {
    v1::ResizeVolumeRequest body;
    if (auto s = FromJson(req.body.empty() ? "{}" : req.body, &body); !s.ok()) return ErrorResponse(s);
    return Render(storage.ResizeVolume(pool, name, body.size_bytes()));
  }
  if (action == "attach") {
    v1::AttachVolumeRequest body;
    if (auto s = FromJson(req.body.empty() ? "{}" : req.body, &body); !s.ok()) return ErrorResponse(s);
    return Render(storage.AttachVolume(pool, name, body.domain(), body.target(), body.readonly()));
  }
  if (action == "detach") return Render(storage.DetachVolume(pool, name));
  return {404, ErrorBody("NOT_FOUND",
                         absl::StrCat("unknown action '", std::string(action), "'; expected resize, attach, detach"))};
}

}  // namespace

HttpResponse HandleStorage(service::StorageService& storage, const HttpRequest& req, absl::string_view rest) {
  std::vector<std::string> parts = absl::StrSplit(rest, '/', absl::SkipEmpty());
  if (parts.empty()) {
    if (req.method != "GET") return MethodNotAllowed(req);
    auto pools = storage.ListPools();
    if (!pools.ok()) return ErrorResponse(pools.status());
    v1::ListPoolsResponse resp;
    for (const auto& p : *pools) *resp.add_pools() = ToProto(p);
    return JsonResponse(200, resp);
  }
  const std::string& pool = parts[0];
  if (parts.size() == 1) {
    if (req.method != "GET") return MethodNotAllowed(req);
    auto p = storage.GetPool(pool);
    if (!p.ok()) return ErrorResponse(p.status());
    return JsonResponse(200, ToProto(*p));
  }
  if (parts[1] != "volumes" || parts.size() > 3) return NotFound(req);
  if (parts.size() == 2) {
    if (req.method == "GET") {
      auto list = storage.ListVolumes(pool);
      if (!list.ok()) return ErrorResponse(list.status());
      v1::ListVolumesResponse resp;
      for (const auto& v : *list) *resp.add_volumes() = ToProto(v);
      return JsonResponse(200, resp);
    }
    if (req.method == "POST") {
      v1::CreateVolumeRequest body;
      if (auto s = FromJson(req.body, &body); !s.ok()) return ErrorResponse(s);
      if (!body.pool().empty() && body.pool() != pool) {
        return ErrorResponse(absl::InvalidArgumentError("pool: differs from the pool in the path"));
      }
      return Render(storage.CreateVolume(pool, {body.name(), body.size_bytes()}), 201);
    }
    return MethodNotAllowed(req);
  }
  std::string item = parts[2];
  size_t colon = item.rfind(':');
  if (colon != std::string::npos) {
    return VolumeAction(storage, req, pool, item.substr(0, colon), absl::string_view(item).substr(colon + 1));
  }
  if (req.method == "GET") return Render(storage.GetVolume(pool, item));
  // 202: the wipe runs on; GET shows its progress until the volume is gone (404).
  if (req.method == "DELETE") return Render(storage.DeleteVolume(pool, item), 202);
  return MethodNotAllowed(req);
}

}  // namespace hvagent::api
