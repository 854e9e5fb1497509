#pragma once
// Conversions between the public contract (proto, shared by gRPC and REST) and the model
// types of the service layer. The only place that knows both.

#include "absl/status/statusor.h"
#include "agent/service/domain_service.h"
#include "agent/service/event_hub.h"
#include "agent/service/host_service.h"
#include "agent/service/image_service.h"
#include "agent/service/metrics_collector.h"
#include "agent/service/operation_events.h"
#include "agent/service/storage_service.h"
#include "hvagent/v1/domain.pb.h"
#include "hvagent/v1/event.pb.h"
#include "hvagent/v1/host.pb.h"
#include "hvagent/v1/metrics.pb.h"
#include "hvagent/v1/operation.pb.h"
#include "hvagent/v1/storage.pb.h"

namespace hvagent::api {

// InvalidArgument naming the field for enum values the proto does not define.
// Disks given as `volume` keep an empty source_path; VolumesFromProto lists their volumes.
absl::StatusOr<hv::DomainSpec> FromProto(const v1::DomainSpec& spec);
std::vector<service::DiskVolume> VolumesFromProto(const v1::DomainSpec& spec);
// The reverse of FromProto + VolumesFromProto (a migration's plan sent to the destination).
v1::DomainSpec ToProto(const hv::DomainSpec& spec, const std::vector<service::DiskVolume>& volumes);
// One NIC; `field` prefixes errors ("spec.nics[0]", "nic").
absl::StatusOr<hv::NicSpec> FromProto(absl::string_view field, const v1::Nic& nic);
v1::Nic ToProto(const hv::NicSpec& nic);

v1::Domain ToProto(const hv::DomainInfo& info);
v1::Host ToProto(const hv::HostInfo& info, bool connected);
v1::Capacity ToProto(const service::Capacity& c);
v1::DomainEvent ToProto(const service::SequencedEvent& e);
// An operation as OperationService shows it (running; no bytes: the caller adds them).
v1::Operation ToOperation(const service::Journal::Operation& op);
v1::Operation ToProto(const service::OperationEvent& e);
google::protobuf::Timestamp FromUnixMs(int64_t ms);
v1::Pool ToProto(const storage::PoolInfo& p);
v1::Volume ToProto(const service::VolumeStatus& v);
v1::Snapshot ToProto(const storage::SnapshotInfo& s);
v1::CreateSnapshotResponse ToProto(const service::SnapshotOutcome& o);
v1::RevertSnapshotResponse ToProto(const service::RevertOutcome& o);
// An export request (gRPC ExportVolume, REST GET ...:export); InvalidArgument naming `format`
// for a value the proto does not define. UNSPECIFIED is raw.
absl::StatusOr<service::ExportRequest> ToExportRequest(const v1::ExportVolumeRequest& r);
// `rates` may be null (no previous sample of this domain).
v1::DomainStats ToProto(const hv::DomainStats& d, const service::DomainRates* rates);
// The sample's domains (only `only_domain` when not empty); errors are left to the caller.
v1::GetDomainStatsResponse ToDomainStatsProto(const service::MetricsSample& s, const std::string& only_domain);
v1::MetricsSample ToProto(const service::MetricsSample& s);
v1::EventChannels ToProto(const hv::EventChannelReport& r, std::chrono::system_clock::time_point time);

}  // namespace hvagent::api
