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

namespace hvagent::service {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("service");
  return logger;
}

// Stands in for a volume's device path while the spec is validated, before the volume exists.
constexpr char kPendingVolumePath[] = "/dev/hvagent-pending-volume";

bool IsActive(hv::DomainState s) {
  return s == hv::DomainState::kRunning || s == hv::DomainState::kBlocked || s == hv::DomainState::kPaused ||
         s == hv::DomainState::kShuttingDown || s == hv::DomainState::kPmSuspended;
}

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

// Whether the operation journalled a release of this volume (so it was ours to release).
bool Released(const Journal::Operation& op, const internal::JournalVolume& v) {
  return std::any_of(op.steps.begin(), op.steps.end(), [&](const internal::JournalStep& s) {
    return s.name() == "release-volume" && s.volume().pool() == v.pool() && s.volume().name() == v.name();
  });
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
    : hv_(hypervisor), clock_(clock), options_(options), storage_(storage), journal_(journal) {
  if (journal_ == nullptr) {
    own_journal_ = std::move(*Journal::Open(""));  // in memory: cannot fail
    journal_ = own_journal_.get();
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

void DomainService::ReleaseClaims(const std::vector<DiskVolume>& claimed, const std::string& domain) {
  for (auto it = claimed.rbegin(); it != claimed.rend(); ++it) {
    const VolumeClaim& c = it->claim;
    // A volume this create made is owned by the domain: deleted again. One it was given is kept.
    if (auto s = storage_->ReleaseVolume(c.pool, c.name, domain, /*delete_if_owned=*/c.create_size_bytes > 0);
        !s.ok()) {
      Log()->error("rollback: releasing volume {}/{} failed: {}", c.pool, c.name, s.message());
    }
  }
}

absl::StatusOr<hv::DomainInfo> DomainService::Create(const hv::DomainSpec& request, bool start,
                                                     const std::vector<DiskVolume>& volumes) {
  hv::DomainSpec spec = request;
  if (auto s = CheckVolumes(spec, volumes); !s.ok()) return s;
  if (auto s = hv::ValidateDomainSpec(spec); !s.ok()) return s;
  if (auto s = CheckHostPaths(options_.host_paths, request, VolumeDisks(volumes)); !s.ok()) return s;
  std::lock_guard lock(define_mu_);
  if (!volumes.empty()) {
    // Volumes come first, so a name that is taken must be refused before any is created.
    if (auto existing = hv_.GetDomain(spec.name); existing.ok()) {
      return absl::AlreadyExistsError(absl::StrCat("spec.name: domain '", spec.name, "' already exists"));
    } else if (!absl::IsNotFound(existing.status())) {
      return existing.status();
    }
  }
  if (spec.uuid.empty()) spec.uuid = NewUuid();
  internal::JournalBegin begin;
  begin.set_type(v1::OPERATION_KIND_CREATE_DOMAIN);
  begin.set_domain(spec.name);
  begin.set_uuid(spec.uuid);
  begin.set_start(start);
  auto op = journal_->Begin(std::move(begin));
  if (!op.ok()) return op.status();  // nothing done yet
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
  return r;
}

absl::StatusOr<hv::DomainInfo> DomainService::CreateJournalled(uint64_t op, hv::DomainSpec spec, bool start,
                                                               const std::vector<DiskVolume>& volumes, bool* settled) {
  std::vector<DiskVolume> claimed;
  for (const DiskVolume& v : volumes) {
    auto step = journal_->Step(op, StepOf("claim-volume", JournalVolumeOf(v.claim.pool, v.claim.name,
                                                                          v.claim.create_size_bytes > 0)));
    if (!step.ok()) {
      ReleaseClaims(claimed, spec.name);
      return step;
    }
    auto volume = storage_->ClaimVolume(v.claim, spec.name);
    if (!volume.ok()) {
      ReleaseClaims(claimed, spec.name);
      return absl::Status(volume.status().code(),
                          absl::StrCat("spec.disks[", v.disk, "].volume: ", volume.status().message()));
    }
    HVAGENT_FAILPOINT("create.after_claim");
    spec.disks[v.disk].source_path = volume->path;
    claimed.push_back(v);
  }
  absl::Status s = journal_->Step(op, StepOf("define"));
  if (s.ok()) s = hv_.DefineDomain(spec);
  if (absl::IsUnavailable(s)) {
    // The connection dropped during the call: the domain may or may not be defined now.
    *settled = false;
    return s;
  }
  if (!s.ok()) {
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
        ReleaseClaims(claimed, spec.name);
      }
      return s;
    }
    HVAGENT_FAILPOINT("create.after_start");
    Log()->info("started domain {}", spec.name);
  }
  return hv_.GetDomain(spec.name);
}

absl::StatusOr<hv::DomainInfo> DomainService::Get(const std::string& name) { return hv_.GetDomain(name); }

absl::StatusOr<std::vector<hv::DomainInfo>> DomainService::List() { return hv_.ListDomains(); }

absl::StatusOr<hv::DomainInfo> DomainService::Apply(const std::string& name, Op op) {
  if (auto s = (hv_.*op)(name); !s.ok()) return s;
  return hv_.GetDomain(name);
}

absl::StatusOr<hv::DomainInfo> DomainService::Start(const std::string& name) {
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
    if (!IsActive(info->state)) return ShutdownResult{*info, false};
    if (clock_.Now() >= deadline) break;
    clock_.SleepFor(options_.shutdown_poll_interval);
  }
  Log()->warn("domain {} did not shut down within {} s; forcing it off", name, timeout.count());
  if (auto s = hv_.DestroyDomain(name); !s.ok()) {
    // It may have stopped by itself between the last poll and now.
    auto info = hv_.GetDomain(name);
    if (info.ok() && !IsActive(info->state)) return ShutdownResult{*info, false};
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
  if (IsActive(info->state) && !force) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", name, "' is running; stop it first or set force"));
  }
  internal::JournalBegin begin;
  begin.set_type(v1::OPERATION_KIND_DELETE_DOMAIN);
  begin.set_domain(name);
  begin.set_uuid(info->uuid);
  begin.set_delete_volumes(delete_volumes);
  // Ownership as the volumes' records show it now: recovery deletes only what was owned.
  for (const auto& v : volumes) {
    *begin.add_volumes() = JournalVolumeOf(v.pool, v.name, false, v.ownership == storage::Ownership::kOwned);
  }
  auto op = journal_->Begin(std::move(begin));
  if (!op.ok()) return op.status();
  absl::Status s = DeleteJournalled(*op, *info, force, delete_volumes, volumes);
  EndOp(*op, s.ok() ? v1::OPERATION_STATE_SUCCEEDED : v1::OPERATION_STATE_FAILED, std::string(s.message()));
  return s;
}

absl::Status DomainService::DeleteJournalled(uint64_t op, const hv::DomainInfo& info, bool force,
                                             bool delete_volumes, const std::vector<storage::VolumeInfo>& volumes) {
  const std::string& name = info.name;
  if (IsActive(info.state) && force) {
    if (auto s = journal_->Step(op, StepOf("destroy")); !s.ok()) return s;
    if (auto s = hv_.DestroyDomain(name); !s.ok()) return s;
    HVAGENT_FAILPOINT("delete.after_destroy");
  }
  if (auto s = journal_->Step(op, StepOf("undefine")); !s.ok()) return s;
  if (auto s = hv_.UndefineDomain(name); !s.ok()) return s;
  HVAGENT_FAILPOINT("delete.after_undefine");
  Log()->info("deleted domain {}", name);
  for (const storage::VolumeInfo& v : volumes) {
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

absl::StatusOr<std::optional<hv::DomainInfo>> DomainService::Ours(const std::string& name, const std::string& uuid) {
  auto d = hv_.GetDomain(name);
  if (absl::IsNotFound(d.status())) return std::nullopt;
  if (!d.ok()) return d.status();
  if (absl::AsciiStrToLower(d->uuid) != absl::AsciiStrToLower(uuid)) {
    Log()->warn("recovery: domain {} has uuid {}, not the journalled {}; leaving it alone", name, d->uuid, uuid);
    return std::nullopt;
  }
  return *d;
}

absl::StatusOr<std::vector<Orphan>> DomainService::Reconcile(bool release_orphans) {
  if (storage_ == nullptr) return std::vector<Orphan>{};
  std::lock_guard lock(define_mu_);
  auto domains = hv_.ListDomains();
  if (!domains.ok()) return domains.status();  // never judge volumes without the domain list
  std::set<std::string> names;
  for (const auto& d : *domains) names.insert(d.name);
  auto orphans = storage_->FindOrphans(names);
  if (!orphans.ok()) return orphans.status();
  std::vector<Orphan> still;
  for (const Orphan& o : *orphans) {
    if (release_orphans) {
      if (auto s = storage_->ReleaseVolume(o.pool, o.volume, o.domain, /*delete_if_owned=*/false); s.ok()) {
        Log()->warn("reconcile: volume {}/{} was recorded as attached to domain {}, which does not exist; released",
                    o.pool, o.volume, o.domain);
        continue;
      } else {
        Log()->error("reconcile: releasing orphaned volume {}/{}: {}", o.pool, o.volume, s.message());
      }
    } else {
      Log()->warn("reconcile: volume {}/{} is recorded as attached to domain {}, which does not exist (orphaned)",
                  o.pool, o.volume, o.domain);
    }
    still.push_back(o);
  }
  storage_->SetOrphans(still);
  return *orphans;
}

namespace {
// A recovery that could not be done now: it stays open in the journal and is tried again.
DomainService::Recovery Failed(DomainService::Recovery r, std::string why) {
  r.state = v1::OPERATION_STATE_FAILED;
  r.outcome = absl::StrCat("failed: ", why);
  return r;
}
}  // namespace

std::vector<DomainService::Recovery> DomainService::Recover() {
  std::lock_guard lock(define_mu_);
  std::vector<Recovery> out;
  for (const Journal::Operation& op : journal_->Unfinished()) {
    // Image imports are ImageService's to recover; they are no domain operation.
    if (op.begin.type() == v1::OPERATION_KIND_IMPORT_IMAGE) continue;
    Recovery r = op.begin.type() == v1::OPERATION_KIND_DELETE_DOMAIN ? RecoverDelete(op) : RecoverCreate(op);
    Log()->warn("recovery: interrupted {} of domain {} (operation {}): {}", r.kind, r.domain, op.id, r.outcome);
    // A failed recovery stays open in the journal: the next start tries again.
    if (r.state != v1::OPERATION_STATE_FAILED) EndOp(op.id, r.state, absl::StrCat("recovery: ", r.outcome));
    out.push_back(std::move(r));
  }
  return out;
}

DomainService::Recovery DomainService::RecoverCreate(const Journal::Operation& op) {
  const internal::JournalBegin& b = op.begin;
  Recovery r{b.domain(), "create"};
  auto dom = Ours(b.domain(), b.uuid());
  if (!dom.ok()) {
    return Failed(std::move(r), std::string(dom.status().message()));
  }
  if (dom->has_value() && (!b.start() || IsActive((*dom)->state))) {
    r.state = v1::OPERATION_STATE_RECOVERED;
    r.outcome = "completed";  // every step ran; only the journal's end was missing
    return r;
  }
  if (dom->has_value()) {
    if (IsActive((*dom)->state)) (void)hv_.DestroyDomain(b.domain());
    if (auto s = hv_.UndefineDomain(b.domain()); !s.ok()) {
      return Failed(std::move(r), absl::StrCat("undefine: ", s.message()));
    }
  }
  // Another domain by this name (another uuid) owns whatever is attached to the name.
  const bool name_is_another_domains = !dom->has_value() && hv_.GetDomain(b.domain()).ok();
  for (auto it = op.steps.rbegin(); it != op.steps.rend(); ++it) {
    if (it->name() != "claim-volume") continue;
    const internal::JournalVolume& v = it->volume();
    if (storage_ == nullptr) {
      return Failed(std::move(r), absl::StrCat("volume ", v.pool(), "/", v.name(), " but no storage pools are configured"));
    }
    auto st = storage_->GetVolume(v.pool(), v.name());
    if (absl::IsNotFound(st.status())) continue;  // never created
    if (!st.ok()) {
      return Failed(std::move(r), absl::StrCat("volume ", v.pool(), "/", v.name(), ": ", st.status().message()));
    }
    const std::string& owner = st->volume.attached_to;
    // Only what this operation did is undone: its own claim (a volume it created and so owns is
    // deleted, one it was given released), or a volume it created before recording the claim.
    const bool claimed_by_us = owner == b.domain() && !name_is_another_domains;
    absl::Status s;
    if (claimed_by_us) {
      s = storage_->ReleaseVolume(v.pool(), v.name(), b.domain(), /*delete_if_owned=*/v.created());
    } else if (owner.empty() && v.created() && st->state != VolumeState::kDeleting) {
      s = storage_->DeleteVolume(v.pool(), v.name()).status();
    } else {
      continue;
    }
    if (!s.ok()) {
      return Failed(std::move(r), absl::StrCat("release ", v.pool(), "/", v.name(), ": ", s.message()));
    }
  }
  r.state = v1::OPERATION_STATE_ROLLED_BACK;
  r.outcome = "rolled back";
  return r;
}

DomainService::Recovery DomainService::RecoverDelete(const Journal::Operation& op) {
  const internal::JournalBegin& b = op.begin;
  Recovery r{b.domain(), "delete"};
  auto dom = Ours(b.domain(), b.uuid());
  if (!dom.ok()) {
    return Failed(std::move(r), std::string(dom.status().message()));
  }
  if (dom->has_value()) {
    if (IsActive((*dom)->state)) {
      if (auto s = hv_.DestroyDomain(b.domain()); !s.ok()) {
        return Failed(std::move(r), absl::StrCat("destroy: ", s.message()));
      }
    }
    if (auto s = hv_.UndefineDomain(b.domain()); !s.ok()) {
      return Failed(std::move(r), absl::StrCat("undefine: ", s.message()));
    }
  }
  // Another domain by this name (another uuid) has whatever is attached to the name now.
  const bool name_is_another_domains = !dom->has_value() && hv_.GetDomain(b.domain()).ok();
  for (const internal::JournalVolume& v : b.volumes()) {
    if (storage_ == nullptr) break;
    auto st = storage_->GetVolume(v.pool(), v.name());
    if (absl::IsNotFound(st.status())) continue;  // already deleted
    if (!st.ok()) {
      return Failed(std::move(r), absl::StrCat("volume ", v.pool(), "/", v.name(), ": ", st.status().message()));
    }
    // Deleted only when the journal recorded it as owned when the delete began (a journal from an
    // agent that predates ownership never says so: its volumes are kept) and, while still
    // attached, its own record agrees (ReleaseVolume checks).
    const bool delete_it = b.delete_volumes() && v.owned();
    const std::string& owner = st->volume.attached_to;
    absl::Status s;
    if (owner == b.domain() && !name_is_another_domains) {
      s = storage_->ReleaseVolume(v.pool(), v.name(), b.domain(), delete_it);
    } else if (owner.empty() && delete_it && Released(op, v) && st->state != VolumeState::kDeleting) {
      s = storage_->DeleteVolume(v.pool(), v.name()).status();  // released, then the crash came
    } else {
      continue;
    }
    if (!s.ok()) {
      return Failed(std::move(r), absl::StrCat("release ", v.pool(), "/", v.name(), ": ", s.message()));
    }
  }
  r.state = v1::OPERATION_STATE_RECOVERED;
  r.outcome = "completed";
  return r;
}

}  // namespace hvagent::service
