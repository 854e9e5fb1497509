#pragma once
// gRPC front end: each RPC hands its request to the operations pipeline and returns what it
// answers; it never calls agent/service, libvirt or storage itself. Every call runs under a
// request id (the client's "x-request-id" metadata when given) that appears on every log line
// it causes.

#include <atomic>
#include <memory>

#include "agent/api/operations/pipeline.h"
#include "agent/service/event_hub.h"
#include "common/worker_pool.h"
#include "hvagent/v1/domain.grpc.pb.h"
#include "hvagent/v1/event.grpc.pb.h"
#include "hvagent/v1/host.grpc.pb.h"
#include "hvagent/v1/image.grpc.pb.h"
#include "hvagent/v1/metrics.grpc.pb.h"
#include "hvagent/v1/migration.grpc.pb.h"
#include "hvagent/v1/operation.grpc.pb.h"
#include "hvagent/v1/storage.grpc.pb.h"

namespace hvagent::api {

// Every unary RPC is one line: find its operation, run it through the pipeline
// (operations/pipeline.h), which authorizes, limits, deduplicates and audits it.
//
// Unary RPCs use gRPC's callback API. The synchronous server's dispatch stalled about 90 ms
// every 2 s or so, whatever the handler did (issue 25; docs/performance.md has the measurement),
// so no unary RPC is served by it. A callback runs on one of gRPC's own threads, which must not
// block, so:
//  - reads answered from memory (the event-fed domain view, hypervisor/domain_view.h) run inline
//    on that thread: GetDomain, ListDomains. The one wait left there is the view's rebuild after
//    a libvirtd reconnect (at most DomainView::Options::rebuild_wait, 2 s), after which the read
//    answers UNAVAILABLE;
//  - every other unary RPC (it may wait on libvirt, a storage tool or the disk) is handed to the
//    agent's worker pool (common/worker_pool.h), whose thread runs the pipeline and finishes the
//    call.
// Streaming RPCs that hold a thread for their whole life (UploadImage, ExportVolume,
// MetricsService.Watch) stay on the synchronous server, which is why some bases below are
// composed per method.
class HostGrpcService final : public v1::HostService::CallbackService {
 public:
  HostGrpcService(const ops::Pipeline& pipeline, WorkerPool& workers) : pipeline_(pipeline), workers_(workers) {}
  grpc::ServerUnaryReactor* GetHost(grpc::CallbackServerContext*, const v1::GetHostRequest*, v1::Host*) override;
  grpc::ServerUnaryReactor* GetCapacity(grpc::CallbackServerContext*, const v1::GetCapacityRequest*,
                                        v1::Capacity*) override;

 private:
  ops::Pipeline pipeline_;
  WorkerPool& workers_;
};

class DomainGrpcService final : public v1::DomainService::CallbackService {
 public:
  DomainGrpcService(const ops::Pipeline& pipeline, WorkerPool& workers) : pipeline_(pipeline), workers_(workers) {}
  grpc::ServerUnaryReactor* CreateDomain(grpc::CallbackServerContext*, const v1::CreateDomainRequest*,
                                         v1::Domain*) override;
  grpc::ServerUnaryReactor* GetDomain(grpc::CallbackServerContext*, const v1::GetDomainRequest*,
                                      v1::Domain*) override;
  grpc::ServerUnaryReactor* ListDomains(grpc::CallbackServerContext*, const v1::ListDomainsRequest*,
                                        v1::ListDomainsResponse*) override;
  grpc::ServerUnaryReactor* StartDomain(grpc::CallbackServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::ServerUnaryReactor* ShutdownDomain(grpc::CallbackServerContext*, const v1::ShutdownDomainRequest*,
                                           v1::ShutdownDomainResponse*) override;
  grpc::ServerUnaryReactor* DestroyDomain(grpc::CallbackServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::ServerUnaryReactor* RebootDomain(grpc::CallbackServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::ServerUnaryReactor* UpdateDomain(grpc::CallbackServerContext*, const v1::UpdateDomainRequest*,
                                         v1::Domain*) override;
  grpc::ServerUnaryReactor* SuspendDomain(grpc::CallbackServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::ServerUnaryReactor* ResumeDomain(grpc::CallbackServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::ServerUnaryReactor* ManagedSaveDomain(grpc::CallbackServerContext*, const v1::DomainRef*,
                                              v1::Domain*) override;
  grpc::ServerUnaryReactor* RescueDomain(grpc::CallbackServerContext*, const v1::RescueDomainRequest*,
                                         v1::Domain*) override;
  grpc::ServerUnaryReactor* UnrescueDomain(grpc::CallbackServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::ServerUnaryReactor* DeleteDomain(grpc::CallbackServerContext*, const v1::DeleteDomainRequest*,
                                         v1::DeleteDomainResponse*) override;
  grpc::ServerUnaryReactor* AttachNic(grpc::CallbackServerContext*, const v1::AttachNicRequest*, v1::Nic*) override;
  grpc::ServerUnaryReactor* DetachNic(grpc::CallbackServerContext*, const v1::DetachNicRequest*,
                                      v1::DetachNicResponse*) override;

 private:
  ops::Pipeline pipeline_;
  WorkerPool& workers_;
};

class OperationGrpcService final : public v1::OperationService::CallbackService {
 public:
  OperationGrpcService(const ops::Pipeline& pipeline, WorkerPool& workers) : pipeline_(pipeline), workers_(workers) {}
  grpc::ServerUnaryReactor* ListOperations(grpc::CallbackServerContext*, const v1::ListOperationsRequest*,
                                           v1::ListOperationsResponse*) override;
  grpc::ServerUnaryReactor* GetOperation(grpc::CallbackServerContext*, const v1::GetOperationRequest*,
                                         v1::Operation*) override;

 private:
  ops::Pipeline pipeline_;
  WorkerPool& workers_;
};

// UploadImage stays synchronous (see above); the others are callbacks.
using ImageServiceBase = v1::ImageService::WithCallbackMethod_ImportImage<
    v1::ImageService::WithCallbackMethod_GetImage<v1::ImageService::WithCallbackMethod_ListImages<
        v1::ImageService::WithCallbackMethod_DeleteImage<v1::ImageService::WithCallbackMethod_CreateImageFromVolume<
            v1::ImageService::WithCallbackMethod_CreateVolumeFromImage<v1::ImageService::Service>>>>>>;

class ImageGrpcService final : public ImageServiceBase {
 public:
  ImageGrpcService(const ops::Pipeline& pipeline, WorkerPool& workers) : pipeline_(pipeline), workers_(workers) {}
  grpc::ServerUnaryReactor* ImportImage(grpc::CallbackServerContext*, const v1::ImportImageRequest*,
                                        v1::Operation*) override;
  // Holds its thread while the upload runs (the import is written as the chunks are read).
  grpc::Status UploadImage(grpc::ServerContext*, grpc::ServerReader<v1::UploadImageRequest>*, v1::Image*) override;
  grpc::ServerUnaryReactor* GetImage(grpc::CallbackServerContext*, const v1::ImageRef*, v1::Image*) override;
  grpc::ServerUnaryReactor* ListImages(grpc::CallbackServerContext*, const v1::ListImagesRequest*,
                                       v1::ListImagesResponse*) override;
  grpc::ServerUnaryReactor* DeleteImage(grpc::CallbackServerContext*, const v1::ImageRef*, v1::Image*) override;
  grpc::ServerUnaryReactor* CreateImageFromVolume(grpc::CallbackServerContext*, const v1::CreateImageFromVolumeRequest*,
                                                  v1::CreateImageFromVolumeResponse*) override;
  grpc::ServerUnaryReactor* CreateVolumeFromImage(grpc::CallbackServerContext*, const v1::CreateVolumeFromImageRequest*,
                                                  v1::Operation*) override;

 private:
  ops::Pipeline pipeline_;
  WorkerPool& workers_;
};

// Watch streams use gRPC's callback API: an open stream holds no thread, it is a reactor that
// EventHub wakes when an event is queued (a thread per stream cost 1054 threads and 38 MiB with
// 1000 streams, docs/performance.md).
class EventGrpcService final : public v1::EventService::CallbackService {
 public:
  EventGrpcService(service::EventHub& hub, const ops::Pipeline& pipeline) : hub_(hub), pipeline_(pipeline) {}
  grpc::ServerWriteReactor<v1::DomainEvent>* Watch(grpc::CallbackServerContext*,
                                                   const v1::WatchEventsRequest*) override;

 private:
  service::EventHub& hub_;
  ops::Pipeline pipeline_;
};

// ExportVolume stays synchronous (see above); the unary calls are callbacks.
using StorageServiceBase = v1::StorageService::WithCallbackMethod_ListPools<
    v1::StorageService::WithCallbackMethod_GetPool<v1::StorageService::WithCallbackMethod_ListVolumes<
        v1::StorageService::WithCallbackMethod_GetVolume<v1::StorageService::WithCallbackMethod_CreateVolume<
            v1::StorageService::WithCallbackMethod_ResizeVolume<v1::StorageService::WithCallbackMethod_DeleteVolume<
                v1::StorageService::WithCallbackMethod_AttachVolume<v1::StorageService::WithCallbackMethod_DetachVolume<
                    v1::StorageService::WithCallbackMethod_ReleaseVolumeOwnership<
                        v1::StorageService::WithCallbackMethod_CreateSnapshot<
                            v1::StorageService::WithCallbackMethod_ListSnapshots<
                                v1::StorageService::WithCallbackMethod_DeleteSnapshot<
                                    v1::StorageService::WithCallbackMethod_RevertSnapshot<
                                        v1::StorageService::Service>>>>>>>>>>>>>>;

class StorageGrpcService final : public StorageServiceBase {
 public:
  StorageGrpcService(const ops::Pipeline& pipeline, WorkerPool& workers) : pipeline_(pipeline), workers_(workers) {}
  grpc::ServerUnaryReactor* ListPools(grpc::CallbackServerContext*, const v1::ListPoolsRequest*,
                                      v1::ListPoolsResponse*) override;
  grpc::ServerUnaryReactor* GetPool(grpc::CallbackServerContext*, const v1::GetPoolRequest*, v1::Pool*) override;
  grpc::ServerUnaryReactor* ListVolumes(grpc::CallbackServerContext*, const v1::ListVolumesRequest*,
                                        v1::ListVolumesResponse*) override;
  grpc::ServerUnaryReactor* GetVolume(grpc::CallbackServerContext*, const v1::VolumeRef*, v1::Volume*) override;
  grpc::ServerUnaryReactor* CreateVolume(grpc::CallbackServerContext*, const v1::CreateVolumeRequest*,
                                         v1::Volume*) override;
  grpc::ServerUnaryReactor* ResizeVolume(grpc::CallbackServerContext*, const v1::ResizeVolumeRequest*,
                                         v1::Volume*) override;
  grpc::ServerUnaryReactor* DeleteVolume(grpc::CallbackServerContext*, const v1::VolumeRef*, v1::Volume*) override;
  grpc::ServerUnaryReactor* AttachVolume(grpc::CallbackServerContext*, const v1::AttachVolumeRequest*,
                                         v1::Volume*) override;
  grpc::ServerUnaryReactor* DetachVolume(grpc::CallbackServerContext*, const v1::DetachVolumeRequest*,
                                         v1::Volume*) override;
  grpc::ServerUnaryReactor* ReleaseVolumeOwnership(grpc::CallbackServerContext*,
                                                   const v1::ReleaseVolumeOwnershipRequest*,
                                                   v1::ReleaseVolumeOwnershipResponse*) override;
  grpc::ServerUnaryReactor* CreateSnapshot(grpc::CallbackServerContext*, const v1::CreateSnapshotRequest*,
                                           v1::CreateSnapshotResponse*) override;
  grpc::ServerUnaryReactor* ListSnapshots(grpc::CallbackServerContext*, const v1::ListSnapshotsRequest*,
                                          v1::ListSnapshotsResponse*) override;
  grpc::ServerUnaryReactor* DeleteSnapshot(grpc::CallbackServerContext*, const v1::SnapshotRef*,
                                           v1::DeleteSnapshotResponse*) override;
  grpc::ServerUnaryReactor* RevertSnapshot(grpc::CallbackServerContext*, const v1::SnapshotRef*,
                                           v1::RevertSnapshotResponse*) override;
  // Holds its thread while the export streams; gRPC's flow control paces the reads to the
  // caller, and a caller gone (a failed Write, or the call cancelled) stops them.
  grpc::Status ExportVolume(grpc::ServerContext*, const v1::ExportVolumeRequest*,
                            grpc::ServerWriter<v1::ExportVolumeChunk>*) override;

 private:
  ops::Pipeline pipeline_;
  WorkerPool& workers_;
};

// Watch stays synchronous (see above); the two reads are callbacks.
using MetricsServiceBase = v1::MetricsService::WithCallbackMethod_GetDomainStats<
    v1::MetricsService::WithCallbackMethod_GetEventChannels<v1::MetricsService::Service>>;

class MetricsGrpcService final : public MetricsServiceBase {
 public:
  MetricsGrpcService(const ops::Pipeline& pipeline, WorkerPool& workers) : pipeline_(pipeline), workers_(workers) {}
  grpc::ServerUnaryReactor* GetDomainStats(grpc::CallbackServerContext*, const v1::GetDomainStatsRequest*,
                                           v1::GetDomainStatsResponse*) override;
  grpc::Status Watch(grpc::ServerContext*, const v1::WatchMetricsRequest*,
                     grpc::ServerWriter<v1::MetricsSample>*) override;
  grpc::ServerUnaryReactor* GetEventChannels(grpc::CallbackServerContext*, const v1::GetEventChannelsRequest*,
                                             v1::EventChannels*) override;
  // Ends every Watch stream (shutdown).
  void Close() { closed_ = true; }

 private:
  ops::Pipeline pipeline_;
  WorkerPool& workers_;
  std::atomic<bool> closed_{false};
};

// ReceiveVolume (a client stream written to disk as it arrives) stays synchronous; the rest are
// callbacks. The client side, the source agent calling a destination, is migration_peer_client.h.
using MigrationServiceBase = v1::MigrationService::WithCallbackMethod_MigrateDomain<
    v1::MigrationService::WithCallbackMethod_CancelMigration<v1::MigrationService::WithCallbackMethod_PrepareIncoming<
        v1::MigrationService::WithCallbackMethod_FinishIncoming<
            v1::MigrationService::WithCallbackMethod_AbortIncoming<
                v1::MigrationService::WithCallbackMethod_KeepIncoming<v1::MigrationService::Service>>>>>>;

class MigrationGrpcService final : public MigrationServiceBase {
 public:
  MigrationGrpcService(const ops::Pipeline& pipeline, WorkerPool& workers) : pipeline_(pipeline), workers_(workers) {}
  grpc::ServerUnaryReactor* MigrateDomain(grpc::CallbackServerContext*, const v1::MigrateDomainRequest*,
                                          v1::MigrateDomainResponse*) override;
  grpc::ServerUnaryReactor* CancelMigration(grpc::CallbackServerContext*, const v1::CancelMigrationRequest*,
                                            v1::CancelMigrationResponse*) override;
  grpc::ServerUnaryReactor* PrepareIncoming(grpc::CallbackServerContext*, const v1::PrepareIncomingRequest*,
                                            v1::PrepareIncomingResponse*) override;
  grpc::ServerUnaryReactor* FinishIncoming(grpc::CallbackServerContext*, const v1::IncomingRef*,
                                           v1::FinishIncomingResponse*) override;
  grpc::ServerUnaryReactor* AbortIncoming(grpc::CallbackServerContext*, const v1::IncomingRef*,
                                          v1::AbortIncomingResponse*) override;
  grpc::ServerUnaryReactor* KeepIncoming(grpc::CallbackServerContext*, const v1::IncomingRef*,
                                         v1::KeepIncomingResponse*) override;
  // Holds its thread while the volume arrives; each message is written before the next is read.
  grpc::Status ReceiveVolume(grpc::ServerContext*, grpc::ServerReader<v1::ReceiveVolumeChunk>*,
                             v1::ReceiveVolumeResponse*) override;

 private:
  ops::Pipeline pipeline_;
  WorkerPool& workers_;
};

// The caller of a gRPC call (its client certificate, verified and resolved by `authz`; the
// controller "-" without an authorizer).
absl::StatusOr<auth::Caller> CallerOf(const grpc::ServerContextBase* ctx, const auth::Authorizer* authz);
// One unary RPC, for sync and callback services alike: the pipeline does the work; this only
// carries metadata in and out.
grpc::Status Unary(const ops::Pipeline& pipeline, grpc::ServerContextBase* ctx, absl::string_view operation,
                   const google::protobuf::Message& request, google::protobuf::Message* response);
// The call's request id: the client's "x-request-id" metadata when given, else a new one.
std::string RequestIdOf(const grpc::ServerContextBase* ctx);

}  // namespace hvagent::api
