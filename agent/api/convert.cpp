#include "agent/api/convert.h"

#include <google/protobuf/util/time_util.h>

#include "absl/strings/str_cat.h"
#include "agent/version.h"

namespace hvagent::api {
namespace {

v1::DomainState StateToProto(hv::DomainState s) {
  switch (s) {
    case hv::DomainState::kRunning: return v1::DOMAIN_STATE_RUNNING;
    case hv::DomainState::kBlocked: return v1::DOMAIN_STATE_BLOCKED;
    case hv::DomainState::kPaused: return v1::DOMAIN_STATE_PAUSED;
    case hv::DomainState::kShuttingDown: return v1::DOMAIN_STATE_SHUTTING_DOWN;
    case hv::DomainState::kShutoff: return v1::DOMAIN_STATE_SHUTOFF;
    case hv::DomainState::kCrashed: return v1::DOMAIN_STATE_CRASHED;
    case hv::DomainState::kPmSuspended: return v1::DOMAIN_STATE_SUSPENDED;
    case hv::DomainState::kUnknown: break;
  }
  return v1::DOMAIN_STATE_UNSPECIFIED;
}

v1::DomainEventType EventTypeToProto(hv::DomainEventType t) {
  switch (t) {
    case hv::DomainEventType::kDefined: return v1::DOMAIN_EVENT_TYPE_DEFINED;
    case hv::DomainEventType::kUndefined: return v1::DOMAIN_EVENT_TYPE_UNDEFINED;
    case hv::DomainEventType::kStarted: return v1::DOMAIN_EVENT_TYPE_STARTED;
    case hv::DomainEventType::kSuspended: return v1::DOMAIN_EVENT_TYPE_SUSPENDED;
    case hv::DomainEventType::kResumed: return v1::DOMAIN_EVENT_TYPE_RESUMED;
    case hv::DomainEventType::kStopped: return v1::DOMAIN_EVENT_TYPE_STOPPED;
    case hv::DomainEventType::kShutdown: return v1::DOMAIN_EVENT_TYPE_SHUTDOWN;
    case hv::DomainEventType::kPmSuspended: return v1::DOMAIN_EVENT_TYPE_PMSUSPENDED;
    case hv::DomainEventType::kCrashed: return v1::DOMAIN_EVENT_TYPE_CRASHED;
    case hv::DomainEventType::kEventChannelsHigh: return v1::DOMAIN_EVENT_TYPE_EVENT_CHANNELS_HIGH;
    case hv::DomainEventType::kEventChannelsCleared: return v1::DOMAIN_EVENT_TYPE_EVENT_CHANNELS_CLEARED;
    case hv::DomainEventType::kResync: return v1::DOMAIN_EVENT_TYPE_RESYNC;
    case hv::DomainEventType::kState: return v1::DOMAIN_EVENT_TYPE_STATE;
    case hv::DomainEventType::kDeviceAdded: return v1::DOMAIN_EVENT_TYPE_DEVICE_ADDED;
    case hv::DomainEventType::kDeviceRemoved: return v1::DOMAIN_EVENT_TYPE_DEVICE_REMOVED;
    case hv::DomainEventType::kUnknown: break;
  }
  return v1::DOMAIN_EVENT_TYPE_UNSPECIFIED;
}

}  // namespace

absl::StatusOr<hv::DomainSpec> FromProto(const v1::DomainSpec& p) {
  hv::DomainSpec s;
  s.name = p.name();
  s.uuid = p.uuid();
  s.vcpus = p.vcpus();
  s.max_vcpus = p.max_vcpus();
  s.memory_mib = p.memory_mib();
  s.arch = p.arch();
  s.machine = p.machine();
  s.cpu_model = p.cpu_model();
  s.gic_version = p.gic_version();
  if (p.has_cpu_topology()) {
    s.cpu_topology = hv::GuestCpuTopology{p.cpu_topology().sockets(), p.cpu_topology().cores(),
                                          p.cpu_topology().threads()};
  }
  s.cpu_shares = p.cpu_shares();
  s.labels.insert(p.labels().begin(), p.labels().end());
  s.serial_console = p.serial_console();
  s.vnc = p.vnc();
  switch (p.boot_case()) {
    case v1::DomainSpec::kKernel:
      s.boot = hv::DirectKernelBoot{p.kernel().kernel_path(), p.kernel().initrd_path(), p.kernel().cmdline()};
      break;
    case v1::DomainSpec::kFirmware: {
      hv::FirmwareBoot fw;
      switch (p.firmware().type()) {
        case v1::FirmwareBoot::TYPE_UNSPECIFIED: fw.type = hv::FirmwareType::kDefault; break;
        case v1::FirmwareBoot::TYPE_BIOS: fw.type = hv::FirmwareType::kBios; break;
        case v1::FirmwareBoot::TYPE_UEFI: fw.type = hv::FirmwareType::kUefi; break;
        default: return absl::InvalidArgumentError("spec.firmware.type: unknown value");
      }
      fw.loader_path = p.firmware().loader_path();
      s.boot = fw;
      break;
    }
    case v1::DomainSpec::BOOT_NOT_SET:
      break;
  }
  for (int i = 0; i < p.disks_size(); ++i) {
    const auto& d = p.disks(i);
    hv::DiskSpec disk{d.source_path(), hv::DiskType::kFile, d.target(), d.bus(), d.readonly(), d.format()};
    switch (d.type()) {
      case v1::Disk::TYPE_UNSPECIFIED:
      case v1::Disk::TYPE_FILE: disk.type = hv::DiskType::kFile; break;
      case v1::Disk::TYPE_BLOCK: disk.type = hv::DiskType::kBlock; break;
      default: return absl::InvalidArgumentError(absl::StrCat("spec.disks[", i, "].type: unknown value"));
    }
    switch (d.device()) {
      case v1::Disk::DEVICE_UNSPECIFIED:
      case v1::Disk::DEVICE_DISK: break;
      case v1::Disk::DEVICE_CDROM: disk.cdrom = disk.readonly = true; break;
      default: return absl::InvalidArgumentError(absl::StrCat("spec.disks[", i, "].device: unknown value"));
    }
    s.disks.push_back(std::move(disk));
  }
  for (int i = 0; i < p.nics_size(); ++i) {
    auto nic = FromProto(absl::StrCat("spec.nics[", i, "]"), p.nics(i));
    if (!nic.ok()) return nic.status();
    s.nics.push_back(std::move(*nic));
  }
  return s;
}

absl::StatusOr<hv::NicSpec> FromProto(absl::string_view field, const v1::Nic& n) {
  hv::NicSpec nic;
  nic.mac = n.mac();
  nic.model = n.model();
  nic.mtu = n.mtu();
  nic.target_dev = n.target_dev();
  switch (n.attachment_case()) {
    case v1::Nic::kNetwork: nic.network = n.network(); break;
    case v1::Nic::kBridge: nic.bridge = n.bridge(); break;
    case v1::Nic::kOvs:
      if (n.ovs().bridge().empty()) return absl::InvalidArgumentError(absl::StrCat(field, ".ovs.bridge: is required"));
      nic.ovs_bridge = n.ovs().bridge();
      nic.interface_id = n.ovs().interface_id();
      if (n.ovs().has_vlan()) nic.vlan = n.ovs().vlan();
      break;
    case v1::Nic::kVlan:
      nic.host_network = hv::HostNetwork{hv::HostNetwork::Kind::kVlan, n.vlan().physical(), n.vlan().id()};
      break;
    case v1::Nic::kVxlan:
      nic.host_network = hv::HostNetwork{hv::HostNetwork::Kind::kVxlan, n.vxlan().physical(), n.vxlan().id()};
      break;
    case v1::Nic::ATTACHMENT_NOT_SET:
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": exactly one of network, bridge, ovs, vlan or vxlan is required"));
  }
  return nic;
}

v1::Nic ToProto(const hv::NicSpec& n) {
  v1::Nic p;
  p.set_mac(n.mac);
  p.set_model(n.model);
  p.set_mtu(n.mtu);
  p.set_target_dev(n.target_dev);
  if (!n.ovs_bridge.empty()) {
    v1::OvsPort* ovs = p.mutable_ovs();
    ovs->set_bridge(n.ovs_bridge);
    ovs->set_interface_id(n.interface_id);
    if (n.vlan.has_value()) ovs->set_vlan(*n.vlan);
  } else if (n.host_network.has_value()) {
    const hv::HostNetwork& h = *n.host_network;
    if (h.kind == hv::HostNetwork::Kind::kVlan) {
      p.mutable_vlan()->set_physical(h.physical);
      p.mutable_vlan()->set_id(h.id);
    } else {
      p.mutable_vxlan()->set_physical(h.physical);
      p.mutable_vxlan()->set_id(h.id);
    }
  } else if (!n.bridge.empty()) {
    p.set_bridge(n.bridge);
  } else if (!n.network.empty()) {
    p.set_network(n.network);
  }  // else an interface of a kind the agent does not make: no attachment
  return p;
}

std::vector<service::DiskVolume> VolumesFromProto(const v1::DomainSpec& p) {
  std::vector<service::DiskVolume> out;
  for (int i = 0; i < p.disks_size(); ++i) {
    if (!p.disks(i).has_volume()) continue;
    const auto& v = p.disks(i).volume();
    out.push_back({static_cast<size_t>(i), {v.pool(), v.name(), v.create_size_bytes(), v.image()}});
  }
  return out;
}

namespace {
void BootToProto(const hv::DomainSpec& s, v1::DomainSpec& p) {
  if (const auto* k = std::get_if<hv::DirectKernelBoot>(&s.boot)) {
    p.mutable_kernel()->set_kernel_path(k->kernel_path);
    p.mutable_kernel()->set_initrd_path(k->initrd_path);
    p.mutable_kernel()->set_cmdline(k->cmdline);
  } else if (const auto* f = std::get_if<hv::FirmwareBoot>(&s.boot)) {
    p.mutable_firmware()->set_type(f->type == hv::FirmwareType::kBios   ? v1::FirmwareBoot::TYPE_BIOS
                                   : f->type == hv::FirmwareType::kUefi ? v1::FirmwareBoot::TYPE_UEFI
                                                                        : v1::FirmwareBoot::TYPE_UNSPECIFIED);
    p.mutable_firmware()->set_loader_path(f->loader_path);
  }
}
}  // namespace

v1::DomainSpec ToProto(const hv::DomainSpec& s, const std::vector<service::DiskVolume>& volumes) {
  v1::DomainSpec p;
  p.set_name(s.name);
  p.set_uuid(s.uuid);
  p.set_vcpus(s.vcpus);
  p.set_max_vcpus(s.max_vcpus);
  p.set_memory_mib(s.memory_mib);
  p.set_arch(s.arch);
  p.set_machine(s.machine);
  p.set_cpu_model(s.cpu_model);
  p.set_gic_version(s.gic_version);
  if (s.cpu_topology) {
    p.mutable_cpu_topology()->set_sockets(s.cpu_topology->sockets);
    p.mutable_cpu_topology()->set_cores(s.cpu_topology->cores);
    p.mutable_cpu_topology()->set_threads(s.cpu_topology->threads);
  }
  p.set_cpu_shares(s.cpu_shares);
  p.mutable_labels()->insert(s.labels.begin(), s.labels.end());
  p.set_serial_console(s.serial_console);
  p.set_vnc(s.vnc);
  BootToProto(s, p);
  for (const hv::DiskSpec& d : s.disks) {
    v1::Disk* disk = p.add_disks();
    disk->set_source_path(d.source_path);
    disk->set_type(d.type == hv::DiskType::kBlock ? v1::Disk::TYPE_BLOCK : v1::Disk::TYPE_FILE);
    disk->set_target(d.target);
    disk->set_bus(d.bus);
    disk->set_readonly(d.readonly);
    disk->set_format(d.format);
    if (d.cdrom) disk->set_device(v1::Disk::DEVICE_CDROM);
  }
  for (const service::DiskVolume& v : volumes) {
    if (v.disk >= static_cast<size_t>(p.disks_size())) continue;
    v1::DiskVolume* dv = p.mutable_disks(static_cast<int>(v.disk))->mutable_volume();
    dv->set_pool(v.claim.pool);
    dv->set_name(v.claim.name);
    dv->set_create_size_bytes(v.claim.create_size_bytes);
    dv->set_image(v.claim.image);
  }
  for (const hv::NicSpec& n : s.nics) *p.add_nics() = ToProto(n);
  return p;
}

v1::Domain ToProto(const hv::DomainInfo& info) {
  v1::Domain d;
  d.set_name(info.name);
  d.set_uuid(info.uuid);
  d.set_state(StateToProto(info.state));
  d.set_vcpus(info.vcpus);
  d.set_memory_mib(info.memory_mib);
  d.set_persistent(info.persistent);
  d.mutable_labels()->insert(info.labels.begin(), info.labels.end());
  if (info.uptime) d.mutable_uptime()->set_seconds(info.uptime->count());
  for (const hv::NicInfo& n : info.nics) {
    v1::DomainNic* p = d.add_nics();
    *p->mutable_nic() = ToProto(n.spec);
    p->set_host_device(n.host_device);
  }
  return d;
}

v1::Host ToProto(const hv::HostInfo& h, bool connected) {
  v1::Host p;
  p.set_hostname(h.hostname);
  p.set_arch(h.arch);
  p.set_cpu_model(h.cpu_model);
  p.set_cpu_vendor(h.cpu_vendor);
  for (const auto& f : h.cpu_features) p.add_cpu_features(f);
  p.set_cpus(h.cpus);
  p.set_cpu_mhz(h.cpu_mhz);
  p.mutable_topology()->set_sockets(h.sockets);
  p.mutable_topology()->set_cores_per_socket(h.cores_per_socket);
  p.mutable_topology()->set_threads_per_core(h.threads_per_core);
  p.set_memory_bytes(h.memory_bytes);
  p.set_hypervisor_type(h.hypervisor_type);
  p.set_hypervisor_version(h.hypervisor_version);
  p.set_libvirt_version(h.libvirt_version);
  p.set_uri(h.uri);
  if (h.cpu_times) {
    p.mutable_cpu_times()->set_kernel_ns(h.cpu_times->kernel_ns);
    p.mutable_cpu_times()->set_user_ns(h.cpu_times->user_ns);
    p.mutable_cpu_times()->set_idle_ns(h.cpu_times->idle_ns);
    p.mutable_cpu_times()->set_iowait_ns(h.cpu_times->iowait_ns);
  }
  if (h.uptime) p.mutable_uptime()->set_seconds(h.uptime->count());
  p.set_agent_version(kAgentVersion);
  p.set_connected(connected);
  return p;
}

v1::Capacity ToProto(const service::Capacity& c) {
  v1::Capacity p;
  p.set_cpus(c.cpus);
  p.set_memory_total_bytes(c.memory_total_bytes);
  p.set_memory_free_bytes(c.memory_free_bytes);
  p.set_allocated_vcpus(c.allocated_vcpus);
  p.set_allocated_memory_bytes(c.allocated_memory_bytes);
  p.set_domains_total(c.domains_total);
  p.set_domains_running(c.domains_running);
  p.set_arch(c.arch);
  p.set_hypervisor_type(c.hypervisor_type);
  p.set_hypervisor_version(c.hypervisor_version);
  p.mutable_topology()->set_sockets(c.sockets);
  p.mutable_topology()->set_cores_per_socket(c.cores_per_socket);
  p.mutable_topology()->set_threads_per_core(c.threads_per_core);
  p.mutable_policy()->set_cpu_allocation_ratio(c.policy.cpu_allocation_ratio);
  p.mutable_policy()->set_memory_allocation_ratio(c.policy.memory_allocation_ratio);
  p.mutable_policy()->set_reserved_cpus(c.policy.reserved_cpus);
  p.mutable_policy()->set_reserved_memory_bytes(c.policy.reserved_memory_bytes);
  p.set_vcpus_schedulable(c.vcpus_schedulable);
  p.set_memory_schedulable_bytes(c.memory_schedulable_bytes);
  p.set_defined_vcpus(c.defined_vcpus);
  p.set_defined_memory_bytes(c.defined_memory_bytes);
  p.set_vcpus_available(c.vcpus_available);
  p.set_memory_available_bytes(c.memory_available_bytes);
  for (const auto& pool : c.pools) *p.add_pools() = ToProto(pool);
  for (const auto& e : c.pool_errors) p.add_pool_errors(e);
  return p;
}

google::protobuf::Timestamp FromUnixMs(int64_t ms) {
  return google::protobuf::util::TimeUtil::MillisecondsToTimestamp(ms);
}

v1::Operation ToOperation(const service::Journal::Operation& op) {
  v1::Operation o;
  o.set_id(op.id);
  o.set_kind(op.begin.type());
  o.set_domain(op.begin.domain());
  o.set_pool(op.begin.pool());
  o.set_image(op.begin.image());
  if (op.begin.type() == v1::OPERATION_KIND_VOLUME_FROM_IMAGE && op.begin.volumes_size() > 0) {
    o.set_volume(op.begin.volumes(0).name());
  }
  o.set_state(v1::OPERATION_STATE_RUNNING);
  *o.mutable_start_time() = FromUnixMs(op.begin.unix_ms());
  for (const auto& step : op.steps) {
    std::string line = step.name();
    if (step.has_volume()) absl::StrAppend(&line, " ", step.volume().pool(), "/", step.volume().name());
    o.add_steps(std::move(line));
  }
  return o;
}

namespace {

std::string StateWord(v1::OperationState s) {
  switch (s) {
    case v1::OPERATION_STATE_RUNNING: return "running";
    case v1::OPERATION_STATE_SUCCEEDED: return "succeeded";
    case v1::OPERATION_STATE_FAILED: return "failed";
    case v1::OPERATION_STATE_ROLLED_BACK: return "rolled back";
    case v1::OPERATION_STATE_RECOVERED: return "recovered";
    case v1::OPERATION_STATE_CANCELLED: return "cancelled";
    default: return "unknown";
  }
}

}  // namespace

v1::Operation ToProto(const service::OperationEvent& e) {
  v1::Operation o = ToOperation(e.op);
  o.set_state(e.state);
  o.set_message(e.message);
  if (e.end_unix_ms != 0) *o.mutable_end_time() = FromUnixMs(e.end_unix_ms);
  o.set_bytes_done(e.done);
  o.set_bytes_total(e.total);
  if (!e.copy_volume.empty()) {
    o.set_pool(e.copy_pool);
    o.set_image(e.copy_image);
    o.set_volume(e.copy_volume);
  }
  return o;
}

v1::DomainEvent ToProto(const service::SequencedEvent& e) {
  v1::DomainEvent p;
  auto nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(e.event.time.time_since_epoch()).count();
  *p.mutable_time() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(nanos);
  p.set_domain_name(e.event.domain_name);
  p.set_domain_uuid(e.event.domain_uuid);
  p.set_type(EventTypeToProto(e.event.type));
  p.set_detail(e.event.detail);
  p.set_sequence(e.sequence);
  if (e.operation != nullptr) {
    p.set_type(v1::DOMAIN_EVENT_TYPE_OPERATION);
    *p.mutable_operation() = ToProto(*e.operation);
    p.set_detail(StateWord(e.operation->state));
  }
  return p;
}

v1::Snapshot ToProto(const storage::SnapshotInfo& s) {
  v1::Snapshot out;
  out.set_pool(s.pool);
  out.set_volume(s.volume);
  out.set_name(s.name);
  out.set_size_bytes(s.size_bytes);
  out.set_thin(s.thin);
  out.set_reserve_bytes(s.reserve_bytes);
  out.set_reserve_used_percent(s.reserve_used_percent);
  out.set_valid(s.valid);
  return out;
}

v1::CreateSnapshotResponse ToProto(const service::SnapshotOutcome& o) {
  v1::CreateSnapshotResponse out;
  *out.mutable_snapshot() = ToProto(o.snapshot);
  switch (o.quiesce) {
    case service::QuiesceMode::kNone: out.set_quiesce(v1::QUIESCE_MODE_NONE); break;
    case service::QuiesceMode::kFreeze: out.set_quiesce(v1::QUIESCE_MODE_FREEZE); break;
    case service::QuiesceMode::kPause: out.set_quiesce(v1::QUIESCE_MODE_PAUSE); break;
  }
  out.set_paused_ms(o.paused_ms);
  out.set_total_ms(o.total_ms);
  out.set_note(o.note);
  return out;
}

v1::RevertSnapshotResponse ToProto(const service::RevertOutcome& o) {
  v1::RevertSnapshotResponse out;
  *out.mutable_volume() = ToProto(o.volume);
  out.set_snapshot_kept(o.snapshot_kept);
  return out;
}

v1::Pool ToProto(const storage::PoolInfo& p) {
  v1::Pool out;
  out.set_name(p.name);
  out.set_type(p.type == storage::PoolType::kLvm ? v1::POOL_TYPE_LVM : v1::POOL_TYPE_PARTITION);
  out.set_capacity_bytes(p.capacity_bytes);
  out.set_free_bytes(p.free_bytes);
  out.set_volume_count(p.volume_count);
  out.set_orphaned_volume_count(p.orphaned_volume_count);
  if (p.thin_data_percent) out.set_thin_data_percent(*p.thin_data_percent);
  if (p.thin_metadata_percent) out.set_thin_metadata_percent(*p.thin_metadata_percent);
  out.set_snapshot_count(p.snapshot_count);
  out.set_snapshot_reserve_bytes(p.snapshot_reserve_bytes);
  out.set_snapshot_reserve_used_bytes(p.snapshot_reserve_used_bytes);
  out.set_snapshot_fullest_percent(p.snapshot_fullest_percent);
  switch (p.wipe) {
    case storage::WipeMode::kZero: out.set_wipe(v1::WIPE_MODE_ZERO); break;
    case storage::WipeMode::kDiscard: out.set_wipe(v1::WIPE_MODE_DISCARD); break;
    case storage::WipeMode::kNone: out.set_wipe(v1::WIPE_MODE_NONE); break;
  }
  return out;
}

v1::Volume ToProto(const service::VolumeStatus& s) {
  v1::Volume out;
  out.set_pool(s.volume.pool);
  out.set_name(s.volume.name);
  out.set_path(s.volume.path);
  out.set_size_bytes(s.volume.size_bytes);
  out.set_attached_to(s.volume.attached_to);
  switch (s.state) {
    case service::VolumeState::kAvailable: out.set_state(v1::VOLUME_STATE_AVAILABLE); break;
    case service::VolumeState::kOrphaned: out.set_state(v1::VOLUME_STATE_ORPHANED); break;
    case service::VolumeState::kAttached: out.set_state(v1::VOLUME_STATE_ATTACHED); break;
    case service::VolumeState::kDeleting: out.set_state(v1::VOLUME_STATE_DELETING); break;
  }
  out.set_wipe_done_bytes(s.wipe.done_bytes);
  out.set_wipe_total_bytes(s.wipe.total_bytes);
  switch (s.volume.ownership) {
    case storage::Ownership::kNone: out.set_ownership(v1::VOLUME_OWNERSHIP_UNSPECIFIED); break;
    case storage::Ownership::kOwned: out.set_ownership(v1::VOLUME_OWNERSHIP_OWNED); break;
    case storage::Ownership::kBorrowed: out.set_ownership(v1::VOLUME_OWNERSHIP_BORROWED); break;
  }
  return out;
}

namespace {

google::protobuf::Timestamp WallTime(std::chrono::system_clock::time_point t) {
  auto nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(nanos);
}

}  // namespace

v1::DomainStats ToProto(const hv::DomainStats& d, const service::DomainRates* rates) {
  v1::DomainStats p;
  p.set_name(d.name);
  p.set_uuid(d.uuid);
  p.set_state(StateToProto(d.state));
  if (d.cpu_time_ns) p.set_cpu_time_ns(*d.cpu_time_ns);
  if (d.vcpus) p.set_vcpus(*d.vcpus);
  if (d.balloon_current_kib) p.set_memory_bytes(*d.balloon_current_kib * 1024);
  if (d.balloon_maximum_kib) p.set_memory_max_bytes(*d.balloon_maximum_kib * 1024);
  if (d.rss_kib) p.set_rss_bytes(*d.rss_kib * 1024);
  if (rates != nullptr && rates->cpu_usage) p.set_cpu_usage(*rates->cpu_usage);
  for (size_t i = 0; i < d.disks.size(); ++i) {
    const hv::DiskStats& disk = d.disks[i];
    v1::DiskStats* o = p.add_disks();
    o->set_target(disk.target);
    if (disk.read_bytes) o->set_read_bytes(*disk.read_bytes);
    if (disk.write_bytes) o->set_write_bytes(*disk.write_bytes);
    if (disk.read_requests) o->set_read_requests(*disk.read_requests);
    if (disk.write_requests) o->set_write_requests(*disk.write_requests);
    if (rates != nullptr && i < rates->disks.size()) {
      const service::DiskRates& r = rates->disks[i];
      if (r.read_bytes) o->set_read_bytes_per_second(*r.read_bytes);
      if (r.write_bytes) o->set_write_bytes_per_second(*r.write_bytes);
      if (r.read_requests) o->set_read_requests_per_second(*r.read_requests);
      if (r.write_requests) o->set_write_requests_per_second(*r.write_requests);
    }
  }
  for (size_t i = 0; i < d.nics.size(); ++i) {
    const hv::NicStats& nic = d.nics[i];
    v1::NicStats* o = p.add_nics();
    o->set_name(nic.name);
    if (nic.rx_bytes) o->set_rx_bytes(*nic.rx_bytes);
    if (nic.tx_bytes) o->set_tx_bytes(*nic.tx_bytes);
    if (nic.rx_packets) o->set_rx_packets(*nic.rx_packets);
    if (nic.tx_packets) o->set_tx_packets(*nic.tx_packets);
    if (rates != nullptr && i < rates->nics.size()) {
      const service::NicRates& r = rates->nics[i];
      if (r.rx_bytes) o->set_rx_bytes_per_second(*r.rx_bytes);
      if (r.tx_bytes) o->set_tx_bytes_per_second(*r.tx_bytes);
      if (r.rx_packets) o->set_rx_packets_per_second(*r.rx_packets);
      if (r.tx_packets) o->set_tx_packets_per_second(*r.tx_packets);
    }
  }
  return p;
}

v1::GetDomainStatsResponse ToDomainStatsProto(const service::MetricsSample& s, const std::string& only_domain) {
  v1::GetDomainStatsResponse p;
  *p.mutable_time() = WallTime(s.time);
  p.set_interval_seconds(s.interval_seconds);
  if (!s.domains.ok()) return p;
  for (size_t i = 0; i < s.domains->size(); ++i) {
    const hv::DomainStats& d = (*s.domains)[i];
    if (!only_domain.empty() && d.name != only_domain) continue;
    *p.add_domains() = ToProto(d, i < s.rates.size() ? &s.rates[i] : nullptr);
  }
  return p;
}

v1::MetricsSample ToProto(const service::MetricsSample& s) {
  v1::MetricsSample p;
  v1::GetDomainStatsResponse stats = ToDomainStatsProto(s, "");
  *p.mutable_time() = stats.time();
  p.set_interval_seconds(s.interval_seconds);
  p.mutable_domains()->Swap(stats.mutable_domains());
  if (s.capacity.ok()) {
    *p.mutable_capacity() = ToProto(*s.capacity);
  } else {
    p.add_errors(absl::StrCat("capacity: ", s.capacity.status().message()));
  }
  if (!s.domains.ok()) p.add_errors(absl::StrCat("domains: ", s.domains.status().message()));
  if (s.event_channels.ok()) {
    *p.mutable_event_channels() = ToProto(*s.event_channels, s.time);
  } else if (absl::IsUnimplemented(s.event_channels.status())) {
    p.set_event_channels_unsupported(std::string(s.event_channels.status().message()));
  } else {
    p.add_errors(absl::StrCat("event_channels: ", s.event_channels.status().message()));
  }
  return p;
}

v1::EventChannels ToProto(const hv::EventChannelReport& r, std::chrono::system_clock::time_point time) {
  v1::EventChannels p;
  *p.mutable_time() = WallTime(time);
  for (const hv::DomainEventChannels& d : r.domains) {
    v1::DomainEventChannels* o = p.add_domains();
    o->set_domid(d.domid);
    o->set_name(d.name);
    switch (d.abi) {
      case hv::EvtchnAbi::kTwoLevel: o->set_abi(v1::EVTCHN_ABI_TWO_LEVEL); break;
      case hv::EvtchnAbi::kFifo: o->set_abi(v1::EVTCHN_ABI_FIFO); break;
      case hv::EvtchnAbi::kUnknown: o->set_abi(v1::EVTCHN_ABI_UNKNOWN); break;
    }
    o->set_abi_limit(d.abi_limit);
    if (d.max_evtchn_port) o->set_max_evtchn_port(*d.max_evtchn_port);
    o->set_port_limit(d.port_limit);
    o->set_limit_exact(d.limit_exact);
    o->set_ports_bound(d.ports_bound);
    o->set_headroom(d.headroom());
    o->set_used_share(d.used_share());
    o->set_highest_bound_port(d.highest_bound_port);
    o->set_walk_truncated(d.walk_truncated);
    o->set_cap_exceeded(d.cap_exceeded);
  }
  p.set_host_ports_bound(r.host_ports_bound);
  p.set_host_port_limit(r.host_port_limit);
  p.set_truncated(r.truncated);
  return p;
}

absl::StatusOr<service::ExportRequest> ToExportRequest(const v1::ExportVolumeRequest& r) {
  service::ExportRequest out{.pool = r.pool(), .name = r.name(), .image = r.image(),
                             .domain_quiesced = r.domain_quiesced(), .snapshot = r.snapshot()};
  switch (r.format()) {
    case v1::IMAGE_FORMAT_UNSPECIFIED:
    case v1::IMAGE_FORMAT_RAW:
      out.format = service::ImageFormat::kRaw;
      break;
    case v1::IMAGE_FORMAT_QCOW2:
      out.format = service::ImageFormat::kQcow2;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("format: unknown value ", static_cast<int>(r.format())));
  }
  if (r.image() && !r.snapshot().empty()) {
    return absl::InvalidArgumentError("snapshot: an image has no snapshots (image and snapshot are exclusive)");
  }
  return out;
}

}  // namespace hvagent::api
