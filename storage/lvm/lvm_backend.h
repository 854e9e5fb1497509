#pragma once
// LvmBackend: a pool that is one LVM volume group (PoolConfig::volume_group); volumes are LVs
// carrying the tag "hvagent" (LVs without it are not ours: never listed, changed or removed).
// The VM a volume is attached to is the tag "hvagent_vm_<domain>"; a volume that domain owns
// (Ownership::kOwned) also carries "hvagent_owned_by_<domain>", set and cleared in the same
// lvchange as the attachment. An attached volume without it is borrowed, which is also how a
// volume attached by an agent that predates ownership reads: never deleted with its domain. A
// stale owned_by tag naming another domain than the vm tag counts for nothing. Tags are the only
// record, so restarts need no database. With PoolConfig::thin_pool set, volumes are thin LVs in that
// thin pool, and capacity/free are the thin pool's.
//
// Tools: every call is `<lvm> <subcommand> ...` through CommandRunner (one binary path to
// configure, and `fullreport` has no per-command link), with LVM_SUPPRESS_FD_WARNINGS=1.
// Device-mapper is probed once, at construction, by opening /dev/mapper/control: when that
// fails (kernels without dm-mod), every call gets `--config global{activation=0}`, lvcreate
// gets `-an` (and `-Zn` for thick LVs), LVs are never activated, and wiping is impossible, so
// deleting is refused (FailedPrecondition) unless the pool's WipeMode is kNone; a thin pool
// cannot be created.
//
// Golden images (docs/images.md): an image is an LV named "hvimage+<image>" ('+' is never in a
// volume name, so the two namespaces cannot meet) carrying the tag "hvagent_image_importing"
// while its import runs and "hvagent_image" once sealed, and never the "hvagent" tag: it is not
// a volume, so it is never listed, attached, resized or deleted as one. Its record (format,
// virtual size, sha256, source) sits in the LV's last 4 KiB, written by storage/image as on
// partitions: the VG is its own database. Sealing is one lvchange that swaps the tags and makes
// the LV read-only (`--permission r`); a delete first makes it writable again and marks it
// importing, so a crash mid-wipe leaves an unfinished image that recovery removes. With a thin
// pool the image is a thin LV in it, and CloneImageSlot makes a volume a thin snapshot of it
// (`lvcreate -s`, no data copied, activation skip off so it activates like any volume), grown
// with lvextend when asked larger; a thick pool answers Unimplemented and the caller copies.
// Images need device-mapper (they are written and read through the LV's device): without it,
// every image call is FailedPrecondition "cannot hold images".
//
// Snapshots (docs/snapshots.md): the snapshot S of volume V is the LV "hvsnap+V+S" tagged
// "hvagent_snapshot" and never "hvagent", so it is never listed or handed out as a volume (no
// LV whose name has a '+' is). Thin pools take thin snapshots (`lvcreate -s`, no size: shared
// blocks, instant); thick pools classic ones with a copy-on-write reserve of
// PoolConfig::snapshot_reserve_percent of the volume. Revert, thin: a fresh thin snapshot of
// the snapshot "hvrevert+V" carrying V's tags, then V renamed "hvrevold+V", "hvrevert+V"
// renamed V, "hvrevold+V" removed: the snapshot stays. RecoverRevert finishes that from
// whichever names a crash left. Classic: one `lvconvert --merge`; the snapshot is consumed.
// lvm2 cannot make a snapshot without device-mapper: then every create is FailedPrecondition.
//
// Reads come from one `lvm fullreport` of the VG (VG size/free/extent size and every LV),
// cached for Options::cache_ttl and dropped after every change. lvm2 invocations per call
// (cold cache / warm cache), asserted in the unit tests and measured against real lvm2 in the
// integration test: create 2 / 1, list 1 / 0, get 1 / 0, pool 1 / 0, delete 2 / 1 (plus one
// `lvchange -ay` when device-mapper is present and the LV is inactive), resize 2 / 1, attach or
// detach 2 / 1 (the report alone when the tags already say so).
//
// Sizes are rounded up to the VG's extent size. Creating or growing beyond the VG's free
// space (thick) is ResourceExhausted before lvm2 runs; when lvm2 itself says the space is
// gone (the VG filled up meanwhile) it is ResourceExhausted quoting lvm2. Tags are set by the
// lvcreate itself, so a create never leaves an untagged LV; a create that fails otherwise (or
// hangs) is checked with a fresh report and a tagged LV it left is removed.
// Single-threaded (storage_backend.h): the report cache has no lock of its own.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "storage/block_wiper.h"
#include "storage/exec/command_runner.h"
#include "storage/lvm/lvm_report.h"
#include "storage/storage_backend.h"

namespace hvagent::storage {

class LvmBackend final : public StorageBackend {
 public:
  static constexpr char kOwnerTag[] = "hvagent";
  static constexpr char kVmTagPrefix[] = "hvagent_vm_";
  static constexpr char kOwnedByTagPrefix[] = "hvagent_owned_by_";
  static constexpr char kImageTag[] = "hvagent_image";
  static constexpr char kImportingTag[] = "hvagent_image_importing";
  static constexpr char kImageLvPrefix[] = "hvimage+";
  static constexpr char kSnapshotTag[] = "hvagent_snapshot";
  static constexpr char kSnapshotLvPrefix[] = "hvsnap+";
  static constexpr char kRevertLvPrefix[] = "hvrevert+";
  static constexpr char kRevertOldLvPrefix[] = "hvrevold+";
  // Largest size accepted from the API (lvm2's own limit is 8 EiB).
  static constexpr uint64_t kMaxVolumeBytes = uint64_t{1} << 62;

  struct Options {
    std::string lvm = "/sbin/lvm";
    std::chrono::milliseconds timeout{60000};
    std::chrono::milliseconds cache_ttl{5000};
    // Reads time for the cache; nullptr = the system clock. Not owned.
    Clock* clock = nullptr;
    // Whether device-mapper can be used; the default opens /dev/mapper/control. Unit tests
    // replace it. Called once, in the constructor.
    std::function<bool()> device_mapper_available;
  };

  LvmBackend(PoolConfig config, CommandRunner& runner, BlockWiper& wiper)
      : LvmBackend(std::move(config), runner, wiper, Options{}) {}
  LvmBackend(PoolConfig config, CommandRunner& runner, BlockWiper& wiper, Options options);

  const PoolConfig& config() const override { return config_; }
  // Creates the VG on PoolConfig::physical_volumes when it does not exist (one `vgcreate`,
  // which initializes the PVs itself and refuses devices holding other data or another VG),
  // and the thin pool (90% of the VG's free space) when configured and missing.
  absl::Status Prepare() override;
  absl::StatusOr<PoolInfo> GetPool() override;
  absl::StatusOr<std::vector<VolumeInfo>> ListVolumes() override;
  absl::StatusOr<VolumeInfo> GetVolume(const std::string& name) override;
  absl::StatusOr<VolumeInfo> CreateVolume(const VolumeSpec& spec) override;
  absl::StatusOr<VolumeInfo> ResizeVolume(const std::string& name, uint64_t new_size_bytes) override;
  absl::StatusOr<DeletePlan> BeginDelete(const std::string& name) override;
  absl::Status WipeForDelete(const DeletePlan& plan, const ProgressFn& progress) override;
  absl::Status FinishDelete(const DeletePlan& plan) override;
  // FailedPrecondition when attached to another domain (detach first). One lvchange adding and
  // deleting the vm and owned_by tags together; none when the tags already say so.
  absl::Status SetAttachment(const std::string& name, const std::string& domain, Ownership ownership) override;

  absl::StatusOr<std::vector<ImageSlot>> ListImageSlots() override;
  // Thick: `lvcreate -L`; thin: a thin LV of the thin pool. Tagged importing by the lvcreate
  // itself; a create that fails midway is removed as for a volume.
  absl::StatusOr<ImageSlot> CreateImageSlot(const std::string& name, uint64_t size_bytes) override;
  // One `lvchange --permission r --deltag hvagent_image_importing --addtag hvagent_image`.
  absl::Status SealImageSlot(const std::string& name) override;
  absl::StatusOr<DeletePlan> BeginDeleteImageSlot(const std::string& name) override;
  // Thin pools only (Unimplemented otherwise): `lvcreate -s` of the image LV tagged "hvagent",
  // then `lvextend` when spec.size_bytes is larger than the image LV.
  absl::StatusOr<VolumeInfo> CloneImageSlot(const std::string& image, const VolumeSpec& spec) override;

  absl::StatusOr<std::vector<SnapshotInfo>> ListSnapshots(const std::string& volume) override;
  absl::StatusOr<SnapshotInfo> CreateSnapshot(const std::string& volume, const std::string& name) override;
  absl::Status CheckNewSnapshot(const std::string& volume, const std::string& name) override;
  absl::Status DeleteSnapshot(const std::string& volume, const std::string& name) override;
  absl::StatusOr<RevertResult> RevertSnapshot(const std::string& volume, const std::string& name) override;
  absl::StatusOr<RevertRecovery> RecoverRevert(const std::string& volume) override;

  bool device_mapper_available() const { return dm_available_; }
  // True when the open of /dev/mapper/control succeeds.
  static bool ProbeDeviceMapper();

 private:
  absl::Status CheckConfig() const;
  // CheckConfig, the image name rule and device-mapper (images are read and written through it).
  absl::Status CheckImageCall(const std::string& name) const;
  // The image LV of that name, ready or not; NotFound naming the image.
  absl::StatusOr<lvm::LvRow> FindImage(const std::string& name);
  ImageSlot Slot(const std::string& name, const lvm::LvRow& lv) const;
  // Removes an LV a failed lvcreate may have left (lvm2 commits metadata atomically, so it is
  // there whole or not at all), and says so in the returned status.
  absl::Status RemoveLeftover(const std::string& lv, const std::string& tag, absl::Status status);
  static std::string ImageLv(const std::string& image) { return std::string(kImageLvPrefix) + image; }
  static std::string SnapshotLv(const std::string& volume, const std::string& name) {
    return std::string(kSnapshotLvPrefix) + volume + "+" + name;
  }
  // Config, the volume's name (field `volume`) and, `with_name`, the snapshot's (`snapshot`).
  absl::Status CheckSnapshotCall(const std::string& volume, const std::string& name, bool with_name = true) const;
  const lvm::LvRow* FindLv(const std::string& lv) const;  // in the cached report
  SnapshotInfo ToSnapshot(const std::string& volume, const lvm::LvRow& snap, const lvm::LvRow& origin) const;
  absl::StatusOr<lvm::LvRow> FindSnapshot(const std::string& volume, const std::string& name);
  absl::StatusOr<RevertResult> RevertThin(const lvm::LvRow& volume, const lvm::LvRow& snap);
  // A classic snapshot's copy-on-write store split off its origin (lvconvert --splitsnapshot)
  // and wiped per the pool's wipe mode, before its lvremove (lvm_snapshots.cpp says why).
  absl::Status WipeSnapshotStore(const lvm::LvRow& snap);
  // Adds the copy-on-write reserves of classic snapshots to a pool's figures.
  void AddSnapshotUsage(const lvm::Report& report, PoolInfo& info) const;
  std::vector<std::string> Argv(const std::string& subcommand, std::vector<std::string> args) const;
  Command LvmCommand(const std::string& subcommand, std::vector<std::string> args) const;
  // Runs lvm2 (storage/exec/run_checked.h, statuses quoting lvm2) and drops the cached report.
  absl::Status RunLvmChecked(const std::string& subcommand, std::vector<std::string> args);
  // The cached report, refreshed when stale. FailedPrecondition when the VG does not exist.
  absl::StatusOr<const lvm::Report*> Report(bool fresh = false);
  // One `lvm fullreport` of the VG; nullopt when the VG does not exist.
  absl::StatusOr<std::optional<lvm::Report>> FetchReport() const;
  absl::Status VgMissing() const;
  void Invalidate() { cache_.reset(); }
  absl::StatusOr<lvm::LvRow> FindOurs(const std::string& name);
  VolumeInfo ToVolume(const lvm::LvRow& lv) const;
  const lvm::LvRow* ThinPool(const lvm::Report& report) const;
  absl::StatusOr<uint64_t> RoundSize(uint64_t size, uint64_t extent) const;
  std::string LvPath(const std::string& lv) const { return "/dev/" + config_.volume_group + "/" + lv; }
  std::string LvId(const std::string& lv) const { return config_.volume_group + "/" + lv; }

  PoolConfig config_;
  CommandRunner& runner_;
  BlockWiper& wiper_;
  Options options_;
  std::unique_ptr<Clock> own_clock_;
  Clock* clock_;
  bool dm_available_ = false;

  struct Cached {
    lvm::Report report;
    Clock::TimePoint fetched_at;
  };
  std::optional<Cached> cache_;
};

}  // namespace hvagent::storage
