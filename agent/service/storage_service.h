#pragma once
// StorageService: the configured storage pools as the APIs offer them. Adds what a backend
// alone does not give: one lock per pool, deletes that wipe in the background with progress
// visible until the volume is gone, and attach/detach that keep the domain definition and the
// volume's recorded owner in step (undoing the first when the second fails).
// Ownership (storage::Ownership): a volume created for a domain (ClaimVolume with a size) is
// owned by it, every other attachment is borrowed; only ReleaseVolume deletes with a domain, and
// only what the volume's own record shows as owned by that domain.
// Locking lives here, not in the backends (which are single-threaded): one mutex per pool, held
// for each backend call. A delete's wipe, which can take minutes, runs without it: the pool's
// other volumes and every read go on, and calls that would change or use the volume being
// deleted are refused (FailedPrecondition) until it is gone or its wipe failed.

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/service/guest_quiescer.h"
#include "agent/service/journal.h"
#include "hypervisor/hypervisor.h"
#include "storage/storage_backend.h"

namespace hvagent::service {

enum class VolumeState { kAvailable, kAttached, kDeleting, kOrphaned };

// A volume recorded as attached to a domain the hypervisor does not have.
struct Orphan {
  std::string pool;
  std::string volume;
  std::string domain;
  bool operator<(const Orphan& o) const { return std::tie(pool, volume, domain) < std::tie(o.pool, o.volume, o.domain); }
};

struct VolumeStatus {
  storage::VolumeInfo volume;
  VolumeState state = VolumeState::kAvailable;
  storage::WipeProgress wipe;  // while deleting
};

// A volume wanted for a disk of a domain being created (DomainService::Create).
struct VolumeClaim {
  std::string pool;
  std::string name;
  uint64_t create_size_bytes = 0;  // > 0: create the volume; 0: an existing, free volume
  // Not empty: make the volume from this ready image of the same pool (ImageService), of
  // create_size_bytes (0: the image's size). Such a volume is created, so owned, like one with a size.
  std::string image;
  // An existing volume already recorded as owned by the domain (one a migration received for
  // it, IncomingMigrations): taken as it is. Not created here, so an undo releases it.
  bool adopt = false;
  bool Creates() const { return create_size_bytes > 0 || !image.empty(); }
};

// CreateSnapshot's answer: the snapshot, how the guest was held still and for how long.
struct SnapshotOutcome {
  storage::SnapshotInfo snapshot;
  QuiesceMode quiesce = QuiesceMode::kNone;
  uint64_t paused_ms = 0;
  uint64_t total_ms = 0;
  std::string note;
};

struct RevertOutcome {
  VolumeStatus volume;
  bool snapshot_kept = true;
};

class StorageService {
 public:
  // `pool_free_floor_bytes`: the free space every pool keeps (capacity.pool_free_floor_mib);
  // creating or growing a volume that would go below it is refused (admission.h, 507).
  StorageService(hv::Hypervisor& hypervisor, std::vector<std::unique_ptr<storage::StorageBackend>> backends,
                 uint64_t pool_free_floor_bytes = 0);
  ~StorageService();  // waits for deletes in progress

  absl::StatusOr<std::vector<storage::PoolInfo>> ListPools();
  absl::StatusOr<storage::PoolInfo> GetPool(const std::string& pool);
  // Every pool on its own (one failing pool does not hide the others), for capacity and
  // metrics. Never waits for a busy pool (a tool hung on a sick disk holds it until its
  // deadline): that pool answers with the figures of its last successful read, or Unavailable
  // when there is none yet.
  std::vector<std::pair<std::string, absl::StatusOr<storage::PoolInfo>>> ListPoolsEach();
  absl::StatusOr<std::vector<VolumeStatus>> ListVolumes(const std::string& pool);
  absl::StatusOr<VolumeStatus> GetVolume(const std::string& pool, const std::string& name);
  absl::StatusOr<VolumeStatus> CreateVolume(const std::string& pool, const storage::VolumeSpec& spec);
  // Creates the volume and writes it with fill(volume) before anything else may use it: until
  // fill returns, attach, resize, claim and delete of it are refused (FailedPrecondition "is
  // being written from <source>"), and the pool's lock is not held, so a long copy stops no
  // other volume. A failing fill deletes the volume again (in the background, as DeleteVolume).
  // `owner` not empty: the volume is recorded as owned by that domain from its creation on
  // (before the fill), so a crash mid-fill leaves a volume the domain's journalled create undoes.
  // `cancel` not null: a DeleteVolume of the volume while it is written sets it (and answers
  // with the volume as DELETING) instead of being refused; fill is to stop with Cancelled.
  absl::StatusOr<VolumeStatus> CreateVolumeFilled(const std::string& pool, const storage::VolumeSpec& spec,
                                                  absl::string_view source,
                                                  const std::function<absl::Status(const storage::VolumeInfo&)>& fill,
                                                  const std::string& owner = "", std::atomic<bool>* cancel = nullptr);
  // AlreadyExists naming `name_field` when the pool has a volume `name`; the pool's free space
  // must hold `bytes` (thick pools) and stay above the configured floor (RESOURCE_EXHAUSTED
  // naming `size_field`). A check made before a long operation starts, so that its caller hears
  // of the refusal at once.
  absl::Status CheckRoomFor(const std::string& pool, const std::string& name, uint64_t bytes,
                            absl::string_view name_field, absl::string_view size_field);
  // A volume sharing the image's blocks (StorageBackend::CloneImageSlot: thin LVM pools), made
  // under the pool's lock in one backend call, so it is whole or absent. Unimplemented when the
  // pool cannot share blocks (the caller copies instead, CreateVolumeFilled). `owner` as above.
  absl::StatusOr<VolumeStatus> CreateVolumeCloned(const std::string& pool, const storage::VolumeSpec& spec,
                                                  const std::string& image, const std::string& owner = "");
  absl::StatusOr<VolumeStatus> ResizeVolume(const std::string& pool, const std::string& name, uint64_t size);
  // Returns at once with state kDeleting; the wipe and removal run in the background. A volume
  // with snapshots is refused (FailedPrecondition naming them) unless `cascade`, which deletes
  // them first (each one whole: a crash between two leaves fewer snapshots, nothing half-made).
  absl::StatusOr<VolumeStatus> DeleteVolume(const std::string& pool, const std::string& name, bool cascade = false);

  // Snapshots (storage_snapshots.cpp, docs/snapshots.md). A volume of a running domain is
  // snapshotted with its guest held still (GuestQuiescer), under a journalled operation, with
  // the pool's lock taken first so the hold does not wait for it.
  absl::StatusOr<SnapshotOutcome> CreateSnapshot(const std::string& pool, const std::string& volume,
                                                 const std::string& name);
  absl::StatusOr<std::vector<storage::SnapshotInfo>> ListSnapshots(const std::string& pool, const std::string& volume);
  absl::Status DeleteSnapshot(const std::string& pool, const std::string& volume, const std::string& name);
  // FailedPrecondition while the volume's domain runs (paused counts as running). Journalled.
  absl::StatusOr<RevertOutcome> RevertSnapshot(const std::string& pool, const std::string& volume,
                                               const std::string& name);
  // The journal the snapshot operations are recorded in (null: none; tests). Set before serving.
  void SetJournal(Journal* journal) { journal_ = journal; }
  // Finishes what a crash left of snapshot operations: resumes or thaws a held guest, finishes or
  // undoes a revert. Returns one line per operation.
  std::vector<std::string> RecoverSnapshots();
  // The volume is borrowed by the domain. target empty: the first free target with the prefix
  // of the domain's first disk (vd/xvd).
  absl::StatusOr<VolumeStatus> AttachVolume(const std::string& pool, const std::string& name,
                                            const std::string& domain, std::string target, bool readonly);
  // Takes the volume's disk out of its domain (definition and running guest), then clears the
  // record. NotFound: no such pool or volume, or the volume is attached to no domain (nothing to
  // detach: done). Aborted: the guest did not release the device (the hot-unplug was refused or
  // did not finish in the hypervisor's wait; its reason in the message); the volume stays
  // attached, the unplug request may still complete, so retrying is right. A domain that no
  // longer exists just releases the volume. `from_domain` not empty: the caller's idea of the
  // volume's domain, checked under the volume's hold (InvalidArgument for a malformed name,
  // FailedPrecondition naming `domain` when it is attached to another one; nothing changes).
  absl::StatusOr<VolumeStatus> DetachVolume(const std::string& pool, const std::string& name,
                                            const std::string& from_domain = "");
  // For an operator keeping a disk its domain created (a root disk): the owned volume becomes
  // borrowed, so deleting the domain releases it instead of deleting it. A borrowed volume is
  // answered as it is; FailedPrecondition when the volume is attached to no domain.
  absl::StatusOr<VolumeStatus> ReleaseOwnership(const std::string& pool, const std::string& name);

  // For DomainService, which defines the domain itself (no hypervisor call here):
  // Reserves a volume for `domain`: creates it when the claim asks so and records it as owned by
  // `domain`, or records an existing free one as borrowed. Fails with nothing changed (a volume it
  // created is deleted again).
  absl::StatusOr<storage::VolumeInfo> ClaimVolume(const VolumeClaim& claim, const std::string& domain);
  // Undoes a claim, or frees a deleted domain's volume: clears the record of a volume attached to
  // `domain` and, with `delete_if_owned`, deletes it in the background like DeleteVolume when
  // that record shows it owned by `domain`. A borrowed volume is only ever released here, and a
  // volume attached to another domain or to none is left as it is.
  absl::Status ReleaseVolume(const std::string& pool, const std::string& name, const std::string& domain,
                             bool delete_if_owned);
  // Volumes recorded as attached to `domain`, over all pools (sorted by pool, then name), with
  // their ownership.
  absl::StatusOr<std::vector<storage::VolumeInfo>> VolumesOf(const std::string& domain);

  // Volumes whose recorded owner is not among `domains` (every domain the hypervisor has).
  // Callers hold off creates and deletes meanwhile (DomainService::Reconcile).
  absl::StatusOr<std::vector<Orphan>> FindOrphans(const std::set<std::string>& domains);
  // What the last reconciliation found: shown as kOrphaned and counted per pool.
  void SetOrphans(std::vector<Orphan> orphans);

  // Blocks until background deletes finished (tests, shutdown).
  void WaitForDeletes();

  // For ImageService, whose image slots are the backend's own objects: runs fn(backend) under
  // the pool's lock, as every backend call runs (backends are single-threaded). An import's long
  // writes go to the slot's device between such calls, holding no lock. NotFound naming `pool`.
  template <typename Fn>
  auto WithBackend(const std::string& pool, Fn&& fn) -> decltype(fn(std::declval<storage::StorageBackend&>())) {
    auto p = Find(pool);
    if (!p.ok()) return p.status();
    std::lock_guard lock((*p)->mu);
    return fn(*(*p)->backend);
  }
  std::vector<std::string> PoolNames() const;
  // FailedPrecondition while the volume is being deleted or written (CreateVolumeFilled): for
  // ImageService, which reads volumes (Export, CreateFromVolume).
  absl::Status RefuseBusy(const std::string& pool, const std::string& name) const {
    return RefuseDeleting(pool, name);
  }
  // For ImageService: an image slot's delete in a volume's three steps, the wipe (minutes on a
  // big image) without the pool's lock. The caller keeps other calls off the slot meanwhile.
  absl::Status DeleteImageSlot(const std::string& pool, const std::string& name);

 private:
  struct Pool {
    std::unique_ptr<storage::StorageBackend> backend;
    std::mutex mu;  // one backend call per pool at a time (but for WipeForDelete)
    std::mutex last_mu;
    std::optional<storage::PoolInfo> last;  // the last successful GetPool, for ListPoolsEach
  };
  struct Deleting {
    storage::VolumeInfo volume;
    storage::WipeProgress progress;
  };

  // A volume read under its pool's lock, which the holder keeps: the way in for calls that act
  // on one volume. kRefuseDeleting for calls that would change or use it.
  enum class Fence { kRefuseDeleting, kAny };
  struct Held {
    Pool* pool;
    std::unique_lock<std::mutex> lock;
    storage::VolumeInfo volume;
  };

  absl::StatusOr<Pool*> Find(const std::string& pool);
  // ClaimVolume of an `adopt` claim (the pool's lock held).
  absl::StatusOr<storage::VolumeInfo> AdoptOwned(Pool& pool, const VolumeClaim& claim, const std::string& domain);
  absl::StatusOr<Held> Hold(const std::string& pool, const std::string& name, Fence fence);
  // FailedPrecondition while the volume is being deleted or written by CreateVolumeFilled.
  absl::Status RefuseDeleting(const std::string& pool, const std::string& name) const;
  // Admission (admission.h): whether `asked_bytes` more fit the pool above its floor. Called
  // with the pool's lock held, which serialises every change to it. A thin pool's volumes take
  // blocks only when written: there only the floor itself is checked.
  absl::Status AdmitSpace(Pool& pool, const std::string& pool_name, uint64_t asked_bytes, absl::string_view field);
  VolumeStatus StatusOf(const storage::VolumeInfo& v) const;
  std::string Key(const std::string& pool, const std::string& name) const { return pool + "/" + name; }

  // DeleteVolume's check of the volume's snapshots (pool lock held).
  absl::Status DeleteSnapshotsFirst(Pool& pool, const std::string& name, bool cascade);
  // Whether `domain` runs (paused included); false when it does not exist.
  bool DomainActive(const std::string& domain);
  uint64_t BeginOp(v1::OperationKind kind, const std::string& domain, const std::string& pool,
                   const std::string& volume, const std::string& snapshot);
  void EndOp(uint64_t op, const absl::Status& status);

  hv::Hypervisor& hv_;
  Journal* journal_ = nullptr;
  const uint64_t pool_free_floor_bytes_;
  std::map<std::string, std::unique_ptr<Pool>> pools_;
  mutable std::mutex deleting_mu_;
  std::map<std::string, Deleting> deleting_;
  struct Filling {
    std::string source;                    // what the volume is written from
    std::atomic<bool>* cancel = nullptr;   // set by DeleteVolume; null: the fill cannot be cancelled
  };
  std::map<std::string, Filling> filling_;  // by volume key; guarded by deleting_mu_
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::vector<Worker> workers_;
  mutable std::mutex orphans_mu_;
  std::set<Orphan> orphans_;  // guarded by deleting_mu_; finished ones are joined on the next delete
};

}  // namespace hvagent::service
