// The table of operations (operation.h) and their handlers: one row and one small function per
// RPC. A handler turns its request into agent/service calls and fills its response; it knows
// nothing of callers, transports, idempotency or audit (pipeline.cpp does those once).
#include <google/protobuf/util/time_util.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "agent/api/convert.h"
#include "agent/api/operations/operation.h"
#include "hvagent/v1/domain.pb.h"
#include "hvagent/v1/event.pb.h"
#include "hvagent/v1/host.pb.h"
#include "hvagent/v1/metrics.pb.h"
#include "hvagent/v1/operation.pb.h"
#include "hvagent/v1/storage.pb.h"

namespace hvagent::api::ops {
namespace {

using auth::Role;

// Handlers whose service call returns a model value that has one proto form.
template <typename T, typename P>
absl::Status Into(P* out, absl::StatusOr<T> r) {
  if (!r.ok()) return r.status();
  *out = ToProto(*r);
  return absl::OkStatus();
}

// Handlers that list model values, each with one proto form.
template <typename T, typename Add>
absl::Status AddAll(absl::StatusOr<std::vector<T>> r, Add add) {
  if (!r.ok()) return r.status();
  for (const auto& item : *r) *add() = ToProto(item);
  return absl::OkStatus();
}

// ---- HostService ----

absl::Status GetHost(const Services& s, const v1::GetHostRequest&, v1::Host* out) {
  auto h = s.host->GetHost();
  if (!h.ok()) return h.status();
  *out = ToProto(*h, s.host->HypervisorConnected());
  return absl::OkStatus();
}

absl::Status GetCapacity(const Services& s, const v1::GetCapacityRequest&, v1::Capacity* out) {
  return Into(out, s.host->GetCapacity());
}

// ---- DomainService ----

absl::Status CreateDomain(const Services& s, const v1::CreateDomainRequest& req, v1::Domain* out) {
  if (!req.has_spec()) return absl::InvalidArgumentError("spec: is required");
  auto spec = FromProto(req.spec());
  if (!spec.ok()) return spec.status();
  return Into(out, s.domains->Create(*spec, req.start(), VolumesFromProto(req.spec())));
}

absl::Status GetDomain(const Services& s, const v1::GetDomainRequest& req, v1::Domain* out) {
  return Into(out, s.domains->Get(req.name()));
}

absl::Status ListDomains(const Services& s, const v1::ListDomainsRequest&, v1::ListDomainsResponse* out) {
  return AddAll(s.domains->List(), [out] { return out->add_domains(); });
}

absl::Status StartDomain(const Services& s, const v1::DomainRef& req, v1::Domain* out) {
  return Into(out, s.domains->Start(req.name()));
}

absl::Status ShutdownDomain(const Services& s, const v1::ShutdownDomainRequest& req,
                            v1::ShutdownDomainResponse* out) {
  auto r = s.domains->Shutdown(req.name(), std::chrono::seconds(req.timeout_seconds()));
  if (!r.ok()) return r.status();
  *out->mutable_domain() = ToProto(r->domain);
  out->set_forced(r->forced);
  return absl::OkStatus();
}

absl::Status DestroyDomain(const Services& s, const v1::DomainRef& req, v1::Domain* out) {
  return Into(out, s.domains->Destroy(req.name()));
}

absl::Status RebootDomain(const Services& s, const v1::DomainRef& req, v1::Domain* out) {
  return Into(out, s.domains->Reboot(req.name()));
}

absl::Status SuspendDomain(const Services& s, const v1::DomainRef& req, v1::Domain* out) {
  return Into(out, s.domains->Suspend(req.name()));
}

absl::Status ResumeDomain(const Services& s, const v1::DomainRef& req, v1::Domain* out) {
  return Into(out, s.domains->Resume(req.name()));
}

absl::Status ManagedSaveDomain(const Services& s, const v1::DomainRef& req, v1::Domain* out) {
  return Into(out, s.domains->ManagedSave(req.name()));
}

absl::Status DeleteDomain(const Services& s, const v1::DeleteDomainRequest& req, v1::DeleteDomainResponse*) {
  return s.domains->Delete(req.name(), req.force(), req.delete_volumes());
}

// ---- StorageService ----

absl::Status ListPools(const Services& s, const v1::ListPoolsRequest&, v1::ListPoolsResponse* out) {
  return AddAll(s.storage->ListPools(), [out] { return out->add_pools(); });
}

absl::Status GetPool(const Services& s, const v1::GetPoolRequest& req, v1::Pool* out) {
  return Into(out, s.storage->GetPool(req.name()));
}

absl::Status ListVolumes(const Services& s, const v1::ListVolumesRequest& req, v1::ListVolumesResponse* out) {
  return AddAll(s.storage->ListVolumes(req.pool()), [out] { return out->add_volumes(); });
}

absl::Status GetVolume(const Services& s, const v1::VolumeRef& req, v1::Volume* out) {
  return Into(out, s.storage->GetVolume(req.pool(), req.name()));
}

absl::Status CreateVolume(const Services& s, const v1::CreateVolumeRequest& req, v1::Volume* out) {
  return Into(out, s.storage->CreateVolume(req.pool(), {req.name(), req.size_bytes()}));
}

absl::Status ResizeVolume(const Services& s, const v1::ResizeVolumeRequest& req, v1::Volume* out) {
  return Into(out, s.storage->ResizeVolume(req.pool(), req.name(), req.size_bytes()));
}

absl::Status DeleteVolume(const Services& s, const v1::VolumeRef& req, v1::Volume* out) {
  return Into(out, s.storage->DeleteVolume(req.pool(), req.name()));
}

absl::Status AttachVolume(const Services& s, const v1::AttachVolumeRequest& req, v1::Volume* out) {
  return Into(out, s.storage->AttachVolume(req.pool(), req.name(), req.domain(), req.target(), req.readonly()));
}

absl::Status DetachVolume(const Services& s, const v1::DetachVolumeRequest& req, v1::Volume* out) {
  return Into(out, s.storage->DetachVolume(req.pool(), req.name()));
}

absl::Status ReleaseVolumeOwnership(const Services& s, const v1::ReleaseVolumeOwnershipRequest& req,
                                    v1::ReleaseVolumeOwnershipResponse* out) {
  return Into(out->mutable_volume(), s.storage->ReleaseOwnership(req.pool(), req.name()));
}

// ---- MetricsService ----

absl::Status GetDomainStats(const Services& s, const v1::GetDomainStatsRequest& req,
                            v1::GetDomainStatsResponse* out) {
  auto sample = s.metrics->Latest();
  if (!sample->domains.ok()) return sample->domains.status();
  *out = ToDomainStatsProto(*sample, req.name());
  if (!req.name().empty() && out->domains_size() == 0) {
    return absl::NotFoundError(absl::StrCat("name: domain '", req.name(), "' not found"));
  }
  return absl::OkStatus();
}

absl::Status GetEventChannels(const Services& s, const v1::GetEventChannelsRequest&, v1::EventChannels* out) {
  auto sample = s.metrics->Latest();
  if (!sample->event_channels.ok()) return sample->event_channels.status();
  *out = ToProto(*sample->event_channels, sample->time);
  return absl::OkStatus();
}

// ---- OperationService ----

google::protobuf::Timestamp FromUnixMs(int64_t ms) {
  return google::protobuf::util::TimeUtil::MillisecondsToTimestamp(ms);
}

v1::Operation ToOperation(const service::Journal::Operation& op) {
  v1::Operation o;
  o.set_id(op.id);
  o.set_kind(op.begin.type());
  o.set_domain(op.begin.domain());
  o.set_state(v1::OPERATION_STATE_RUNNING);
  *o.mutable_start_time() = FromUnixMs(op.begin.unix_ms());
  for (const auto& step : op.steps) {
    std::string line = step.name();
    if (step.has_volume()) absl::StrAppend(&line, " ", step.volume().pool(), "/", step.volume().name());
    o.add_steps(std::move(line));
  }
  return o;
}

absl::Status ListOperations(const Services& s, const v1::ListOperationsRequest& req,
                            v1::ListOperationsResponse* out) {
  auto running = s.journal->Unfinished();
  for (auto it = running.rbegin(); it != running.rend(); ++it) *out->add_operations() = ToOperation(*it);
  if (req.running_only()) return absl::OkStatus();
  for (const auto& ended : s.journal->Recent()) {
    v1::Operation o = ToOperation(ended.op);
    o.set_state(ended.state);
    o.set_message(ended.message);
    *o.mutable_end_time() = FromUnixMs(ended.end_unix_ms);
    *out->add_operations() = std::move(o);
  }
  return absl::OkStatus();
}

// ---- the table ----

template <typename Req, typename Resp, absl::Status (*F)(const Services&, const Req&, Resp*)>
absl::Status Erased(const Services& s, const Message& req, Message* resp) {
  return F(s, static_cast<const Req&>(req), static_cast<Resp*>(resp));
}

template <typename Req, typename Resp, absl::Status (*F)(const Services&, const Req&, Resp*)>
Operation Unary(absl::string_view name, Role role, bool mutating, Needs needs) {
  return {name, role, mutating, Kind::kUnary, needs, &Req::default_instance(), &Resp::default_instance(),
          &Erased<Req, Resp, F>};
}

template <typename Req>
Operation Stream(absl::string_view name, Role role, Needs needs) {
  return {name, role, false, Kind::kStream, needs, &Req::default_instance()};
}

constexpr bool kReads = false;
constexpr bool kChanges = true;

const std::vector<Operation>& Table() {
  // Built on first use, after the generated messages' default instances exist.
  static const std::vector<Operation> table = {
      // Host facts and metrics: monitor.
      Unary<v1::GetHostRequest, v1::Host, GetHost>("hvagent.v1.HostService/GetHost", Role::kMonitor, kReads,
                                                   Needs::kHost),
      Unary<v1::GetCapacityRequest, v1::Capacity, GetCapacity>("hvagent.v1.HostService/GetCapacity",
                                                               Role::kMonitor, kReads, Needs::kHost),
      Unary<v1::GetDomainStatsRequest, v1::GetDomainStatsResponse, GetDomainStats>(
          "hvagent.v1.MetricsService/GetDomainStats", Role::kMonitor, kReads, Needs::kMetrics),
      Stream<v1::WatchMetricsRequest>("hvagent.v1.MetricsService/Watch", Role::kMonitor, Needs::kMetrics),
      Unary<v1::GetEventChannelsRequest, v1::EventChannels, GetEventChannels>(
          "hvagent.v1.MetricsService/GetEventChannels", Role::kMonitor, kReads, Needs::kMetrics),
      {"hvagent.v1.MetricsService/Prometheus", Role::kMonitor, kReads, Kind::kPage, Needs::kMetrics},
      // Reads: operator.
      Unary<v1::GetDomainRequest, v1::Domain, GetDomain>("hvagent.v1.DomainService/GetDomain", Role::kOperator,
                                                         kReads, Needs::kDomains),
      Unary<v1::ListDomainsRequest, v1::ListDomainsResponse, ListDomains>("hvagent.v1.DomainService/ListDomains",
                                                                          Role::kOperator, kReads, Needs::kDomains),
      Stream<v1::WatchEventsRequest>("hvagent.v1.EventService/Watch", Role::kOperator, Needs::kDomains),
      Unary<v1::ListPoolsRequest, v1::ListPoolsResponse, ListPools>("hvagent.v1.StorageService/ListPools",
                                                                    Role::kOperator, kReads, Needs::kStorage),
      Unary<v1::GetPoolRequest, v1::Pool, GetPool>("hvagent.v1.StorageService/GetPool", Role::kOperator, kReads,
                                                   Needs::kStorage),
      Unary<v1::ListVolumesRequest, v1::ListVolumesResponse, ListVolumes>(
          "hvagent.v1.StorageService/ListVolumes", Role::kOperator, kReads, Needs::kStorage),
      Unary<v1::VolumeRef, v1::Volume, GetVolume>("hvagent.v1.StorageService/GetVolume", Role::kOperator, kReads,
                                                  Needs::kStorage),
      Unary<v1::ListOperationsRequest, v1::ListOperationsResponse, ListOperations>(
          "hvagent.v1.OperationService/ListOperations", Role::kOperator, kReads, Needs::kJournal),
      // The lifecycle an operator runs by hand.
      Unary<v1::DomainRef, v1::Domain, StartDomain>("hvagent.v1.DomainService/StartDomain", Role::kOperator,
                                                    kChanges, Needs::kDomains),
      Unary<v1::ShutdownDomainRequest, v1::ShutdownDomainResponse, ShutdownDomain>(
          "hvagent.v1.DomainService/ShutdownDomain", Role::kOperator, kChanges, Needs::kDomains),
      Unary<v1::DomainRef, v1::Domain, DestroyDomain>("hvagent.v1.DomainService/DestroyDomain", Role::kOperator,
                                                      kChanges, Needs::kDomains),
      Unary<v1::DomainRef, v1::Domain, RebootDomain>("hvagent.v1.DomainService/RebootDomain", Role::kOperator,
                                                     kChanges, Needs::kDomains),
      Unary<v1::DomainRef, v1::Domain, SuspendDomain>("hvagent.v1.DomainService/SuspendDomain", Role::kOperator,
                                                      kChanges, Needs::kDomains),
      Unary<v1::DomainRef, v1::Domain, ResumeDomain>("hvagent.v1.DomainService/ResumeDomain", Role::kOperator,
                                                     kChanges, Needs::kDomains),
      Unary<v1::DomainRef, v1::Domain, ManagedSaveDomain>("hvagent.v1.DomainService/ManagedSaveDomain",
                                                          Role::kOperator, kChanges, Needs::kDomains),
      // What only a controller does.
      Unary<v1::CreateDomainRequest, v1::Domain, CreateDomain>("hvagent.v1.DomainService/CreateDomain",
                                                               Role::kController, kChanges, Needs::kDomains),
      Unary<v1::DeleteDomainRequest, v1::DeleteDomainResponse, DeleteDomain>(
          "hvagent.v1.DomainService/DeleteDomain", Role::kController, kChanges, Needs::kDomains),
      Unary<v1::CreateVolumeRequest, v1::Volume, CreateVolume>("hvagent.v1.StorageService/CreateVolume",
                                                               Role::kController, kChanges, Needs::kStorage),
      Unary<v1::ResizeVolumeRequest, v1::Volume, ResizeVolume>("hvagent.v1.StorageService/ResizeVolume",
                                                               Role::kController, kChanges, Needs::kStorage),
      Unary<v1::VolumeRef, v1::Volume, DeleteVolume>("hvagent.v1.StorageService/DeleteVolume", Role::kController,
                                                     kChanges, Needs::kStorage),
      Unary<v1::AttachVolumeRequest, v1::Volume, AttachVolume>("hvagent.v1.StorageService/AttachVolume",
                                                               Role::kController, kChanges, Needs::kStorage),
      Unary<v1::DetachVolumeRequest, v1::Volume, DetachVolume>("hvagent.v1.StorageService/DetachVolume",
                                                               Role::kController, kChanges, Needs::kStorage),
      Unary<v1::ReleaseVolumeOwnershipRequest, v1::ReleaseVolumeOwnershipResponse, ReleaseVolumeOwnership>(
          "hvagent.v1.StorageService/ReleaseVolumeOwnership", Role::kController, kChanges, Needs::kStorage),
  };
  return table;
}

}  // namespace

absl::Span<const Operation> All() { return Table(); }

const Operation* Find(absl::string_view name) {
  static const auto* index = [] {
    auto* m = new absl::flat_hash_map<absl::string_view, const Operation*>();
    for (const Operation& op : Table()) (*m)[op.name] = &op;
    return m;
  }();
  auto it = index->find(name);
  return it == index->end() ? nullptr : it->second;
}

bool Available(const Operation& op, const Services& s) {
  switch (op.needs) {
    case Needs::kHost: return s.host != nullptr;
    case Needs::kDomains: return s.domains != nullptr;
    case Needs::kStorage: return s.storage != nullptr;
    case Needs::kMetrics: return s.metrics != nullptr;
    case Needs::kJournal: return s.journal != nullptr;
  }
  return false;
}

}  // namespace hvagent::api::ops
