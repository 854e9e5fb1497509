#pragma once
// gRPC front end: each RPC hands its request to the operations pipeline and returns what it
// answers; it never calls agent/service, libvirt or storage itself. Every call runs under a
// request id (the client's "x-request-id" metadata when given) that appears on every log line
// it causes.

#include <atomic>
#include <memory>

#include "agent/api/operations/pipeline.h"
#include "agent/service/event_hub.h"
#include "hvagent/v1/domain.grpc.pb.h"
#include "hvagent/v1/event.grpc.pb.h"
#include "hvagent/v1/host.grpc.pb.h"
#include "hvagent/v1/image.grpc.pb.h"
#include "hvagent/v1/metrics.grpc.pb.h"
#include "hvagent/v1/operation.grpc.pb.h"
#include "hvagent/v1/storage.grpc.pb.h"

namespace hvagent::api {

// Every unary RPC is one line: find its operation, run it through the pipeline
// (operations/pipeline.h), which authorizes, limits, deduplicates and audits it.
class HostGrpcService final : public v1::HostService::Service {
 public:
  explicit HostGrpcService(const ops::Pipeline& pipeline) : pipeline_(pipeline) {}
  grpc::Status GetHost(grpc::ServerContext*, const v1::GetHostRequest*, v1::Host*) override;
  grpc::Status GetCapacity(grpc::ServerContext*, const v1::GetCapacityRequest*, v1::Capacity*) override;

 private:
  ops::Pipeline pipeline_;
};

// GetDomain and ListDomains are answered from the event-fed domain view (hypervisor/
// domain_view.h), in memory, so they run on gRPC's callback API, inline on the thread that read
// the request. On the synchronous server's thread pool they waited for its dispatch, which
// stalled about 90 ms every 2 s or so (issue 25; docs/performance.md has the measurement). Only
// reads that never wait on libvirt or a tool belong here: a callback that blocks holds up gRPC's
// own I/O. The one wait left is the view's rebuild after a libvirtd reconnect (at most
// DomainView::Options::rebuild_wait, 2 s), after which the read answers UNAVAILABLE.
using DomainServiceBase = v1::DomainService::WithCallbackMethod_GetDomain<
    v1::DomainService::WithCallbackMethod_ListDomains<v1::DomainService::Service>>;

class DomainGrpcService final : public DomainServiceBase {
 public:
  explicit DomainGrpcService(const ops::Pipeline& pipeline) : pipeline_(pipeline) {}
  grpc::Status CreateDomain(grpc::ServerContext*, const v1::CreateDomainRequest*, v1::Domain*) override;
  grpc::ServerUnaryReactor* GetDomain(grpc::CallbackServerContext*, const v1::GetDomainRequest*,
                                      v1::Domain*) override;
  grpc::ServerUnaryReactor* ListDomains(grpc::CallbackServerContext*, const v1::ListDomainsRequest*,
                                        v1::ListDomainsResponse*) override;
  grpc::Status StartDomain(grpc::ServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::Status ShutdownDomain(grpc::ServerContext*, const v1::ShutdownDomainRequest*,
                              v1::ShutdownDomainResponse*) override;
  grpc::Status DestroyDomain(grpc::ServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::Status RebootDomain(grpc::ServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::Status UpdateDomain(grpc::ServerContext*, const v1::UpdateDomainRequest*, v1::Domain*) override;
  grpc::Status SuspendDomain(grpc::ServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::Status ResumeDomain(grpc::ServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::Status ManagedSaveDomain(grpc::ServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::Status RescueDomain(grpc::ServerContext*, const v1::RescueDomainRequest*, v1::Domain*) override;
  grpc::Status UnrescueDomain(grpc::ServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::Status DeleteDomain(grpc::ServerContext*, const v1::DeleteDomainRequest*, v1::DeleteDomainResponse*) override;
  grpc::Status AttachNic(grpc::ServerContext*, const v1::AttachNicRequest*, v1::Nic*) override;
  grpc::Status DetachNic(grpc::ServerContext*, const v1::DetachNicRequest*, v1::DetachNicResponse*) override;

 private:
  ops::Pipeline pipeline_;
};

class OperationGrpcService final : public v1::OperationService::Service {
 public:
  explicit OperationGrpcService(const ops::Pipeline& pipeline) : pipeline_(pipeline) {}
  grpc::Status ListOperations(grpc::ServerContext*, const v1::ListOperationsRequest*,
                              v1::ListOperationsResponse*) override;
  grpc::Status GetOperation(grpc::ServerContext*, const v1::GetOperationRequest*, v1::Operation*) override;

 private:
  ops::Pipeline pipeline_;
};

class ImageGrpcService final : public v1::ImageService::Service {
 public:
  explicit ImageGrpcService(const ops::Pipeline& pipeline) : pipeline_(pipeline) {}
  grpc::Status ImportImage(grpc::ServerContext*, const v1::ImportImageRequest*, v1::Operation*) override;
  // Holds its thread while the upload runs (the import is written as the chunks are read).
  grpc::Status UploadImage(grpc::ServerContext*, grpc::ServerReader<v1::UploadImageRequest>*, v1::Image*) override;
  grpc::Status GetImage(grpc::ServerContext*, const v1::ImageRef*, v1::Image*) override;
  grpc::Status ListImages(grpc::ServerContext*, const v1::ListImagesRequest*, v1::ListImagesResponse*) override;
  grpc::Status DeleteImage(grpc::ServerContext*, const v1::ImageRef*, v1::Image*) override;

 private:
  ops::Pipeline pipeline_;
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

class StorageGrpcService final : public v1::StorageService::Service {
 public:
  explicit StorageGrpcService(const ops::Pipeline& pipeline) : pipeline_(pipeline) {}
  grpc::Status ListPools(grpc::ServerContext*, const v1::ListPoolsRequest*, v1::ListPoolsResponse*) override;
  grpc::Status GetPool(grpc::ServerContext*, const v1::GetPoolRequest*, v1::Pool*) override;
  grpc::Status ListVolumes(grpc::ServerContext*, const v1::ListVolumesRequest*, v1::ListVolumesResponse*) override;
  grpc::Status GetVolume(grpc::ServerContext*, const v1::VolumeRef*, v1::Volume*) override;
  grpc::Status CreateVolume(grpc::ServerContext*, const v1::CreateVolumeRequest*, v1::Volume*) override;
  grpc::Status ResizeVolume(grpc::ServerContext*, const v1::ResizeVolumeRequest*, v1::Volume*) override;
  grpc::Status DeleteVolume(grpc::ServerContext*, const v1::VolumeRef*, v1::Volume*) override;
  grpc::Status AttachVolume(grpc::ServerContext*, const v1::AttachVolumeRequest*, v1::Volume*) override;
  grpc::Status DetachVolume(grpc::ServerContext*, const v1::DetachVolumeRequest*, v1::Volume*) override;
  grpc::Status ReleaseVolumeOwnership(grpc::ServerContext*, const v1::ReleaseVolumeOwnershipRequest*,
                                      v1::ReleaseVolumeOwnershipResponse*) override;

 private:
  ops::Pipeline pipeline_;
};

class MetricsGrpcService final : public v1::MetricsService::Service {
 public:
  explicit MetricsGrpcService(const ops::Pipeline& pipeline) : pipeline_(pipeline) {}
  grpc::Status GetDomainStats(grpc::ServerContext*, const v1::GetDomainStatsRequest*,
                              v1::GetDomainStatsResponse*) override;
  grpc::Status Watch(grpc::ServerContext*, const v1::WatchMetricsRequest*,
                     grpc::ServerWriter<v1::MetricsSample>*) override;
  grpc::Status GetEventChannels(grpc::ServerContext*, const v1::GetEventChannelsRequest*,
                                v1::EventChannels*) override;
  // Ends every Watch stream (shutdown).
  void Close() { closed_ = true; }

 private:
  ops::Pipeline pipeline_;
  std::atomic<bool> closed_{false};
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
