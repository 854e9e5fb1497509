#pragma once
// StorageBackend: one configured pool of block devices for VM disks (an LVM volume group or a
// GPT disk). Single-threaded: its caller (agent/service/StorageService) makes one call at a time
// per pool, the single exception being WipeForDelete (below). Implementations run external tools
// only through CommandRunner (storage/exec/run_checked.h), validate every name before any call,
// never touch anything outside their pool, and leave nothing half-created when a step fails.
// Errors: NotFound (volume), AlreadyExists, InvalidArgument (naming the field),
// ResourceExhausted (pool full), FailedPrecondition (volume attached), Unavailable/Internal
// (the tool failed; the message quotes the tool's own words).

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/model.h"

namespace hvagent::storage {

class StorageBackend {
 public:
  using ProgressFn = std::function<void(const WipeProgress&)>;

  virtual ~StorageBackend() = default;

  virtual const PoolConfig& config() const = 0;
  // Creates the VG (LVM) or checks the disk (partition) if needed. Idempotent.
  virtual absl::Status Prepare() = 0;
  virtual absl::StatusOr<PoolInfo> GetPool() = 0;
  virtual absl::StatusOr<std::vector<VolumeInfo>> ListVolumes() = 0;
  virtual absl::StatusOr<VolumeInfo> GetVolume(const std::string& name) = 0;
  virtual absl::StatusOr<VolumeInfo> CreateVolume(const VolumeSpec& spec) = 0;
  // Grows a volume; shrinking is refused (InvalidArgument), it would cut a guest's filesystem.
  virtual absl::StatusOr<VolumeInfo> ResizeVolume(const std::string& name, uint64_t new_size_bytes) = 0;

  // Deleting is three steps so that a wipe, which can take minutes, does not hold the pool:
  //   BeginDelete   checks the volume may go (FailedPrecondition while attached, or when it
  //                 must be wiped and cannot be) and readies its device (activates an LV);
  //   WipeForDelete clears the plan's device per the pool's WipeMode. It touches that device
  //                 only, so it may run beside the backend's other calls; the caller keeps
  //                 every other call away from this volume meanwhile;
  //   FinishDelete  removes the volume. Not called when the wipe failed: the volume is kept.
  virtual absl::StatusOr<DeletePlan> BeginDelete(const std::string& name) = 0;
  virtual absl::Status WipeForDelete(const DeletePlan& plan, const ProgressFn& progress) = 0;
  virtual absl::Status FinishDelete(const DeletePlan& plan) = 0;
  // The three in a row, for callers that have the pool to themselves (tools, tests).
  absl::Status DeleteVolume(const std::string& name, const ProgressFn& progress) {
    auto plan = BeginDelete(name);
    if (!plan.ok()) return plan.status();
    if (auto s = WipeForDelete(*plan, progress); !s.ok()) return s;
    return FinishDelete(*plan);
  }

  // Records (domain non-empty) or clears (domain empty, ownership kNone) the domain that uses the
  // volume and what the volume is to it, in one metadata change, so a crash never leaves an
  // attachment without its ownership. The same domain again changes only the ownership (how an
  // owned volume is handed over to be kept). InvalidArgument when ownership and domain
  // disagree; FailedPrecondition when attached to another domain.
  virtual absl::Status SetAttachment(const std::string& name, const std::string& domain, Ownership ownership) = 0;

  // Golden images (agent/service/image_service.h). A backend without image support answers
  // FailedPrecondition; names follow the volume name rule, in a namespace of their own.
  // Slots, importing ones included, sorted by name.
  virtual absl::StatusOr<std::vector<ImageSlot>> ListImageSlots();
  // A new slot, not ready, of at least size_bytes (rounded up as volumes are). AlreadyExists
  // when an image of that name exists; ResourceExhausted when the pool lacks room.
  virtual absl::StatusOr<ImageSlot> CreateImageSlot(const std::string& name, uint64_t size_bytes);
  // Marks the slot ready: one metadata change, after its bytes and record are on disk.
  virtual absl::Status SealImageSlot(const std::string& name);
  // The first step of a slot's delete, ready or not: the slot is marked not ready (a copy from
  // it is refused from here, and a crash during the wipe leaves an unfinished slot that recovery
  // removes), then WipeForDelete and FinishDelete go on as for a volume.
  virtual absl::StatusOr<DeletePlan> BeginDeleteImageSlot(const std::string& name);
  // A new volume that shares the ready image slot's blocks (copy-on-write), of spec.size_bytes
  // (at least the slot's size; the caller checks). Unimplemented when the backend cannot share
  // blocks (the caller then copies the image onto a new volume); otherwise as CreateVolume, and
  // NotFound / FailedPrecondition for a slot that is missing or not ready.
  virtual absl::StatusOr<VolumeInfo> CloneImageSlot(const std::string& image, const VolumeSpec& spec);
  // Snapshots of a volume (docs/snapshots.md). A backend without them (partition pools) answers
  // Unimplemented naming the pool's kind. Names: [A-Za-z0-9][A-Za-z0-9._-]{0,47}
  // (InvalidArgument naming `snapshot`); NotFound naming `volume` or `snapshot`.
  // The volume's snapshots, sorted by name.
  virtual absl::StatusOr<std::vector<SnapshotInfo>> ListSnapshots(const std::string& volume);
  // One metadata change: whole or absent. ResourceExhausted when a classic snapshot's reserve
  // does not fit; AlreadyExists for a name the volume's snapshots already have.
  virtual absl::StatusOr<SnapshotInfo> CreateSnapshot(const std::string& volume, const std::string& name);
  // Every refusal CreateSnapshot would answer before lvm2 runs (names, missing volume, taken
  // name, no device-mapper), for a caller that must know before it pauses a guest.
  virtual absl::Status CheckNewSnapshot(const std::string& volume, const std::string& name);
  virtual absl::Status DeleteSnapshot(const std::string& volume, const std::string& name);
  // The volume's content becomes the snapshot's. The caller makes sure nothing uses the volume
  // (its domain is not running). A revert of more than one metadata change can be cut short
  // by a crash; RecoverRevert(volume) finishes (or undoes) it from what the pool shows, and
  // answers what it did ("" when there was nothing to do).
  virtual absl::StatusOr<RevertResult> RevertSnapshot(const std::string& volume, const std::string& name);
  virtual absl::StatusOr<RevertRecovery> RecoverRevert(const std::string& volume);

  // The three in a row, for callers that have the pool to themselves (tests).
  absl::Status DeleteImageSlot(const std::string& name, const ProgressFn& progress) {
    auto plan = BeginDeleteImageSlot(name);
    if (!plan.ok()) return plan.status();
    if (auto s = WipeForDelete(*plan, progress); !s.ok()) return s;
    return FinishDelete(*plan);
  }
};

}  // namespace hvagent::storage
