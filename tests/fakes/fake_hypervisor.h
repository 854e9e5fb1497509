#pragma once
// FakeHypervisor: an in-memory Hypervisor for service- and API-level unit tests. It follows
// the Hypervisor contract (validation, NotFound, AlreadyExists, FailedPrecondition) and lets a
// test inject failures and decide whether guests honour a graceful shutdown.

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <set>
#include <mutex>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "hypervisor/domain_spec_validator.h"
#include "hypervisor/hypervisor.h"

namespace hvagent::testing {

class FakeHypervisor final : public hv::Hypervisor {
 public:
  // Knobs a test sets.
  bool guests_honour_shutdown = true;  // RequestShutdown stops the guest after `shutdown_polls` reads
  int shutdown_polls = 2;
  absl::Status fail_start;             // returned by StartDomain when not ok
  absl::Status fail_define;
  absl::Status refuse_definable;       // returned by CheckDefinable when not ok
  absl::Status fail_list;              // returned by ListDomains when not ok
  absl::Status fail_undefine;
  absl::Status fail_attach;
  absl::Status fail_detach;            // DetachDisk answers this and the disk stays (a guest that keeps it)
  absl::Status fail_resize;            // SetDomainResources answers this and changes nothing
  absl::Status fail_restore;           // RestoreDomainDefinition answers this and changes nothing
  std::atomic<bool> connected{true};
  std::atomic<uint64_t> generation{1};  // a test bumps it to stand for a reconnect
  // Runs at the start of DefineDomain, outside the fake's lock: a test can hold a create there.
  std::function<void(const std::string& name)> before_define;
  // Runs at the start of StartDomain, outside the fake's lock (admission races).
  std::function<void(const std::string& name)> before_start;

  // GetUnmodelledDevices' answer per domain (devices "added with virsh" that the model lacks).
  std::map<std::string, std::vector<std::string>> unmodelled_devices;

  std::vector<std::string> calls;  // "define web1", "start web1", ...
  std::string host_type = "Fake";  // GetHostInfo's hypervisor_type ("Xen": a Xen on Arm host)

  absl::StatusOr<hv::HostInfo> GetHostInfo() override {
    if (auto s = Up(); !s.ok()) return s;
    hv::HostInfo h;
    h.hostname = "fake";
    h.arch = "aarch64";
    h.cpu_model = "cortex-a57";
    h.cpus = 8;
    h.memory_bytes = 16ULL << 30;
    h.free_memory_bytes = 12ULL << 30;
    h.hypervisor_type = host_type;
    h.uri = "fake:///";
    return h;
  }

  absl::StatusOr<std::vector<hv::DomainInfo>> ListDomains() override {
    std::lock_guard lock(mu_);
    if (auto s = Up(); !s.ok()) return s;
    if (!fail_list.ok()) return fail_list;
    std::vector<hv::DomainInfo> out;
    for (auto& [name, d] : domains_) out.push_back(InfoOf(d));
    return out;
  }

  absl::StatusOr<hv::DomainInfo> GetDomain(const std::string& name) override {
    std::lock_guard lock(mu_);
    auto d = Find(name);
    if (!d.ok()) return d.status();
    if ((*d)->shutdown_countdown > 0 && --(*d)->shutdown_countdown == 0) {
      (*d)->info.state = hv::DomainState::kShutoff;
    }
    return InfoOf(**d);
  }

  // Stats: each domain's state plus what a test put in `stats` (by name); counts calls.
  std::map<std::string, hv::DomainStats> stats;
  int stats_calls = 0;
  absl::StatusOr<std::vector<hv::DomainStats>> GetAllDomainStats() override {
    std::lock_guard lock(mu_);
    ++stats_calls;
    if (auto s = Up(); !s.ok()) return s;
    std::vector<hv::DomainStats> out;
    for (auto& [name, d] : domains_) {
      hv::DomainStats st;
      if (auto it = stats.find(name); it != stats.end()) st = it->second;
      st.name = name;
      st.uuid = d.info.uuid;
      st.state = d.info.state;
      out.push_back(st);
    }
    return out;
  }

  absl::StatusOr<hv::DomainInfo> GetDomainByUuid(const std::string& uuid) override {
    std::lock_guard lock(mu_);
    for (auto& [name, d] : domains_) {
      if (d.info.uuid == uuid) return InfoOf(d);
    }
    return absl::NotFoundError(absl::StrCat("no domain with uuid ", uuid));
  }

  absl::Status DefineDomain(const hv::DomainSpec& spec) override {
    if (before_define) before_define(spec.name);
    std::lock_guard lock(mu_);
    calls.push_back("define " + spec.name);
    if (auto s = Up(); !s.ok()) return s;
    if (auto s = hv::ValidateDomainSpec(spec); !s.ok()) return s;
    if (!fail_define.ok()) return fail_define;
    if (domains_.contains(spec.name)) return absl::AlreadyExistsError("spec.name: exists");
    Domain d;
    d.first_tap = hv::kMaxNics * defines_++;
    d.info.name = spec.name;
    d.info.uuid = spec.uuid.empty() ? absl::StrCat("00000000-0000-0000-0000-", 100000000000 + domains_.size())
                                    : spec.uuid;
    d.info.state = hv::DomainState::kShutoff;
    d.info.vcpus = spec.vcpus;
    d.info.memory_mib = spec.memory_mib;
    d.info.persistent = true;
    d.info.labels = spec.labels;
    d.max_vcpus = std::max(spec.vcpus, spec.max_vcpus);
    d.disks = spec.disks;
    d.nics = spec.nics;
    d.vnc = spec.vnc;
    d.boot = spec.boot;
    d.spec = spec;
    domains_[spec.name] = d;
    return absl::OkStatus();
  }

  // The definition as defined, with what later calls changed (resources, disks, NICs) and
  // without what the agent sets at define time, as the real hypervisor reads it back.
  absl::StatusOr<hv::DomainSpec> GetDomainSpec(const std::string& name) override {
    std::lock_guard lock(mu_);
    auto d = Find(name);
    if (!d.ok()) return d.status();
    hv::DomainSpec spec = (*d)->spec;
    spec.name = name;
    spec.uuid = (*d)->info.uuid;
    spec.vcpus = (*d)->info.vcpus;
    spec.max_vcpus = (*d)->max_vcpus > (*d)->info.vcpus ? (*d)->max_vcpus : 0;
    spec.memory_mib = (*d)->info.memory_mib;
    spec.labels = (*d)->info.labels;
    spec.disks = (*d)->disks;
    spec.nics = (*d)->nics;
    spec.vnc = (*d)->vnc;
    spec.boot = (*d)->boot;
    spec.vnc_listen.clear();
    spec.vnc_locked_password.clear();
    spec.console_log_path.clear();
    return spec;
  }
  absl::StatusOr<std::vector<std::string>> GetUnmodelledDevices(const std::string& name) override {
    std::lock_guard lock(mu_);
    if (auto d = Find(name); !d.ok()) return d.status();
    auto it = unmodelled_devices.find(name);
    return it == unmodelled_devices.end() ? std::vector<std::string>{} : it->second;
  }

  absl::Status CheckDefinable(const hv::DomainSpec& spec) override {
    if (auto s = hv::ValidateDomainSpec(spec); !s.ok()) return s;
    std::lock_guard lock(mu_);
    return refuse_definable;
  }

  // A definition is a token for a copy of the domain as it was defined (its state dropped).
  absl::StatusOr<std::string> GetDomainDefinition(const std::string& name) override {
    std::lock_guard lock(mu_);
    auto d = Find(name);
    if (!d.ok()) return d.status();
    const std::string token = absl::StrCat("fake-definition:", name, ":", definitions_.size());
    definitions_[token] = **d;
    return token;
  }
  absl::Status RestoreDomainDefinition(const std::string& name, const std::string& definition) override {
    std::lock_guard lock(mu_);
    calls.push_back("restore " + name);
    if (auto s = Up(); !s.ok()) return s;
    if (!fail_restore.ok()) return fail_restore;
    auto saved = definitions_.find(definition);
    if (saved == definitions_.end() || saved->second.info.name != name) {
      return absl::InvalidArgumentError(absl::StrCat("definition: not a definition of domain '", name, "'"));
    }
    if (auto it = domains_.find(name); it != domains_.end() && hv::IsActive(it->second.info.state)) {
      return absl::FailedPreconditionError("running");
    }
    Domain d = saved->second;
    d.info.state = hv::DomainState::kShutoff;
    d.shutdown_countdown = 0;
    d.balloon_mib = 0;
    domains_[name] = d;
    return absl::OkStatus();
  }

  absl::Status RedefineDomain(const hv::DomainSpec& spec) override {
    std::lock_guard lock(mu_);
    calls.push_back("redefine " + spec.name);
    if (auto s = hv::ValidateDomainSpec(spec); !s.ok()) return s;
    auto d = Find(spec.name);
    if (!d.ok()) return d.status();
    if (!fail_define.ok()) return fail_define;
    if (hv::IsActive((*d)->info.state)) return absl::FailedPreconditionError("running");
    if ((*d)->info.uuid != spec.uuid) return absl::InvalidArgumentError("spec.uuid: not the domain's");
    (*d)->info.vcpus = spec.vcpus;
    (*d)->info.memory_mib = spec.memory_mib;
    (*d)->info.labels = spec.labels;
    (*d)->max_vcpus = std::max(spec.vcpus, spec.max_vcpus);
    (*d)->disks = spec.disks;
    (*d)->nics = spec.nics;
    (*d)->vnc = spec.vnc;
    (*d)->boot = spec.boot;
    (*d)->spec = spec;
    return absl::OkStatus();
  }

  absl::Status UndefineDomain(const std::string& name) override {
    std::lock_guard lock(mu_);
    calls.push_back("undefine " + name);
    auto d = Find(name);
    if (!d.ok()) return d.status();
    if (!fail_undefine.ok()) return fail_undefine;
    domains_.erase(name);
    return absl::OkStatus();
  }

  absl::Status StartDomain(const std::string& name) override {
    if (before_start) before_start(name);
    return Transition(name, "start", hv::DomainState::kShutoff, hv::DomainState::kRunning, fail_start);
  }
  absl::Status RequestShutdown(const std::string& name) override {
    std::lock_guard lock(mu_);
    calls.push_back("shutdown " + name);
    auto d = Find(name);
    if (!d.ok()) return d.status();
    if ((*d)->info.state != hv::DomainState::kRunning) return absl::FailedPreconditionError("domain is not running");
    if (guests_honour_shutdown) (*d)->shutdown_countdown = shutdown_polls;
    return absl::OkStatus();
  }
  absl::Status DestroyDomain(const std::string& name) override {
    std::lock_guard lock(mu_);
    calls.push_back("destroy " + name);
    auto d = Find(name);
    if (!d.ok()) return d.status();
    if ((*d)->info.state == hv::DomainState::kShutoff) return absl::FailedPreconditionError("domain is not running");
    (*d)->info.state = hv::DomainState::kShutoff;
    (*d)->shutdown_countdown = 0;
    return absl::OkStatus();
  }
  absl::Status RebootDomain(const std::string& name) override {
    return Transition(name, "reboot", hv::DomainState::kRunning, hv::DomainState::kRunning, absl::OkStatus());
  }
  absl::Status SuspendDomain(const std::string& name) override {
    return Transition(name, "suspend", hv::DomainState::kRunning, hv::DomainState::kPaused, absl::OkStatus());
  }
  absl::Status ResumeDomain(const std::string& name) override {
    return Transition(name, "resume", hv::DomainState::kPaused, hv::DomainState::kRunning, absl::OkStatus());
  }
  absl::Status ManagedSaveDomain(const std::string& name) override {
    return Transition(name, "managed-save", hv::DomainState::kRunning, hv::DomainState::kShutoff, absl::OkStatus());
  }

  // Like libvirt: a running domain changes within its maximums; a shut-off one takes any size.
  absl::StatusOr<hv::DomainResources> GetDomainResources(const std::string& name) override {
    std::lock_guard lock(mu_);
    auto d = Find(name);
    if (!d.ok()) return d.status();
    return ResourcesOf(**d);
  }
  absl::Status SetDomainResources(const std::string& name, const hv::ResourceChange& change) override {
    std::lock_guard lock(mu_);
    calls.push_back(absl::StrCat("resize ", name, " ", change.vcpus.value_or(0), " ", change.memory_mib.value_or(0)));
    auto d = Find(name);
    if (!d.ok()) return d.status();
    if (!fail_resize.ok()) return fail_resize;
    const hv::DomainResources r = ResourcesOf(**d);
    if (r.active && change.vcpus && *change.vcpus > r.max_vcpus) return absl::FailedPreconditionError("vcpus: above max");
    if (r.active && change.memory_mib && *change.memory_mib > r.max_memory_mib) {
      return absl::FailedPreconditionError("memory_mib: above max");
    }
    if (change.vcpus) {
      (*d)->info.vcpus = *change.vcpus;
      if (!r.active) (*d)->max_vcpus = std::max((*d)->max_vcpus, *change.vcpus);
    }
    if (change.memory_mib) {
      if (r.active) {
        (*d)->balloon_mib = *change.memory_mib;
      } else {
        (*d)->info.memory_mib = *change.memory_mib;
        (*d)->balloon_mib = 0;
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<hv::DiskSpec>> GetDomainDisks(const std::string& name) override {
    std::lock_guard lock(mu_);
    auto d = Find(name);
    if (!d.ok()) return d.status();
    return (*d)->disks;
  }
  absl::Status AttachDisk(const std::string& name, const hv::DiskSpec& disk) override {
    std::lock_guard lock(mu_);
    calls.push_back(absl::StrCat("attach ", name, " ", disk.target, " ", disk.source_path));
    auto d = Find(name);
    if (!d.ok()) return d.status();
    if (auto s = hv::ValidateDiskSpec("disk", disk); !s.ok()) return s;
    if (!fail_attach.ok()) return fail_attach;
    for (const auto& existing : (*d)->disks) {
      if (existing.target == disk.target) return absl::AlreadyExistsError("disk.target: in use");
    }
    (*d)->disks.push_back(disk);
    return absl::OkStatus();
  }
  absl::Status DetachDisk(const std::string& name, const hv::DiskSpec& disk) override {
    std::lock_guard lock(mu_);
    calls.push_back(absl::StrCat("detach ", name, " ", disk.target));
    auto d = Find(name);
    if (!d.ok()) return d.status();
    auto& disks = (*d)->disks;
    auto it = std::find_if(disks.begin(), disks.end(),
                           [&](const auto& x) { return x.target == disk.target && x.source_path == disk.source_path; });
    if (it == disks.end()) return absl::NotFoundError("no such disk");
    if (!fail_detach.ok()) return fail_detach;  // the guest keeps it
    disks.erase(it);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<hv::NicSpec>> GetDomainNics(const std::string& name) override {
    std::lock_guard lock(mu_);
    auto d = Find(name);
    if (!d.ok()) return d.status();
    return (*d)->nics;
  }
  absl::Status AttachNic(const std::string& name, const hv::NicSpec& nic) override {
    std::lock_guard lock(mu_);
    calls.push_back(absl::StrCat("attach-nic ", name, " ", nic.mac));
    auto d = Find(name);
    if (!d.ok()) return d.status();
    if (nic.mac.empty()) return absl::InvalidArgumentError("nic.mac: is required");
    if (auto s = hv::ValidateNicSpec("nic", nic); !s.ok()) return s;
    if (!fail_attach.ok()) return fail_attach;
    for (const auto& existing : (*d)->nics) {
      if (existing.mac == nic.mac) return absl::AlreadyExistsError("nic.mac: in use");
    }
    (*d)->nics.push_back(nic);
    return absl::OkStatus();
  }
  absl::Status DetachNic(const std::string& name, const std::string& mac) override {
    std::lock_guard lock(mu_);
    calls.push_back(absl::StrCat("detach-nic ", name, " ", mac));
    auto d = Find(name);
    if (!d.ok()) return d.status();
    auto& nics = (*d)->nics;
    auto it = std::find_if(nics.begin(), nics.end(), [&](const auto& x) { return x.mac == mac; });
    if (it == nics.end()) return absl::NotFoundError(absl::StrCat("mac: no NIC ", mac));
    nics.erase(it);
    return absl::OkStatus();
  }

  void SetEventSink(EventSink sink) override { sink_ = std::move(sink); }
  bool Connected() const override { return connected; }
  uint64_t ConnectionGeneration() const override { return generation; }

  // The last password set on each domain's display and its end; a display at 127.0.0.1:5900.
  std::map<std::string, std::pair<std::string, std::chrono::system_clock::time_point>> vnc_passwords;
  absl::StatusOr<hv::VncDisplay> SetVncPassword(const std::string& name, const std::string& password,
                                                std::chrono::system_clock::time_point valid_until) override {
    std::lock_guard lock(mu_);
    calls.push_back("vnc-password " + name);
    auto d = Find(name);
    if (!d.ok()) return d.status();
    if (!hv::IsActive((*d)->info.state)) return absl::FailedPreconditionError("not running");
    if (!(*d)->vnc) return absl::FailedPreconditionError(absl::StrCat("domain '", name, "' has no VNC display"));
    vnc_passwords[name] = {password, valid_until};
    return hv::VncDisplay{"127.0.0.1", 5900};
  }

  // Guest agents: domains named here have one; freeze_result is what a freeze answers.
  std::set<std::string> guest_agents;
  absl::StatusOr<int> freeze_result = 2;
  std::set<std::string> frozen;
  absl::StatusOr<bool> HasGuestAgent(const std::string& name) override {
    std::lock_guard lock(mu_);
    if (auto d = Find(name); !d.ok()) return d.status();
    return guest_agents.contains(name);
  }
  absl::StatusOr<int> FreezeFilesystems(const std::string& name) override {
    std::lock_guard lock(mu_);
    calls.push_back("freeze " + name);
    if (!guest_agents.contains(name)) return absl::FailedPreconditionError("QEMU guest agent is not configured");
    if (freeze_result.ok()) frozen.insert(name);
    return freeze_result;
  }
  absl::Status ThawFilesystems(const std::string& name) override {
    std::lock_guard lock(mu_);
    calls.push_back("thaw " + name);
    frozen.erase(name);
    return absl::OkStatus();
  }

  // Live migration: `migrate_live` stands for the destination's hypervisor (a test defines and
  // starts the domain on the other fake there); without it MigrateLive is Unimplemented. It is
  // called with the fake's lock free, with the domain's info and disks; on success the domain is
  // gone here (UNDEFINE_SOURCE). `live_job` is what GetMigrationJob answers meanwhile.
  std::function<absl::Status(const hv::DomainInfo&, const std::vector<hv::DiskSpec>&, const hv::LiveMigration&)>
      migrate_live;
  hv::MigrationJob live_job;
  std::atomic<bool> live_aborted{false};
  absl::Status MigrateLive(const std::string& name, const hv::LiveMigration& m) override {
    hv::DomainInfo info;
    std::vector<hv::DiskSpec> disks;
    {
      std::lock_guard lock(mu_);
      calls.push_back("migrate-live " + name);
      auto d = Find(name);
      if (!d.ok()) return d.status();
      if (!hv::IsActive((*d)->info.state)) return absl::FailedPreconditionError("not running");
      info = (*d)->info;
      disks = (*d)->disks;
    }
    if (!migrate_live) return absl::UnimplementedError("this hypervisor cannot migrate domains live");
    absl::Status s = migrate_live(info, disks, m);
    if (live_aborted) return absl::CancelledError("migration job: canceled by client");
    if (!s.ok()) return s;
    std::lock_guard lock(mu_);
    domains_.erase(name);
    return absl::OkStatus();
  }
  absl::StatusOr<hv::MigrationJob> GetMigrationJob(const std::string& name) override {
    std::lock_guard lock(mu_);
    if (auto d = Find(name); !d.ok()) return d.status();
    return live_job;
  }
  absl::Status AbortMigrationJob(const std::string& name) override {
    std::lock_guard lock(mu_);
    calls.push_back("abort-job " + name);
    live_aborted = true;
    return absl::OkStatus();
  }

  void Emit(const hv::DomainEvent& e) {
    if (sink_) sink_(e);
  }
  // The boot of the domain's definition (a rescue's kernel pair), for tests.
  std::variant<std::monostate, hv::DirectKernelBoot, hv::FirmwareBoot> BootOf(const std::string& name) {
    std::lock_guard lock(mu_);
    return domains_.at(name).boot;
  }
  size_t domain_count() {
    std::lock_guard lock(mu_);
    return domains_.size();
  }

 private:
  struct Domain {
    hv::DomainInfo info;
    std::vector<hv::DiskSpec> disks;
    std::vector<hv::NicSpec> nics;
    int shutdown_countdown = 0;
    uint32_t max_vcpus = 0;
    uint64_t balloon_mib = 0;  // a running domain's memory below its maximum; 0: none
    bool vnc = false;
    bool managed_save = false;  // set by ManagedSaveDomain, cleared by the start that restores it
    size_t first_tap = 0;       // the "vnet" number of its first NIC (InfoOf)
    std::variant<std::monostate, hv::DirectKernelBoot, hv::FirmwareBoot> boot;
    hv::DomainSpec spec;  // as defined (GetDomainSpec overlays what changed since)
  };
  std::map<std::string, Domain> definitions_;  // GetDomainDefinition's tokens

  // What a read reports: the domain with its NICs, each with a host-side device named like
  // QEMU's taps ("vnet<k>", k distinct across the fake's domains) while it runs.
  static hv::DomainInfo InfoOf(const Domain& d) {
    hv::DomainInfo info = d.info;
    for (size_t i = 0; i < d.nics.size(); ++i) {
      hv::NicInfo n{d.nics[i], ""};
      if (hv::IsActive(d.info.state)) n.host_device = absl::StrCat("vnet", d.first_tap + i);
      info.nics.push_back(std::move(n));
    }
    return info;
  }

  static hv::DomainResources ResourcesOf(const Domain& d) {
    hv::DomainResources r;
    r.active = hv::IsActive(d.info.state);
    r.vcpus = d.info.vcpus;
    r.max_vcpus = std::max(d.max_vcpus, d.info.vcpus);
    r.max_memory_mib = d.info.memory_mib;
    r.memory_mib = d.balloon_mib != 0 ? d.balloon_mib : d.info.memory_mib;
    r.managed_save = d.managed_save;
    return r;
  }

  absl::Status Up() const {
    return connected ? absl::OkStatus() : absl::UnavailableError("hypervisor connection is down");
  }

  absl::StatusOr<Domain*> Find(const std::string& name) {
    if (auto s = Up(); !s.ok()) return s;
    if (auto s = hv::ValidateDomainName("name", name); !s.ok()) return s;
    auto it = domains_.find(name);
    if (it == domains_.end()) return absl::NotFoundError(absl::StrCat("domain '", name, "' not found"));
    return &it->second;
  }

  absl::Status Transition(const std::string& name, const char* op, hv::DomainState from, hv::DomainState to,
                          const absl::Status& injected) {
    std::lock_guard lock(mu_);
    calls.push_back(absl::StrCat(op, " ", name));
    auto d = Find(name);
    if (!d.ok()) return d.status();
    if (!injected.ok()) return injected;
    if ((*d)->info.state != from) return absl::FailedPreconditionError(absl::StrCat("cannot ", op, " in this state"));
    (*d)->info.state = to;
    (*d)->managed_save = std::string_view(op) == "managed-save";
    return absl::OkStatus();
  }

  std::mutex mu_;
  std::map<std::string, Domain> domains_;
  size_t defines_ = 0;
  EventSink sink_;
};

}  // namespace hvagent::testing
