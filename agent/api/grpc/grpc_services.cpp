#include "agent/api/grpc/grpc_services.h"

#include <thread>

#include "agent/api/convert.h"
#include "agent/api/status_mapping.h"
#include "common/log.h"

namespace hvagent::api {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("grpc");
  return logger;
}

std::string RequestIdOf(const grpc::ServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("x-request-id");
  if (it != md.end() && !it->second.empty() && it->second.size() <= 64) {
    return std::string(it->second.data(), it->second.size());
  }
  return log::NewRequestId();
}

// Runs one RPC under a request id, logs its outcome and turns the Status into a gRPC one.
template <typename F>
grpc::Status Handle(grpc::ServerContext* ctx, const char* method, F&& body) {
  log::ScopedRequestId rid(RequestIdOf(ctx));
  ctx->AddInitialMetadata("x-request-id", std::string(log::CurrentRequestId()));
  absl::Status s = body();
  if (s.ok()) {
    Log()->info("{} ok", method);
  } else {
    Log()->info("{} failed: {} {}", method, absl::StatusCodeToString(s.code()), s.message());
  }
  return ToGrpcStatus(s);
}

// Runs a service call returning StatusOr<DomainInfo> and writes the proto reply.
template <typename F>
absl::Status IntoDomain(v1::Domain* out, F&& call) {
  auto r = call();
  if (!r.ok()) return r.status();
  *out = ToProto(*r);
  return absl::OkStatus();
}

}  // namespace

grpc::Status HostGrpcService::GetHost(grpc::ServerContext* ctx, const v1::GetHostRequest*, v1::Host* out) {
  return Handle(ctx, "GetHost", [&]() -> absl::Status {
    auto h = host_.GetHost();
    if (!h.ok()) return h.status();
    *out = ToProto(*h, host_.HypervisorConnected());
    return absl::OkStatus();
  });
}

grpc::Status HostGrpcService::GetCapacity(grpc::ServerContext* ctx, const v1::GetCapacityRequest*,
                                          v1::Capacity* out) {
  return Handle(ctx, "GetCapacity", [&]() -> absl::Status {
    auto c = host_.GetCapacity();
    if (!c.ok()) return c.status();
    *out = ToProto(*c);
    return absl::OkStatus();
  });
}

grpc::Status DomainGrpcService::CreateDomain(grpc::ServerContext* ctx, const v1::CreateDomainRequest* req,
                                             v1::Domain* out) {
  return Handle(ctx, "CreateDomain", [&]() -> absl::Status {
    if (!req->has_spec()) return absl::InvalidArgumentError("spec: is required");
    auto spec = FromProto(req->spec());
    if (!spec.ok()) return spec.status();
    return IntoDomain(out, [&] { return domains_.Create(*spec, req->start(), VolumesFromProto(req->spec())); });
  });
}

grpc::Status DomainGrpcService::GetDomain(grpc::ServerContext* ctx, const v1::GetDomainRequest* req,
                                          v1::Domain* out) {
  return Handle(ctx, "GetDomain", [&] { return IntoDomain(out, [&] { return domains_.Get(req->name()); }); });
}

grpc::Status DomainGrpcService::ListDomains(grpc::ServerContext* ctx, const v1::ListDomainsRequest*,
                                            v1::ListDomainsResponse* out) {
  return Handle(ctx, "ListDomains", [&]() -> absl::Status {
    auto list = domains_.List();
    if (!list.ok()) return list.status();
    for (const auto& d : *list) *out->add_domains() = ToProto(d);
    return absl::OkStatus();
  });
}

grpc::Status DomainGrpcService::StartDomain(grpc::ServerContext* ctx, const v1::DomainRef* req, v1::Domain* out) {
  return Handle(ctx, "StartDomain", [&] { return IntoDomain(out, [&] { return domains_.Start(req->name()); }); });
}

grpc::Status DomainGrpcService::ShutdownDomain(grpc::ServerContext* ctx, const v1::ShutdownDomainRequest* req,
                                               v1::ShutdownDomainResponse* out) {
  return Handle(ctx, "ShutdownDomain", [&]() -> absl::Status {
    auto r = domains_.Shutdown(req->name(), std::chrono::seconds(req->timeout_seconds()));
    if (!r.ok()) return r.status();
    *out->mutable_domain() = ToProto(r->domain);
    out->set_forced(r->forced);
    return absl::OkStatus();
  });
}

grpc::Status DomainGrpcService::DestroyDomain(grpc::ServerContext* ctx, const v1::DomainRef* req, v1::Domain* out) {
  return Handle(ctx, "DestroyDomain",
                [&] { return IntoDomain(out, [&] { return domains_.Destroy(req->name()); }); });
}

grpc::Status DomainGrpcService::RebootDomain(grpc::ServerContext* ctx, const v1::DomainRef* req, v1::Domain* out) {
  return Handle(ctx, "RebootDomain", [&] { return IntoDomain(out, [&] { return domains_.Reboot(req->name()); }); });
}

grpc::Status DomainGrpcService::SuspendDomain(grpc::ServerContext* ctx, const v1::DomainRef* req, v1::Domain* out) {
  return Handle(ctx, "SuspendDomain",
                [&] { return IntoDomain(out, [&] { return domains_.Suspend(req->name()); }); });
}

grpc::Status DomainGrpcService::ResumeDomain(grpc::ServerContext* ctx, const v1::DomainRef* req, v1::Domain* out) {
  return Handle(ctx, "ResumeDomain", [&] { return IntoDomain(out, [&] { return domains_.Resume(req->name()); }); });
}

grpc::Status DomainGrpcService::DeleteDomain(grpc::ServerContext* ctx, const v1::DeleteDomainRequest* req,
                                             v1::DeleteDomainResponse*) {
  return Handle(ctx, "DeleteDomain", [&] { return domains_.Delete(req->name(), req->force(), req->delete_volumes()); });
}

namespace {
template <typename F>
absl::Status IntoVolume(v1::Volume* out, F&& call) {
  auto r = call();
  if (!r.ok()) return r.status();
  *out = ToProto(*r);
  return absl::OkStatus();
}
}  // namespace

grpc::Status StorageGrpcService::ListPools(grpc::ServerContext* ctx, const v1::ListPoolsRequest*,
                                           v1::ListPoolsResponse* out) {
  return Handle(ctx, "ListPools", [&]() -> absl::Status {
    auto pools = storage_.ListPools();
    if (!pools.ok()) return pools.status();
    for (const auto& p : *pools) *out->add_pools() = ToProto(p);
    return absl::OkStatus();
  });
}

grpc::Status StorageGrpcService::GetPool(grpc::ServerContext* ctx, const v1::GetPoolRequest* req, v1::Pool* out) {
  return Handle(ctx, "GetPool", [&]() -> absl::Status {
    auto p = storage_.GetPool(req->name());
    if (!p.ok()) return p.status();
    *out = ToProto(*p);
    return absl::OkStatus();
  });
}

grpc::Status StorageGrpcService::ListVolumes(grpc::ServerContext* ctx, const v1::ListVolumesRequest* req,
                                             v1::ListVolumesResponse* out) {
  return Handle(ctx, "ListVolumes", [&]() -> absl::Status {
    auto list = storage_.ListVolumes(req->pool());
    if (!list.ok()) return list.status();
    for (const auto& v : *list) *out->add_volumes() = ToProto(v);
    return absl::OkStatus();
  });
}

grpc::Status StorageGrpcService::GetVolume(grpc::ServerContext* ctx, const v1::VolumeRef* req, v1::Volume* out) {
  return Handle(ctx, "GetVolume",
                [&] { return IntoVolume(out, [&] { return storage_.GetVolume(req->pool(), req->name()); }); });
}

grpc::Status StorageGrpcService::CreateVolume(grpc::ServerContext* ctx, const v1::CreateVolumeRequest* req,
                                              v1::Volume* out) {
  return Handle(ctx, "CreateVolume", [&] {
    return IntoVolume(out, [&] { return storage_.CreateVolume(req->pool(), {req->name(), req->size_bytes()}); });
  });
}

grpc::Status StorageGrpcService::ResizeVolume(grpc::ServerContext* ctx, const v1::ResizeVolumeRequest* req,
                                              v1::Volume* out) {
  return Handle(ctx, "ResizeVolume", [&] {
    return IntoVolume(out, [&] { return storage_.ResizeVolume(req->pool(), req->name(), req->size_bytes()); });
  });
}

grpc::Status StorageGrpcService::DeleteVolume(grpc::ServerContext* ctx, const v1::VolumeRef* req, v1::Volume* out) {
  return Handle(ctx, "DeleteVolume",
                [&] { return IntoVolume(out, [&] { return storage_.DeleteVolume(req->pool(), req->name()); }); });
}

grpc::Status StorageGrpcService::AttachVolume(grpc::ServerContext* ctx, const v1::AttachVolumeRequest* req,
                                              v1::Volume* out) {
  return Handle(ctx, "AttachVolume", [&] {
    return IntoVolume(out, [&] {
      return storage_.AttachVolume(req->pool(), req->name(), req->domain(), req->target(), req->readonly());
    });
  });
}

grpc::Status StorageGrpcService::DetachVolume(grpc::ServerContext* ctx, const v1::DetachVolumeRequest* req,
                                              v1::Volume* out) {
  return Handle(ctx, "DetachVolume",
                [&] { return IntoVolume(out, [&] { return storage_.DetachVolume(req->pool(), req->name()); }); });
}

grpc::Status EventGrpcService::Watch(grpc::ServerContext* ctx, const v1::WatchEventsRequest* req,
                                     grpc::ServerWriter<v1::DomainEvent>* writer) {
  log::ScopedRequestId rid(RequestIdOf(ctx));
  auto sub = hub_.Subscribe({req->domain_names().begin(), req->domain_names().end()});
  Log()->info("Watch opened ({} domain filter(s))", req->domain_names_size());
  // Headers go out only now, so a client that waits for them knows it will see every later event.
  writer->SendInitialMetadata();
  while (!ctx->IsCancelled() && !sub->closed()) {
    auto e = sub->Next(std::chrono::milliseconds(250));
    if (!e) continue;
    if (!writer->Write(ToProto(*e))) break;  // client went away
  }
  Log()->info("Watch closed");
  return grpc::Status::OK;
}

grpc::Status MetricsGrpcService::GetDomainStats(grpc::ServerContext* ctx, const v1::GetDomainStatsRequest* req,
                                               v1::GetDomainStatsResponse* out) {
  return Handle(ctx, "GetDomainStats", [&]() -> absl::Status {
    auto sample = metrics_.Latest();
    if (!sample->domains.ok()) return sample->domains.status();
    *out = ToDomainStatsProto(*sample, req->name());
    if (!req->name().empty() && out->domains_size() == 0) {
      return absl::NotFoundError(absl::StrCat("name: domain '", req->name(), "' not found"));
    }
    return absl::OkStatus();
  });
}

grpc::Status MetricsGrpcService::GetEventChannels(grpc::ServerContext* ctx, const v1::GetEventChannelsRequest*,
                                                 v1::EventChannels* out) {
  return Handle(ctx, "GetEventChannels", [&]() -> absl::Status {
    auto sample = metrics_.Latest();
    if (!sample->event_channels.ok()) return sample->event_channels.status();
    *out = ToProto(*sample->event_channels, sample->time);
    return absl::OkStatus();
  });
}

grpc::Status MetricsGrpcService::Watch(grpc::ServerContext* ctx, const v1::WatchMetricsRequest* req,
                                      grpc::ServerWriter<v1::MetricsSample>* writer) {
  log::ScopedRequestId rid(RequestIdOf(ctx));
  uint32_t interval = req->interval_seconds() == 0 ? 10 : req->interval_seconds();
  if (interval > 3600) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("interval_seconds: at most 3600, got ", req->interval_seconds())));
  }
  Log()->info("metrics Watch opened (every {} s)", interval);
  auto next = std::chrono::steady_clock::now();
  while (!ctx->IsCancelled() && !closed_) {
    if (std::chrono::steady_clock::now() >= next) {
      if (!writer->Write(ToProto(*metrics_.Latest()))) break;  // client went away
      next += std::chrono::seconds(interval);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  Log()->info("metrics Watch closed");
  return grpc::Status::OK;
}

}  // namespace hvagent::api
