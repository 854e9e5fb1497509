// The table of operations (operation.h) and their handlers: one row and one small function per
// RPC. A handler turns its request into agent/service calls and fills its response; it knows
// nothing of callers, transports, idempotency or audit (pipeline.cpp does those once).
#include <google/protobuf/util/time_util.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent/api/convert.h"
#include "agent/api/operations/operation.h"
#include "hvagent/v1/console.pb.h"
#include "hvagent/v1/domain.pb.h"
#include "hvagent/v1/event.pb.h"
#include "hvagent/v1/host.pb.h"
#include "hvagent/v1/image.pb.h"
#include "hvagent/v1/metrics.pb.h"
#include "hvagent/v1/migration.pb.h"
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

// A domain as the API shows it: the hypervisor's view and what only the agent knows of it.
v1::Domain DomainProto(const Services& s, const hv::DomainInfo& d) {
  v1::Domain p = ToProto(d);
  p.set_rescued(s.domains->Rescued(d.name));
  return p;
}

absl::Status IntoDomain(const Services& s, v1::Domain* out, absl::StatusOr<hv::DomainInfo> r) {
  if (!r.ok()) return r.status();
  *out = DomainProto(s, *r);
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
  return IntoDomain(s, out, s.domains->Create(*spec, req.start(), VolumesFromProto(req.spec())));
}

absl::Status GetDomain(const Services& s, const v1::GetDomainRequest& req, v1::Domain* out) {
  return IntoDomain(s, out, s.domains->Get(req.name()));
}

absl::Status ListDomains(const Services& s, const v1::ListDomainsRequest&, v1::ListDomainsResponse* out) {
  auto domains = s.domains->List();
  if (!domains.ok()) return domains.status();
  for (const auto& d : *domains) *out->add_domains() = DomainProto(s, d);
  return absl::OkStatus();
}

absl::Status StartDomain(const Services& s, const v1::DomainRef& req, v1::Domain* out) {
  return IntoDomain(s, out, s.domains->Start(req.name()));
}

absl::Status ShutdownDomain(const Services& s, const v1::ShutdownDomainRequest& req,
                            v1::ShutdownDomainResponse* out) {
  auto r = s.domains->Shutdown(req.name(), std::chrono::seconds(req.timeout_seconds()));
  if (!r.ok()) return r.status();
  *out->mutable_domain() = DomainProto(s, r->domain);
  out->set_forced(r->forced);
  return absl::OkStatus();
}

absl::Status DestroyDomain(const Services& s, const v1::DomainRef& req, v1::Domain* out) {
  return IntoDomain(s, out, s.domains->Destroy(req.name()));
}

absl::Status RebootDomain(const Services& s, const v1::DomainRef& req, v1::Domain* out) {
  return IntoDomain(s, out, s.domains->Reboot(req.name()));
}

absl::Status SuspendDomain(const Services& s, const v1::DomainRef& req, v1::Domain* out) {
  return IntoDomain(s, out, s.domains->Suspend(req.name()));
}

absl::Status ResumeDomain(const Services& s, const v1::DomainRef& req, v1::Domain* out) {
  return IntoDomain(s, out, s.domains->Resume(req.name()));
}

absl::Status ManagedSaveDomain(const Services& s, const v1::DomainRef& req, v1::Domain* out) {
  return IntoDomain(s, out, s.domains->ManagedSave(req.name()));
}

absl::Status UpdateDomain(const Services& s, const v1::UpdateDomainRequest& req, v1::Domain* out) {
  hv::ResourceChange change;
  if (req.has_vcpus()) change.vcpus = req.vcpus();
  if (req.has_memory_mib()) change.memory_mib = req.memory_mib();
  return IntoDomain(s, out, s.domains->Update(req.name(), change));
}

absl::Status DeleteDomain(const Services& s, const v1::DeleteDomainRequest& req, v1::DeleteDomainResponse*) {
  return s.domains->Delete(req.name(), req.force(), req.delete_volumes());
}

absl::Status RescueDomain(const Services& s, const v1::RescueDomainRequest& req, v1::Domain* out) {
  service::RescueBoot boot;
  boot.pool = req.image().pool();
  boot.image = req.image().image();
  boot.volume = req.image().volume();
  if (req.has_kernel()) {
    boot.kernel = hv::DirectKernelBoot{.kernel_path = req.kernel().kernel_path(),
                                       .initrd_path = req.kernel().initrd_path(),
                                       .cmdline = req.kernel().cmdline()};
  }
  if (req.has_config_drive()) {
    boot.config_drive = service::RescueBoot::ConfigDrive{
        .pool = req.config_drive().pool(), .image = req.config_drive().image(), .volume = req.config_drive().volume()};
  }
  return IntoDomain(s, out, s.domains->Rescue(req.name(), boot));
}

absl::Status UnrescueDomain(const Services& s, const v1::DomainRef& req, v1::Domain* out) {
  return IntoDomain(s, out, s.domains->Unrescue(req.name()));
}

absl::Status AttachNic(const Services& s, const v1::AttachNicRequest& req, v1::Nic* out) {
  if (!req.has_nic()) return absl::InvalidArgumentError("nic: is required");
  auto nic = FromProto("nic", req.nic());
  if (!nic.ok()) return nic.status();
  auto attached = s.domains->AttachNic(req.domain(), std::move(*nic));
  if (!attached.ok()) return attached.status();
  *out = ToProto(*attached);
  return absl::OkStatus();
}

absl::Status DetachNic(const Services& s, const v1::DetachNicRequest& req, v1::DetachNicResponse*) {
  return s.domains->DetachNic(req.domain(), req.mac());
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
  if (!req.image().empty()) {
    if (s.images == nullptr) return absl::FailedPreconditionError("image: this agent keeps no images");
    return Into(out, s.images->CreateVolumeFromImage(req.pool(), req.name(), req.size_bytes(), req.image()));
  }
  return Into(out, s.storage->CreateVolume(req.pool(), {req.name(), req.size_bytes()}));
}

absl::Status ResizeVolume(const Services& s, const v1::ResizeVolumeRequest& req, v1::Volume* out) {
  return Into(out, s.storage->ResizeVolume(req.pool(), req.name(), req.size_bytes()));
}

absl::Status DeleteVolume(const Services& s, const v1::VolumeRef& req, v1::Volume* out) {
  return Into(out, s.storage->DeleteVolume(req.pool(), req.name(), req.cascade()));
}

absl::Status CreateSnapshot(const Services& s, const v1::CreateSnapshotRequest& req, v1::CreateSnapshotResponse* out) {
  return Into(out, s.storage->CreateSnapshot(req.pool(), req.volume(), req.name()));
}

absl::Status ListSnapshots(const Services& s, const v1::ListSnapshotsRequest& req, v1::ListSnapshotsResponse* out) {
  return AddAll(s.storage->ListSnapshots(req.pool(), req.volume()), [out] { return out->add_snapshots(); });
}

absl::Status DeleteSnapshot(const Services& s, const v1::SnapshotRef& req, v1::DeleteSnapshotResponse*) {
  return s.storage->DeleteSnapshot(req.pool(), req.volume(), req.name());
}

absl::Status RevertSnapshot(const Services& s, const v1::SnapshotRef& req, v1::RevertSnapshotResponse* out) {
  return Into(out, s.storage->RevertSnapshot(req.pool(), req.volume(), req.name()));
}

absl::Status AttachVolume(const Services& s, const v1::AttachVolumeRequest& req, v1::Volume* out) {
  return Into(out, s.storage->AttachVolume(req.pool(), req.name(), req.domain(), req.target(), req.readonly()));
}

absl::Status DetachVolume(const Services& s, const v1::DetachVolumeRequest& req, v1::Volume* out) {
  return Into(out, s.storage->DetachVolume(req.pool(), req.name(), req.domain()));
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

// ---- ImageService ----

v1::Image ToImage(const service::ImageStatus& st) {
  v1::Image i;
  i.set_pool(st.pool);
  i.set_name(st.name);
  i.set_state(st.ready ? v1::IMAGE_STATE_READY : v1::IMAGE_STATE_IMPORTING);
  i.set_path(st.path);
  i.set_operation_id(st.operation_id);
  if (st.record) {
    i.set_source_format(st.record->source_format == "qcow2" ? v1::IMAGE_FORMAT_QCOW2 : v1::IMAGE_FORMAT_RAW);
    i.set_virtual_size_bytes(st.record->virtual_size);
    i.set_sha256(st.record->sha256);
    i.set_source(st.record->source);
  }
  return i;
}

absl::Status OperationById(const Services& s, uint64_t id, v1::Operation* out);
void AddTransfer(const Services& s, v1::Operation* o);

service::ImageFormat FormatOf(v1::ImageFormat f) {
  return f == v1::IMAGE_FORMAT_RAW     ? service::ImageFormat::kRaw
         : f == v1::IMAGE_FORMAT_QCOW2 ? service::ImageFormat::kQcow2
                                       : service::ImageFormat::kUnspecified;
}

absl::Status ImportImage(const Services& s, const v1::ImportImageRequest& req, v1::Operation* out) {
  service::ImportRequest r{.pool = req.pool(),
                           .name = req.name(),
                           .format = FormatOf(req.format()),
                           .url = req.url(),
                           .host_file = req.host_file(),
                           .sha256 = req.sha256(),
                           .sha512 = req.sha512()};
  auto id = s.images->Import(r);
  if (!id.ok()) return id.status();
  return OperationById(s, *id, out);
}

absl::Status UploadImage(const Services& s, const v1::UploadImageHeader& h, service::UploadBody& body,
                         v1::Image* out) {
  auto st = s.images->Upload({.pool = h.pool(),
                              .name = h.name(),
                              .format = FormatOf(h.format()),
                              .size_bytes = h.size_bytes(),
                              .sha256 = h.sha256(),
                              .sha512 = h.sha512()},
                             body);
  if (!st.ok()) return st.status();
  *out = ToImage(*st);
  return absl::OkStatus();
}

absl::Status GetImage(const Services& s, const v1::ImageRef& req, v1::Image* out) {
  auto st = s.images->Get(req.pool(), req.name());
  if (!st.ok()) return st.status();
  *out = ToImage(*st);
  return absl::OkStatus();
}

absl::Status ListImages(const Services& s, const v1::ListImagesRequest& req, v1::ListImagesResponse* out) {
  auto all = s.images->List(req.pool());
  if (!all.ok()) return all.status();
  for (const auto& st : *all) *out->add_images() = ToImage(st);
  return absl::OkStatus();
}

absl::Status CreateImageFromVolume(const Services& s, const v1::CreateImageFromVolumeRequest& req,
                                   v1::CreateImageFromVolumeResponse* out) {
  auto r = s.images->CreateFromVolume(req.pool(), req.volume(), req.name(), req.snapshot());
  if (!r.ok()) return r.status();
  *out->mutable_image() = ToImage(r->image);
  out->set_paused(r->paused);
  out->set_paused_ms(r->paused_ms);
  out->set_operation_id(r->operation_id);
  return absl::OkStatus();
}

absl::Status CreateVolumeFromImage(const Services& s, const v1::CreateVolumeFromImageRequest& req,
                                   v1::Operation* out) {
  auto id = s.images->StartVolumeFromImage(
      {.pool = req.pool(), .image = req.image(), .volume = req.volume(), .size_bytes = req.size_bytes()});
  if (!id.ok()) return id.status();
  return OperationById(s, *id, out);
}

absl::Status DeleteImage(const Services& s, const v1::ImageRef& req, v1::Image* out) {
  auto st = s.images->Delete(req.pool(), req.name());
  if (!st.ok()) return st.status();
  *out = ToImage(*st);
  return absl::OkStatus();
}

// ---- MigrationService ----

absl::StatusOr<uint64_t> OperationIdOf(const std::string& text) {
  uint64_t id = 0;
  if (!absl::SimpleAtoi(text, &id) || id == 0) {
    return absl::InvalidArgumentError(absl::StrCat("operation_id: '", text, "' is not an operation id (a positive number)"));
  }
  return id;
}

absl::Status MigrateDomain(const Services& s, const v1::MigrateDomainRequest& req, v1::MigrateDomainResponse* out) {
  service::MigrateRequest r{.name = req.name(), .destination = req.destination(),
                            .shutdown_timeout = std::chrono::seconds(req.shutdown_timeout_seconds()),
                            .destination_pool = req.destination_pool(), .live = req.live(),
                            .max_downtime_ms = req.max_downtime_ms(),
                            .max_bandwidth_mib_s = req.max_bandwidth_mib_s()};
  switch (req.running_policy()) {
    case v1::RUNNING_POLICY_UNSPECIFIED:
    case v1::RUNNING_POLICY_REFUSE: r.running = service::RunningPolicy::kRefuse; break;
    case v1::RUNNING_POLICY_SHUTDOWN: r.running = service::RunningPolicy::kShutdown; break;
    default: return absl::InvalidArgumentError("running_policy: must be RUNNING_POLICY_REFUSE or RUNNING_POLICY_SHUTDOWN");
  }
  auto id = s.migrations->Migrate(r);
  if (!id.ok()) return id.status();
  out->set_operation_id(*id);
  return absl::OkStatus();
}

absl::Status CancelMigration(const Services& s, const v1::CancelMigrationRequest& req, v1::CancelMigrationResponse*) {
  auto id = OperationIdOf(req.operation_id());
  if (!id.ok()) return id.status();
  return s.migrations->Cancel(*id);
}

absl::Status PrepareIncoming(const Services& s, const v1::PrepareIncomingRequest& req,
                             v1::PrepareIncomingResponse* out) {
  if (!req.has_spec()) return absl::InvalidArgumentError("spec: is required");
  auto spec = FromProto(req.spec());
  if (!spec.ok()) return spec.status();
  service::IncomingPlan plan{.spec = *spec, .volumes = VolumesFromProto(req.spec()), .start = req.start(),
                             .source_host = req.source_host()};
  if (req.live()) {
    auto target = s.incoming->PrepareLive(plan);
    if (!target.ok()) return target.status();
    out->set_transfer_id(target->transfer);
    out->set_libvirt_uri(target->libvirt_uri);
    out->set_migrate_uri(target->migrate_uri);
    for (const std::string& p : target->disk_paths) out->add_disk_paths(p);
    return absl::OkStatus();
  }
  auto id = s.incoming->Prepare(plan);
  if (!id.ok()) return id.status();
  out->set_transfer_id(*id);
  out->set_data_port(static_cast<uint32_t>(s.incoming->data_port()));
  return absl::OkStatus();
}

absl::Status FinishIncoming(const Services& s, const v1::IncomingRef& req, v1::FinishIncomingResponse* out) {
  return Into(out->mutable_domain(), s.incoming->Finish(req.transfer_id()));
}

absl::Status AbortIncoming(const Services& s, const v1::IncomingRef& req, v1::AbortIncomingResponse*) {
  return s.incoming->Abort(req.transfer_id());
}

absl::Status KeepIncoming(const Services& s, const v1::IncomingRef& req, v1::KeepIncomingResponse*) {
  return s.incoming->Keep(req.transfer_id());
}

// ---- OperationService ----

absl::Status ListOperations(const Services& s, const v1::ListOperationsRequest& req,
                            v1::ListOperationsResponse* out) {
  auto running = s.journal->Unfinished();
  for (auto it = running.rbegin(); it != running.rend(); ++it) {
    v1::Operation* o = out->add_operations();
    *o = ToOperation(*it);
    AddTransfer(s, o);
  }
  if (req.running_only()) return absl::OkStatus();
  for (const auto& ended : s.journal->Recent()) {
    v1::Operation o = ToOperation(ended.op);
    o.set_state(ended.state);
    o.set_message(ended.message);
    *o.mutable_end_time() = FromUnixMs(ended.end_unix_ms);
    AddTransfer(s, &o);
    *out->add_operations() = std::move(o);
  }
  return absl::OkStatus();
}

void AddTransfer(const Services& s, v1::Operation* o) {
  std::optional<service::Transfer> t;
  if (s.images != nullptr) t = s.images->TransferOf(o->id());
  if (!t && s.migrations != nullptr) t = s.migrations->TransferOf(o->id());
  if (t) {
    o->set_bytes_done(t->done);
    o->set_bytes_total(t->total);
  }
}

absl::Status OperationById(const Services& s, uint64_t id, v1::Operation* out) {
  for (const auto& op : s.journal->Unfinished()) {
    if (op.id != id) continue;
    *out = ToOperation(op);
    AddTransfer(s, out);
    return absl::OkStatus();
  }
  for (const auto& ended : s.journal->Recent()) {
    if (ended.op.id != id) continue;
    *out = ToOperation(ended.op);
    out->set_state(ended.state);
    out->set_message(ended.message);
    *out->mutable_end_time() = FromUnixMs(ended.end_unix_ms);
    AddTransfer(s, out);
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("id: operation ", id, " is neither running nor among the recent ones"));
}

absl::Status GetOperation(const Services& s, const v1::GetOperationRequest& req, v1::Operation* out) {
  uint64_t id = 0;
  if (!absl::SimpleAtoi(req.id(), &id) || id == 0) {
    return absl::InvalidArgumentError(absl::StrCat("id: '", req.id(), "' is not an operation id (a positive number)"));
  }
  return OperationById(s, id, out);
}

// ---- ConsoleService ----

absl::StatusOr<service::ConsoleKind> KindFromProto(v1::ConsoleKind k) {
  switch (k) {
    case v1::CONSOLE_KIND_SERIAL_WS: return service::ConsoleKind::kSerialWs;
    case v1::CONSOLE_KIND_SERIAL_TCP: return service::ConsoleKind::kSerialTcp;
    case v1::CONSOLE_KIND_VNC: return service::ConsoleKind::kVnc;
    default: return absl::InvalidArgumentError("kind: must be CONSOLE_KIND_SERIAL_WS, CONSOLE_KIND_SERIAL_TCP or CONSOLE_KIND_VNC");
  }
}

absl::Status IssueConsoleTicket(const Services& s, const v1::IssueConsoleTicketRequest& req, v1::ConsoleTicket* out) {
  if (req.domain_name().empty()) return absl::InvalidArgumentError("domain_name: is required");
  auto kind = KindFromProto(req.kind());
  if (!kind.ok()) return kind.status();
  auto t = s.console_access->Issue(req.domain_name(), *kind);
  if (!t.ok()) return t.status();
  out->set_ticket(t->ticket);
  out->set_domain_name(t->domain);
  out->set_kind(req.kind());
  *out->mutable_expire_time() = google::protobuf::util::TimeUtil::MillisecondsToTimestamp(
      std::chrono::duration_cast<std::chrono::milliseconds>(t->expires.time_since_epoch()).count());
  out->set_host(t->host);
  out->set_port(static_cast<uint32_t>(t->port));
  out->set_url(t->url);
  out->set_password(t->password);
  return absl::OkStatus();
}

absl::Status GetConsoleLog(const Services& s, const v1::GetConsoleLogRequest& req, v1::ConsoleLog* out) {
  if (req.domain_name().empty()) return absl::InvalidArgumentError("domain_name: is required");
  auto tail = s.console_access->Log(req.domain_name(), req.tail_bytes());
  if (!tail.ok()) return tail.status();
  out->set_data(std::move(tail->data));
  out->set_size_bytes(tail->size);
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

template <typename Req, typename Resp,
          absl::Status (*F)(const Services&, const Req&, service::UploadBody&, Resp*)>
absl::Status ErasedUpload(const Services& s, const Message& req, service::UploadBody& body, Message* resp) {
  return F(s, static_cast<const Req&>(req), body, static_cast<Resp*>(resp));
}

// The request prototype is the header's: what the transport binds before the body flows.
template <typename Header, typename Resp,
          absl::Status (*F)(const Services&, const Header&, service::UploadBody&, Resp*)>
Operation Upload(absl::string_view name, Role role, Needs needs) {
  return {name,    role, true, Kind::kUpload, needs, &Header::default_instance(), &Resp::default_instance(),
          nullptr, &ErasedUpload<Header, Resp, F>};
}

template <typename Req>
Operation Stream(absl::string_view name, Role role, Needs needs) {
  return {name, role, false, Kind::kStream, needs, &Req::default_instance()};
}

constexpr bool kReads = false;
constexpr bool kChanges = true;

Operation WithSecretReply(Operation op) {
  op.secret_reply = true;
  return op;
}

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
      Unary<v1::ListSnapshotsRequest, v1::ListSnapshotsResponse, ListSnapshots>(
          "hvagent.v1.StorageService/ListSnapshots", Role::kOperator, kReads, Needs::kStorage),
      Unary<v1::GetOperationRequest, v1::Operation, GetOperation>("hvagent.v1.OperationService/GetOperation",
                                                                  Role::kOperator, kReads, Needs::kJournal),
      Unary<v1::ImageRef, v1::Image, GetImage>("hvagent.v1.ImageService/GetImage", Role::kOperator, kReads,
                                               Needs::kImages),
      Unary<v1::ListImagesRequest, v1::ListImagesResponse, ListImages>("hvagent.v1.ImageService/ListImages",
                                                                       Role::kOperator, kReads, Needs::kImages),
      // A guest's console: an operator's (and a controller's) way in when the network is not.
      // Attaching is audited by the stream itself (it names the domain and whether it writes).
      Stream<v1::ConsoleInput>("hvagent.v1.ConsoleService/Attach", Role::kOperator, Needs::kConsoles),
      Unary<v1::GetConsoleLogRequest, v1::ConsoleLog, GetConsoleLog>("hvagent.v1.ConsoleService/GetConsoleLog",
                                                                     Role::kOperator, kReads, Needs::kConsoleAccess),
      // A ticket opens a console to whoever holds it: a change, audited, and never stored.
      WithSecretReply(Unary<v1::IssueConsoleTicketRequest, v1::ConsoleTicket, IssueConsoleTicket>(
          "hvagent.v1.ConsoleService/IssueConsoleTicket", Role::kOperator, kChanges, Needs::kConsoleAccess)),
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
      // A resize takes host capacity as a create does: the controller's call.
      Unary<v1::UpdateDomainRequest, v1::Domain, UpdateDomain>("hvagent.v1.DomainService/UpdateDomain",
                                                               Role::kController, kChanges, Needs::kDomains),
      Unary<v1::DeleteDomainRequest, v1::DeleteDomainResponse, DeleteDomain>(
          "hvagent.v1.DomainService/DeleteDomain", Role::kController, kChanges, Needs::kDomains),
      // A rescue makes a volume from an image and reboots the guest into it: Nova's call.
      Unary<v1::RescueDomainRequest, v1::Domain, RescueDomain>("hvagent.v1.DomainService/RescueDomain",
                                                               Role::kController, kChanges, Needs::kDomains),
      Unary<v1::DomainRef, v1::Domain, UnrescueDomain>("hvagent.v1.DomainService/UnrescueDomain", Role::kController,
                                                       kChanges, Needs::kDomains),
      // Which network a guest is on is the controller's decision, as at creation.
      Unary<v1::AttachNicRequest, v1::Nic, AttachNic>("hvagent.v1.DomainService/AttachNic", Role::kController,
                                                      kChanges, Needs::kDomains),
      Unary<v1::DetachNicRequest, v1::DetachNicResponse, DetachNic>("hvagent.v1.DomainService/DetachNic",
                                                                    Role::kController, kChanges, Needs::kDomains),
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
      // A snapshot may pause a guest; a revert rewrites a disk: the controller's calls.
      Unary<v1::CreateSnapshotRequest, v1::CreateSnapshotResponse, CreateSnapshot>(
          "hvagent.v1.StorageService/CreateSnapshot", Role::kController, kChanges, Needs::kStorage),
      Unary<v1::SnapshotRef, v1::DeleteSnapshotResponse, DeleteSnapshot>(
          "hvagent.v1.StorageService/DeleteSnapshot", Role::kController, kChanges, Needs::kStorage),
      Unary<v1::SnapshotRef, v1::RevertSnapshotResponse, RevertSnapshot>(
          "hvagent.v1.StorageService/RevertSnapshot", Role::kController, kChanges, Needs::kStorage),
      // An import fetches from the network or reads a host file: a controller's call.
      Unary<v1::ImportImageRequest, v1::Operation, ImportImage>("hvagent.v1.ImageService/ImportImage",
                                                                Role::kController, kChanges, Needs::kImages),
      // An upload writes what the caller sends onto the host's disks: a controller's call too.
      Upload<v1::UploadImageHeader, v1::Image, UploadImage>("hvagent.v1.ImageService/UploadImage",
                                                            Role::kController, Needs::kImages),
      Unary<v1::ImageRef, v1::Image, DeleteImage>("hvagent.v1.ImageService/DeleteImage", Role::kController, kChanges,
                                                  Needs::kImages),
      // A template from a VM's disk: it may pause the VM, and writes a new image.
      Unary<v1::CreateImageFromVolumeRequest, v1::CreateImageFromVolumeResponse, CreateImageFromVolume>(
          "hvagent.v1.ImageService/CreateImageFromVolume", Role::kController, kChanges, Needs::kImages),
      // Writes a new volume (for long, when it copies): a controller's call, as CreateVolume is.
      Unary<v1::CreateVolumeFromImageRequest, v1::Operation, CreateVolumeFromImage>(
          "hvagent.v1.ImageService/CreateVolumeFromImage", Role::kController, kChanges, Needs::kImages),
      // A disk's whole content leaves the host: a controller's call, as uploading one in is.
      Stream<v1::ExportVolumeRequest>("hvagent.v1.StorageService/ExportVolume", Role::kController, Needs::kImages),
      // A domain leaves the host (and may be shut down for it): the controller's call.
      Unary<v1::MigrateDomainRequest, v1::MigrateDomainResponse, MigrateDomain>(
          "hvagent.v1.MigrationService/MigrateDomain", Role::kController, kChanges, Needs::kMigrations),
      Unary<v1::CancelMigrationRequest, v1::CancelMigrationResponse, CancelMigration>(
          "hvagent.v1.MigrationService/CancelMigration", Role::kController, kChanges, Needs::kMigrations),
      // A domain arriving from another agent: the peer role's, and only these (authorizer.h).
      Unary<v1::PrepareIncomingRequest, v1::PrepareIncomingResponse, PrepareIncoming>(
          "hvagent.v1.MigrationService/PrepareIncoming", Role::kPeer, kChanges, Needs::kIncoming),
      Stream<v1::ReceiveVolumeChunk>("hvagent.v1.MigrationService/ReceiveVolume", Role::kPeer, Needs::kIncoming),
      Unary<v1::IncomingRef, v1::FinishIncomingResponse, FinishIncoming>(
          "hvagent.v1.MigrationService/FinishIncoming", Role::kPeer, kChanges, Needs::kIncoming),
      Unary<v1::IncomingRef, v1::AbortIncomingResponse, AbortIncoming>("hvagent.v1.MigrationService/AbortIncoming",
                                                                       Role::kPeer, kChanges, Needs::kIncoming),
      // The source's heartbeat during a live copy: once a second, so a read (no audit line).
      Unary<v1::IncomingRef, v1::KeepIncomingResponse, KeepIncoming>("hvagent.v1.MigrationService/KeepIncoming",
                                                                     Role::kPeer, kReads, Needs::kIncoming),
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
    case Needs::kImages: return s.images != nullptr && s.journal != nullptr;
    case Needs::kConsoles: return s.consoles != nullptr;
    case Needs::kConsoleAccess: return s.console_access != nullptr;
    case Needs::kMigrations: return s.migrations != nullptr && s.journal != nullptr;
    case Needs::kIncoming: return s.incoming != nullptr;
  }
  return false;
}

}  // namespace hvagent::api::ops
