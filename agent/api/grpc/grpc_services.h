#pragma once
// gRPC front end: each RPC parses its request, calls agent/service, renders the reply.
// Never calls libvirt or storage directly. Every call runs under a request id (the client's
// "x-request-id" metadata when given) that appears on every log line it causes.

#include <atomic>
#include <memory>

#include "agent/api/auth/authorizer.h"
#include "agent/service/domain_service.h"
#include "agent/service/event_hub.h"
#include "agent/service/idempotency.h"
#include "agent/service/operation_gate.h"
#include "agent/service/host_service.h"
#include "agent/service/metrics_collector.h"
#include "agent/service/storage_service.h"
#include "hvagent/v1/domain.grpc.pb.h"
#include "hvagent/v1/event.grpc.pb.h"
#include "hvagent/v1/host.grpc.pb.h"
#include "hvagent/v1/metrics.grpc.pb.h"
#include "hvagent/v1/storage.grpc.pb.h"

namespace hvagent::api {

class HostGrpcService final : public v1::HostService::Service {
 public:
  // `authz` null: no checks (unit tests of the translation only).
  explicit HostGrpcService(service::HostService& host, const auth::Authorizer* authz = nullptr)
      : host_(host), auth_(authz) {}
  grpc::Status GetHost(grpc::ServerContext*, const v1::GetHostRequest*, v1::Host*) override;
  grpc::Status GetCapacity(grpc::ServerContext*, const v1::GetCapacityRequest*, v1::Capacity*) override;

 private:
  service::HostService& host_;
  const auth::Authorizer* auth_;
  service::IdempotencyStore* const idem_ = nullptr;  // reads only
  service::OperationGate* const gate_ = nullptr;
};

class DomainGrpcService final : public v1::DomainService::Service {
 public:
  // `authz` null: no checks (unit tests of the translation only).
  // `idem` null: idempotency keys are ignored.
  explicit DomainGrpcService(service::DomainService& domains, const auth::Authorizer* authz = nullptr,
                             service::IdempotencyStore* idem = nullptr, service::OperationGate* gate = nullptr)
      : domains_(domains), auth_(authz), idem_(idem), gate_(gate) {}
  grpc::Status CreateDomain(grpc::ServerContext*, const v1::CreateDomainRequest*, v1::Domain*) override;
  grpc::Status GetDomain(grpc::ServerContext*, const v1::GetDomainRequest*, v1::Domain*) override;
  grpc::Status ListDomains(grpc::ServerContext*, const v1::ListDomainsRequest*, v1::ListDomainsResponse*) override;
  grpc::Status StartDomain(grpc::ServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::Status ShutdownDomain(grpc::ServerContext*, const v1::ShutdownDomainRequest*,
                              v1::ShutdownDomainResponse*) override;
  grpc::Status DestroyDomain(grpc::ServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::Status RebootDomain(grpc::ServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::Status SuspendDomain(grpc::ServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::Status ResumeDomain(grpc::ServerContext*, const v1::DomainRef*, v1::Domain*) override;
  grpc::Status DeleteDomain(grpc::ServerContext*, const v1::DeleteDomainRequest*, v1::DeleteDomainResponse*) override;

 private:
  service::DomainService& domains_;
  const auth::Authorizer* auth_;
  service::IdempotencyStore* idem_;
  service::OperationGate* gate_;
};

// Watch streams use gRPC's callback API: an open stream holds no thread, it is a reactor that
// EventHub wakes when an event is queued (a thread per stream cost 1054 threads and 38 MiB with
// 1000 streams, docs/performance.md).
class EventGrpcService final : public v1::EventService::CallbackService {
 public:
  // `authz` null: no checks (unit tests of the translation only).
  explicit EventGrpcService(service::EventHub& hub, const auth::Authorizer* authz = nullptr)
      : hub_(hub), auth_(authz) {}
  grpc::ServerWriteReactor<v1::DomainEvent>* Watch(grpc::CallbackServerContext*,
                                                   const v1::WatchEventsRequest*) override;

 private:
  service::EventHub& hub_;
  const auth::Authorizer* auth_;
};

class StorageGrpcService final : public v1::StorageService::Service {
 public:
  // `authz` null: no checks (unit tests of the translation only).
  explicit StorageGrpcService(service::StorageService& storage, const auth::Authorizer* authz = nullptr,
                              service::IdempotencyStore* idem = nullptr, service::OperationGate* gate = nullptr)
      : storage_(storage), auth_(authz), idem_(idem), gate_(gate) {}
  grpc::Status ListPools(grpc::ServerContext*, const v1::ListPoolsRequest*, v1::ListPoolsResponse*) override;
  grpc::Status GetPool(grpc::ServerContext*, const v1::GetPoolRequest*, v1::Pool*) override;
  grpc::Status ListVolumes(grpc::ServerContext*, const v1::ListVolumesRequest*, v1::ListVolumesResponse*) override;
  grpc::Status GetVolume(grpc::ServerContext*, const v1::VolumeRef*, v1::Volume*) override;
  grpc::Status CreateVolume(grpc::ServerContext*, const v1::CreateVolumeRequest*, v1::Volume*) override;
  grpc::Status ResizeVolume(grpc::ServerContext*, const v1::ResizeVolumeRequest*, v1::Volume*) override;
  grpc::Status DeleteVolume(grpc::ServerContext*, const v1::VolumeRef*, v1::Volume*) override;
  grpc::Status AttachVolume(grpc::ServerContext*, const v1::AttachVolumeRequest*, v1::Volume*) override;
  grpc::Status DetachVolume(grpc::ServerContext*, const v1::DetachVolumeRequest*, v1::Volume*) override;

 private:
  service::StorageService& storage_;
  const auth::Authorizer* auth_;
  service::IdempotencyStore* idem_;
  service::OperationGate* gate_;
};

class MetricsGrpcService final : public v1::MetricsService::Service {
 public:
  // `authz` null: no checks (unit tests of the translation only).
  explicit MetricsGrpcService(service::MetricsCollector& metrics, const auth::Authorizer* authz = nullptr)
      : metrics_(metrics), auth_(authz) {}
  grpc::Status GetDomainStats(grpc::ServerContext*, const v1::GetDomainStatsRequest*,
                              v1::GetDomainStatsResponse*) override;
  grpc::Status Watch(grpc::ServerContext*, const v1::WatchMetricsRequest*,
                     grpc::ServerWriter<v1::MetricsSample>*) override;
  grpc::Status GetEventChannels(grpc::ServerContext*, const v1::GetEventChannelsRequest*,
                                v1::EventChannels*) override;
  // Ends every Watch stream (shutdown).
  void Close() { closed_ = true; }

 private:
  service::MetricsCollector& metrics_;
  const auth::Authorizer* auth_;
  service::IdempotencyStore* const idem_ = nullptr;  // reads only
  service::OperationGate* const gate_ = nullptr;
  std::atomic<bool> closed_{false};
};

// The caller of a gRPC call (its client certificate, verified and resolved by `authz`).
absl::StatusOr<auth::Caller> CallerOf(const grpc::ServerContextBase* ctx, const auth::Authorizer& authz);
// For streams: the check, the rate limit, and a stream slot held for the stream's life.
absl::StatusOr<auth::RateLimiter::StreamSlot> AdmitStream(const grpc::ServerContextBase* ctx,
                                                           const auth::Authorizer* authz, const char* operation);

}  // namespace hvagent::api
