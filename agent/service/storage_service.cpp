#include "agent/service/storage_service.h"

#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/service/admission.h"
#include "common/log.h"
#include "hypervisor/domain_spec_validator.h"

namespace hvagent::service {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("storage");
  return logger;
}

// The first free target with the prefix the domain already uses (xvd on Xen, vd on QEMU).
absl::StatusOr<std::string> FreeTarget(const std::vector<hv::DiskSpec>& disks) {
  std::string prefix = "vd";
  for (const auto& d : disks) {
    if (absl::StartsWith(d.target, "xvd")) prefix = "xvd";
  }
  std::set<std::string> used;
  for (const auto& d : disks) used.insert(d.target);
  for (char c = 'a'; c <= 'z'; ++c) {
    std::string t = prefix + c;
    if (!used.contains(t)) return t;
  }
  return absl::ResourceExhaustedError("target: the domain has no free disk target left");
}

}  // namespace

StorageService::StorageService(hv::Hypervisor& hypervisor,
                               std::vector<std::unique_ptr<storage::StorageBackend>> backends,
                               uint64_t pool_free_floor_bytes)
    : hv_(hypervisor), pool_free_floor_bytes_(pool_free_floor_bytes) {
  for (auto& b : backends) {
    auto pool = std::make_unique<Pool>();
    std::string name = b->config().name;
    pool->backend = std::move(b);
    pools_[name] = std::move(pool);
  }
}

StorageService::~StorageService() { WaitForDeletes(); }

void StorageService::WaitForDeletes() {
  std::vector<Worker> workers;
  {
    std::lock_guard lock(deleting_mu_);
    workers.swap(workers_);
  }
  for (auto& w : workers) w.thread.join();
}

absl::StatusOr<StorageService::Pool*> StorageService::Find(const std::string& pool) {
  auto it = pools_.find(pool);
  if (it == pools_.end()) return absl::NotFoundError(absl::StrCat("pool: '", pool, "' is not a configured pool"));
  return it->second.get();
}

absl::Status StorageService::RefuseDeleting(const std::string& pool, const std::string& name) const {
  std::lock_guard lock(deleting_mu_);
  if (auto it = filling_.find(Key(pool, name)); it != filling_.end()) {
    return absl::FailedPreconditionError(absl::StrCat("volume '", name, "' is being written from ", it->second.source));
  }
  if (!deleting_.contains(Key(pool, name))) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("volume '", name, "' is being deleted"));
}

absl::StatusOr<StorageService::Held> StorageService::Hold(const std::string& pool_name, const std::string& name,
                                                          Fence fence) {
  auto pool = Find(pool_name);
  if (!pool.ok()) return pool.status();
  Held held{*pool, std::unique_lock((*pool)->mu), {}};
  if (fence == Fence::kRefuseDeleting) {
    if (auto s = RefuseDeleting(pool_name, name); !s.ok()) return s;
  }
  auto v = held.pool->backend->GetVolume(name);
  if (!v.ok()) return v.status();
  held.volume = std::move(*v);
  return held;
}

absl::Status StorageService::DeleteImageSlot(const std::string& pool_name, const std::string& name) {
  auto pool = Find(pool_name);
  if (!pool.ok()) return pool.status();
  Pool* p = *pool;
  absl::StatusOr<storage::DeletePlan> plan;
  {
    std::lock_guard lock(p->mu);
    plan = p->backend->BeginDeleteImageSlot(name);
  }
  if (!plan.ok()) return plan.status();
  if (auto s = p->backend->WipeForDelete(*plan, nullptr); !s.ok()) return s;
  std::lock_guard lock(p->mu);
  return p->backend->FinishDelete(*plan);
}

std::vector<std::string> StorageService::PoolNames() const {
  std::vector<std::string> names;
  for (const auto& [name, pool] : pools_) names.push_back(name);
  return names;
}

VolumeStatus StorageService::StatusOf(const storage::VolumeInfo& v) const {
  VolumeStatus s{v, v.attached_to.empty() ? VolumeState::kAvailable : VolumeState::kAttached, {}};
  if (!v.attached_to.empty()) {
    std::lock_guard lock(orphans_mu_);
    if (orphans_.contains(Orphan{v.pool, v.name, v.attached_to})) s.state = VolumeState::kOrphaned;
  }
  std::lock_guard lock(deleting_mu_);
  if (auto it = deleting_.find(Key(v.pool, v.name)); it != deleting_.end()) {
    s.state = VolumeState::kDeleting;
    s.wipe = it->second.progress;
  }
  return s;
}

absl::StatusOr<std::vector<storage::PoolInfo>> StorageService::ListPools() {
  std::vector<storage::PoolInfo> out;
  for (auto& [name, pool] : pools_) {
    std::lock_guard lock(pool->mu);
    auto info = pool->backend->GetPool();
    if (!info.ok()) return info.status();
    out.push_back(*info);
  }
  return out;
}

absl::StatusOr<std::vector<Orphan>> StorageService::FindOrphans(const std::set<std::string>& domains) {
  std::vector<Orphan> out;
  for (auto& [name, pool] : pools_) {
    std::lock_guard lock(pool->mu);
    auto volumes = pool->backend->ListVolumes();
    if (!volumes.ok()) return volumes.status();
    for (const auto& v : *volumes) {
      if (!v.attached_to.empty() && !domains.contains(v.attached_to)) out.push_back({name, v.name, v.attached_to});
    }
  }
  return out;
}

void StorageService::SetOrphans(std::vector<Orphan> orphans) {
  std::lock_guard lock(orphans_mu_);
  orphans_ = std::set<Orphan>(orphans.begin(), orphans.end());
}

std::vector<std::pair<std::string, absl::StatusOr<storage::PoolInfo>>> StorageService::ListPoolsEach() {
  std::vector<std::pair<std::string, absl::StatusOr<storage::PoolInfo>>> out;
  auto count = [this](const std::string& pool) {
    std::lock_guard lock(orphans_mu_);
    uint32_t n = 0;
    for (const Orphan& o : orphans_) n += o.pool == pool;
    return n;
  };
  for (auto& [name, pool] : pools_) {
    std::unique_lock lock(pool->mu, std::try_to_lock);
    if (lock.owns_lock()) {
      auto info = pool->backend->GetPool();
      if (info.ok()) {
        std::lock_guard l(pool->last_mu);
        pool->last = *info;
      }
      if (info.ok()) info->orphaned_volume_count = count(name);
      out.emplace_back(name, std::move(info));
      continue;
    }
    std::lock_guard l(pool->last_mu);
    if (pool->last) {
      out.emplace_back(name, *pool->last);
      out.back().second->orphaned_volume_count = count(name);
    } else {
      out.emplace_back(name, absl::UnavailableError(absl::StrCat("pool '", name, "' is busy (a storage tool is still running)")));
    }
  }
  return out;
}

absl::StatusOr<storage::PoolInfo> StorageService::GetPool(const std::string& name) {
  auto pool = Find(name);
  if (!pool.ok()) return pool.status();
  std::lock_guard lock((*pool)->mu);
  auto info = (*pool)->backend->GetPool();
  if (info.ok()) {
    std::lock_guard l(orphans_mu_);
    for (const Orphan& o : orphans_) info->orphaned_volume_count += o.pool == name;
  }
  return info;
}

absl::StatusOr<std::vector<VolumeStatus>> StorageService::ListVolumes(const std::string& name) {
  auto pool = Find(name);
  if (!pool.ok()) return pool.status();
  std::vector<storage::VolumeInfo> volumes;
  {
    std::lock_guard lock((*pool)->mu);
    auto listed = (*pool)->backend->ListVolumes();
    if (!listed.ok()) return listed.status();
    volumes = std::move(*listed);
  }
  std::vector<VolumeStatus> out;
  for (const auto& v : volumes) out.push_back(StatusOf(v));
  return out;
}

absl::StatusOr<VolumeStatus> StorageService::GetVolume(const std::string& pool_name, const std::string& name) {
  {
    std::lock_guard lock(deleting_mu_);
    if (auto it = deleting_.find(Key(pool_name, name)); it != deleting_.end()) {
      return VolumeStatus{it->second.volume, VolumeState::kDeleting, it->second.progress};
    }
  }
  auto pool = Find(pool_name);
  if (!pool.ok()) return pool.status();
  std::lock_guard lock((*pool)->mu);
  auto v = (*pool)->backend->GetVolume(name);
  if (!v.ok()) return v.status();
  return StatusOf(*v);
}

absl::Status StorageService::AdmitSpace(Pool& pool, const std::string& pool_name, uint64_t asked_bytes,
                                        absl::string_view field) {
  auto info = pool.backend->GetPool();
  if (!info.ok()) return info.status();
  const bool thin = !pool.backend->config().thin_pool.empty();
  const uint64_t asked = thin ? 0 : asked_bytes;
  // More than the pool has free, or a size the backend cannot hold at all: the backend's own
  // answer (full: RESOURCE_EXHAUSTED, 507; impossible: INVALID_ARGUMENT, 400) says it better.
  // This check adds what the backend does not know: the floor.
  if (asked > info->free_bytes) return absl::OkStatus();
  return CheckPoolFloor(pool_name, info->free_bytes, asked, pool_free_floor_bytes_, field);
}

absl::StatusOr<VolumeStatus> StorageService::CreateVolume(const std::string& pool_name,
                                                          const storage::VolumeSpec& spec) {
  auto pool = Find(pool_name);
  if (!pool.ok()) return pool.status();
  std::lock_guard lock((*pool)->mu);
  if (auto s = AdmitSpace(**pool, pool_name, spec.size_bytes, "size_bytes"); !s.ok()) return s;
  auto v = (*pool)->backend->CreateVolume(spec);
  if (!v.ok()) return v.status();
  Log()->info("created volume {}/{} ({} bytes)", pool_name, v->name, v->size_bytes);
  return StatusOf(*v);
}

absl::StatusOr<VolumeStatus> StorageService::CreateVolumeFilled(
    const std::string& pool_name, const storage::VolumeSpec& spec, absl::string_view source,
    const std::function<absl::Status(const storage::VolumeInfo&)>& fill, const std::string& owner,
    std::atomic<bool>* cancel) {
  auto pool = Find(pool_name);
  if (!pool.ok()) return pool.status();
  const std::string key = Key(pool_name, spec.name);
  storage::VolumeInfo volume;
  absl::Status recorded;
  {
    std::lock_guard lock((*pool)->mu);
    if (auto s = AdmitSpace(**pool, pool_name, spec.size_bytes, owner.empty() ? "size_bytes" : "create_size_bytes");
        !s.ok()) {
      return s;
    }
    auto v = (*pool)->backend->CreateVolume(spec);
    if (!v.ok()) return v.status();
    volume = *std::move(v);
    if (!owner.empty()) recorded = (*pool)->backend->SetAttachment(spec.name, owner, storage::Ownership::kOwned);
    if (recorded.ok()) {
      // Fenced before the pool's lock is let go: no call sees the volume unwritten and free.
      std::lock_guard dl(deleting_mu_);
      filling_[key] = Filling{std::string(source), cancel};
    }
  }
  if (!recorded.ok()) {
    if (auto d = DeleteVolume(pool_name, spec.name); !d.ok()) {
      Log()->error("rollback: deleting new volume {} failed: {}", key, d.status().message());
    }
    return recorded;
  }
  absl::Status filled = fill(volume);
  {
    std::lock_guard dl(deleting_mu_);
    filling_.erase(key);
  }
  if (!filled.ok()) {
    // Nobody could have attached or claimed it meanwhile, so the delete cannot be refused for
    // that; if it fails otherwise the volume stays and the log says so.
    absl::Status d = owner.empty() ? DeleteVolume(pool_name, spec.name).status()
                                   : ReleaseVolume(pool_name, spec.name, owner, /*delete_if_owned=*/true);
    if (!d.ok()) Log()->error("volume {} could not be written and not deleted again: {}", key, d.message());
    return filled;
  }
  Log()->info("created volume {}/{} ({} bytes) from {}", pool_name, volume.name, volume.size_bytes, source);
  return GetVolume(pool_name, spec.name);
}

absl::Status StorageService::CheckRoomFor(const std::string& pool_name, const std::string& name, uint64_t bytes,
                                          absl::string_view name_field, absl::string_view size_field) {
  auto pool = Find(pool_name);
  if (!pool.ok()) return pool.status();
  std::lock_guard lock((*pool)->mu);
  if (auto v = (*pool)->backend->GetVolume(name); v.ok()) {
    return absl::AlreadyExistsError(
        absl::StrCat(name_field, ": volume '", name, "' already exists in pool '", pool_name, "'"));
  }
  // Unlike AdmitSpace, more than the pool has free is refused here: the backend that would say
  // so is called only later, when the caller has been answered. Thin pools allocate on write.
  if ((*pool)->backend->config().thin_pool.empty()) {
    auto info = (*pool)->backend->GetPool();
    if (!info.ok()) return info.status();
    if (bytes > info->free_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(size_field, ": ", bytes, " bytes asked, pool '", pool_name,
                                                       "' has ", info->free_bytes, " free"));
    }
  }
  return AdmitSpace(**pool, pool_name, bytes, size_field);
}

absl::StatusOr<VolumeStatus> StorageService::CreateVolumeCloned(const std::string& pool_name,
                                                                const storage::VolumeSpec& spec,
                                                                const std::string& image, const std::string& owner) {
  auto pool = Find(pool_name);
  if (!pool.ok()) return pool.status();
  std::unique_lock lock((*pool)->mu);
  if (auto s = AdmitSpace(**pool, pool_name, spec.size_bytes, owner.empty() ? "size_bytes" : "create_size_bytes");
      !s.ok()) {
    return s;
  }
  auto v = (*pool)->backend->CloneImageSlot(image, spec);
  if (!v.ok()) return v.status();
  if (!owner.empty()) {
    // Owned from its creation on, as CreateVolumeFilled's: else the clone is deleted again.
    if (auto recorded = (*pool)->backend->SetAttachment(spec.name, owner, storage::Ownership::kOwned); !recorded.ok()) {
      lock.unlock();
      if (auto d = DeleteVolume(pool_name, spec.name); !d.ok()) {
        Log()->error("rollback: deleting new clone {} failed: {}", Key(pool_name, spec.name), d.status().message());
      }
      return recorded;
    }
  }
  Log()->info("created volume {}/{} ({} bytes) as a clone of image {}", pool_name, v->name, v->size_bytes, image);
  if (owner.empty()) return StatusOf(*v);
  lock.unlock();
  return GetVolume(pool_name, spec.name);  // with its owner
}

absl::StatusOr<VolumeStatus> StorageService::ResizeVolume(const std::string& pool_name, const std::string& name,
                                                          uint64_t size) {
  auto pool = Find(pool_name);
  if (!pool.ok()) return pool.status();
  std::lock_guard lock((*pool)->mu);
  if (auto s = RefuseDeleting(pool_name, name); !s.ok()) return s;
  if (auto current = (*pool)->backend->GetVolume(name); current.ok() && size > current->size_bytes) {
    if (auto s = AdmitSpace(**pool, pool_name, size - current->size_bytes, "size_bytes"); !s.ok()) return s;
  }  // a missing volume or a shrink: the backend's own answer (NotFound, InvalidArgument)
  auto v = (*pool)->backend->ResizeVolume(name, size);
  if (!v.ok()) return v.status();
  return StatusOf(*v);
}

absl::StatusOr<VolumeStatus> StorageService::DeleteVolume(const std::string& pool_name, const std::string& name,
                                                          bool cascade) {
  auto pool = Find(pool_name);
  if (!pool.ok()) return pool.status();
  Pool* p = *pool;
  const std::string key = Key(pool_name, name);
  std::unique_lock lock(p->mu);
  {
    // A volume written by a fill that can be cancelled: cancel it; its writer deletes it.
    std::lock_guard dl(deleting_mu_);
    if (auto it = filling_.find(key); it != filling_.end() && it->second.cancel != nullptr) {
      auto v = p->backend->GetVolume(name);
      if (!v.ok()) return v.status();
      it->second.cancel->store(true);
      Log()->info("delete of volume {} cancels its writing from {}", key, it->second.source);
      return VolumeStatus{*v, VolumeState::kDeleting, {0, v->size_bytes}};
    }
  }
  if (auto s = RefuseDeleting(pool_name, name); !s.ok()) return s;
  if (auto s = DeleteSnapshotsFirst(*p, name, cascade); !s.ok()) return s;
  auto plan = p->backend->BeginDelete(name);
  if (!plan.ok()) return plan.status();
  const storage::VolumeInfo volume = plan->volume;
  std::lock_guard dl(deleting_mu_);
  // From here every other call on this volume is refused (RefuseDeleting), so the wipe can run
  // without the pool's lock: the pool's other volumes, and reads of this one, go on meanwhile.
  deleting_[key] = {volume, {0, volume.size_bytes}};
  lock.unlock();
  std::erase_if(workers_, [](Worker& w) {
    if (!w.done->load()) return false;
    w.thread.join();
    return true;
  });
  auto done = std::make_shared<std::atomic<bool>>(false);
  std::thread worker([this, p, key, plan = *std::move(plan), done] {
    absl::Status s = p->backend->WipeForDelete(plan, [this, &key](const storage::WipeProgress& progress) {
      std::lock_guard l(deleting_mu_);
      if (auto it = deleting_.find(key); it != deleting_.end()) it->second.progress = progress;
    });
    {
      std::lock_guard pool_lock(p->mu);
      if (s.ok()) s = p->backend->FinishDelete(plan);
      std::lock_guard l(deleting_mu_);
      deleting_.erase(key);
    }
    if (s.ok()) {
      Log()->info("deleted volume {}", key);
    } else {
      Log()->error("delete of volume {} failed, it stays: {}", key, s.message());
    }
    done->store(true);
  });
  workers_.push_back({std::move(worker), done});
  return VolumeStatus{volume, VolumeState::kDeleting, {0, volume.size_bytes}};
}

absl::StatusOr<VolumeStatus> StorageService::AttachVolume(const std::string& pool_name, const std::string& name,
                                                          const std::string& domain, std::string target,
                                                          bool readonly) {
  auto held = Hold(pool_name, name, Fence::kRefuseDeleting);
  if (!held.ok()) return held.status();
  storage::VolumeInfo* v = &held->volume;
  if (!v->attached_to.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("volume '", name, "' is already attached to domain '", v->attached_to, "'"));
  }
  auto disks = hv_.GetDomainDisks(domain);
  if (!disks.ok()) return disks.status();
  if (target.empty()) {
    auto free_target = FreeTarget(*disks);
    if (!free_target.ok()) return free_target.status();
    target = *free_target;
  }
  hv::DiskSpec disk{v->path, hv::DiskType::kBlock, target, "", readonly, "raw"};
  if (auto s = hv_.AttachDisk(domain, disk); !s.ok()) return s;
  if (auto s = held->pool->backend->SetAttachment(name, domain, storage::Ownership::kBorrowed); !s.ok()) {
    // The volume's owner record is the source of truth: without it, undo the attach.
    if (auto undo = hv_.DetachDisk(domain, disk); !undo.ok()) {
      Log()->error("rollback: detaching {} from {} failed: {}", target, domain, undo.message());
    }
    return s;
  }
  Log()->info("attached volume {}/{} to {} as {} (borrowed)", pool_name, name, domain, target);
  v->attached_to = domain;
  v->ownership = storage::Ownership::kBorrowed;
  return StatusOf(*v);
}

absl::StatusOr<VolumeStatus> StorageService::DetachVolume(const std::string& pool_name, const std::string& name,
                                                          const std::string& from_domain) {
  if (!from_domain.empty()) {
    if (auto s = hv::ValidateDomainName("domain", from_domain); !s.ok()) return s;
  }
  // A volume being deleted is attached to nothing: the answer below (NotFound) fits it.
  auto held = Hold(pool_name, name, Fence::kAny);
  if (!held.ok()) return held.status();
  storage::VolumeInfo* v = &held->volume;
  if (v->attached_to.empty()) {
    return absl::NotFoundError(absl::StrCat("volume '", name, "' is not attached to any domain"));
  }
  const std::string domain = v->attached_to;
  if (!from_domain.empty() && from_domain != domain) {
    return absl::FailedPreconditionError(absl::StrCat("domain: volume '", name, "' is attached to domain '", domain,
                                                      "', not to '", from_domain, "'; nothing was changed"));
  }
  // The definition and the running guest both: an earlier detach the guest did not finish
  // leaves the disk in the guest only.
  auto disks = hv_.GetDomainDisks(domain);
  if (disks.ok()) {
    for (const auto& d : *disks) {
      if (d.source_path != v->path) continue;
      absl::Status s = hv_.DetachDisk(domain, d);
      if (absl::IsNotFound(s)) continue;  // the guest let go of it meanwhile, or the domain went
      if (!s.ok()) {
        Log()->warn("volume {}/{} stays attached to {}: {}", pool_name, name, domain, s.message());
        return absl::Status(s.code(), absl::StrCat("volume '", name, "' is still attached to domain '", domain,
                                                   "': ", s.message()));
      }
    }
  } else if (!absl::IsNotFound(disks.status())) {
    return disks.status();  // a vanished domain just releases the volume
  }
  if (auto s = held->pool->backend->SetAttachment(name, "", storage::Ownership::kNone); !s.ok()) return s;
  Log()->info("detached volume {}/{} from {}", pool_name, name, domain);
  v->attached_to.clear();
  v->ownership = storage::Ownership::kNone;
  return StatusOf(*v);
}

absl::StatusOr<VolumeStatus> StorageService::ReleaseOwnership(const std::string& pool_name, const std::string& name) {
  auto held = Hold(pool_name, name, Fence::kAny);  // a volume being deleted is attached to nothing
  if (!held.ok()) return held.status();
  storage::VolumeInfo* v = &held->volume;
  if (v->attached_to.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("volume '", name, "' is attached to no domain, so no domain owns it"));
  }
  if (v->ownership == storage::Ownership::kOwned) {
    if (auto s = held->pool->backend->SetAttachment(name, v->attached_to, storage::Ownership::kBorrowed); !s.ok()) {
      return s;
    }
    Log()->info("volume {}/{} is no longer owned by {}: deleting {} will keep it", pool_name, name, v->attached_to,
                v->attached_to);
    v->ownership = storage::Ownership::kBorrowed;
  }
  return StatusOf(*v);
}

absl::StatusOr<storage::VolumeInfo> StorageService::AdoptOwned(Pool& pool, const VolumeClaim& claim,
                                                               const std::string& domain) {
  auto v = pool.backend->GetVolume(claim.name);
  if (!v.ok()) return v.status();
  if (v->attached_to != domain || v->ownership != storage::Ownership::kOwned) {
    return absl::FailedPreconditionError(
        absl::StrCat("volume '", claim.name, "' is not recorded as owned by domain '", domain, "'"));
  }
  return *v;
}

absl::StatusOr<storage::VolumeInfo> StorageService::ClaimVolume(const VolumeClaim& claim, const std::string& domain) {
  auto pool = Find(claim.pool);
  if (!pool.ok()) return pool.status();
  absl::Status failed;
  {
    std::lock_guard lock((*pool)->mu);
    if (auto s = RefuseDeleting(claim.pool, claim.name); !s.ok()) return s;
    if (claim.adopt) return AdoptOwned(**pool, claim, domain);
    if (claim.create_size_bytes > 0) {
      if (auto s = AdmitSpace(**pool, claim.pool, claim.create_size_bytes, "create_size_bytes"); !s.ok()) return s;
    }
    absl::StatusOr<storage::VolumeInfo> v =
        claim.create_size_bytes > 0
            ? (*pool)->backend->CreateVolume({.name = claim.name, .size_bytes = claim.create_size_bytes})
            : (*pool)->backend->GetVolume(claim.name);
    if (!v.ok()) return v.status();
    if (claim.create_size_bytes == 0 && !v->attached_to.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("volume '", claim.name, "' is already attached to domain '", v->attached_to, "'"));
    }
    // What the domain makes is its own; what it is given is lent.
    const storage::Ownership ownership =
        claim.create_size_bytes > 0 ? storage::Ownership::kOwned : storage::Ownership::kBorrowed;
    failed = (*pool)->backend->SetAttachment(claim.name, domain, ownership);
    if (failed.ok()) {
      Log()->info("{} volume {}/{} for domain {} ({})", claim.create_size_bytes > 0 ? "created" : "claimed",
                  claim.pool, claim.name, domain, storage::OwnershipName(ownership));
      v->attached_to = domain;
      v->ownership = ownership;
      return *v;
    }
  }
  if (claim.create_size_bytes > 0) {
    // The pool lock is free again: DeleteVolume takes it in its worker.
    if (auto undo = DeleteVolume(claim.pool, claim.name); !undo.ok()) {
      Log()->error("rollback: deleting new volume {}/{} failed: {}", claim.pool, claim.name, undo.status().message());
    }
  }
  return failed;
}

absl::Status StorageService::ReleaseVolume(const std::string& pool_name, const std::string& name,
                                           const std::string& domain, bool delete_if_owned) {
  bool owned = false;
  {
    // The record read under the pool lock decides: a volume handed over meanwhile
    // (ReleaseOwnership) is kept.
    auto held = Hold(pool_name, name, Fence::kAny);  // a volume being deleted is attached to nothing
    if (!held.ok()) return held.status();
    const storage::VolumeInfo* v = &held->volume;
    if (v->attached_to != domain) {
      Log()->warn("volume {}/{} is not attached to {} (it is {}); left as it is", pool_name, name, domain,
                  v->attached_to.empty() ? "free" : absl::StrCat("attached to ", v->attached_to));
      return absl::OkStatus();
    }
    owned = v->ownership == storage::Ownership::kOwned;
    if (auto s = held->pool->backend->SetAttachment(name, "", storage::Ownership::kNone); !s.ok()) return s;
  }
  if (!delete_if_owned || !owned) {
    Log()->info("released volume {}/{} from {} ({}): kept", pool_name, name, domain,
                owned ? "owned" : "borrowed");
    return absl::OkStatus();
  }
  Log()->info("released volume {}/{} from {} (owned): deleting it", pool_name, name, domain);
  // Its snapshots were the domain's too.
  return DeleteVolume(pool_name, name, /*cascade=*/true).status();
}

absl::StatusOr<std::vector<storage::VolumeInfo>> StorageService::VolumesOf(const std::string& domain) {
  std::vector<storage::VolumeInfo> out;
  for (auto& [name, pool] : pools_) {
    std::lock_guard lock(pool->mu);
    auto volumes = pool->backend->ListVolumes();
    if (!volumes.ok()) return volumes.status();
    for (auto& v : *volumes) {
      if (v.attached_to == domain) out.push_back(std::move(v));
    }
  }
  return out;
}

}  // namespace hvagent::service
