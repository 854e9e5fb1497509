#include "hypervisor/libvirt/libvirt_hypervisor.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <algorithm>
#include <cstdint>
#include <ctime>
#include <map>
#include <mutex>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/failpoint.h"
#include "common/log.h"
#include "common/random_text.h"
#include "hypervisor/domain_spec_validator.h"
#include "hypervisor/domain_xml_builder.h"
#include "hypervisor/libvirt/backoff.h"
#include "hypervisor/libvirt/domain_stats.h"
#include "hypervisor/libvirt/domain_xml_reader.h"
#include "hypervisor/libvirt/event_loop.h"
#include "hypervisor/libvirt/libvirt_console.h"
#include "hypervisor/libvirt/libvirt_error.h"
#include "hypervisor/libvirt/migration_xml.h"

namespace hvagent::hv {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("hypervisor");
  return logger;
}

std::string VersionString(unsigned long v) {
  return absl::StrCat(v / 1000000, ".", (v / 1000) % 1000, ".", v % 1000);
}

DomainState StateFrom(int s) { return DomainStateFromLibvirt(s); }

const char* StateName(DomainState s) {
  switch (s) {
    case DomainState::kRunning: return "running";
    case DomainState::kBlocked: return "blocked";
    case DomainState::kPaused: return "paused";
    case DomainState::kShuttingDown: return "shutting down";
    case DomainState::kShutoff: return "shut off";
    case DomainState::kCrashed: return "crashed";
    case DomainState::kPmSuspended: return "suspended by the guest";
    case DomainState::kUnknown: break;
  }
  return "in an unknown state";
}

// libvirt's (event, detail) pair as our type and a short reason word.
std::pair<DomainEventType, std::string> EventFrom(int event, int detail) {
  auto pick = [detail](std::initializer_list<const char*> words) {
    int i = 0;
    for (const char* w : words) {
      if (i++ == detail) return std::string(w);
    }
    return absl::StrCat("detail-", detail);
  };
  switch (event) {
    case VIR_DOMAIN_EVENT_DEFINED:
      return {DomainEventType::kDefined, pick({"added", "updated", "renamed", "from_snapshot"})};
    case VIR_DOMAIN_EVENT_UNDEFINED:
      return {DomainEventType::kUndefined, pick({"removed", "renamed"})};
    case VIR_DOMAIN_EVENT_STARTED:
      return {DomainEventType::kStarted, pick({"booted", "migrated", "restored", "from_snapshot", "wakeup"})};
    case VIR_DOMAIN_EVENT_SUSPENDED:
      return {DomainEventType::kSuspended,
              pick({"paused", "migrated", "ioerror", "watchdog", "restored", "from_snapshot", "api_error",
                    "postcopy", "postcopy_failed"})};
    case VIR_DOMAIN_EVENT_RESUMED:
      return {DomainEventType::kResumed, pick({"unpaused", "migrated", "from_snapshot", "postcopy"})};
    case VIR_DOMAIN_EVENT_STOPPED:
      return {DomainEventType::kStopped,
              pick({"shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from_snapshot"})};
    case VIR_DOMAIN_EVENT_SHUTDOWN:
      return {DomainEventType::kShutdown, pick({"finished", "guest", "host"})};
    case VIR_DOMAIN_EVENT_PMSUSPENDED:
      return {DomainEventType::kPmSuspended, pick({"memory", "disk"})};
    case VIR_DOMAIN_EVENT_CRASHED:
      return {DomainEventType::kCrashed, pick({"panicked", "crashloaded"})};
    default:
      return {DomainEventType::kUnknown, absl::StrCat("event-", event)};
  }
}

std::string NameOf(virDomainPtr d) {
  const char* n = virDomainGetName(d);
  return n ? n : "";
}

// "" when libvirt cannot say (the domain vanished meanwhile).
std::string UuidOf(virDomainPtr d) {
  char uuid[VIR_UUID_STRING_BUFLEN] = {};
  if (virDomainGetUUIDString(d, uuid) < 0) {
    virResetLastError();
    return "";
  }
  return uuid;
}

// The domain's labels and NICs: one read of its current XML (a running guest's live one, whose
// NICs name their host-side device). Why not virDomainGetMetadata for the labels: the NICs need
// the XML anyway, and one call per domain is what the listing already paid. Without an answer
// (the domain vanished meanwhile) the domain is reported without either.
void FillFromXml(virDomainPtr d, DomainInfo& info) {
  char* xml = virDomainGetXMLDesc(d, 0);
  if (xml == nullptr) {
    virResetLastError();
    return;
  }
  std::string doc(xml);
  free(xml);
  auto facts = ParseDomainFacts(doc);
  if (!facts.ok()) return;
  info.labels = std::move(facts->labels);
  info.nics = std::move(facts->nics);
}

// One record of virConnectGetAllDomainStats, with the domain's id while it runs.
DomainStats StatsOfRecord(const virDomainStatsRecord& r) {
  DomainStats st = ParseDomainStats(NameOf(r.dom), UuidOf(r.dom), r.params, r.nparams);
  if (unsigned int id = virDomainGetID(r.dom); id != static_cast<unsigned int>(-1)) st.id = id;
  return st;
}

}  // namespace

// A counted reference to the connection, released on scope exit.
class LibvirtHypervisor::ConnRef {
 public:
  explicit ConnRef(virConnectPtr c) : c_(c) { virConnectRef(c_); }
  ConnRef(ConnRef&& o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
  ConnRef(const ConnRef&) = delete;
  ~ConnRef() {
    if (c_) virConnectClose(c_);
  }
  virConnectPtr get() const { return c_; }

 private:
  virConnectPtr c_;
};

// An owned domain handle.
class LibvirtHypervisor::DomRef {
 public:
  explicit DomRef(virDomainPtr d) : d_(d) {}
  DomRef(DomRef&& o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
  DomRef(const DomRef&) = delete;
  ~DomRef() {
    if (d_) virDomainFree(d_);
  }
  virDomainPtr get() const { return d_; }

 private:
  virDomainPtr d_;
};

namespace {
// Live LibvirtHypervisor objects by callback key (see callback_key_ in the header).
std::mutex g_callback_mu;
std::map<std::uintptr_t, LibvirtHypervisor*> g_callback_targets;
std::uintptr_t g_next_callback_key = 1;

// Runs `fn` on the object `opaque` names, if it is still alive, holding the registry's lock.
template <typename Fn>
void WithCallbackTarget(void* opaque, Fn&& fn) {
  std::lock_guard lock(g_callback_mu);
  auto it = g_callback_targets.find(reinterpret_cast<std::uintptr_t>(opaque));
  if (it != g_callback_targets.end()) fn(*it->second);
}
}  // namespace

LibvirtHypervisor::LibvirtHypervisor(Options options) : options_(std::move(options)) {
  SilenceLibvirtErrorPrinting();
  {
    std::lock_guard lock(g_callback_mu);
    std::uintptr_t key = g_next_callback_key++;
    g_callback_targets.emplace(key, this);
    callback_key_ = reinterpret_cast<void*>(key);
  }
  loop_ = LibvirtEventLoop::Acquire();
  if (auto s = OpenConnection(); !s.ok()) {
    Log()->warn("cannot connect to {} yet, will keep trying: {}", options_.uri, s.message());
    std::lock_guard lock(mu_);
    need_reconnect_ = true;
  }
  reconnect_thread_ = std::thread([this] { ReconnectLoop(); });
}

LibvirtHypervisor::~LibvirtHypervisor() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  reconnect_thread_.join();
  DropConnection();
  std::lock_guard lock(g_callback_mu);  // waits for a callback libvirt is still running
  g_callback_targets.erase(reinterpret_cast<std::uintptr_t>(callback_key_));
}

// Lifecycle events, and device events: a hot-plug or unplug changes what a read of the domain
// reports (its NICs) without a lifecycle event. A driver without device events (libxl) is left
// to the agent's own writes, which re-read. The ids, -1 for one not registered.
std::vector<int> LibvirtHypervisor::RegisterDomainEvents(virConnectPtr c) {
  std::vector<int> ids;
  ids.push_back(virConnectDomainEventRegisterAny(c, nullptr, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                 VIR_DOMAIN_EVENT_CALLBACK(LifecycleCallback), callback_key_, nullptr));
  if (ids.back() < 0) Log()->warn("{}", LastLibvirtError("register lifecycle events").message());
  for (auto [id, cb] : {std::pair{VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, VIR_DOMAIN_EVENT_CALLBACK(DeviceAddedCallback)},
                        std::pair{VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, VIR_DOMAIN_EVENT_CALLBACK(DeviceRemovedCallback)}}) {
    ids.push_back(virConnectDomainEventRegisterAny(c, nullptr, id, cb, callback_key_, nullptr));
    if (ids.back() < 0) Log()->info("{}", LastLibvirtError("register device events").message());
  }
  return ids;
}

absl::Status LibvirtHypervisor::OpenConnection() {
  virConnectPtr c = virConnectOpen(options_.uri.c_str());
  if (c == nullptr) return LastLibvirtError(absl::StrCat("connect to ", options_.uri));
  char* caps_xml = virConnectGetCapabilities(c);
  if (caps_xml == nullptr) {
    auto s = LastLibvirtError("read capabilities");
    virConnectClose(c);
    return s;
  }
  auto caps = ParseCapabilities(caps_xml);
  free(caps_xml);
  if (!caps.ok()) {
    virConnectClose(c);
    return caps.status();
  }
  if (int k = virConnectSetKeepAlive(c, options_.keepalive_interval_seconds, options_.keepalive_count); k != 0) {
    // -1: not a remote connection (test:///); 1: the peer has no keepalive support.
    virResetLastError();
    Log()->debug("no keepalive on {} ({})", options_.uri, k);
  }
  std::vector<int> cb_ids = RegisterDomainEvents(c);
  if (virConnectRegisterCloseCallback(c, CloseCallback, callback_key_, nullptr) < 0) {
    Log()->warn("{}", LastLibvirtError("register close callback").message());
  }
  std::lock_guard lock(mu_);
  conn_ = c;
  ++connection_generation_;
  bulk_stats_unsupported_ = false;  // a restarted libvirtd may be a newer one
  event_callback_ids_ = std::move(cb_ids);
  caps_ = std::move(*caps);
  Log()->info("connected to {} (host arch {})", options_.uri, caps_.host_arch);
  return absl::OkStatus();
}

void LibvirtHypervisor::DropConnection() {
  virConnectPtr c;
  std::vector<int> cb_ids;
  {
    std::lock_guard lock(mu_);
    c = std::exchange(conn_, nullptr);
    cb_ids = std::exchange(event_callback_ids_, {});
  }
  if (c == nullptr) return;
  // Failures here are expected when the peer is already gone.
  for (int id : cb_ids) {
    if (id >= 0) virConnectDomainEventDeregisterAny(c, id);
  }
  virConnectUnregisterCloseCallback(c, CloseCallback);
  virResetLastError();
  virConnectClose(c);
}

void LibvirtHypervisor::ReconnectLoop() {
  Backoff backoff(options_.min_backoff, options_.max_backoff);
  std::unique_lock lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stopping_ || need_reconnect_; });
    if (stopping_) return;
    lock.unlock();
    DropConnection();
    absl::Status s = OpenConnection();
    lock.lock();
    if (s.ok()) {
      need_reconnect_ = false;
      backoff.Reset();
      lock.unlock();
      AnnounceResync();
      lock.lock();
      continue;
    }
    auto delay = backoff.Next();
    Log()->warn("reconnect to {} failed, retrying in {} ms: {}", options_.uri, delay.count(), s.message());
    cv_.wait_for(lock, delay, [this] { return stopping_; });
  }
}

// Events that happened while the connection was down are lost: say so, then give every
// domain's current state, so that a subscriber can correct what it believes.
void LibvirtHypervisor::AnnounceResync() {
  EventSink sink;
  {
    std::lock_guard lock(events_mu_);
    sink = sink_;
  }
  if (!sink) return;
  const auto now = std::chrono::system_clock::now();
  sink(DomainEvent{.time = now, .type = DomainEventType::kResync,
                   .detail = "hypervisor connection re-established; events may have been missed"});
  auto domains = ListDomains();
  if (!domains.ok()) return;  // a new drop: the next reconnect announces again
  for (const DomainInfo& d : *domains) {
    sink(DomainEvent{.time = now, .domain_name = d.name, .domain_uuid = d.uuid, .type = DomainEventType::kState,
                     .detail = StateName(d.state)});
  }
}

void LibvirtHypervisor::CloseCallback(virConnectPtr, int reason, void* opaque) {
  WithCallbackTarget(opaque, [&](LibvirtHypervisor& self) { self.OnConnectionClosed(reason); });
}

void LibvirtHypervisor::OnConnectionClosed(int reason) {
  Log()->error("connection to {} closed (reason {}); reconnecting", options_.uri, reason);
  {
    std::lock_guard lock(mu_);
    need_reconnect_ = true;
  }
  cv_.notify_all();
}

uint64_t LibvirtHypervisor::connection_generation() const {
  std::lock_guard lock(mu_);
  return connection_generation_;
}

void LibvirtHypervisor::SimulateConnectionLoss() { OnConnectionClosed(VIR_CONNECT_CLOSE_REASON_ERROR); }

bool LibvirtHypervisor::Connected() const {
  std::lock_guard lock(mu_);
  return conn_ != nullptr && !need_reconnect_;
}

absl::StatusOr<LibvirtHypervisor::ConnRef> LibvirtHypervisor::Connection() const {
  std::lock_guard lock(mu_);
  if (conn_ == nullptr || need_reconnect_) {
    return absl::UnavailableError(absl::StrCat("hypervisor connection to ", options_.uri, " is down; reconnecting"));
  }
  return ConnRef(conn_);
}

absl::StatusOr<LibvirtHypervisor::DomRef> LibvirtHypervisor::Lookup(const std::string& name) {
  if (auto s = ValidateDomainName("name", name); !s.ok()) return s;
  auto conn = Connection();
  if (!conn.ok()) return conn.status();
  virDomainPtr d = virDomainLookupByName(conn->get(), std::string(name).c_str());
  if (d == nullptr) {
    absl::Status s = LastLibvirtError(absl::StrCat("look up domain ", name));
    if (absl::IsNotFound(s)) return absl::NotFoundError(absl::StrCat("domain '", name, "' not found"));
    return s;
  }
  return DomRef(d);
}

DomainInfo LibvirtHypervisor::Describe(virDomainPtr dom) {
  DomainInfo info;
  info.name = NameOf(dom);
  info.uuid = UuidOf(dom);
  virDomainInfo vi{};
  if (virDomainGetInfo(dom, &vi) == 0) {
    info.state = StateFrom(vi.state);
    info.vcpus = vi.nrVirtCpu;
    info.memory_mib = vi.maxMem / 1024;
  } else {
    virResetLastError();  // e.g. the domain vanished meanwhile; report what we have
  }
  info.persistent = virDomainIsPersistent(dom) == 1;
  FillFromXml(dom, info);
  FillUptime(info);
  return info;
}

void LibvirtHypervisor::FillUptime(DomainInfo& info) {
  if (info.state == DomainState::kRunning || info.state == DomainState::kPaused ||
      info.state == DomainState::kBlocked) {
    std::lock_guard lock(events_mu_);
    if (auto it = started_at_.find(info.uuid); it != started_at_.end()) {
      info.uptime = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - it->second);
    }
  }
}

// Two round trips plus one per domain: one bulk call for state, vCPUs and memory, one listing
// of the transient domains, and each domain's XML for labels and NICs (libvirt has no bulk call
// for either; the
// DomainView cache answers listings, so this runs on rebuilds only). A record the driver leaves
// incomplete (libvirt's test driver reports only the state) is completed with per-domain calls;
// nullopt when the driver has no bulk call (libxl) or the transient listing fails: then the
// caller goes per domain.
std::optional<std::vector<DomainInfo>> LibvirtHypervisor::ListDomainsBulk(virConnectPtr conn) {
  if (options_.force_per_domain_stats || bulk_stats_unsupported_.load()) return std::nullopt;
  auto transient = AllDomains(conn, VIR_CONNECT_LIST_DOMAINS_TRANSIENT, "list transient domains");
  if (!transient.ok()) return std::nullopt;
  std::set<std::string> transient_uuids;
  for (const DomRef& d : *transient) transient_uuids.insert(UuidOf(d.get()));
  virDomainStatsRecordPtr* records = nullptr;
  int n = virConnectGetAllDomainStats(
      conn, VIR_DOMAIN_STATS_STATE | VIR_DOMAIN_STATS_VCPU | VIR_DOMAIN_STATS_BALLOON, &records, 0);
  if (n < 0) {
    BulkCallUnsupported();  // remembered, so the next listing goes per domain at once
    virResetLastError();
    return std::nullopt;
  }
  std::vector<DomainInfo> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) {
    DomainStats st = StatsOfRecord(*records[i]);
    if (!st.vcpus || !st.balloon_maximum_kib || st.state == DomainState::kUnknown) {
      out.push_back(Describe(records[i]->dom));
      continue;
    }
    DomainInfo info;
    info.name = st.name;
    info.uuid = st.uuid;
    info.state = st.state;
    info.vcpus = *st.vcpus;
    info.memory_mib = *st.balloon_maximum_kib / 1024;
    info.persistent = !transient_uuids.contains(st.uuid);
    FillFromXml(records[i]->dom, info);
    FillUptime(info);
    out.push_back(std::move(info));
  }
  virDomainStatsRecordListFree(records);
  return out;
}

namespace {
// The host's CPU times summed over all CPUs (virNodeGetCPUStats with VIR_NODE_CPU_STATS_ALL_CPUS).
// nullopt where the driver has no such call (libxl) or names none of the four kinds.
std::optional<HostInfo::CpuTimes> NodeCpuTimes(virConnectPtr c) {
  int n = 0;
  if (virNodeGetCPUStats(c, VIR_NODE_CPU_STATS_ALL_CPUS, nullptr, &n, 0) < 0 || n <= 0) {
    virResetLastError();
    return std::nullopt;
  }
  std::vector<virNodeCPUStats> params(static_cast<size_t>(n));
  if (virNodeGetCPUStats(c, VIR_NODE_CPU_STATS_ALL_CPUS, params.data(), &n, 0) < 0) {
    virResetLastError();
    return std::nullopt;
  }
  HostInfo::CpuTimes t;
  bool any = false;
  for (int i = 0; i < n; ++i) {
    const std::string field = params[i].field;
    uint64_t* to = field == VIR_NODE_CPU_STATS_KERNEL ? &t.kernel_ns
                   : field == VIR_NODE_CPU_STATS_USER ? &t.user_ns
                   : field == VIR_NODE_CPU_STATS_IDLE ? &t.idle_ns
                   : field == VIR_NODE_CPU_STATS_IOWAIT ? &t.iowait_ns : nullptr;
    if (to != nullptr) {
      *to = params[i].value;
      any = true;
    }
  }
  return any ? std::optional(t) : std::nullopt;
}
}  // namespace

absl::StatusOr<HostInfo> LibvirtHypervisor::GetHostInfo() {
  auto conn = Connection();
  if (!conn.ok()) return conn.status();
  virConnectPtr c = conn->get();
  HostInfo h;
  virNodeInfo ni{};
  if (virNodeGetInfo(c, &ni) < 0) return LastLibvirtError("read node info");
  h.cpu_model = ni.model;
  h.cpus = ni.cpus;
  h.cpu_mhz = ni.mhz;
  h.sockets = ni.sockets * ni.nodes;
  h.cores_per_socket = ni.cores;
  h.threads_per_core = ni.threads;
  h.memory_bytes = static_cast<uint64_t>(ni.memory) * 1024;
  unsigned long long free_mem = virNodeGetFreeMemory(c);
  if (free_mem == 0) virResetLastError();
  h.free_memory_bytes = free_mem;
  if (const char* type = virConnectGetType(c)) h.hypervisor_type = type;
  unsigned long v = 0;
  if (virConnectGetVersion(c, &v) == 0) h.hypervisor_version = VersionString(v);
  if (virConnectGetLibVersion(c, &v) == 0) h.libvirt_version = VersionString(v);
  if (char* hn = virConnectGetHostname(c)) {
    h.hostname = hn;
    free(hn);
  }
  virResetLastError();
  {
    std::lock_guard lock(mu_);
    h.arch = caps_.host_arch;
    if (!caps_.host_cpu_model.empty()) h.cpu_model = caps_.host_cpu_model;
    h.cpu_vendor = caps_.host_cpu_vendor;
    h.cpu_features = caps_.host_cpu_features;
    // The capabilities' topology is the CPU's own (what a guest CPU model is built from);
    // virNodeGetInfo's counts NUMA nodes into sockets and is kept where libvirt gives none.
    if (caps_.host_sockets && caps_.host_cores && caps_.host_threads) {
      h.sockets = caps_.host_sockets;
      h.cores_per_socket = caps_.host_cores;
      h.threads_per_core = caps_.host_threads;
    }
  }
  h.uri = options_.uri;
  h.cpu_times = NodeCpuTimes(c);
  return h;
}

absl::StatusOr<std::vector<DomainInfo>> LibvirtHypervisor::ListDomains() {
  auto conn = Connection();
  if (!conn.ok()) return conn.status();
  if (auto bulk = ListDomainsBulk(conn->get())) return std::move(*bulk);
  auto doms = AllDomains(conn->get(), 0, "list domains");
  if (!doms.ok()) return doms.status();
  std::vector<DomainInfo> out;
  out.reserve(doms->size());
  for (const DomRef& d : *doms) out.push_back(Describe(d.get()));
  return out;
}

absl::StatusOr<std::vector<LibvirtHypervisor::DomRef>> LibvirtHypervisor::AllDomains(virConnectPtr conn,
                                                                                    unsigned int flags,
                                                                                    const char* what) {
  virDomainPtr* doms = nullptr;
  int n = virConnectListAllDomains(conn, &doms, flags);
  if (n < 0) return LastLibvirtError(what);
  std::vector<DomRef> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.emplace_back(doms[i]);
  free(doms);
  return out;
}

bool LibvirtHypervisor::BulkCallUnsupported() {
  virErrorPtr e = virGetLastError();
  if (e == nullptr || e->code != VIR_ERR_NO_SUPPORT) return false;
  virResetLastError();
  if (!bulk_stats_unsupported_.exchange(true)) {
    Log()->info("{} has no bulk domain statistics; using per-domain calls", options_.uri);
  }
  return true;
}

absl::StatusOr<std::vector<DomainStats>> LibvirtHypervisor::GetAllDomainStats() {
  auto conn = Connection();
  if (!conn.ok()) return conn.status();
  if (options_.force_per_domain_stats || bulk_stats_unsupported_.load()) return PerDomainStats(conn->get());
  virDomainStatsRecordPtr* records = nullptr;
  int n = virConnectGetAllDomainStats(conn->get(), kDomainStatsGroups, &records, 0);
  if (n < 0) {
    if (BulkCallUnsupported()) return PerDomainStats(conn->get());
    return LastLibvirtError("get all domain stats");
  }
  std::vector<DomainStats> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.push_back(StatsOfRecord(*records[i]));
  virDomainStatsRecordListFree(records);
  return out;
}

// One virDomainGetInfo per domain, and for a running one its live XML (device names) and one
// virDomainBlockStats / virDomainInterfaceStats per device. A domain that vanishes meanwhile is
// left out; a device whose call fails keeps its name with no figures.
absl::StatusOr<std::vector<DomainStats>> LibvirtHypervisor::PerDomainStats(virConnectPtr conn) {
  auto refs = AllDomains(conn, 0, "list domains for statistics");
  if (!refs.ok()) return refs.status();
  std::vector<DomainStats> out;
  out.reserve(refs->size());
  for (const DomRef& ref : *refs) {
    virDomainPtr d = ref.get();
    PerDomainCalls calls;
    virDomainInfo info{};
    if (virDomainGetInfo(d, &info) < 0) {
      virResetLastError();
      continue;  // gone between the listing and now
    }
    calls.info = info;
    if (virDomainIsActive(d) == 1) {
      if (unsigned int id = virDomainGetID(d); id != static_cast<unsigned int>(-1)) calls.id = id;
      if (char* xml = virDomainGetXMLDesc(d, 0); xml != nullptr) {
        std::string doc(xml);
        free(xml);
        if (auto disks = ParseDomainDisks(doc); disks.ok()) {
          for (const DiskSpec& disk : *disks) {
            virDomainBlockStatsStruct st{};
            auto& slot = calls.disks.emplace_back(disk.target, std::nullopt);
            if (virDomainBlockStats(d, disk.target.c_str(), &st, sizeof st) == 0) slot.second = st;
          }
        }
        if (auto nics = ParseInterfaceDevices(doc); nics.ok()) {
          for (const std::string& dev : *nics) {
            virDomainInterfaceStatsStruct st{};
            auto& slot = calls.nics.emplace_back(dev, std::nullopt);
            if (virDomainInterfaceStats(d, dev.c_str(), &st, sizeof st) == 0) slot.second = st;
          }
        }
      }
      virResetLastError();  // failed device calls are reported as missing figures, not errors
    }
    out.push_back(StatsFromPerDomainCalls(NameOf(d), UuidOf(d), calls));
  }
  return out;
}

absl::StatusOr<DomainInfo> LibvirtHypervisor::GetDomain(const std::string& name) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  return Describe(d->get());
}

absl::StatusOr<DomainInfo> LibvirtHypervisor::GetDomainByUuid(const std::string& uuid) {
  auto conn = Connection();
  if (!conn.ok()) return conn.status();
  virDomainPtr d = virDomainLookupByUUIDString(conn->get(), std::string(uuid).c_str());
  if (d == nullptr) {
    absl::Status s = LastLibvirtError(absl::StrCat("look up domain by uuid ", uuid));
    if (absl::IsNotFound(s)) return absl::NotFoundError(absl::StrCat("no domain with uuid ", uuid));
    return s;
  }
  DomRef ref(d);
  return Describe(d);
}

absl::Status LibvirtHypervisor::DefineDomain(const DomainSpec& spec) {
  if (auto s = ValidateDomainSpec(spec); !s.ok()) return s;
  auto conn = Connection();
  if (!conn.ok()) return conn.status();
  if (auto existing = GetDomain(spec.name); existing.ok()) {
    return absl::AlreadyExistsError(absl::StrCat("spec.name: domain '", spec.name, "' already exists"));
  } else if (!absl::IsNotFound(existing.status())) {
    return existing.status();
  }
  if (!spec.uuid.empty()) {
    if (auto existing = GetDomainByUuid(spec.uuid); existing.ok()) {
      return absl::AlreadyExistsError(
          absl::StrCat("spec.uuid: ", spec.uuid, " is already used by domain '", existing->name, "'"));
    } else if (!absl::IsNotFound(existing.status())) {
      return existing.status();
    }
  }
  return DefineXml(conn->get(), spec);
}

absl::Status LibvirtHypervisor::RedefineDomain(const DomainSpec& spec) {
  if (auto s = ValidateDomainSpec(spec); !s.ok()) return s;
  auto conn = Connection();
  if (!conn.ok()) return conn.status();
  auto d = Lookup(spec.name);
  if (!d.ok()) return d.status();
  if (virDomainIsActive(d->get()) == 1) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", spec.name, "' is running: it is not redefined"));
  }
  char uuid[VIR_UUID_STRING_BUFLEN];
  if (virDomainGetUUIDString(d->get(), uuid) != 0) return LastLibvirtError("read domain uuid");
  if (!absl::EqualsIgnoreCase(uuid, spec.uuid)) {
    return absl::InvalidArgumentError(absl::StrCat("spec.uuid: domain '", spec.name, "' has uuid ", uuid));
  }
  return DefineXml(conn->get(), spec);
}

absl::Status LibvirtHypervisor::DefineXml(virConnectPtr conn, const DomainSpec& spec) {
  absl::StatusOr<GuestTarget> target;
  {
    std::lock_guard lock(mu_);
    target = SelectGuestTarget(caps_, spec.arch, options_.domain_type);
  }
  if (!target.ok()) return target.status();
  DomainSpec logged = spec;
  if (spec.serial_console && !options_.console_log_dir.empty() && target->os_type != "xen") {
    logged.console_log_path = ConsoleLogPath(options_.console_log_dir, spec.name);
  }
  if (spec.vnc) {
    logged.vnc_listen = options_.vnc_listen;
    // The throwaway password the display is defined with (expired before the guest starts; see
    // WriteVnc): random all the same, it should not be guessable either.
    auto locked = RandomAlphanumeric(8);
    if (!locked.ok()) return locked.status();
    logged.vnc_locked_password = *locked;
  }
  auto xml = DomainXmlBuilder::Build(logged, *target);
  if (!xml.ok()) return xml.status();
  if (logged.vnc_locked_password.empty()) {
    Log()->debug("defining domain {}:\n{}", spec.name, *xml);
  } else {
    // The locked password has expired before the guest starts, but a log is no place for it.
    Log()->debug("defining domain {}:\n{}", spec.name,
                 absl::StrReplaceAll(*xml, {{"passwd='" + logged.vnc_locked_password + "'", "passwd='(hidden)'"}}));
  }
  virDomainPtr d = virDomainDefineXML(conn, xml->c_str());
  if (d == nullptr) return LastLibvirtError(absl::StrCat("define domain ", spec.name));
  virDomainFree(d);
  return absl::OkStatus();
}

namespace {

// The domain's XML as libvirt gives it with `flags`; `what` ("read the definition of domain
// web1") names the call in an error.
absl::StatusOr<std::string> XmlDesc(virDomainPtr d, unsigned flags, const std::string& what) {
  char* xml = virDomainGetXMLDesc(d, flags);
  if (xml == nullptr) return LastLibvirtError(what);
  std::string out(xml);
  free(xml);
  return out;
}

}  // namespace

absl::StatusOr<std::string> LibvirtHypervisor::GetDomainDefinition(const std::string& name) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  // SECURE: a definition given back without its secrets (a VNC password) would not be the same.
  return XmlDesc(d->get(), VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE,
                 absl::StrCat("read the definition of domain ", name));
}

absl::Status LibvirtHypervisor::RestoreDomainDefinition(const std::string& name, const std::string& definition) {
  if (auto s = ValidateDomainName("name", name); !s.ok()) return s;
  auto conn = Connection();
  if (!conn.ok()) return conn.status();
  // The name is checked before libvirt sees the text: restoring must never define another domain.
  if (!absl::StrContains(definition, absl::StrCat("<name>", name, "</name>"))) {
    return absl::InvalidArgumentError(absl::StrCat("definition: not a definition of domain '", name, "'"));
  }
  if (auto d = Lookup(name); d.ok() && virDomainIsActive(d->get()) == 1) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", name, "' is running: its definition is not replaced"));
  } else if (!d.ok() && !absl::IsNotFound(d.status())) {
    return d.status();
  }
  virDomainPtr d = virDomainDefineXML(conn->get(), definition.c_str());
  if (d == nullptr) return LastLibvirtError(absl::StrCat("restore the definition of domain ", name));
  virDomainFree(d);
  return absl::OkStatus();
}

absl::StatusOr<DomainSpec> LibvirtHypervisor::GetDomainSpec(const std::string& name) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  auto xml = XmlDesc(d->get(), VIR_DOMAIN_XML_INACTIVE, absl::StrCat("read the definition of domain ", name));
  if (!xml.ok()) return xml.status();
  return ParseDomainSpec(*xml);
}

absl::StatusOr<std::vector<std::string>> LibvirtHypervisor::GetUnmodelledDevices(const std::string& name) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  auto xml = XmlDesc(d->get(), VIR_DOMAIN_XML_INACTIVE, absl::StrCat("read the definition of domain ", name));
  if (!xml.ok()) return xml.status();
  return ParseUnmodelledDevices(*xml);
}

// The XML a define would send, built and thrown away: the builder holds every rule of this
// host's guest type (arch, Xen on Arm's limits, TCG's CPU models, displays).
absl::Status LibvirtHypervisor::CheckDefinable(const DomainSpec& spec) {
  if (auto s = ValidateDomainSpec(spec); !s.ok()) return s;
  if (auto conn = Connection(); !conn.ok()) return conn.status();  // the capabilities come with it
  absl::StatusOr<GuestTarget> target;
  {
    std::lock_guard lock(mu_);
    target = SelectGuestTarget(caps_, spec.arch, options_.domain_type);
  }
  if (!target.ok()) return target.status();
  auto xml = DomainXmlBuilder::Build(spec, *target);
  return xml.status();
}

absl::StatusOr<bool> LibvirtHypervisor::HasGuestAgent(const std::string& name) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  auto xml = XmlDesc(d->get(), VIR_DOMAIN_XML_INACTIVE, absl::StrCat("read the definition of domain ", name));
  if (!xml.ok()) return xml.status();
  return ParseHasGuestAgent(*xml);
}

absl::StatusOr<int> LibvirtHypervisor::FreezeFilesystems(const std::string& name) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  if (virDomainIsActive(d->get()) != 1) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", name, "' is not running: nothing to freeze"));
  }
  int frozen = virDomainFSFreeze(d->get(), nullptr, 0, 0);
  if (frozen < 0) return LastLibvirtError(absl::StrCat("freeze the filesystems of domain ", name));
  return frozen;
}

absl::Status LibvirtHypervisor::ThawFilesystems(const std::string& name) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  if (virDomainFSThaw(d->get(), nullptr, 0, 0) < 0) {
    return LastLibvirtError(absl::StrCat("thaw the filesystems of domain ", name));
  }
  return absl::OkStatus();
}

namespace {

// The domain's definition (`flags`: live or inactive, always migratable) with every volume disk
// pointed at the destination's device.
absl::StatusOr<std::string> RetargetedXml(virDomainPtr d, unsigned flags, const std::string& name,
                                          const std::map<std::string, std::string>& disk_paths) {
  auto xml = XmlDesc(d, flags | VIR_DOMAIN_XML_SECURE | VIR_DOMAIN_XML_MIGRATABLE,
                     absl::StrCat("read the definition of domain ", name));
  if (!xml.ok()) return xml.status();
  return RetargetDisks(*xml, disk_paths);
}

}  // namespace

// Peer to peer (this libvirtd connects to the destination's itself, so the agent's own
// connection never needs to reach the other host), live, the non-shared disks copied by libvirt
// over NBD into the devices the destination prepared, the definition made persistent there and
// removed here once the guest runs there. Both the running definition (DEST_XML) and the
// persistent one (PERSIST_XML) are retargeted: without PERSIST_XML libvirt persists the source's
// own inactive definition, and the guest's next start there would open this host's device paths.
absl::Status LibvirtHypervisor::MigrateLive(const std::string& name, const LiveMigration& m) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  const char* type = virConnectGetType(virDomainGetConnect(d->get()));
  if (type != nullptr && absl::EqualsIgnoreCase(type, "xen")) {
    return absl::FailedPreconditionError(
        "live migration: Xen 4.17 has no live migration (nor save/restore) on Arm (Xen's SUPPORT.md lists them "
        "for x86 only); move the domain cold");
  }
  if (virDomainIsActive(d->get()) != 1) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", name, "' is not running: move it cold"));
  }
  auto dest_xml = RetargetedXml(d->get(), 0, name, m.disk_paths);
  if (!dest_xml.ok()) return dest_xml.status();
  auto persist_xml = RetargetedXml(d->get(), VIR_DOMAIN_XML_INACTIVE, name, m.disk_paths);
  if (!persist_xml.ok()) return persist_xml.status();
  if (m.max_downtime_ms > 0 && virDomainMigrateSetMaxDowntime(d->get(), m.max_downtime_ms, 0) < 0) {
    return LastLibvirtError(absl::StrCat("set the migration downtime of domain ", name));
  }
  virTypedParameterPtr params = nullptr;
  int n = 0, max = 0;
  virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_DEST_XML, dest_xml->c_str());
  virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_PERSIST_XML, persist_xml->c_str());
  if (!m.migrate_uri.empty()) virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_URI, m.migrate_uri.c_str());
  // libvirt applies it to the NBD disk copy too (its mirror jobs' speed), not only to memory.
  if (m.bandwidth_mib_s > 0) virTypedParamsAddULLong(&params, &n, &max, VIR_MIGRATE_PARAM_BANDWIDTH, m.bandwidth_mib_s);
  for (const auto& [target, path] : m.disk_paths) {
    virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_MIGRATE_DISKS, target.c_str());
  }
  unsigned flags = VIR_MIGRATE_PEER2PEER | VIR_MIGRATE_LIVE | VIR_MIGRATE_PERSIST_DEST | VIR_MIGRATE_UNDEFINE_SOURCE;
  if (!m.disk_paths.empty()) flags |= VIR_MIGRATE_NON_SHARED_DISK;
  if (m.auto_converge) flags |= VIR_MIGRATE_AUTO_CONVERGE;
  if (m.tls) flags |= VIR_MIGRATE_TLS;
  int code = 0;
  const int rc = virDomainMigrateToURI3(d->get(), m.destination_uri.c_str(), params, n, flags);
  absl::Status s = rc < 0 ? LastLibvirtError(absl::StrCat("migrate domain ", name, " live to ", m.destination_uri), &code)
                          : absl::OkStatus();
  virTypedParamsFree(params, n);
  if (code == VIR_ERR_OPERATION_ABORTED) return absl::CancelledError(s.message());
  return s;
}

absl::StatusOr<MigrationJob> LibvirtHypervisor::GetMigrationJob(const std::string& name) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  int type = VIR_DOMAIN_JOB_NONE, n = 0;
  virTypedParameterPtr params = nullptr;
  if (virDomainGetJobStats(d->get(), &type, &params, &n, 0) < 0) {
    return LastLibvirtError(absl::StrCat("read the job of domain ", name));
  }
  MigrationJob job;
  unsigned long long v = 0;  // NOLINT(runtime/int): libvirt's type
  if (virTypedParamsGetULLong(params, n, VIR_DOMAIN_JOB_DATA_TOTAL, &v) == 1) job.bytes_total = v;
  if (virTypedParamsGetULLong(params, n, VIR_DOMAIN_JOB_DATA_PROCESSED, &v) == 1) job.bytes_done = v;
  virTypedParamsFree(params, n);
  if (type == VIR_DOMAIN_JOB_NONE) return absl::NotFoundError(absl::StrCat("domain '", name, "' runs no migration"));
  return job;
}

absl::Status LibvirtHypervisor::AbortMigrationJob(const std::string& name) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  if (virDomainAbortJob(d->get()) < 0) return LastLibvirtError(absl::StrCat("abort the migration of domain ", name));
  return absl::OkStatus();
}

absl::StatusOr<VncDisplay> LibvirtHypervisor::SetVncPassword(const std::string& name, const std::string& password,
                                                             std::chrono::system_clock::time_point valid_until) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  if (virDomainIsActive(d->get()) != 1) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", name, "' is not running: it has no display now"));
  }
  // The live XML without VIR_DOMAIN_XML_SECURE: it carries no password, and none is read back.
  char* xml = virDomainGetXMLDesc(d->get(), 0);
  if (xml == nullptr) return LastLibvirtError(absl::StrCat("read running guest of domain ", name));
  const std::time_t t = std::chrono::system_clock::to_time_t(valid_until);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char valid_to[32];
  std::strftime(valid_to, sizeof valid_to, "%Y-%m-%dT%H:%M:%S", &tm);  // libvirt's passwdValidTo, UTC
  auto update = VncPasswordUpdateXml(xml, password, valid_to);
  free(xml);
  if (!update.ok()) return update.status();
  if (!update->has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "kind: vnc: domain '", name, "' has no VNC display (define it with spec.vnc): ask for serial-ws or serial-tcp"));
  }
  // Live only: the definition keeps its expired password, so neither this password nor its
  // expiry outlives the running guest, and `virsh dumpxml --inactive --security-info` never shows it.
  if (virDomainUpdateDeviceFlags(d->get(), (*update)->device_xml.c_str(), VIR_DOMAIN_AFFECT_LIVE) < 0) {
    // libvirt's message names the operation, never the password. A display started without
    // password authentication (defined outside the agent) ends here too.
    int code = 0;
    absl::Status s = LastLibvirtError(absl::StrCat("set the VNC password of domain ", name), &code);
    if (code == VIR_ERR_OPERATION_FAILED || code == VIR_ERR_OPERATION_UNSUPPORTED || code == VIR_ERR_INTERNAL_ERROR) {
      return absl::FailedPreconditionError(s.message());
    }
    return s;
  }
  return (*update)->display;
}

absl::Status LibvirtHypervisor::UndefineDomain(const std::string& name) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  const unsigned flags = VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
                         VIR_DOMAIN_UNDEFINE_NVRAM;
  if (virDomainUndefineFlags(d->get(), flags) == 0) return absl::OkStatus();
  absl::Status s = LastLibvirtError(absl::StrCat("undefine domain ", name));
  // Some drivers (e.g. test) reject flags they have nothing to clean up for. The managed-save
  // flag is tried alone before none: without it libvirt refuses to undefine a saved domain.
  if (absl::IsInvalidArgument(s) || absl::IsUnimplemented(s)) {
    if (virDomainUndefineFlags(d->get(), VIR_DOMAIN_UNDEFINE_MANAGED_SAVE) == 0) return absl::OkStatus();
    virResetLastError();
    if (virDomainUndefine(d->get()) == 0) return absl::OkStatus();
    return LastLibvirtError(absl::StrCat("undefine domain ", name));
  }
  return s;
}

// Drivers disagree on how they report "wrong state" (qemu: OPERATION_INVALID, test: INTERNAL),
// so the state is checked first and reported the same way everywhere. libvirt's own check
// still guards the race where the state changes in between.
absl::Status LibvirtHypervisor::Transition(const std::string& name, const char* verb,
                                           std::initializer_list<DomainState> allowed,
                                           int (*op)(virDomainPtr)) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  int state = 0, reason = 0;
  if (virDomainGetState(d->get(), &state, &reason, 0) == 0) {
    DomainState current = StateFrom(state);
    if (std::find(allowed.begin(), allowed.end(), current) == allowed.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot ", verb, " domain '", name, "': it is ", StateName(current)));
    }
  } else {
    virResetLastError();
  }
  if (op(d->get()) < 0) return LastLibvirtError(absl::StrCat(verb, " domain ", name));
  return absl::OkStatus();
}

absl::Status LibvirtHypervisor::StartDomain(const std::string& name) {
  return Transition(name, "start", {DomainState::kShutoff, DomainState::kCrashed}, virDomainCreate);
}

absl::Status LibvirtHypervisor::RequestShutdown(const std::string& name) {
  return Transition(name, "shut down", {DomainState::kRunning, DomainState::kBlocked, DomainState::kPaused},
                    virDomainShutdown);
}

absl::Status LibvirtHypervisor::DestroyDomain(const std::string& name) {
  return Transition(name, "destroy",
                    {DomainState::kRunning, DomainState::kBlocked, DomainState::kPaused,
                     DomainState::kShuttingDown, DomainState::kPmSuspended, DomainState::kCrashed},
                    virDomainDestroy);
}

absl::Status LibvirtHypervisor::RebootDomain(const std::string& name) {
  return Transition(name, "reboot", {DomainState::kRunning, DomainState::kBlocked},
                    [](virDomainPtr d) { return virDomainReboot(d, 0); });
}

absl::Status LibvirtHypervisor::SuspendDomain(const std::string& name) {
  return Transition(name, "suspend", {DomainState::kRunning, DomainState::kBlocked}, virDomainSuspend);
}

absl::Status LibvirtHypervisor::ResumeDomain(const std::string& name) {
  return Transition(name, "resume", {DomainState::kPaused}, virDomainResume);
}

absl::Status LibvirtHypervisor::ManagedSaveDomain(const std::string& name) {
  return Transition(name, "managed-save", {DomainState::kRunning, DomainState::kBlocked, DomainState::kPaused},
                    [](virDomainPtr d) { return virDomainManagedSave(d, 0); });
}

namespace {

absl::StatusOr<DomainResources> ResourcesOf(virDomainPtr dom, const std::string& name) {
  DomainResources r;
  r.active = virDomainIsActive(dom) == 1;
  const unsigned scope = r.active ? VIR_DOMAIN_AFFECT_LIVE : VIR_DOMAIN_AFFECT_CONFIG;
  int vcpus = virDomainGetVcpusFlags(dom, scope);
  int max_vcpus = virDomainGetVcpusFlags(dom, scope | VIR_DOMAIN_VCPU_MAXIMUM);
  virDomainInfo vi{};
  if (vcpus < 0 || max_vcpus < 0 || virDomainGetInfo(dom, &vi) < 0) {
    return LastLibvirtError(absl::StrCat("read vCPUs and memory of domain ", name));
  }
  r.vcpus = static_cast<uint32_t>(vcpus);
  r.max_vcpus = static_cast<uint32_t>(max_vcpus);
  r.memory_mib = vi.memory / 1024;
  r.max_memory_mib = vi.maxMem / 1024;
  r.managed_save = virDomainHasManagedSaveImage(dom, 0) == 1;
  virResetLastError();  // a driver without managed save (libxl on Arm) has none
  return r;
}

// The two steps of a resize of a shut-off domain, ordered so that the current value never
// exceeds the maximum in between (libvirt refuses that).
absl::Status SetOffline(virDomainPtr dom, int (*set)(virDomainPtr, unsigned long, unsigned), unsigned long value,
                        unsigned long old_max, unsigned maximum_flag) {
  const unsigned config = VIR_DOMAIN_AFFECT_CONFIG;
  if (value > old_max) {
    if (set(dom, value, config | maximum_flag) < 0 || set(dom, value, config) < 0) return absl::InternalError("");
  } else {
    if (set(dom, value, config) < 0) return absl::InternalError("");
  }
  return absl::OkStatus();
}

int SetVcpus(virDomainPtr d, unsigned long n, unsigned flags) {
  return virDomainSetVcpusFlags(d, static_cast<unsigned>(n), flags);
}
int SetMemory(virDomainPtr d, unsigned long kib, unsigned flags) { return virDomainSetMemoryFlags(d, kib, flags); }

}  // namespace

absl::StatusOr<DomainResources> LibvirtHypervisor::GetDomainResources(const std::string& name) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  return ResourcesOf(d->get(), name);
}

absl::Status LibvirtHypervisor::SetDomainResources(const std::string& name, const ResourceChange& change) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  auto now = ResourcesOf(d->get(), name);
  if (!now.ok()) return now.status();
  virDomainPtr dom = d->get();
  if (now->active) {
    // Beyond the running maximums only a restart helps; libvirt's own refusal would not say so.
    if (change.vcpus && *change.vcpus > now->max_vcpus) {
      return absl::FailedPreconditionError(
          absl::StrCat("vcpus: domain '", name, "' is running with at most ", now->max_vcpus,
                       " vCPUs (spec.max_vcpus); shut it off to give it ", *change.vcpus));
    }
    if (change.memory_mib && *change.memory_mib > now->max_memory_mib) {
      return absl::FailedPreconditionError(
          absl::StrCat("memory_mib: domain '", name, "' is running with at most ", now->max_memory_mib,
                       " MiB; shut it off to give it ", *change.memory_mib, " MiB"));
    }
    const unsigned both = VIR_DOMAIN_AFFECT_LIVE | VIR_DOMAIN_AFFECT_CONFIG;
    if (change.vcpus && *change.vcpus != now->vcpus && virDomainSetVcpusFlags(dom, *change.vcpus, both) < 0) {
      return LastLibvirtError(absl::StrCat("set vCPUs of running domain ", name));
    }
    if (change.memory_mib && virDomainSetMemoryFlags(dom, *change.memory_mib * 1024, both) < 0) {
      absl::Status s = LastLibvirtError(absl::StrCat("set memory of running domain ", name));
      // vCPUs were changed above: put them back so a refused request changes nothing.
      if (change.vcpus && *change.vcpus != now->vcpus) virDomainSetVcpusFlags(dom, now->vcpus, both);
      return s;
    }
    return absl::OkStatus();
  }
  // A suspended (managed-saved) guest restores the memory image of the size it was saved with;
  // a definition changed under it would not match what it restores into.
  if (virDomainHasManagedSaveImage(dom, 0) == 1) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", name,
                                                      "' is suspended to disk (managed save); resume it before resizing"));
  }
  virResetLastError();
  if (change.vcpus && *change.vcpus != now->vcpus) {
    if (!SetOffline(dom, SetVcpus, *change.vcpus, now->max_vcpus, VIR_DOMAIN_VCPU_MAXIMUM).ok()) {
      return LastLibvirtError(absl::StrCat("set vCPUs of domain ", name));
    }
  }
  if (change.memory_mib) {
    const unsigned long kib = *change.memory_mib * 1024;
    absl::Status s = SetOffline(dom, SetMemory, kib, now->max_memory_mib * 1024, VIR_DOMAIN_MEM_MAXIMUM);
    // A shut-off domain's memory is its maximum (the agent defines both the same): lower it too.
    if (s.ok() && kib < now->max_memory_mib * 1024 &&
        virDomainSetMemoryFlags(dom, kib, static_cast<unsigned>(VIR_DOMAIN_AFFECT_CONFIG) | VIR_DOMAIN_MEM_MAXIMUM) < 0) {
      s = absl::InternalError("");
    }
    if (!s.ok()) {
      s = LastLibvirtError(absl::StrCat("set memory of domain ", name));
      if (change.vcpus && *change.vcpus != now->vcpus) {
        SetOffline(dom, SetVcpus, now->vcpus, std::max(now->max_vcpus, *change.vcpus), VIR_DOMAIN_VCPU_MAXIMUM)
            .IgnoreError();
      }
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<DiskSpec>> LibvirtHypervisor::DisksOf(virDomainPtr dom, bool live, const std::string& name) {
  auto xml = XmlDesc(dom, live ? 0 : VIR_DOMAIN_XML_INACTIVE,
                     absl::StrCat("read ", live ? "running guest" : "definition", " of domain ", name));
  if (!xml.ok()) return xml.status();
  return ParseDomainDisks(*xml);
}

namespace {

bool SameDisk(const DiskSpec& a, const DiskSpec& b) { return a.target == b.target && a.source_path == b.source_path; }

const DiskSpec* FindDisk(const std::vector<DiskSpec>& disks, const DiskSpec& disk) {
  auto it = std::find_if(disks.begin(), disks.end(), [&](const DiskSpec& d) { return SameDisk(d, disk); });
  return it == disks.end() ? nullptr : &*it;
}

}  // namespace

absl::StatusOr<std::vector<DiskSpec>> LibvirtHypervisor::GetDomainDisks(const std::string& name) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  auto disks = DisksOf(d->get(), /*live=*/false, name);
  if (!disks.ok() || virDomainIsActive(d->get()) != 1) return disks;
  auto live = DisksOf(d->get(), /*live=*/true, name);
  if (!live.ok()) return live.status();
  for (const DiskSpec& l : *live) {
    if (FindDisk(*disks, l) == nullptr) disks->push_back(l);
  }
  return disks;
}

// The disk XML must match the domain's own type (driver names differ between Xen and QEMU).
absl::StatusOr<GuestTarget> LibvirtHypervisor::TargetFor(virDomainPtr dom) {
  char* os_type = virDomainGetOSType(dom);
  if (os_type == nullptr) return LastLibvirtError("read domain os type");
  std::string os(os_type);
  free(os_type);
  std::lock_guard lock(mu_);
  auto target = SelectGuestTarget(caps_, "", options_.domain_type);
  if (!target.ok()) return target.status();
  if (os == "xen" || os == "linux") target->os_type = "xen";
  return target;
}

absl::Status LibvirtHypervisor::AttachDevice(const std::string& name, const std::string& xml, const char* what) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  unsigned flags = VIR_DOMAIN_AFFECT_CONFIG;
  if (virDomainIsActive(d->get()) == 1) flags |= VIR_DOMAIN_AFFECT_LIVE;
  if (virDomainAttachDeviceFlags(d->get(), xml.c_str(), flags) < 0) {
    return LastLibvirtError(absl::StrCat("attach ", what, " to domain ", name));
  }
  return absl::OkStatus();
}

absl::Status LibvirtHypervisor::AttachDisk(const std::string& name, const DiskSpec& disk) {
  if (auto s = ValidateDiskSpec("disk", disk); !s.ok()) return s;
  auto disks = GetDomainDisks(name);
  if (!disks.ok()) return disks.status();
  for (const auto& existing : *disks) {
    if (existing.target == disk.target) {
      return absl::AlreadyExistsError(
          absl::StrCat("disk.target: ", disk.target, " is already used by domain '", name, "'"));
    }
  }
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  auto target = TargetFor(d->get());
  if (!target.ok()) return target.status();
  auto xml = DomainXmlBuilder::BuildDisk(disk, *target);
  if (!xml.ok()) return xml.status();
  return AttachDevice(name, *xml);
}

absl::Status LibvirtHypervisor::DetachDevice(virDomainPtr dom, const std::string& name, const DiskSpec& disk,
                                             unsigned flags, int* vir_code) {
  *vir_code = 0;
  auto guest = TargetFor(dom);
  if (!guest.ok()) return guest.status();
  auto xml = DomainXmlBuilder::BuildDisk(disk, *guest);
  if (!xml.ok()) return xml.status();
  if (virDomainDetachDeviceFlags(dom, xml->c_str(), flags) == 0) return absl::OkStatus();
  absl::Status s = LastLibvirtError(
      absl::StrCat("detach disk ", disk.target, " from ", (flags & VIR_DOMAIN_AFFECT_LIVE) ? "running " : "",
                   "domain ", name),
      vir_code);
  // libvirt before 4.1 (and one path of QEMU's since) says "not found" with OPERATION_FAILED.
  if (*vir_code == VIR_ERR_OPERATION_FAILED && absl::StrContains(s.message(), "not found")) {
    return absl::NotFoundError(s.message());
  }
  return s;
}

absl::Status LibvirtHypervisor::DetachDisk(const std::string& name, const DiskSpec& disk) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  auto persistent = DisksOf(d->get(), /*live=*/false, name);
  if (!persistent.ok()) return persistent.status();
  const bool running = virDomainIsActive(d->get()) == 1;
  std::vector<DiskSpec> live;
  if (running) {
    auto l = DisksOf(d->get(), /*live=*/true, name);
    if (!l.ok()) return l.status();
    live = std::move(*l);
  }
  const DiskSpec* in_definition = FindDisk(*persistent, disk);
  const DiskSpec* in_guest = FindDisk(live, disk);
  if (in_definition == nullptr && in_guest == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("domain '", name, "' has no disk ", disk.target, " backed by ", disk.source_path));
  }
  const std::string what = absl::StrCat("domain '", name, "': the guest did not release disk ", disk.target, " (",
                                        disk.source_path, ")");
  if (HVAGENT_FAILPOINT_FAILS("detach.guest_keeps_disk")) {
    return absl::AbortedError(absl::StrCat(what, ": failpoint detach.guest_keeps_disk"));
  }
  int code = 0;
  // The definition first: synchronous, and the guest side is then retried on its own.
  if (in_definition != nullptr) {
    absl::Status s = DetachDevice(d->get(), name, *in_definition, VIR_DOMAIN_AFFECT_CONFIG, &code);
    if (!s.ok() && !absl::IsNotFound(s)) return s;
  }
  if (in_guest == nullptr) return absl::OkStatus();
  absl::Status s = DetachDevice(d->get(), name, *in_guest, VIR_DOMAIN_AFFECT_LIVE, &code);
  if (absl::IsNotFound(s)) return absl::OkStatus();  // the guest let go meanwhile, or the domain went
  if (absl::IsUnavailable(s)) return s;              // libvirtd went: a retry will tell
  // Whatever libvirt answered, the running guest's XML says whether the device is gone (a guest
  // that stopped meanwhile reads as its definition, which no longer has it).
  auto after = DisksOf(d->get(), /*live=*/true, name);
  if (!after.ok()) return absl::IsNotFound(after.status()) ? absl::OkStatus() : (s.ok() ? after.status() : s);
  if (FindDisk(*after, disk) == nullptr) return absl::OkStatus();
  // Errors of the unplug itself: QEMU's "already in the process of unplug" (an earlier request
  // is still pending), libxl's failed or timed-out backend handshake. Others are not about the
  // guest (bad XML, a bus that cannot hot-unplug) and are returned as they are.
  const bool guest_side = code == VIR_ERR_INTERNAL_ERROR || code == VIR_ERR_OPERATION_FAILED ||
                          code == VIR_ERR_OPERATION_TIMEOUT || code == VIR_ERR_AGENT_UNRESPONSIVE;
  if (!s.ok() && !guest_side) return s;
  const std::string reason =
      s.ok() ? "the hot-unplug request was sent but the guest has not completed it within libvirt's wait (it may "
               "still do so)"
             : std::string(s.message());
  Log()->warn("{}: {}", what, reason);
  return absl::AbortedError(absl::StrCat(what, ": ", reason));
}

absl::StatusOr<std::vector<DomainNic>> LibvirtHypervisor::NicsOf(virDomainPtr dom, bool live, const std::string& name) {
  auto xml = XmlDesc(dom, live ? 0 : VIR_DOMAIN_XML_INACTIVE,
                     absl::StrCat("read ", live ? "running guest" : "definition", " of domain ", name));
  if (!xml.ok()) return xml.status();
  return ParseDomainNics(*xml);
}

namespace {

const DomainNic* FindNic(const std::vector<DomainNic>& nics, const std::string& mac) {
  auto it = std::find_if(nics.begin(), nics.end(),
                         [&](const DomainNic& n) { return absl::EqualsIgnoreCase(n.spec.mac, mac); });
  return it == nics.end() ? nullptr : &*it;
}

}  // namespace

absl::StatusOr<std::vector<NicSpec>> LibvirtHypervisor::GetDomainNics(const std::string& name) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  auto persistent = NicsOf(d->get(), /*live=*/false, name);
  if (!persistent.ok()) return persistent.status();
  std::vector<DomainNic> live;
  if (virDomainIsActive(d->get()) == 1) {
    auto l = NicsOf(d->get(), /*live=*/true, name);
    if (!l.ok()) return l.status();
    live = std::move(*l);
  }
  std::vector<NicSpec> out;
  for (const DomainNic& n : *persistent) out.push_back(n.spec);
  for (const DomainNic& n : live) {
    if (FindNic(*persistent, n.spec.mac) == nullptr) out.push_back(n.spec);
  }
  return out;
}

absl::Status LibvirtHypervisor::AttachNic(const std::string& name, const NicSpec& nic) {
  if (nic.mac.empty()) return absl::InvalidArgumentError("nic.mac: is required to attach a NIC");
  if (auto s = ValidateNicSpec("nic", nic); !s.ok()) return s;
  auto existing = GetDomainNics(name);
  if (!existing.ok()) return existing.status();
  for (const NicSpec& n : *existing) {
    if (absl::EqualsIgnoreCase(n.mac, nic.mac)) {
      return absl::AlreadyExistsError(absl::StrCat("nic.mac: ", nic.mac, " is already used by domain '", name, "'"));
    }
  }
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  auto target = TargetFor(d->get());
  if (!target.ok()) return target.status();
  auto xml = DomainXmlBuilder::BuildNic(nic, *target);
  if (!xml.ok()) return xml.status();
  return AttachDevice(name, *xml, "NIC");
}

absl::Status LibvirtHypervisor::DetachNic(const std::string& name, const std::string& mac) {
  auto d = Lookup(name);
  if (!d.ok()) return d.status();
  auto persistent = NicsOf(d->get(), /*live=*/false, name);
  if (!persistent.ok()) return persistent.status();
  const bool running = virDomainIsActive(d->get()) == 1;
  std::vector<DomainNic> live;
  if (running) {
    auto l = NicsOf(d->get(), /*live=*/true, name);
    if (!l.ok()) return l.status();
    live = std::move(*l);
  }
  const DomainNic* in_definition = FindNic(*persistent, mac);
  const DomainNic* in_guest = FindNic(live, mac);
  if (in_definition == nullptr && in_guest == nullptr) {
    return absl::NotFoundError(absl::StrCat("mac: domain '", name, "' has no NIC ", mac));
  }
  if (in_definition != nullptr &&
      virDomainDetachDeviceFlags(d->get(), in_definition->xml.c_str(), VIR_DOMAIN_AFFECT_CONFIG) < 0) {
    return LastLibvirtError(absl::StrCat("detach NIC ", mac, " from the definition of domain ", name));
  }
  if (in_guest == nullptr) return absl::OkStatus();
  const int rc = virDomainDetachDeviceFlags(d->get(), in_guest->xml.c_str(), VIR_DOMAIN_AFFECT_LIVE);
  absl::Status s = rc < 0 ? LastLibvirtError(absl::StrCat("detach NIC ", mac, " from running domain ", name))
                          : absl::OkStatus();
  // As for disks: the running guest's XML says whether the device is gone, whatever the answer.
  auto after = NicsOf(d->get(), /*live=*/true, name);
  if (!after.ok()) return absl::IsNotFound(after.status()) ? absl::OkStatus() : (s.ok() ? after.status() : s);
  if (FindNic(*after, mac) == nullptr) return absl::OkStatus();
  if (!s.ok()) return s;
  return absl::AbortedError(absl::StrCat("domain '", name, "': the guest did not release NIC ", mac,
                                         " within libvirt's wait (it may still do so; detach again to retry)"));
}

absl::StatusOr<std::unique_ptr<ConsoleChannel>> LibvirtHypervisor::OpenConsole(const std::string& name,
                                                                                ConsoleCallbacks callbacks) {
  auto dom = Lookup(name);
  if (!dom.ok()) return dom.status();
  int state = VIR_DOMAIN_NOSTATE, reason = 0;
  if (virDomainGetState(dom->get(), &state, &reason, 0) < 0) {
    return LastLibvirtError(absl::StrCat("read the state of domain ", name));
  }
  if (state != VIR_DOMAIN_RUNNING && state != VIR_DOMAIN_PAUSED && state != VIR_DOMAIN_BLOCKED) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", name, "' is not running: it has no console now"));
  }
  auto conn = Connection();
  if (!conn.ok()) return conn.status();
  return OpenLibvirtConsole(conn->get(), dom->get(), name, std::move(callbacks));
}

void LibvirtHypervisor::SetEventSink(EventSink sink) {
  std::lock_guard lock(events_mu_);
  sink_ = std::move(sink);
}

int LibvirtHypervisor::LifecycleCallback(virConnectPtr, virDomainPtr dom, int event, int detail, void* opaque) {
  WithCallbackTarget(opaque, [&](LibvirtHypervisor& self) { self.OnLifecycleEvent(dom, event, detail); });
  return 0;
}

void LibvirtHypervisor::DeviceAddedCallback(virConnectPtr, virDomainPtr dom, const char* alias, void* opaque) {
  WithCallbackTarget(opaque, [&](LibvirtHypervisor& self) { self.OnDeviceEvent(dom, DomainEventType::kDeviceAdded, alias); });
}

void LibvirtHypervisor::DeviceRemovedCallback(virConnectPtr, virDomainPtr dom, const char* alias, void* opaque) {
  WithCallbackTarget(opaque,
                     [&](LibvirtHypervisor& self) { self.OnDeviceEvent(dom, DomainEventType::kDeviceRemoved, alias); });
}

void LibvirtHypervisor::OnDeviceEvent(virDomainPtr dom, DomainEventType type, const char* alias) {
  DomainEvent ev;
  ev.time = std::chrono::system_clock::now();
  ev.domain_name = NameOf(dom);
  ev.domain_uuid = UuidOf(dom);
  ev.type = type;
  ev.detail = alias != nullptr ? alias : "";
  Log()->debug("event {} device {} ({})", ev.domain_name, type == DomainEventType::kDeviceAdded ? "added" : "removed",
               ev.detail);
  EventSink sink;
  {
    std::lock_guard lock(events_mu_);
    sink = sink_;
  }
  if (sink) sink(ev);
}

void LibvirtHypervisor::OnLifecycleEvent(virDomainPtr dom, int event, int detail) {
  DomainEvent ev;
  ev.time = std::chrono::system_clock::now();
  ev.domain_name = NameOf(dom);
  ev.domain_uuid = UuidOf(dom);
  std::tie(ev.type, ev.detail) = EventFrom(event, detail);
  Log()->debug("event {} {} ({})", ev.domain_name, event, ev.detail);
  EventSink sink;
  {
    std::lock_guard lock(events_mu_);
    if (ev.type == DomainEventType::kStarted) {
      started_at_[ev.domain_uuid] = std::chrono::steady_clock::now();
    } else if (ev.type == DomainEventType::kStopped || ev.type == DomainEventType::kUndefined) {
      started_at_.erase(ev.domain_uuid);
    }
    sink = sink_;
  }
  if (sink) sink(ev);
}

}  // namespace hvagent::hv
