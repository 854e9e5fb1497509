// StorageService's volume snapshots: create (with the guest held still), list, delete, revert,
// and the recovery of what a crash cut short. Apart from storage_service.cpp, which holds volumes.
#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/service/storage_service.h"
#include "common/failpoint.h"
#include "common/log.h"

namespace hvagent::service {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("storage");
  return logger;
}

uint64_t MsSince(std::chrono::steady_clock::time_point t) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t).count());
}

}  // namespace

bool StorageService::DomainActive(const std::string& domain) {
  if (domain.empty()) return false;
  auto info = hv_.GetDomain(domain);
  if (!info.ok()) return !absl::IsNotFound(info.status());  // unsure: treat as running
  return hv::IsActive(info->state);
}

uint64_t StorageService::BeginOp(v1::OperationKind kind, const std::string& domain, const std::string& pool,
                                 const std::string& volume, const std::string& snapshot) {
  if (journal_ == nullptr) return 0;
  internal::JournalBegin b;
  b.set_type(kind);
  b.set_domain(domain);
  b.set_pool(pool);
  b.set_volume(volume);
  b.set_snapshot(snapshot);
  auto op = journal_->Begin(b);
  if (!op.ok()) {
    Log()->error("journal: {}", op.status().message());
    return 0;
  }
  return *op;
}

void StorageService::EndOp(uint64_t op, const absl::Status& status) {
  if (journal_ == nullptr || op == 0) return;
  (void)journal_->End(op, status.ok() ? v1::OPERATION_STATE_SUCCEEDED : v1::OPERATION_STATE_FAILED,
                      std::string(status.message()));
}

absl::Status StorageService::DeleteSnapshotsFirst(Pool& pool, const std::string& name, bool cascade) {
  auto volume = pool.backend->GetVolume(name);
  if (!volume.ok() || !volume->attached_to.empty()) return absl::OkStatus();  // BeginDelete says why not
  auto snapshots = pool.backend->ListSnapshots(name);
  if (!snapshots.ok() || snapshots->empty()) return absl::OkStatus();  // none, or a pool without them
  std::vector<std::string> names;
  for (const auto& s : *snapshots) names.push_back(s.name);
  if (!cascade) {
    return absl::FailedPreconditionError(absl::StrCat("volume '", name, "' has ", names.size(), " snapshot(s) (",
                                                      absl::StrJoin(names, ", "),
                                                      "); delete them first, or set cascade"));
  }
  for (const std::string& snap : names) {
    if (auto s = pool.backend->DeleteSnapshot(name, snap); !s.ok()) return s;
    Log()->info("deleted snapshot {} of volume {} (cascade)", snap, name);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<storage::SnapshotInfo>> StorageService::ListSnapshots(const std::string& pool,
                                                                                 const std::string& volume) {
  return WithBackend(pool, [&](storage::StorageBackend& b) { return b.ListSnapshots(volume); });
}

absl::Status StorageService::DeleteSnapshot(const std::string& pool, const std::string& volume,
                                            const std::string& name) {
  if (auto s = RefuseDeleting(pool, volume); !s.ok()) return s;
  return WithBackend(pool, [&](storage::StorageBackend& b) { return b.DeleteSnapshot(volume, name); });
}

absl::StatusOr<SnapshotOutcome> StorageService::CreateSnapshot(const std::string& pool_name,
                                                               const std::string& volume, const std::string& name) {
  const auto start = std::chrono::steady_clock::now();
  auto held = Hold(pool_name, volume, Fence::kRefuseDeleting);
  if (!held.ok()) return held.status();
  // Every refusal comes before any guest is touched.
  if (auto s = held->pool->backend->CheckNewSnapshot(volume, name); !s.ok()) return s;
  const std::string domain = held->volume.attached_to;
  SnapshotOutcome out;
  absl::StatusOr<storage::SnapshotInfo> snap;
  if (!domain.empty() && DomainActive(domain)) {
    auto info = hv_.GetDomain(domain);
    if (info.ok() && info->state == hv::DomainState::kPaused) {
      out.note = "the domain was paused already";
      snap = held->pool->backend->CreateSnapshot(volume, name);
    } else {
      const uint64_t op = BeginOp(v1::OPERATION_KIND_SNAPSHOT_VOLUME, domain, pool_name, volume, name);
      GuestQuiescer quiet(hv_, journal_, op, domain);
      if (auto s = quiet.Hold(); !s.ok()) {
        EndOp(op, s);
        return s;
      }
      snap = held->pool->backend->CreateSnapshot(volume, name);
      HVAGENT_FAILPOINT("snapshot.after_create");
      absl::Status released = quiet.Release();  // whatever the snapshot did
      EndOp(op, !snap.ok() ? snap.status() : released);
      if (snap.ok() && !released.ok()) return released;
      out.quiesce = quiet.mode();
      out.paused_ms = quiet.held_ms();
      out.note = quiet.note();
    }
  } else {
    snap = held->pool->backend->CreateSnapshot(volume, name);
  }
  if (!snap.ok()) return snap.status();
  out.snapshot = *std::move(snap);
  out.total_ms = MsSince(start);
  Log()->info("snapshot {} of volume {}/{}: {} ms in all, guest held {} ms", name, pool_name, volume, out.total_ms,
              out.paused_ms);
  return out;
}

absl::StatusOr<RevertOutcome> StorageService::RevertSnapshot(const std::string& pool_name, const std::string& volume,
                                                             const std::string& name) {
  auto held = Hold(pool_name, volume, Fence::kRefuseDeleting);
  if (!held.ok()) return held.status();
  // A pool without snapshots, or a snapshot that is not there, says so first.
  auto snapshots = held->pool->backend->ListSnapshots(volume);
  if (!snapshots.ok()) return snapshots.status();
  if (std::none_of(snapshots->begin(), snapshots->end(), [&](const auto& s) { return s.name == name; })) {
    if (auto s = held->pool->backend->CheckNewSnapshot(volume, name); !s.ok() && !absl::IsFailedPrecondition(s)) {
      return s;  // a bad name
    }
    return absl::NotFoundError(absl::StrCat("snapshot: '", name, "' of volume '", volume, "' not found"));
  }
  const std::string domain = held->volume.attached_to;
  if (DomainActive(domain)) {
    return absl::FailedPreconditionError(absl::StrCat("volume: '", volume, "' is in use by running domain '", domain,
                                                      "'; stop the domain before reverting its disk"));
  }
  const uint64_t op = BeginOp(v1::OPERATION_KIND_REVERT_SNAPSHOT, domain, pool_name, volume, name);
  auto reverted = held->pool->backend->RevertSnapshot(volume, name);
  EndOp(op, reverted.status());
  if (!reverted.ok()) return reverted.status();
  auto now = held->pool->backend->GetVolume(volume);
  if (!now.ok()) return now.status();
  Log()->info("volume {}/{} reverted to snapshot {}{}", pool_name, volume, name,
              reverted->snapshot_kept ? "" : " (merged: the snapshot is gone)");
  return RevertOutcome{.volume = StatusOf(*now), .snapshot_kept = reverted->snapshot_kept};
}

std::vector<std::string> StorageService::RecoverSnapshots() {
  std::vector<std::string> done;
  if (journal_ == nullptr) return done;
  for (const Journal::Operation& op : journal_->Unfinished()) {
    const internal::JournalBegin& b = op.begin;
    std::string what;
    v1::OperationState state = v1::OPERATION_STATE_RECOVERED;
    if (b.type() == v1::OPERATION_KIND_SNAPSHOT_VOLUME) {
      what = GuestQuiescer::Recover(hv_, op);
      auto snaps = ListSnapshots(b.pool(), b.volume());
      bool taken = snaps.ok() && std::any_of(snaps->begin(), snaps->end(),
                                             [&](const storage::SnapshotInfo& s) { return s.name == b.snapshot(); });
      if (!taken) state = v1::OPERATION_STATE_ROLLED_BACK;
      what = absl::StrCat(what, taken ? "; the snapshot had been taken" : "; no snapshot had been taken");
    } else if (b.type() == v1::OPERATION_KIND_REVERT_SNAPSHOT) {
      auto r = WithBackend(b.pool(), [&](storage::StorageBackend& be) { return be.RecoverRevert(b.volume()); });
      if (!r.ok()) {
        done.push_back(absl::StrCat("revert of ", b.pool(), "/", b.volume(), " (operation ", op.id,
                                    "): not finished, tried again at the next start: ", r.status().message()));
        continue;
      }
      if (r->outcome == storage::RevertRecovery::Outcome::kUndone) state = v1::OPERATION_STATE_ROLLED_BACK;
      what = r->what.empty() ? "nothing was left half-done" : r->what;
    } else {
      continue;
    }
    (void)journal_->End(op.id, state, absl::StrCat("recovery: ", what));
    done.push_back(absl::StrCat(v1::OperationKind_Name(b.type()), " of ", b.pool(), "/", b.volume(), " (operation ",
                                op.id, "): ", what));
  }
  return done;
}

}  // namespace hvagent::service
