// LvmBackend's volume snapshots (the naming scheme and the revert's steps are in lvm_backend.h;
// the why in docs/snapshots.md). Apart from lvm_backend.cpp, which holds volumes and images.
#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/failpoint.h"
#include "common/log.h"
#include "storage/lvm/lvm_backend.h"
#include "storage/lvm/lvm_names.h"

namespace hvagent::storage {
namespace {

constexpr size_t kMaxSnapshotName = 48;

std::shared_ptr<spdlog::logger> Log() { return log::ComponentLogger("storage.lvm"); }

std::string Bytes(uint64_t n) { return absl::StrCat(n, "b"); }

bool IsAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

// The API rule for snapshot names: no path characters, nothing lvm2 reads specially.
absl::Status CheckSnapshotName(const std::string& name) {
  bool ok = !name.empty() && name.size() <= kMaxSnapshotName && IsAlnum(name[0]);
  for (char c : name) ok = ok && (IsAlnum(c) || c == '.' || c == '_' || c == '-');
  if (ok) return absl::OkStatus();
  std::string shown = name.size() > 64 ? name.substr(0, 64) + "..." : name;
  return absl::InvalidArgumentError(absl::StrCat("snapshot: '", shown, "' must be 1-", kMaxSnapshotName,
                                                 " of [A-Za-z0-9._-], starting with a letter or digit"));
}

bool IsClassicSnapshot(const lvm::LvRow& lv) { return !lv.attr.empty() && (lv.attr[0] == 's' || lv.attr[0] == 'S'); }
// A classic snapshot's store that a delete split off its origin and had not removed yet (a
// crash, a failed wipe): a plain LV under the snapshot's name, holding old blocks, no content.
bool IsSplitStore(const lvm::LvRow& lv) { return !lv.attr.empty() && lv.attr[0] == '-'; }
bool IsActive(const lvm::LvRow& lv) { return lv.attr.size() > 4 && lv.attr[4] == 'a'; }

}  // namespace

absl::Status LvmBackend::CheckSnapshotCall(const std::string& volume, const std::string& name,
                                          bool with_name) const {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (auto s = lvm::CheckVolumeName(volume); !s.ok()) {
    // The volume rule's message names `name`; here the field is `volume`.
    return absl::InvalidArgumentError(absl::StrCat("volume", s.message().substr(s.message().find(':'))));
  }
  if (!with_name) return absl::OkStatus();
  if (auto s = CheckSnapshotName(name); !s.ok()) return s;
  if (!lvm::IsLvmLvName(SnapshotLv(volume, name))) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot: '", name, "' contains a part LVM reserves (such as '_tmeta' or '_rimage')"));
  }
  return absl::OkStatus();
}

const lvm::LvRow* LvmBackend::FindLv(const std::string& name) const {
  if (!cache_) return nullptr;
  for (const lvm::LvRow& lv : cache_->report.lvs) {
    if (lv.name == name) return &lv;
  }
  return nullptr;
}

SnapshotInfo LvmBackend::ToSnapshot(const std::string& volume, const lvm::LvRow& snap,
                                    const lvm::LvRow& origin) const {
  SnapshotInfo info{.pool = config_.name,
                    .volume = volume,
                    .name = snap.name.substr(SnapshotLv(volume, "").size()),
                    .size_bytes = snap.size_bytes,
                    .path = snap.path.empty() ? LvPath(snap.name) : snap.path};
  if (IsClassicSnapshot(snap) || IsSplitStore(snap)) {
    // lvm2 reports a classic snapshot's own size (its copy-on-write area) as lv_size.
    info.size_bytes = origin.size_bytes;
    info.reserve_bytes = snap.size_bytes;
    info.reserve_used_percent = snap.data_percent.value_or(0.0);
    info.valid = snap.attr[0] == 's';
    if (!info.valid) info.reserve_used_percent = 100;
  } else {
    info.thin = true;
  }
  return info;
}

absl::StatusOr<std::vector<SnapshotInfo>> LvmBackend::ListSnapshots(const std::string& volume) {
  if (auto s = CheckSnapshotCall(volume, "", /*with_name=*/false); !s.ok()) return s;
  auto origin = FindOurs(volume);
  if (!origin.ok()) return origin.status();
  const std::string prefix = SnapshotLv(volume, "");
  std::vector<SnapshotInfo> out;
  for (const lvm::LvRow& lv : cache_->report.lvs) {  // FindOurs just filled the cache
    if (absl::StartsWith(lv.name, prefix) && lv.HasTag(kSnapshotTag)) out.push_back(ToSnapshot(volume, lv, *origin));
  }
  std::sort(out.begin(), out.end(), [](const SnapshotInfo& a, const SnapshotInfo& b) { return a.name < b.name; });
  return out;
}

absl::StatusOr<lvm::LvRow> LvmBackend::FindSnapshot(const std::string& volume, const std::string& name) {
  const lvm::LvRow* lv = FindLv(SnapshotLv(volume, name));
  if (lv == nullptr || !lv->HasTag(kSnapshotTag)) {
    return absl::NotFoundError(absl::StrCat("snapshot: '", name, "' of volume '", volume, "' not found in pool '",
                                            config_.name, "'"));
  }
  return *lv;
}

absl::Status LvmBackend::CheckNewSnapshot(const std::string& volume, const std::string& name) {
  if (auto s = CheckSnapshotCall(volume, name); !s.ok()) return s;
  if (!dm_available_) {
    return absl::FailedPreconditionError(absl::StrCat("pool: '", config_.name,
                                                      "' cannot take snapshots on this host: lvm2 makes none "
                                                      "without device-mapper, which is unavailable"));
  }
  auto origin = FindOurs(volume);
  if (!origin.ok()) return origin.status();
  if (FindLv(SnapshotLv(volume, name)) != nullptr) {
    return absl::AlreadyExistsError(absl::StrCat("snapshot: '", name, "' of volume '", volume, "' already exists"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SnapshotInfo> LvmBackend::CreateSnapshot(const std::string& volume, const std::string& name) {
  if (auto s = CheckNewSnapshot(volume, name); !s.ok()) return s;
  auto origin = FindOurs(volume);  // cached by the check
  if (!origin.ok()) return origin.status();
  const std::string lv = SnapshotLv(volume, name);
  std::vector<std::string> args = {"--yes", "-s", "-n", lv, "--addtag", kSnapshotTag};
  if (config_.thin_pool.empty()) {
    const lvm::VgRow& vg = cache_->report.vg;
    uint64_t wanted = std::max<uint64_t>(origin->size_bytes / 100 * config_.snapshot_reserve_percent, 1);
    auto reserve = RoundSize(wanted, vg.extent_size);
    if (!reserve.ok()) return reserve.status();
    if (*reserve > vg.free_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "pool '", config_.name, "' is full: snapshot '", name, "' of volume '", volume,
          "' needs a copy-on-write reserve of ", *reserve, " bytes (", config_.snapshot_reserve_percent,
          "% of the volume), volume group '", config_.volume_group, "' has ", vg.free_bytes, " bytes free"));
    }
    args.insert(args.end(), {"-L", Bytes(*reserve)});
  }
  args.push_back(LvId(volume));
  absl::Status status = RunLvmChecked("lvcreate", std::move(args));
  if (!status.ok()) {
    if (absl::IsResourceExhausted(status) || absl::IsAlreadyExists(status)) return status;
    return RemoveLeftover(lv, kSnapshotTag, status);
  }
  auto report = Report(/*fresh=*/true);
  if (!report.ok()) return report.status();
  auto snap = FindSnapshot(volume, name);
  auto now = FindOurs(volume);
  if (!snap.ok() || !now.ok()) return absl::InternalError(absl::StrCat("snapshot '", name, "' vanished once made"));
  SnapshotInfo info = ToSnapshot(volume, *snap, *now);
  Log()->info("pool '{}': snapshot {} of volume {} ({})", config_.name, name, volume,
              info.thin ? std::string("thin") : absl::StrCat("classic, reserve ", info.reserve_bytes, " bytes"));
  return info;
}

absl::Status LvmBackend::DeleteSnapshot(const std::string& volume, const std::string& name) {
  if (auto s = CheckSnapshotCall(volume, name); !s.ok()) return s;
  if (auto origin = FindOurs(volume); !origin.ok()) return origin.status();
  auto snap = FindSnapshot(volume, name);
  if (!snap.ok()) return snap.status();
  const bool thin = !IsClassicSnapshot(*snap) && !IsSplitStore(*snap);
  if (!thin && config_.wipe != WipeMode::kNone) {
    if (auto s = WipeSnapshotStore(*snap); !s.ok()) return s;
  }
  if (auto s = RunLvmChecked("lvremove", {"--yes", LvId(snap->name)}); !s.ok()) return s;
  Log()->info("pool '{}': deleted snapshot {} of volume {}{}", config_.name, name, volume,
              thin || config_.wipe == WipeMode::kNone ? "" : " (its copy-on-write store wiped first)");
  return absl::OkStatus();
}

// A thin snapshot's blocks go back to the thin pool, which zeroes a block it provisions again:
// nothing to wipe. A classic snapshot's copy-on-write store holds the volume's blocks as they
// were before the guest rewrote them, tenant data that lvremove alone hands back to the VG as
// free extents, where a later volume could read them (lvm2 zeroes only a new LV's start).
// Zeros written through the snapshot device would not clear them: every write to a classic
// snapshot allocates copy-on-write chunks of its own, so the store fills and lvm2 invalidates
// the snapshot before the old chunks are overwritten. lvm2's own way (lvconvert(8),
// --splitsnapshot: the LV split off "can be wiped and then destroyed with lvremove"): the store
// becomes a plain LV of the same name, wiped here like a thick volume. A crash or a failed wipe
// after the split leaves that LV listed as an invalid snapshot; deleting it again wipes it.
absl::Status LvmBackend::WipeSnapshotStore(const lvm::LvRow& snap) {
  if (!dm_available_) {
    return absl::FailedPreconditionError(absl::StrCat("cannot wipe snapshot LV '", snap.name, "' in pool '",
                                                      config_.name, "': device-mapper unavailable; it was kept"));
  }
  if (IsClassicSnapshot(snap)) {
    if (auto s = RunLvmChecked("lvconvert", {"--yes", "--splitsnapshot", LvId(snap.name)}); !s.ok()) return s;
    HVAGENT_FAILPOINT("snapshot_delete.after_split");
  }
  if (!IsActive(snap)) {
    if (auto s = RunLvmChecked("lvchange", {"-ay", LvId(snap.name)}); !s.ok()) return s;
  }
  const std::string path = snap.path.empty() ? LvPath(snap.name) : snap.path;
  absl::Status wiped = wiper_.Wipe(path, config_.wipe, {});
  if (wiped.ok()) return wiped;
  return absl::Status(wiped.code(), absl::StrCat("wiping the copy-on-write store of snapshot LV '", snap.name,
                                                 "' failed; it was kept (split off, listed as invalid): ",
                                                 wiped.message()));
}

absl::StatusOr<RevertResult> LvmBackend::RevertSnapshot(const std::string& volume, const std::string& name) {
  if (auto s = CheckSnapshotCall(volume, name); !s.ok()) return s;
  auto origin = FindOurs(volume);
  if (!origin.ok()) return origin.status();
  auto snap = FindSnapshot(volume, name);
  if (!snap.ok()) return snap.status();
  if (!IsClassicSnapshot(*snap)) return RevertThin(*origin, *snap);
  if (snap->attr[0] == 'S') {
    return absl::FailedPreconditionError(absl::StrCat("snapshot: '", name,
                                                      "' is invalid (its copy-on-write reserve filled up), so "
                                                      "there is nothing to revert to"));
  }
  // The merge runs in the kernel; the volume reads as the snapshot from its start. lvm2 removes
  // the snapshot once merged: a classic revert consumes it.
  if (auto s = RunLvmChecked("lvconvert", {"--merge", "-i", "1", LvId(snap->name)}); !s.ok()) return s;
  Log()->info("pool '{}': volume {} reverted to snapshot {} (merged; the snapshot is gone)", config_.name, volume,
              name);
  return RevertResult{.snapshot_kept = false};
}

absl::StatusOr<RevertResult> LvmBackend::RevertThin(const lvm::LvRow& volume, const lvm::LvRow& snap) {
  const std::string fresh = kRevertLvPrefix + volume.name;
  const std::string old = kRevertOldLvPrefix + volume.name;
  if (FindLv(fresh) != nullptr || FindLv(old) != nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("volume: '", volume.name,
                                                      "' has an unfinished revert; the agent finishes it at its "
                                                      "next start"));
  }
  // The new volume carries the old one's tags (ours, its domain and owner) from its creation on.
  std::vector<std::string> args = {"--yes", "-s", "--setactivationskip", "n", "--permission", "rw", "-n", fresh};
  for (const std::string& t : volume.tags) args.insert(args.end(), {"--addtag", t});
  args.push_back(LvId(snap.name));
  if (auto s = RunLvmChecked("lvcreate", std::move(args)); !s.ok()) {
    return RemoveLeftover(fresh, kOwnerTag, s);
  }
  HVAGENT_FAILPOINT("revert.after_create");
  if (auto s = RunLvmChecked("lvrename", {LvId(volume.name), LvId(old)}); !s.ok()) {
    (void)RunLvmChecked("lvremove", {"--yes", LvId(fresh)});
    return s;
  }
  HVAGENT_FAILPOINT("revert.after_rename_old");
  if (auto s = RunLvmChecked("lvrename", {LvId(fresh), LvId(volume.name)}); !s.ok()) {
    (void)RunLvmChecked("lvrename", {LvId(old), LvId(volume.name)});  // the old one back
    (void)RunLvmChecked("lvremove", {"--yes", LvId(fresh)});
    return s;
  }
  HVAGENT_FAILPOINT("revert.after_rename_new");
  if (auto s = RunLvmChecked("lvremove", {"--yes", LvId(old)}); !s.ok()) {
    Log()->warn("pool '{}': the replaced volume {} stays until the next start: {}", config_.name, LvId(old),
                s.message());
  }
  Log()->info("pool '{}': volume {} reverted to thin snapshot {} (the snapshot stays)", config_.name, volume.name,
              snap.name);
  return RevertResult{.snapshot_kept = true};
}

absl::StatusOr<RevertRecovery> LvmBackend::RecoverRevert(const std::string& volume) {
  using Outcome = RevertRecovery::Outcome;
  if (auto s = CheckSnapshotCall(volume, "", /*with_name=*/false); !s.ok()) return s;
  auto report = Report(/*fresh=*/true);
  if (!report.ok()) return report.status();
  const std::string fresh = kRevertLvPrefix + volume;
  const std::string old = kRevertOldLvPrefix + volume;
  const bool has_volume = FindLv(volume) != nullptr, has_fresh = FindLv(fresh) != nullptr,
             has_old = FindLv(old) != nullptr;
  RevertRecovery out;
  if (!has_volume && has_old) {
    // Renamed out, not yet replaced: put the new one in place, or the old one back.
    const std::string& back = has_fresh ? fresh : old;
    if (auto s = RunLvmChecked("lvrename", {LvId(back), LvId(volume)}); !s.ok()) return s;
    if (!has_fresh) return RevertRecovery{Outcome::kUndone, "the volume was put back unchanged"};
    out = {Outcome::kFinished, "the reverted volume was put in place; the replaced one was removed"};
  } else if (has_volume && has_fresh && !has_old) {
    if (auto s = RunLvmChecked("lvremove", {"--yes", LvId(fresh)}); !s.ok()) return s;
    return RevertRecovery{Outcome::kUndone, "the volume was left unchanged; the half-made copy was removed"};
  } else if (has_old) {
    out = {Outcome::kFinished, "the revert was complete; the replaced volume was removed"};
  } else {
    return out;  // nothing left: the revert never began, or it ended
  }
  if (auto s = RunLvmChecked("lvremove", {"--yes", LvId(old)}); !s.ok()) return s;
  return out;
}

void LvmBackend::AddSnapshotUsage(const lvm::Report& report, PoolInfo& info) const {
  for (const lvm::LvRow& lv : report.lvs) {
    if (!lv.HasTag(kSnapshotTag) || !absl::StartsWith(lv.name, kSnapshotLvPrefix)) continue;
    ++info.snapshot_count;
    if (!IsClassicSnapshot(lv)) continue;
    const double used = lv.attr[0] == 'S' ? 100.0 : lv.data_percent.value_or(0.0);
    info.snapshot_reserve_bytes += lv.size_bytes;
    info.snapshot_reserve_used_bytes += static_cast<uint64_t>(static_cast<double>(lv.size_bytes) * used / 100.0);
    info.snapshot_fullest_percent = std::max(info.snapshot_fullest_percent, used);
  }
}

}  // namespace hvagent::storage
