#include "agent/service/domain_service.h"

#include <algorithm>
#include <cstdio>
#include <random>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/service/host_paths.h"
#include "common/failpoint.h"
#include "common/log.h"
#include "hypervisor/domain_spec_validator.h"
#include "storage/partition/gpt_layout.h"

namespace hvagent::service {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("service");
  return logger;
}

// Stands in for a volume's device path while the spec is validated, before the volume exists.
constexpr char kPendingVolumePath[] = "/dev/hvagent-pending-volume";

// A random (version 4) UUID, so that the journal names the domain before libvirt defines it.
std::string NewUuid() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  uint64_t hi, lo;
  {
    std::lock_guard lock(mu);
    hi = rng();
    lo = rng();
  }
  hi = (hi & 0xffffffffffff0fffULL) | 0x0000000000004000ULL;  // version 4
  lo = (lo & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;  // RFC 4122 variant
  char buf[37];
  std::snprintf(buf, sizeof buf, "%08x-%04x-%04x-%04x-%012llx", static_cast<unsigned>(hi >> 32),
                static_cast<unsigned>((hi >> 16) & 0xffff), static_cast<unsigned>(hi & 0xffff),
                static_cast<unsigned>(lo >> 48), static_cast<unsigned long long>(lo & 0xffffffffffffULL));
  return buf;
}

internal::JournalVolume JournalVolumeOf(const std::string& pool, const std::string& name, bool created,
                                        bool owned = false) {
  internal::JournalVolume v;
  v.set_pool(pool);
  v.set_name(name);
  v.set_created(created);
  v.set_owned(owned);
  return v;
}

internal::JournalStep StepOf(const char* name) {
  internal::JournalStep s;
  s.set_name(name);
  return s;
}

internal::JournalStep StepOf(const char* name, internal::JournalVolume v) {
  internal::JournalStep s = StepOf(name);
  *s.mutable_volume() = std::move(v);
  return s;
}

std::set<size_t> VolumeDisks(const std::vector<DiskVolume>& volumes) {
  std::set<size_t> out;
  for (const DiskVolume& v : volumes) out.insert(v.disk);
  return out;
}

}  // namespace

DomainService::DomainService(hv::Hypervisor& hypervisor, Clock& clock, Options options, StorageService* storage,
                             Journal* journal)
    : hv_(hypervisor), clock_(clock), options_(options), storage_(storage), journal_(journal),
      rescues_(options_.rescues) {
  if (options_.admission.has_value()) admission_ = std::make_unique<ComputeAdmission>(hv_, *options_.admission);
  if (journal_ == nullptr) {
    own_journal_ = std::move(*Journal::Open(""));  // in memory: cannot fail
    journal_ = own_journal_.get();
  }
  if (rescues_ == nullptr) {
    own_rescues_ = std::move(*RescueRecords::Open(""));  // in memory: cannot fail
    rescues_ = own_rescues_.get();
  }
}

void DomainService::EndOp(uint64_t op, v1::OperationState state, const std::string& message) {
  if (auto s = journal_->End(op, state, message); !s.ok()) {
    // The operation itself is over; a restart would re-check it against the real state.
    Log()->error("journal: cannot end operation {}: {}", op, s.message());
  }
}

absl::Status DomainService::CheckVolumes(hv::DomainSpec& spec, const std::vector<DiskVolume>& volumes) const {
  if (volumes.empty()) return absl::OkStatus();
  std::set<std::pair<std::string, std::string>> seen;
  std::set<size_t> disks;
  for (const DiskVolume& v : volumes) {
    const std::string field = absl::StrCat("spec.disks[", v.disk, "].volume");
    if (v.disk >= spec.disks.size() || !disks.insert(v.disk).second) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": no such disk, or named twice"));
    }
    if (storage_ == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(field, ": this agent has no storage pools configured"));
    }
    if (v.claim.pool.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ".pool: required"));
    if (v.claim.name.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ".name: required"));
    if (!seen.insert({v.claim.pool, v.claim.name}).second) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": volume ", v.claim.pool, "/", v.claim.name,
                                                     " is used by two disks"));
    }
    hv::DiskSpec& disk = spec.disks[v.disk];
    if (!disk.source_path.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("spec.disks[", v.disk, "]: give source_path or volume, not both"));
    }
    if (!disk.format.empty() && disk.format != "raw") {
      return absl::InvalidArgumentError(absl::StrCat("spec.disks[", v.disk, "].format: a volume disk is raw"));
    }
    disk.source_path = kPendingVolumePath;
    disk.type = hv::DiskType::kBlock;
    disk.format = "raw";
  }
  return absl::OkStatus();
}

absl::Status DomainService::CheckImages(const std::vector<DiskVolume>& volumes) {
  for (const DiskVolume& v : volumes) {
    if (v.claim.image.empty()) continue;
    const std::string field = absl::StrCat("spec.disks[", v.disk, "].volume.image");
    if (options_.images == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(field, ": this agent makes no volumes from images"));
    }
    // Image names are volume names (ImageService::Import): anything else can name no image.
    if (!storage::gpt::IsVolumeName(v.claim.image)) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": must be 1-", storage::gpt::kMaxVolumeName,
                                                     " of [A-Za-z0-9._-], starting with a letter or digit"));
    }
    auto image = options_.images->Get(v.claim.pool, v.claim.image);
    if (absl::IsNotFound(image.status())) {
      return absl::NotFoundError(
          absl::StrCat(field, ": '", v.claim.image, "' is no image of pool '", v.claim.pool, "'"));
    }
    if (!image.ok()) return image.status();
    if (!image->ready || !image->record.has_value()) {
      return absl::FailedPreconditionError(
          absl::StrCat(field, ": image '", v.claim.image, "' is not ready (its import is under way)"));
    }
    if (v.claim.create_size_bytes != 0 && v.claim.create_size_bytes < image->record->virtual_size) {
      return absl::InvalidArgumentError(absl::StrCat("spec.disks[", v.disk, "].volume.create_size_bytes: ",
                                                     v.claim.create_size_bytes, " is smaller than image '",
                                                     v.claim.image, "' (", image->record->virtual_size, " bytes)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<storage::VolumeInfo> DomainService::ClaimOne(const DiskVolume& v, const std::string& domain) {
  if (v.claim.image.empty()) return storage_->ClaimVolume(v.claim, domain);
  auto made = options_.images->CreateVolumeFromImage(v.claim.pool, v.claim.name, v.claim.create_size_bytes,
                                                     v.claim.image, domain);
  if (!made.ok()) return made.status();
  return made->volume;
}

void DomainService::ReleaseClaims(const std::vector<DiskVolume>& claimed, const std::string& domain) {
  for (auto it = claimed.rbegin(); it != claimed.rend(); ++it) {
    const VolumeClaim& c = it->claim;
    // A volume this create made is owned by the domain: deleted again. One it was given is kept.
    if (auto s = storage_->ReleaseVolume(c.pool, c.name, domain, /*delete_if_owned=*/c.Creates());
        !s.ok()) {
      Log()->error("rollback: releasing volume {}/{} failed: {}", c.pool, c.name, s.message());
    }
  }
}

absl::Status DomainService::CheckHostFit(const hv::DomainSpec& spec, const std::vector<DiskVolume>& volumes) {
  if (auto s = CheckHostPaths(options_.host_paths, spec, VolumeDisks(volumes)); !s.ok()) return s;
  for (size_t i = 0; i < spec.nics.size(); ++i) {
    if (auto s = CheckNic(options_.networks, absl::StrCat("spec.nics[", i, "]"), spec.nics[i]); !s.ok()) return s;
  }
  return hv_.CheckDefinable(spec);
}

absl::StatusOr<hv::DomainInfo> DomainService::Create(const hv::DomainSpec& request, bool start,
                                                     const std::vector<DiskVolume>& volumes) {
  hv::DomainSpec spec = request;
  if (auto s = CheckVolumes(spec, volumes); !s.ok()) return s;
  if (auto s = hv::ValidateDomainSpec(spec); !s.ok()) return s;
  if (auto s = CheckHostPaths(options_.host_paths, request, VolumeDisks(volumes)); !s.ok()) return s;
  for (size_t i = 0; i < spec.nics.size(); ++i) {
    if (auto s = CheckNic(options_.networks, absl::StrCat("spec.nics[", i, "]"), spec.nics[i]); !s.ok()) return s;
  }
  if (auto s = ResolveHostNetworks("spec.nics", spec.nics); !s.ok()) return s;
  // Held until the create is over: by then the domain is listed (or undone), and a concurrent
  // admission counts this hold meanwhile.
  ComputeAdmission::Hold hold;
  auto op = BeginCreate(spec, start, volumes, &hold);
  if (!op.ok()) return op.status();
  bool settled = true;
  auto r = CreateJournalled(*op, std::move(spec), start, volumes, &settled);
  if (settled) {
    EndOp(*op, r.ok() ? v1::OPERATION_STATE_SUCCEEDED : v1::OPERATION_STATE_FAILED, std::string(r.status().message()));
  } else {
    // The hypervisor went away mid-create and the undo could not be done: the operation stays
    // in the journal, and Recover (at start and with every reconciliation) finishes the undo.
    Log()->error("create of {} failed and could not be undone now; left to recovery: {}", request.name,
                 r.status().message());
  }
  std::lock_guard lock(define_mu_);
  creating_names_.erase(request.name);
  creating_ops_.erase(*op);
  return r;
}

absl::StatusOr<uint64_t> DomainService::BeginCreate(hv::DomainSpec& spec, bool start,
                                                    const std::vector<DiskVolume>& volumes,
                                                    ComputeAdmission::Hold* hold) {
  std::lock_guard lock(define_mu_);
  const auto exists = [&] {
    return absl::AlreadyExistsError(absl::StrCat("spec.name: domain '", spec.name, "' already exists"));
  };
  if (creating_names_.count(spec.name) != 0) return exists();  // another create of it is under way
  if (!volumes.empty()) {
    // Volumes come first, so a name that is taken must be refused before any is created.
    if (auto existing = hv_.GetDomain(spec.name); existing.ok()) {
      return exists();
    } else if (!absl::IsNotFound(existing.status())) {
      return existing.status();
    }
    // After the name: a retried create hears AlreadyExists whatever its images became since.
    if (auto s = CheckImages(volumes); !s.ok()) return s;
  }
  if (admission_ != nullptr) {
    auto h = admission_->AdmitCreate(spec.name, spec.vcpus, spec.memory_mib, start);
    if (!h.ok()) {
      // A retried create of a domain that fills the host hears AlreadyExists, which is what
      // CloudStack's and Nova's retries look for, not a capacity refusal.
      if (hv_.GetDomain(spec.name).ok()) return exists();
      return h.status();
    }
    *hold = std::move(*h);
  }
  if (spec.uuid.empty()) spec.uuid = NewUuid();
  internal::JournalBegin begin;
  begin.set_type(v1::OPERATION_KIND_CREATE_DOMAIN);
  begin.set_domain(spec.name);
  begin.set_uuid(spec.uuid);
  begin.set_start(start);
  auto op = journal_->Begin(std::move(begin));
  if (!op.ok()) return op.status();  // nothing done yet
  creating_names_.insert(spec.name);
  creating_ops_.insert(*op);
  return op;
}

absl::Status DomainService::ClaimVolumes(uint64_t op, hv::DomainSpec& spec, const std::vector<DiskVolume>& volumes,
                                         std::vector<DiskVolume>* claimed) {
  for (const DiskVolume& v : volumes) {
    auto step = journal_->Step(op, StepOf("claim-volume", JournalVolumeOf(v.claim.pool, v.claim.name, v.claim.Creates())));
    if (!step.ok()) {
      ReleaseClaims(*claimed, spec.name);
      return step;
    }
    auto volume = ClaimOne(v, spec.name);
    if (!volume.ok()) {
      ReleaseClaims(*claimed, spec.name);
      absl::Status s(volume.status().code(),
                     absl::StrCat("spec.disks[", v.disk, "].volume: ", volume.status().message()));
      // Keeps what the payloads say (a capacity refusal's kind: 507 on REST).
      volume.status().ForEachPayload([&](absl::string_view url, const absl::Cord& p) { s.SetPayload(url, p); });
      return s;
    }
    HVAGENT_FAILPOINT("create.after_claim");
    spec.disks[v.disk].source_path = volume->path;
    claimed->push_back(v);
  }
  return absl::OkStatus();
}

absl::StatusOr<hv::DomainInfo> DomainService::CreateJournalled(uint64_t op, hv::DomainSpec spec, bool start,
                                                               const std::vector<DiskVolume>& volumes, bool* settled) {
  // Without the lock: copying a disk from an image may take minutes, and other creates and
  // deletes go on meanwhile (the name is reserved by BeginCreate).
  std::vector<DiskVolume> claimed;
  if (auto s = ClaimVolumes(op, spec, volumes, &claimed); !s.ok()) return s;
  std::lock_guard lock(define_mu_);
  // Networks come after the volumes and right before the define: what fails first undoes least.
  std::vector<std::string> made_networks;
  if (auto s = EnsureHostNetworks("spec.nics", spec.nics, &made_networks); !s.ok()) {
    ReleaseClaims(claimed, spec.name);
    return s;
  }
  absl::Status s = journal_->Step(op, StepOf("define"));
  if (s.ok()) s = hv_.DefineDomain(spec);
  if (absl::IsUnavailable(s)) {
    // The connection dropped during the call: the domain may or may not be defined now.
    *settled = false;
    return s;
  }
  if (!s.ok()) {
    ReleaseHostNetworks(made_networks);
    ReleaseClaims(claimed, spec.name);
    return s;
  }
  HVAGENT_FAILPOINT("create.after_define");
  Log()->info("defined domain {} ({} vCPU, {} MiB, {} pool volume(s))", spec.name, spec.vcpus, spec.memory_mib,
              claimed.size());
  if (start) {
    s = journal_->Step(op, StepOf("start"));
    if (s.ok()) s = hv_.StartDomain(spec.name);
    if (!s.ok()) {
      // Leave nothing behind: a create that cannot start is undone.
      if (auto u = hv_.UndefineDomain(spec.name); !u.ok()) {
        Log()->error("rollback of {} failed: {}", spec.name, u.message());
        *settled = false;
      } else {
        ReleaseHostNetworks(made_networks);
        ReleaseClaims(claimed, spec.name);
      }
      return s;
    }
    HVAGENT_FAILPOINT("create.after_start");
    Log()->info("started domain {}", spec.name);
  }
  return hv_.GetDomain(spec.name);
}

absl::Status DomainService::ResolveHostNetworks(const std::string& field_prefix,
                                                std::vector<hv::NicSpec>& nics) const {
  for (size_t i = 0; i < nics.size(); ++i) {
    hv::NicSpec& n = nics[i];
    if (!n.host_network.has_value()) continue;
    const std::string field = nics.size() == 1 && field_prefix == "nic" ? "nic" : absl::StrCat(field_prefix, "[", i, "]");
    if (options_.host_networks == nullptr) {
      return absl::PermissionDeniedError(absl::StrCat(
          field, n.host_network->kind == hv::HostNetwork::Kind::kVlan ? ".vlan" : ".vxlan",
          ": this agent makes no host networks"));
    }
    auto bridge = options_.host_networks->BridgeFor(field, *n.host_network);
    if (!bridge.ok()) return bridge.status();
    n.bridge = *bridge;
  }
  return absl::OkStatus();
}

absl::Status DomainService::EnsureHostNetworks(const std::string& field_prefix, const std::vector<hv::NicSpec>& nics,
                                               std::vector<std::string>* made) {
  for (size_t i = 0; i < nics.size(); ++i) {
    if (!nics[i].host_network.has_value()) continue;
    const std::string field = field_prefix == "nic" ? "nic" : absl::StrCat(field_prefix, "[", i, "]");
    auto m = options_.host_networks->Ensure(field, *nics[i].host_network);
    if (!m.ok()) {
      ReleaseHostNetworks(*made);
      made->clear();
      return m.status();
    }
    if (*m) made->push_back(nics[i].bridge);
  }
  return absl::OkStatus();
}

void DomainService::ReleaseHostNetworks(const std::vector<std::string>& bridges) {
  if (bridges.empty() || options_.host_networks == nullptr) return;
  // Every domain libvirt has counts, the agent's and foreign ones alike.
  std::set<std::string> in_use;
  auto domains = hv_.ListDomains();
  if (!domains.ok()) {
    Log()->error("host networks kept: domains cannot be listed: {}", domains.status().message());
    return;
  }
  for (const hv::DomainInfo& d : *domains) {
    auto nics = hv_.GetDomainNics(d.name);
    if (!nics.ok()) {
      if (absl::IsNotFound(nics.status())) continue;  // gone meanwhile
      Log()->error("host networks kept: NICs of {} cannot be read: {}", d.name, nics.status().message());
      return;
    }
    for (const hv::NicSpec& n : *nics) in_use.insert(n.bridge);
  }
  for (const std::string& b : std::set<std::string>(bridges.begin(), bridges.end())) {
    if (in_use.count(b) != 0) continue;
    if (auto s = options_.host_networks->RemoveIfOwned(b); !s.ok()) {
      Log()->error("host network {} could not be removed: {}", b, s.message());
    }
  }
}

absl::StatusOr<hv::DomainInfo> DomainService::Get(const std::string& name) { return hv_.GetDomain(name); }

absl::StatusOr<std::vector<hv::DomainInfo>> DomainService::List() { return hv_.ListDomains(); }

namespace {

// 52:54:00 (QEMU's prefix) has the locally-administered bit set and the multicast bit clear.
std::string RandomMac() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  uint64_t r;
  {
    std::lock_guard lock(mu);
    r = rng();
  }
  char buf[18];
  std::snprintf(buf, sizeof buf, "52:54:00:%02x:%02x:%02x", static_cast<unsigned>(r & 0xff),
                static_cast<unsigned>((r >> 8) & 0xff), static_cast<unsigned>((r >> 16) & 0xff));
  return buf;
}

}  // namespace

absl::StatusOr<hv::NicSpec> DomainService::AttachNic(const std::string& domain, hv::NicSpec nic) {
  if (auto s = hv::ValidateDomainName("domain", domain); !s.ok()) return s;
  if (auto s = hv::ValidateNicSpec("nic", nic); !s.ok()) return s;
  if (auto s = CheckNic(options_.networks, "nic", nic); !s.ok()) return s;
  std::vector<hv::NicSpec> one{nic};
  if (auto s = ResolveHostNetworks("nic", one); !s.ok()) return s;
  nic = one[0];
  // A host network is made and released under the lock creates and deletes take, so its users
  // are counted while none is being added or removed.
  std::unique_lock<std::mutex> lock(define_mu_, std::defer_lock);
  if (nic.host_network.has_value()) lock.lock();
  auto existing = hv_.GetDomainNics(domain);
  if (!existing.ok()) return existing.status();
  auto taken = [&](const std::string& mac) {
    return std::any_of(existing->begin(), existing->end(),
                       [&](const hv::NicSpec& n) { return absl::EqualsIgnoreCase(n.mac, mac); });
  };
  if (nic.mac.empty()) {
    // 2^24 addresses against at most kMaxNics in use: a few tries always find a free one.
    for (int i = 0; i < 64 && (nic.mac.empty() || taken(nic.mac)); ++i) nic.mac = RandomMac();
  } else if (taken(nic.mac)) {
    return absl::AlreadyExistsError(absl::StrCat("nic.mac: ", nic.mac, " is already used by domain '", domain, "'"));
  }
  if (const std::string tap = hv::TapName(nic); !tap.empty()) {
    if (std::any_of(existing->begin(), existing->end(), [&](const hv::NicSpec& n) { return hv::TapName(n) == tap; })) {
      return absl::AlreadyExistsError(
          absl::StrCat("nic.target_dev: '", tap, "' is already used by domain '", domain, "'"));
    }
  }
  if (existing->size() >= hv::kMaxNics) {
    return absl::FailedPreconditionError(
        absl::StrCat("domain '", domain, "' already has ", existing->size(), " NICs (at most ", hv::kMaxNics, ")"));
  }
  std::vector<std::string> made;
  if (auto s = EnsureHostNetworks("nic", one, &made); !s.ok()) return s;
  if (auto s = hv_.AttachNic(domain, nic); !s.ok()) {
    ReleaseHostNetworks(made);
    return s;
  }
  Log()->info("domain {}: NIC {} attached", domain, nic.mac);
  return nic;
}

absl::Status DomainService::DetachNic(const std::string& domain, const std::string& mac) {
  if (auto s = hv::ValidateDomainName("domain", domain); !s.ok()) return s;
  if (mac.empty()) return absl::InvalidArgumentError("mac: is required");
  if (auto s = hv::ValidateMac("mac", mac); !s.ok()) return s;
  // The NIC's bridge, when it is one the agent may have made: then the detach and the release
  // run under the lock creates and deletes take (a detach waits for the guest, so only then).
  std::vector<std::string> bridges;
  if (options_.host_networks != nullptr) {
    if (auto nics = hv_.GetDomainNics(domain); nics.ok()) {
      for (const hv::NicSpec& n : *nics) {
        if (absl::EqualsIgnoreCase(n.mac, mac) && options_.host_networks->LooksOwned(n.bridge)) {
          bridges.push_back(n.bridge);
        }
      }
    }
  }
  std::unique_lock<std::mutex> lock(define_mu_, std::defer_lock);
  if (!bridges.empty()) lock.lock();
  if (auto s = hv_.DetachNic(domain, mac); !s.ok()) return s;
  Log()->info("domain {}: NIC {} detached", domain, mac);
  ReleaseHostNetworks(bridges);
  return absl::OkStatus();
}

absl::StatusOr<hv::DomainInfo> DomainService::Apply(const std::string& name, Op op) {
  if (auto s = (hv_.*op)(name); !s.ok()) return s;
  return hv_.GetDomain(name);
}

absl::StatusOr<hv::DomainInfo> DomainService::Start(const std::string& name) {
  ComputeAdmission::Hold hold;
  if (admission_ != nullptr) {
    auto h = admission_->AdmitStart(name);
    if (!h.ok()) return h.status();
    hold = std::move(*h);
  }
  return Apply(name, &hv::Hypervisor::StartDomain);
}
absl::StatusOr<hv::DomainInfo> DomainService::Destroy(const std::string& name) {
  return Apply(name, &hv::Hypervisor::DestroyDomain);
}
absl::StatusOr<hv::DomainInfo> DomainService::Reboot(const std::string& name) {
  return Apply(name, &hv::Hypervisor::RebootDomain);
}
absl::StatusOr<hv::DomainInfo> DomainService::Suspend(const std::string& name) {
  return Apply(name, &hv::Hypervisor::SuspendDomain);
}
absl::StatusOr<hv::DomainInfo> DomainService::Resume(const std::string& name) {
  return Apply(name, &hv::Hypervisor::ResumeDomain);
}
absl::StatusOr<hv::DomainInfo> DomainService::ManagedSave(const std::string& name) {
  // libxl would accept the call and fail deep inside libxc with a message nobody can act on:
  // Xen 4.17 has no save/restore on Arm, so the caller is told so before anything is touched.
  if (auto host = hv_.GetHostInfo(); host.ok() && absl::AsciiStrToLower(host->hypervisor_type) == "xen" &&
                                     (absl::StartsWith(host->arch, "aarch64") || absl::StartsWith(host->arch, "arm"))) {
    return absl::UnimplementedError(
        absl::StrCat("managed save of domain '", name, "': Xen 4.17 on Arm has no save/restore"));
  }
  return Apply(name, &hv::Hypervisor::ManagedSaveDomain);
}

absl::StatusOr<hv::DomainInfo> DomainService::Update(const std::string& name, const hv::ResourceChange& change) {
  if (auto s = hv::ValidateDomainName("name", name); !s.ok()) return s;
  if (!change.vcpus && !change.memory_mib) {
    return absl::InvalidArgumentError("vcpus, memory_mib: give at least one (an unset field stays as it is)");
  }
  if (change.vcpus && (*change.vcpus < 1 || *change.vcpus > hv::kMaxVcpus)) {
    return absl::InvalidArgumentError(
        absl::StrCat("vcpus: must be between 1 and ", hv::kMaxVcpus, ", got ", *change.vcpus));
  }
  if (change.memory_mib && (*change.memory_mib < hv::kMinMemoryMib || *change.memory_mib > hv::kMaxMemoryMib)) {
    return absl::InvalidArgumentError(absl::StrCat("memory_mib: must be between ", hv::kMinMemoryMib, " and ",
                                                   hv::kMaxMemoryMib, ", got ", *change.memory_mib));
  }
  // One resize (or create/delete) at a time: the sizes read below are still true when applied.
  std::lock_guard lock(define_mu_);
  auto now = hv_.GetDomainResources(name);
  if (!now.ok()) return now.status();
  ComputeAdmission::Hold hold;
  if (admission_ != nullptr) {
    // Only growth is admitted: shrinking always fits. Capacity counts a domain's vCPUs and its
    // maximum memory (what it may balloon back to), so memory is compared with the maximum.
    const uint32_t more_vcpus = change.vcpus && *change.vcpus > now->vcpus ? *change.vcpus - now->vcpus : 0;
    const uint64_t more_memory =
        change.memory_mib && *change.memory_mib > now->max_memory_mib ? *change.memory_mib - now->max_memory_mib : 0;
    auto h = admission_->AdmitGrowth(name, more_vcpus, more_memory, now->active);
    if (!h.ok()) return h.status();
    hold = std::move(*h);
  }
  if (auto s = hv_.SetDomainResources(name, change); !s.ok()) return s;
  Log()->info("resized domain {} ({}): vcpus {} -> {}, memory {} -> {} MiB", name, now->active ? "live" : "offline",
              now->vcpus, change.vcpus.value_or(now->vcpus), now->memory_mib,
              change.memory_mib.value_or(now->memory_mib));
  return hv_.GetDomain(name);
}

absl::StatusOr<ShutdownResult> DomainService::Shutdown(const std::string& name, std::chrono::seconds timeout) {
  if (timeout.count() == 0) timeout = options_.default_shutdown_timeout;
  if (timeout > options_.max_shutdown_timeout) {
    return absl::InvalidArgumentError(
        absl::StrCat("timeout_seconds: at most ", options_.max_shutdown_timeout.count(), ", got ", timeout.count()));
  }
  if (auto s = hv_.RequestShutdown(name); !s.ok()) return s;
  const auto deadline = clock_.Now() + timeout;
  while (true) {
    auto info = hv_.GetDomain(name);
    if (!info.ok()) return info.status();
    if (!hv::IsActive(info->state)) return ShutdownResult{*info, false};
    if (clock_.Now() >= deadline) break;
    clock_.SleepFor(options_.shutdown_poll_interval);
  }
  Log()->warn("domain {} did not shut down within {} s; forcing it off", name, timeout.count());
  if (auto s = hv_.DestroyDomain(name); !s.ok()) {
    // It may have stopped by itself between the last poll and now.
    auto info = hv_.GetDomain(name);
    if (info.ok() && !hv::IsActive(info->state)) return ShutdownResult{*info, false};
    return s;
  }
  auto info = hv_.GetDomain(name);
  if (!info.ok()) return info.status();
  return ShutdownResult{*info, true};
}

absl::Status DomainService::Delete(const std::string& name, bool force, bool delete_volumes) {
  std::lock_guard lock(define_mu_);
  auto info = hv_.GetDomain(name);
  if (!info.ok()) return info.status();
  // Listed before anything changes: a pool that cannot be read stops the delete here.
  std::vector<storage::VolumeInfo> volumes;
  if (storage_ != nullptr) {
    auto v = storage_->VolumesOf(name);
    if (!v.ok()) {
      return absl::Status(v.status().code(), absl::StrCat("domain '", name, "' was not deleted: its volumes could not "
                                                          "be listed: ", v.status().message()));
    }
    volumes = std::move(*v);
  }
  if (hv::IsActive(info->state) && !force) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", name, "' is running; stop it first or set force"));
  }
  internal::JournalBegin begin;
  begin.set_type(v1::OPERATION_KIND_DELETE_DOMAIN);
  begin.set_domain(name);
  begin.set_uuid(info->uuid);
  begin.set_delete_volumes(delete_volumes);
  // Ownership as the volumes' records show it now: recovery deletes only what was owned.
  const auto rescue = rescues_->Find(name);
  for (const auto& v : volumes) {
    *begin.add_volumes() = JournalVolumeOf(v.pool, v.name, false, v.ownership == storage::Ownership::kOwned);
  }
  if (rescue.has_value()) *begin.mutable_rescue() = *rescue;
  auto op = journal_->Begin(std::move(begin));
  if (!op.ok()) return op.status();
  absl::Status s = DeleteJournalled(*op, *info, force, delete_volumes, volumes);
  if (s.ok() && rescue.has_value()) s = ForgetRescue(*rescue);
  EndOp(*op, s.ok() ? v1::OPERATION_STATE_SUCCEEDED : v1::OPERATION_STATE_FAILED, std::string(s.message()));
  return s;
}

absl::Status DomainService::DeleteJournalled(uint64_t op, const hv::DomainInfo& info, bool force,
                                             bool delete_volumes, const std::vector<storage::VolumeInfo>& volumes) {
  const std::string& name = info.name;
  if (hv::IsActive(info.state) && force) {
    if (auto s = journal_->Step(op, StepOf("destroy")); !s.ok()) return s;
    if (auto s = hv_.DestroyDomain(name); !s.ok()) return s;
    HVAGENT_FAILPOINT("delete.after_destroy");
  }
  // The bridges it used, read before it goes: the ones the agent made may go with it.
  std::vector<std::string> bridges;
  if (options_.host_networks != nullptr) {
    if (auto nics = hv_.GetDomainNics(name); nics.ok()) {
      for (const hv::NicSpec& n : *nics) {
        if (!n.bridge.empty() && options_.host_networks->LooksOwned(n.bridge)) bridges.push_back(n.bridge);
      }
    }
  }
  if (auto s = journal_->Step(op, StepOf("undefine")); !s.ok()) return s;
  if (auto s = hv_.UndefineDomain(name); !s.ok()) return s;
  ReleaseHostNetworks(bridges);
  HVAGENT_FAILPOINT("delete.after_undefine");
  Log()->info("deleted domain {}", name);
  const auto rescue = rescues_->Find(name);
  for (const storage::VolumeInfo& v : volumes) {
    // The rescue's disks are always deleted with the domain (ForgetRescue): they are nobody's data.
    if (rescue.has_value() && ((rescue->volume().pool() == v.pool && rescue->volume().name() == v.name) ||
                               (rescue->config_volume().pool() == v.pool && rescue->config_volume().name() == v.name))) {
      continue;
    }
    const bool owned = v.ownership == storage::Ownership::kOwned;
    if (auto s = journal_->Step(op, StepOf("release-volume", JournalVolumeOf(v.pool, v.name, false, owned)));
        !s.ok()) {
      Log()->error("{}", s.message());  // the domain is gone; recovery finishes the volumes
      continue;
    }
    // The domain is gone: a volume that cannot be released stays recorded as attached to it,
    // where the API shows it (and reconciliation finds it). Only what the domain owned is
    // deleted; a borrowed volume (a data volume attached to it) is released whatever the request.
    if (auto s = storage_->ReleaseVolume(v.pool, v.name, name, delete_volumes && owned); !s.ok()) {
      Log()->error("domain {} deleted, but volume {}/{} could not be {}: {}", name, v.pool, v.name,
                   delete_volumes && owned ? "deleted" : "released", s.message());
    }
    HVAGENT_FAILPOINT("delete.after_release");
  }
  return absl::OkStatus();
}

}  // namespace hvagent::service
