#include "agent/api/grpc/grpc_services.h"

#include <mutex>
#include <optional>
#include <thread>

#include <google/protobuf/util/json_util.h>

#include "agent/api/auth/audit.h"
#include "agent/api/convert.h"
#include "agent/api/status_mapping.h"
#include "common/log.h"

namespace hvagent::api {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("grpc");
  return logger;
}

std::string RequestIdOf(const grpc::ServerContextBase* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("x-request-id");
  if (it != md.end() && !it->second.empty() && it->second.size() <= 64) {
    return std::string(it->second.data(), it->second.size());
  }
  return log::NewRequestId();
}

}  // namespace

absl::StatusOr<auth::Caller> CallerOf(const grpc::ServerContextBase* ctx, const auth::Authorizer& authz) {
  std::string leaf, chain;
  std::shared_ptr<const grpc::AuthContext> ac = ctx->auth_context();
  if (ac != nullptr) {
    for (const grpc::string_ref& v : ac->FindPropertyValues("x509_pem_cert")) leaf.assign(v.data(), v.size());
    for (const grpc::string_ref& v : ac->FindPropertyValues("x509_pem_cert_chain")) chain.assign(v.data(), v.size());
  }
  return authz.FromPeerCertificate(leaf, chain);
}

absl::StatusOr<auth::RateLimiter::StreamSlot> AdmitStream(const grpc::ServerContextBase* ctx,
                                                           const auth::Authorizer* authz, const char* operation) {
  if (authz == nullptr) return auth::RateLimiter::StreamSlot(nullptr, "", absl::OkStatus());
  auto caller = CallerOf(ctx, *authz);
  absl::Status s = caller.ok() ? authz->Admit(*caller, operation) : caller.status();
  if (s.ok()) {
    auto slot = authz->OpenStream(*caller);
    if (slot.status().ok()) return slot;
    s = slot.status();
  }
  auth::Audit(caller.value_or(auth::Caller{}), operation, "", s, {});
  return s;
}

namespace {

std::string ArgumentsOf(const google::protobuf::Message* request) {
  if (request == nullptr) return "";
  std::string json;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(*request, &json, opts).ok()) return "?";
  return json;
}

std::optional<std::string> IdempotencyKeyOf(const grpc::ServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("idempotency-key");
  if (it == md.end()) return std::nullopt;
  return std::string(it->second.data(), it->second.size());
}

// A mutating call with an idempotency key runs at most once per key (service/idempotency.h);
// a replay answers with the first call's status and reply, and says so in its metadata.
template <typename F>
absl::Status RunOnce(grpc::ServerContext* ctx, service::IdempotencyStore* idem, const char* operation,
                     const google::protobuf::Message* request, google::protobuf::Message* response, F&& body) {
  auto key = IdempotencyKeyOf(ctx);
  if (!key || idem == nullptr || response == nullptr || !auth::IsMutating(operation)) return body();
  if (auto s = service::IdempotencyStore::ValidateKey(*key); !s.ok()) return s;
  std::string wire;
  request->SerializePartialToString(&wire);  // deterministic for our messages (no maps)
  auto outcome = idem->Run(*key, operation, auth::Sha256Hex(wire), [&] {
    service::IdempotencyStore::Outcome o;
    o.status = body();
    if (o.status.ok()) response->SerializePartialToString(&o.response);
    return o;
  });
  if (outcome.replayed) {
    ctx->AddInitialMetadata("idempotent-replay", "true");
    if (outcome.status.ok() && !response->ParseFromString(outcome.response)) {
      return absl::InternalError("idempotency store: the stored reply does not parse");
    }
  }
  return outcome.status;
}

// Runs one RPC under a request id: checks the caller's role, logs the outcome (and, for what
// changes something, an audit line), and turns the Status into a gRPC one.
template <typename F>
grpc::Status Handle(grpc::ServerContext* ctx, const auth::Authorizer* authz, service::IdempotencyStore* idem,
                    service::OperationGate* gate, google::protobuf::Message* response, const char* operation,
                    const google::protobuf::Message* request, F&& body) {
  log::ScopedRequestId rid(RequestIdOf(ctx));
  ctx->AddInitialMetadata("x-request-id", std::string(log::CurrentRequestId()));
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<auth::Caller> who =
      authz != nullptr ? CallerOf(ctx, *authz) : absl::StatusOr<auth::Caller>(auth::Caller{"-", auth::Role::kController});
  auth::Caller caller = who.value_or(auth::Caller{});
  absl::Status s = !who.ok() ? who.status() : authz != nullptr ? authz->Admit(caller, operation) : absl::OkStatus();
  const bool allowed = s.ok();
  if (allowed) {
    std::optional<absl::StatusOr<service::OperationGate::Slot>> slot;
    if (gate != nullptr && auth::IsMutating(operation)) slot.emplace(gate->Enter());
    if (slot && !slot->ok()) {
      s = slot->status();
      ctx->AddTrailingMetadata("retry-after", std::to_string(gate->retry_after().count()));
    } else {
      s = RunOnce(ctx, idem, operation, request, response, body);
    }
  }
  if (s.ok()) {
    Log()->info("{} ok", operation);
  } else {
    Log()->info("{} failed: {} {}", operation, absl::StatusCodeToString(s.code()), s.message());
  }
  if (!allowed || auth::IsMutating(operation)) {
    auth::Audit(caller, operation, ArgumentsOf(request), s, std::chrono::steady_clock::now() - start);
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

grpc::Status HostGrpcService::GetHost(grpc::ServerContext* ctx, const v1::GetHostRequest* req, v1::Host* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.HostService/GetHost", req, [&]() -> absl::Status {
    auto h = host_.GetHost();
    if (!h.ok()) return h.status();
    *out = ToProto(*h, host_.HypervisorConnected());
    return absl::OkStatus();
  });
}

grpc::Status HostGrpcService::GetCapacity(grpc::ServerContext* ctx, const v1::GetCapacityRequest* req,
                                          v1::Capacity* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.HostService/GetCapacity", req, [&]() -> absl::Status {
    auto c = host_.GetCapacity();
    if (!c.ok()) return c.status();
    *out = ToProto(*c);
    return absl::OkStatus();
  });
}

grpc::Status DomainGrpcService::CreateDomain(grpc::ServerContext* ctx, const v1::CreateDomainRequest* req,
                                             v1::Domain* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.DomainService/CreateDomain", req, [&]() -> absl::Status {
    if (!req->has_spec()) return absl::InvalidArgumentError("spec: is required");
    auto spec = FromProto(req->spec());
    if (!spec.ok()) return spec.status();
    return IntoDomain(out, [&] { return domains_.Create(*spec, req->start(), VolumesFromProto(req->spec())); });
  });
}

grpc::Status DomainGrpcService::GetDomain(grpc::ServerContext* ctx, const v1::GetDomainRequest* req,
                                          v1::Domain* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.DomainService/GetDomain", req, [&] { return IntoDomain(out, [&] { return domains_.Get(req->name()); }); });
}

grpc::Status DomainGrpcService::ListDomains(grpc::ServerContext* ctx, const v1::ListDomainsRequest* req,
                                            v1::ListDomainsResponse* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.DomainService/ListDomains", req, [&]() -> absl::Status {
    auto list = domains_.List();
    if (!list.ok()) return list.status();
    for (const auto& d : *list) *out->add_domains() = ToProto(d);
    return absl::OkStatus();
  });
}

grpc::Status DomainGrpcService::StartDomain(grpc::ServerContext* ctx, const v1::DomainRef* req, v1::Domain* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.DomainService/StartDomain", req, [&] { return IntoDomain(out, [&] { return domains_.Start(req->name()); }); });
}

grpc::Status DomainGrpcService::ShutdownDomain(grpc::ServerContext* ctx, const v1::ShutdownDomainRequest* req,
                                               v1::ShutdownDomainResponse* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.DomainService/ShutdownDomain", req, [&]() -> absl::Status {
    auto r = domains_.Shutdown(req->name(), std::chrono::seconds(req->timeout_seconds()));
    if (!r.ok()) return r.status();
    *out->mutable_domain() = ToProto(r->domain);
    out->set_forced(r->forced);
    return absl::OkStatus();
  });
}

grpc::Status DomainGrpcService::DestroyDomain(grpc::ServerContext* ctx, const v1::DomainRef* req, v1::Domain* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.DomainService/DestroyDomain", req,
                [&] { return IntoDomain(out, [&] { return domains_.Destroy(req->name()); }); });
}

grpc::Status DomainGrpcService::RebootDomain(grpc::ServerContext* ctx, const v1::DomainRef* req, v1::Domain* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.DomainService/RebootDomain", req, [&] { return IntoDomain(out, [&] { return domains_.Reboot(req->name()); }); });
}

grpc::Status DomainGrpcService::SuspendDomain(grpc::ServerContext* ctx, const v1::DomainRef* req, v1::Domain* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.DomainService/SuspendDomain", req,
                [&] { return IntoDomain(out, [&] { return domains_.Suspend(req->name()); }); });
}

grpc::Status DomainGrpcService::ResumeDomain(grpc::ServerContext* ctx, const v1::DomainRef* req, v1::Domain* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.DomainService/ResumeDomain", req, [&] { return IntoDomain(out, [&] { return domains_.Resume(req->name()); }); });
}

grpc::Status DomainGrpcService::DeleteDomain(grpc::ServerContext* ctx, const v1::DeleteDomainRequest* req,
                                             v1::DeleteDomainResponse* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.DomainService/DeleteDomain", req, [&] { return domains_.Delete(req->name(), req->force(), req->delete_volumes()); });
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

grpc::Status StorageGrpcService::ListPools(grpc::ServerContext* ctx, const v1::ListPoolsRequest* req,
                                           v1::ListPoolsResponse* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.StorageService/ListPools", req, [&]() -> absl::Status {
    auto pools = storage_.ListPools();
    if (!pools.ok()) return pools.status();
    for (const auto& p : *pools) *out->add_pools() = ToProto(p);
    return absl::OkStatus();
  });
}

grpc::Status StorageGrpcService::GetPool(grpc::ServerContext* ctx, const v1::GetPoolRequest* req, v1::Pool* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.StorageService/GetPool", req, [&]() -> absl::Status {
    auto p = storage_.GetPool(req->name());
    if (!p.ok()) return p.status();
    *out = ToProto(*p);
    return absl::OkStatus();
  });
}

grpc::Status StorageGrpcService::ListVolumes(grpc::ServerContext* ctx, const v1::ListVolumesRequest* req,
                                             v1::ListVolumesResponse* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.StorageService/ListVolumes", req, [&]() -> absl::Status {
    auto list = storage_.ListVolumes(req->pool());
    if (!list.ok()) return list.status();
    for (const auto& v : *list) *out->add_volumes() = ToProto(v);
    return absl::OkStatus();
  });
}

grpc::Status StorageGrpcService::GetVolume(grpc::ServerContext* ctx, const v1::VolumeRef* req, v1::Volume* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.StorageService/GetVolume", req,
                [&] { return IntoVolume(out, [&] { return storage_.GetVolume(req->pool(), req->name()); }); });
}

grpc::Status StorageGrpcService::CreateVolume(grpc::ServerContext* ctx, const v1::CreateVolumeRequest* req,
                                              v1::Volume* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.StorageService/CreateVolume", req, [&] {
    return IntoVolume(out, [&] { return storage_.CreateVolume(req->pool(), {req->name(), req->size_bytes()}); });
  });
}

grpc::Status StorageGrpcService::ResizeVolume(grpc::ServerContext* ctx, const v1::ResizeVolumeRequest* req,
                                              v1::Volume* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.StorageService/ResizeVolume", req, [&] {
    return IntoVolume(out, [&] { return storage_.ResizeVolume(req->pool(), req->name(), req->size_bytes()); });
  });
}

grpc::Status StorageGrpcService::DeleteVolume(grpc::ServerContext* ctx, const v1::VolumeRef* req, v1::Volume* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.StorageService/DeleteVolume", req,
                [&] { return IntoVolume(out, [&] { return storage_.DeleteVolume(req->pool(), req->name()); }); });
}

grpc::Status StorageGrpcService::AttachVolume(grpc::ServerContext* ctx, const v1::AttachVolumeRequest* req,
                                              v1::Volume* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.StorageService/AttachVolume", req, [&] {
    return IntoVolume(out, [&] {
      return storage_.AttachVolume(req->pool(), req->name(), req->domain(), req->target(), req->readonly());
    });
  });
}

grpc::Status StorageGrpcService::DetachVolume(grpc::ServerContext* ctx, const v1::DetachVolumeRequest* req,
                                              v1::Volume* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.StorageService/DetachVolume", req,
                [&] { return IntoVolume(out, [&] { return storage_.DetachVolume(req->pool(), req->name()); }); });
}

namespace {

// A stream refused before it began (authorization, the per-caller stream cap).
class RefusedStream final : public grpc::ServerWriteReactor<v1::DomainEvent> {
 public:
  explicit RefusedStream(grpc::Status s) { Finish(std::move(s)); }
  void OnDone() override { delete this; }
};

// One Watch stream. At most one write is outstanding: Pump() starts the next when the last
// is done, taking events from the subscription, which wakes it (listener) when one arrives.
// Lock order: the subscription's listener lock, then mu_, then the subscription's queue lock.
// gRPC calls (StartWrite, Finish) are made outside mu_.
class WatchReactor final : public grpc::ServerWriteReactor<v1::DomainEvent> {
 public:
  WatchReactor(std::shared_ptr<service::EventHub::Subscription> sub, auth::RateLimiter::StreamSlot slot,
               std::string rid)
      : sub_(std::move(sub)), slot_(std::move(slot)), rid_(std::move(rid)) {
    // Headers go out first, so a client that waits for them knows it will see every later event.
    StartSendInitialMetadata();
    sub_->SetListener([this] { Pump(); });
    Pump();
  }

  void OnWriteDone(bool ok) override {
    std::optional<grpc::Status> finish;
    {
      std::lock_guard lock(mu_);
      writing_ = false;
      if (!ok && !finish_pending_) finish_pending_ = grpc::Status::OK;  // the client went away
      if (finish_pending_ && !finished_) {
        finished_ = true;
        finish = std::move(*finish_pending_);
      }
    }
    if (finish) {
      Finish(std::move(*finish));
    } else {
      Pump();
    }
  }

  void OnCancel() override { FinishWhenIdle(grpc::Status::CANCELLED); }

  void OnDone() override {
    sub_->SetListener(nullptr);  // returns once no listener call runs: safe to delete
    log::ScopedRequestId rid(rid_);
    Log()->debug("Watch closed");
    delete this;
  }

 private:
  void Pump() {
    bool finish = false;
    {
      std::lock_guard lock(mu_);
      if (writing_ || finished_) return;
      if (auto e = sub_->TryNext()) {
        current_ = ToProto(*e);
        writing_ = true;
      } else if (sub_->closed()) {
        finished_ = finish = true;  // the hub closed (agent shutdown): end the stream
      } else {
        return;
      }
    }
    if (finish) {
      Finish(grpc::Status::OK);
    } else {
      StartWrite(&current_);
    }
  }

  // Finish now, or after the write in flight (Finish is not started under an outstanding write).
  void FinishWhenIdle(grpc::Status s) {
    {
      std::lock_guard lock(mu_);
      if (finished_) return;
      if (writing_) {
        if (!finish_pending_) finish_pending_ = std::move(s);
        return;
      }
      finished_ = true;
    }
    Finish(std::move(s));
  }

  const std::shared_ptr<service::EventHub::Subscription> sub_;
  const auth::RateLimiter::StreamSlot slot_;  // the caller's stream count, held while open
  const std::string rid_;
  std::mutex mu_;
  bool writing_ = false;
  bool finished_ = false;
  std::optional<grpc::Status> finish_pending_;
  v1::DomainEvent current_;  // the write in flight
};

}  // namespace

grpc::ServerWriteReactor<v1::DomainEvent>* EventGrpcService::Watch(grpc::CallbackServerContext* ctx,
                                                                   const v1::WatchEventsRequest* req) {
  std::string request_id = RequestIdOf(ctx);
  log::ScopedRequestId rid(request_id);
  auto slot = AdmitStream(ctx, auth_, "hvagent.v1.EventService/Watch");
  if (!slot.ok()) return new RefusedStream(ToGrpcStatus(slot.status()));
  auto sub = hub_.Subscribe({req->domain_names().begin(), req->domain_names().end()});
  Log()->debug("Watch opened ({} domain filter(s))", req->domain_names_size());
  return new WatchReactor(std::move(sub), std::move(*slot), std::move(request_id));
}

grpc::Status MetricsGrpcService::GetDomainStats(grpc::ServerContext* ctx, const v1::GetDomainStatsRequest* req,
                                               v1::GetDomainStatsResponse* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.MetricsService/GetDomainStats", req, [&]() -> absl::Status {
    auto sample = metrics_.Latest();
    if (!sample->domains.ok()) return sample->domains.status();
    *out = ToDomainStatsProto(*sample, req->name());
    if (!req->name().empty() && out->domains_size() == 0) {
      return absl::NotFoundError(absl::StrCat("name: domain '", req->name(), "' not found"));
    }
    return absl::OkStatus();
  });
}

grpc::Status MetricsGrpcService::GetEventChannels(grpc::ServerContext* ctx, const v1::GetEventChannelsRequest* req,
                                                 v1::EventChannels* out) {
  return Handle(ctx, auth_, idem_, gate_, out, "hvagent.v1.MetricsService/GetEventChannels", req, [&]() -> absl::Status {
    auto sample = metrics_.Latest();
    if (!sample->event_channels.ok()) return sample->event_channels.status();
    *out = ToProto(*sample->event_channels, sample->time);
    return absl::OkStatus();
  });
}

grpc::Status MetricsGrpcService::Watch(grpc::ServerContext* ctx, const v1::WatchMetricsRequest* req,
                                      grpc::ServerWriter<v1::MetricsSample>* writer) {
  log::ScopedRequestId rid(RequestIdOf(ctx));
  auto slot = AdmitStream(ctx, auth_, "hvagent.v1.MetricsService/Watch");
  if (!slot.ok()) return ToGrpcStatus(slot.status());
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
