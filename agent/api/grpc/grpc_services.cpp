#include "agent/api/grpc/grpc_services.h"

#include <mutex>
#include <optional>
#include <thread>

#include "agent/api/convert.h"
#include "agent/api/grpc/one_write_at_a_time.h"
#include "agent/api/status_mapping.h"
#include "common/log.h"

namespace hvagent::api {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("grpc");
  return logger;
}

std::optional<std::string> IdempotencyKeyOf(const grpc::ServerContextBase* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("idempotency-key");
  if (it == md.end()) return std::nullopt;
  return std::string(it->second.data(), it->second.size());
}

const ops::Operation& OperationNamed(absl::string_view name) {
  const ops::Operation* op = ops::Find(name);
  // Every RPC below names a row of the table (OperationTableTest checks each proto method).
  if (op == nullptr) std::abort();
  return *op;
}

}  // namespace

grpc::Status Unary(const ops::Pipeline& pipeline, grpc::ServerContextBase* ctx, absl::string_view operation,
                   const google::protobuf::Message& request, google::protobuf::Message* response) {
  log::ScopedRequestId rid(RequestIdOf(ctx));
  ctx->AddInitialMetadata("x-request-id", std::string(log::CurrentRequestId()));
  ops::Pipeline::Call call{CallerOf(ctx, pipeline.authorizer()), IdempotencyKeyOf(ctx)};
  absl::Status s = pipeline.Run(OperationNamed(operation), call, request, response);
  if (call.replayed) ctx->AddInitialMetadata("idempotent-replay", "true");
  if (call.retry_after) ctx->AddTrailingMetadata("retry-after", std::to_string(call.retry_after->count()));
  return ToGrpcStatus(s);
}

std::string RequestIdOf(const grpc::ServerContextBase* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("x-request-id");
  if (it != md.end() && !it->second.empty() && it->second.size() <= 64) {
    return std::string(it->second.data(), it->second.size());
  }
  return log::NewRequestId();
}

absl::StatusOr<auth::Caller> CallerOf(const grpc::ServerContextBase* ctx, const auth::Authorizer* authz) {
  if (authz == nullptr) return auth::Caller{"-", auth::Role::kController};
  std::string leaf, chain;
  std::shared_ptr<const grpc::AuthContext> ac = ctx->auth_context();
  if (ac != nullptr) {
    for (const grpc::string_ref& v : ac->FindPropertyValues("x509_pem_cert")) leaf.assign(v.data(), v.size());
    for (const grpc::string_ref& v : ac->FindPropertyValues("x509_pem_cert_chain")) chain.assign(v.data(), v.size());
  }
  return authz->FromPeerCertificate(leaf, chain);
}

// A unary RPC answered from memory, run inline on gRPC's thread (see grpc_services.h for which
// may).
#define HVAGENT_INLINE_UNARY(Service, Method, Request, Response)                                     \
  grpc::ServerUnaryReactor* Service##GrpcService::Method(grpc::CallbackServerContext* ctx, const Request* req, \
                                                          Response* out) {                         \
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();                                     \
    reactor->Finish(Unary(pipeline_, ctx, "hvagent.v1." #Service "Service/" #Method, *req, out));  \
    return reactor;                                                                                \
  }

// Every other unary RPC: handed to the worker pool, whose thread runs it and finishes the call.
// gRPC keeps ctx, req and out alive until Finish.
#define HVAGENT_UNARY(Service, Method, Request, Response)                                               \
  grpc::ServerUnaryReactor* Service##GrpcService::Method(grpc::CallbackServerContext* ctx, const Request* req, \
                                                          Response* out) {                              \
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();                                          \
    workers_.Post([this, ctx, req, out, reactor] {                                                     \
      reactor->Finish(Unary(pipeline_, ctx, "hvagent.v1." #Service "Service/" #Method, *req, out));     \
    });                                                                                                 \
    return reactor;                                                                                     \
  }

HVAGENT_UNARY(Host, GetHost, v1::GetHostRequest, v1::Host)
HVAGENT_UNARY(Host, GetCapacity, v1::GetCapacityRequest, v1::Capacity)
HVAGENT_UNARY(Domain, CreateDomain, v1::CreateDomainRequest, v1::Domain)
HVAGENT_INLINE_UNARY(Domain, GetDomain, v1::GetDomainRequest, v1::Domain)
HVAGENT_INLINE_UNARY(Domain, ListDomains, v1::ListDomainsRequest, v1::ListDomainsResponse)
HVAGENT_UNARY(Domain, StartDomain, v1::DomainRef, v1::Domain)
HVAGENT_UNARY(Domain, ShutdownDomain, v1::ShutdownDomainRequest, v1::ShutdownDomainResponse)
HVAGENT_UNARY(Domain, DestroyDomain, v1::DomainRef, v1::Domain)
HVAGENT_UNARY(Domain, RebootDomain, v1::DomainRef, v1::Domain)
HVAGENT_UNARY(Domain, SuspendDomain, v1::DomainRef, v1::Domain)
HVAGENT_UNARY(Domain, ResumeDomain, v1::DomainRef, v1::Domain)
HVAGENT_UNARY(Domain, ManagedSaveDomain, v1::DomainRef, v1::Domain)
HVAGENT_UNARY(Domain, RescueDomain, v1::RescueDomainRequest, v1::Domain)
HVAGENT_UNARY(Domain, UnrescueDomain, v1::DomainRef, v1::Domain)
HVAGENT_UNARY(Domain, UpdateDomain, v1::UpdateDomainRequest, v1::Domain)
HVAGENT_UNARY(Domain, DeleteDomain, v1::DeleteDomainRequest, v1::DeleteDomainResponse)
HVAGENT_UNARY(Domain, AttachNic, v1::AttachNicRequest, v1::Nic)
HVAGENT_UNARY(Domain, DetachNic, v1::DetachNicRequest, v1::DetachNicResponse)
HVAGENT_UNARY(Storage, ListPools, v1::ListPoolsRequest, v1::ListPoolsResponse)
HVAGENT_UNARY(Storage, GetPool, v1::GetPoolRequest, v1::Pool)
HVAGENT_UNARY(Storage, ListVolumes, v1::ListVolumesRequest, v1::ListVolumesResponse)
HVAGENT_UNARY(Storage, GetVolume, v1::VolumeRef, v1::Volume)
HVAGENT_UNARY(Storage, CreateVolume, v1::CreateVolumeRequest, v1::Volume)
HVAGENT_UNARY(Storage, ResizeVolume, v1::ResizeVolumeRequest, v1::Volume)
HVAGENT_UNARY(Storage, DeleteVolume, v1::VolumeRef, v1::Volume)
HVAGENT_UNARY(Storage, AttachVolume, v1::AttachVolumeRequest, v1::Volume)
HVAGENT_UNARY(Storage, DetachVolume, v1::DetachVolumeRequest, v1::Volume)
HVAGENT_UNARY(Storage, ReleaseVolumeOwnership, v1::ReleaseVolumeOwnershipRequest, v1::ReleaseVolumeOwnershipResponse)
HVAGENT_UNARY(Storage, CreateSnapshot, v1::CreateSnapshotRequest, v1::CreateSnapshotResponse)
HVAGENT_UNARY(Storage, ListSnapshots, v1::ListSnapshotsRequest, v1::ListSnapshotsResponse)
HVAGENT_UNARY(Storage, DeleteSnapshot, v1::SnapshotRef, v1::DeleteSnapshotResponse)
HVAGENT_UNARY(Storage, RevertSnapshot, v1::SnapshotRef, v1::RevertSnapshotResponse)
HVAGENT_UNARY(Metrics, GetDomainStats, v1::GetDomainStatsRequest, v1::GetDomainStatsResponse)
HVAGENT_UNARY(Metrics, GetEventChannels, v1::GetEventChannelsRequest, v1::EventChannels)
HVAGENT_UNARY(Operation, ListOperations, v1::ListOperationsRequest, v1::ListOperationsResponse)
HVAGENT_UNARY(Operation, GetOperation, v1::GetOperationRequest, v1::Operation)
HVAGENT_UNARY(Image, ImportImage, v1::ImportImageRequest, v1::Operation)
HVAGENT_UNARY(Image, GetImage, v1::ImageRef, v1::Image)
HVAGENT_UNARY(Image, ListImages, v1::ListImagesRequest, v1::ListImagesResponse)
HVAGENT_UNARY(Image, DeleteImage, v1::ImageRef, v1::Image)
HVAGENT_UNARY(Image, CreateImageFromVolume, v1::CreateImageFromVolumeRequest, v1::CreateImageFromVolumeResponse)
HVAGENT_UNARY(Image, CreateVolumeFromImage, v1::CreateVolumeFromImageRequest, v1::Operation)
HVAGENT_UNARY(Migration, MigrateDomain, v1::MigrateDomainRequest, v1::MigrateDomainResponse)
HVAGENT_UNARY(Migration, CancelMigration, v1::CancelMigrationRequest, v1::CancelMigrationResponse)
HVAGENT_UNARY(Migration, PrepareIncoming, v1::PrepareIncomingRequest, v1::PrepareIncomingResponse)
HVAGENT_UNARY(Migration, FinishIncoming, v1::IncomingRef, v1::FinishIncomingResponse)
HVAGENT_UNARY(Migration, AbortIncoming, v1::IncomingRef, v1::AbortIncomingResponse)
HVAGENT_UNARY(Migration, KeepIncoming, v1::IncomingRef, v1::KeepIncomingResponse)
#undef HVAGENT_UNARY
#undef HVAGENT_INLINE_UNARY

namespace {

// The chunks after the header, handed to the import as it asks for them: one message in memory.
class GrpcUploadBody final : public service::UploadBody {
 public:
  GrpcUploadBody(grpc::ServerContext* ctx, grpc::ServerReader<v1::UploadImageRequest>* reader)
      : ctx_(ctx), reader_(reader) {}
  absl::StatusOr<bool> Next(std::string* chunk) override {
    if (!reader_->Read(&message_)) {
      // The stream ends either way; only a cancel is the caller's giving up.
      if (ctx_->IsCancelled()) return absl::CancelledError("the caller cancelled the upload");
      return false;
    }
    if (message_.part_case() != v1::UploadImageRequest::kChunk) {
      return absl::InvalidArgumentError("chunk: every message after the header must carry a chunk");
    }
    chunk->swap(*message_.mutable_chunk());
    return true;
  }
  bool CallerGone() const override { return ctx_->IsCancelled(); }

 private:
  grpc::ServerContext* ctx_;
  grpc::ServerReader<v1::UploadImageRequest>* reader_;
  v1::UploadImageRequest message_;
};

}  // namespace

grpc::Status ImageGrpcService::UploadImage(grpc::ServerContext* ctx,
                                           grpc::ServerReader<v1::UploadImageRequest>* reader, v1::Image* out) {
  log::ScopedRequestId rid(RequestIdOf(ctx));
  ctx->AddInitialMetadata("x-request-id", std::string(log::CurrentRequestId()));
  v1::UploadImageRequest first;
  if (!reader->Read(&first) || first.part_case() != v1::UploadImageRequest::kHeader) {
    return ToGrpcStatus(absl::InvalidArgumentError("header: the first message of an upload must carry its header"));
  }
  ops::Pipeline::Call call{CallerOf(ctx, pipeline_.authorizer()), std::nullopt};
  GrpcUploadBody body(ctx, reader);
  absl::Status s = pipeline_.RunUpload(
      OperationNamed("hvagent.v1.ImageService/UploadImage"), call,
      [&](google::protobuf::Message* header) {
        header->CopyFrom(first.header());
        return absl::OkStatus();
      },
      body, out);
  if (call.retry_after) ctx->AddTrailingMetadata("retry-after", std::to_string(call.retry_after->count()));
  return ToGrpcStatus(s);
}

namespace {

// A stream refused before it began (authorization, the per-caller stream cap).
class RefusedStream final : public grpc::ServerWriteReactor<v1::DomainEvent> {
 public:
  explicit RefusedStream(grpc::Status s) { Finish(std::move(s)); }
  void OnDone() override { delete this; }
};

// One Watch stream (one write at a time, one_write_at_a_time.h): Next takes events from the
// subscription, which wakes the stream (listener) when one arrives.
// Lock order: the subscription's listener lock, then the pump's lock, then the subscription's
// queue lock.
class WatchReactor final : public OneWriteAtATime<grpc::ServerWriteReactor<v1::DomainEvent>, v1::DomainEvent> {
 public:
  WatchReactor(std::shared_ptr<service::EventHub::Subscription> sub, auth::RateLimiter::StreamSlot slot,
               std::string rid)
      : sub_(std::move(sub)), slot_(std::move(slot)), rid_(std::move(rid)) {
    // Headers go out first, so a client that waits for them knows it will see every later event.
    StartSendInitialMetadata();
    sub_->SetListener([this] { Pump(); });
    Pump();
  }

  void OnCancel() override { FinishWhenIdle(grpc::Status::CANCELLED); }

  void OnDone() override {
    sub_->SetListener(nullptr);  // returns once no listener call runs: safe to delete
    log::ScopedRequestId rid(rid_);
    Log()->debug("Watch closed");
    delete this;
  }

 private:
  Step Next(v1::DomainEvent& out, grpc::Status& finish) override {
    if (auto e = sub_->TryNext()) {
      out = ToProto(*e);
      return Step::kWrite;
    }
    if (sub_->closed()) {
      finish = grpc::Status::OK;  // the hub closed (agent shutdown): end the stream
      return Step::kFinish;
    }
    return Step::kWait;
  }

  const std::shared_ptr<service::EventHub::Subscription> sub_;
  const auth::RateLimiter::StreamSlot slot_;  // the caller's stream count, held while open
  const std::string rid_;
};

}  // namespace

namespace {

absl::StatusOr<service::OperationFilter> OperationFilterOf(const v1::WatchEventsRequest& req) {
  service::OperationFilter f{.operation_id = req.operation_id()};
  switch (req.operations()) {
    case v1::WATCH_OPERATIONS_NONE: f.mode = service::OperationFilter::Mode::kNone; break;
    case v1::WATCH_OPERATIONS_ALSO: f.mode = service::OperationFilter::Mode::kAlso; break;
    case v1::WATCH_OPERATIONS_ONLY: f.mode = service::OperationFilter::Mode::kOnly; break;
    default:
      return absl::InvalidArgumentError("operations: must be WATCH_OPERATIONS_NONE, _ALSO or _ONLY");
  }
  if (f.operation_id != 0 && f.mode == service::OperationFilter::Mode::kNone) {
    return absl::InvalidArgumentError("operation_id: needs operations WATCH_OPERATIONS_ALSO or WATCH_OPERATIONS_ONLY");
  }
  return f;
}

}  // namespace

grpc::ServerWriteReactor<v1::DomainEvent>* EventGrpcService::Watch(grpc::CallbackServerContext* ctx,
                                                                   const v1::WatchEventsRequest* req) {
  std::string request_id = RequestIdOf(ctx);
  log::ScopedRequestId rid(request_id);
  auto slot = pipeline_.AdmitStream(OperationNamed("hvagent.v1.EventService/Watch"),
                                    CallerOf(ctx, pipeline_.authorizer()));
  if (!slot.ok()) return new RefusedStream(ToGrpcStatus(slot.status()));
  auto operations = OperationFilterOf(*req);
  if (!operations.ok()) return new RefusedStream(ToGrpcStatus(operations.status()));
  auto sub = hub_.Subscribe({req->domain_names().begin(), req->domain_names().end()}, *operations);
  Log()->debug("Watch opened ({} domain filter(s), operations {})", req->domain_names_size(),
               v1::WatchOperations_Name(req->operations()));
  return new WatchReactor(std::move(sub), std::move(*slot), std::move(request_id));
}

namespace {

// An export's pieces as stream messages; a failed Write is the caller gone.
class GrpcExportSink final : public storage::image::ExportSink {
 public:
  GrpcExportSink(grpc::ServerContext* ctx, grpc::ServerWriter<v1::ExportVolumeChunk>* writer)
      : ctx_(ctx), writer_(writer) {}
  absl::Status Data(absl::string_view bytes) override {
    chunk_.set_data(bytes.data(), bytes.size());
    return Send();
  }
  absl::Status Zeros(uint64_t bytes) override {
    chunk_.set_zeros(bytes);
    return Send();
  }
  absl::Status Header(uint64_t size) {
    chunk_.mutable_header()->set_size_bytes(size);
    return Send();
  }
  bool CallerGone() const override { return ctx_->IsCancelled(); }

 private:
  absl::Status Send() {
    if (ctx_->IsCancelled() || !writer_->Write(chunk_)) {
      return absl::CancelledError("the caller went away (export stopped)");
    }
    return absl::OkStatus();
  }
  grpc::ServerContext* ctx_;
  grpc::ServerWriter<v1::ExportVolumeChunk>* writer_;
  v1::ExportVolumeChunk chunk_;
};

}  // namespace

grpc::Status StorageGrpcService::ExportVolume(grpc::ServerContext* ctx, const v1::ExportVolumeRequest* req,
                                              grpc::ServerWriter<v1::ExportVolumeChunk>* writer) {
  log::ScopedRequestId rid(RequestIdOf(ctx));
  ctx->AddInitialMetadata("x-request-id", std::string(log::CurrentRequestId()));
  const ops::Operation& op = OperationNamed("hvagent.v1.StorageService/ExportVolume");
  if (!ops::Available(op, pipeline_.services())) {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this agent has no image service");
  }
  auto slot = pipeline_.AdmitStream(op, CallerOf(ctx, pipeline_.authorizer()));
  if (!slot.ok()) return ToGrpcStatus(slot.status());
  GrpcExportSink sink(ctx, writer);
  auto request = ToExportRequest(*req);
  if (!request.ok()) return ToGrpcStatus(request.status());
  auto result = pipeline_.services().images->Export(
      *request, sink, [&](const service::ExportStart& start) { return sink.Header(start.size_bytes); }, nullptr);
  if (!result.ok()) return ToGrpcStatus(result.status());
  v1::ExportVolumeChunk last;
  last.mutable_trailer()->set_sha256(result->sha256);
  last.mutable_trailer()->set_size_bytes(result->bytes);
  last.mutable_trailer()->set_zero_bytes(result->zero_bytes);
  if (!writer->Write(last)) return grpc::Status::CANCELLED;
  return grpc::Status::OK;
}

grpc::Status MetricsGrpcService::Watch(grpc::ServerContext* ctx, const v1::WatchMetricsRequest* req,
                                      grpc::ServerWriter<v1::MetricsSample>* writer) {
  log::ScopedRequestId rid(RequestIdOf(ctx));
  auto slot = pipeline_.AdmitStream(OperationNamed("hvagent.v1.MetricsService/Watch"),
                                    CallerOf(ctx, pipeline_.authorizer()));
  if (!slot.ok()) return ToGrpcStatus(slot.status());
  uint32_t interval = req->interval_seconds() == 0 ? 10 : req->interval_seconds();
  if (interval > 3600) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("interval_seconds: at most 3600, got ", req->interval_seconds())));
  }
  Log()->info("metrics Watch opened (every {} s)", interval);
  auto next = std::chrono::steady_clock::now();
  // A cached sample can be younger than the interval; sending it twice would report no change
  // over a whole interval, so each write takes a sample the stream has not sent.
  std::shared_ptr<const service::MetricsSample> sent;
  while (!ctx->IsCancelled() && !closed_) {
    if (std::chrono::steady_clock::now() >= next) {
      sent = pipeline_.services().metrics->Latest(sent);
      if (!writer->Write(ToProto(*sent))) break;  // client went away
      next += std::chrono::seconds(interval);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  Log()->info("metrics Watch closed");
  return grpc::Status::OK;
}

}  // namespace hvagent::api
