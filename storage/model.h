#pragma once
// Plain model types of the storage layer. No proto, no libvirt: agent/api converts.

#include <cstdint>
#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace hvagent::storage {

enum class PoolType { kLvm, kPartition };

// How a volume's blocks are cleared before the volume is removed.
enum class WipeMode { kZero, kDiscard, kNone };

// One pool the operator allows the agent to manage (from the config file). Nothing outside
// the configured pools is ever touched.
struct PoolConfig {
  std::string name;  // API name of the pool, [A-Za-z0-9._-]{1,64}
  PoolType type = PoolType::kLvm;
  // LVM: the volume group, created on `physical_volumes` if it does not exist yet.
  std::string volume_group;
  std::vector<std::string> physical_volumes;
  std::string thin_pool;  // LVM: thin pool LV inside the VG; empty = thick LVs
  // Partition: a whole disk (e.g. /dev/sdb) on which the agent creates GPT partitions.
  std::string disk;
  WipeMode wipe = WipeMode::kZero;
  // Deadline of each lvm2 / partition tool call (a sick disk can hang them); 0: the backend's
  // default (lvm2 60 s, partition tools 30 s). Past it the tool is killed.
  std::chrono::seconds tool_timeout{0};
  // Thick LVM pools: a classic snapshot's copy-on-write area, in percent of its volume's size
  // (rounded up to whole extents). Once the guest has rewritten that much of the volume the
  // snapshot is invalid: hvagent_pool_snapshot_fullest_percent and an alert watch it.
  uint32_t snapshot_reserve_percent = 20;
};

struct PoolInfo {
  std::string name;
  PoolType type = PoolType::kLvm;
  uint64_t capacity_bytes = 0;
  uint64_t free_bytes = 0;
  uint32_t volume_count = 0;
  WipeMode wipe = WipeMode::kZero;
  uint32_t orphaned_volume_count = 0;  // set by StorageService from the last reconciliation
  // LVM pools with a thin pool: how full its data and metadata are (lvs data_percent,
  // metadata_percent), 0-100. A full thin pool errors or pauses every guest on it.
  std::optional<double> thin_data_percent;
  std::optional<double> thin_metadata_percent;
  // Classic (thick LVM) snapshots: their copy-on-write areas together, how much of them is
  // used, and the fullest one in percent (a full one is invalid: its point in time is lost).
  uint64_t snapshot_reserve_bytes = 0;
  uint64_t snapshot_reserve_used_bytes = 0;
  double snapshot_fullest_percent = 0;
  uint32_t snapshot_count = 0;
};

// What a volume attached to a domain is to it. kOwned: created as part of the domain (a root
// disk); deleting the domain with its volumes deletes it. kBorrowed: attached to the domain
// afterwards, or an existing volume named when the domain was created (a data volume of Nova or
// an operator); deleting the domain only ever releases it. A free volume is kNone. Recorded in
// the volume's own metadata beside the attachment (LVM tags, the GPT partition name).
enum class Ownership { kNone, kOwned, kBorrowed };

inline const char* OwnershipName(Ownership o) {
  return o == Ownership::kOwned ? "owned" : o == Ownership::kBorrowed ? "borrowed" : "none";
}

struct VolumeSpec {
  std::string name;  // [A-Za-z0-9][A-Za-z0-9._-]{0,62}; unique within the pool
  uint64_t size_bytes = 0;
};

struct VolumeInfo {
  std::string pool;
  std::string name;
  std::string path;  // block device path handed to the hypervisor (/dev/vg/lv, /dev/sdb3)
  uint64_t size_bytes = 0;
  std::string attached_to;  // domain name; empty when free
  Ownership ownership = Ownership::kNone;  // kNone exactly when attached_to is empty
};

// A golden image's place in a pool (storage/image): a volume-like area marked as an image, not a
// volume, so it is never listed, attached or handed out as one. `ready` is false while its
// import runs (a crash leaves it so, and recovery removes it). The image's record (format,
// size, checksum) is kept by storage/image in the area's last kImageRecordBytes.
struct ImageSlot {
  std::string pool;
  std::string name;
  std::string path;  // block device
  uint64_t size_bytes = 0;  // the whole area, record included
  bool ready = false;
};

// A point-in-time copy of a volume (StorageBackend::CreateSnapshot). Never a volume: not listed,
// attached or handed out as one. `thin`: shares the thin pool's blocks (no reserve); otherwise a
// classic snapshot with a copy-on-write area of `reserve_bytes`, `reserve_used_percent` of it
// used; `valid` false once that area overflowed (lvm2 then drops the snapshot's content).
struct SnapshotInfo {
  std::string pool;
  std::string volume;
  std::string name;
  uint64_t size_bytes = 0;  // the volume's size when taken
  std::string path;         // its block device (read by an export; never handed to a guest)
  bool thin = false;
  uint64_t reserve_bytes = 0;
  double reserve_used_percent = 0;
  bool valid = true;
};

// What RevertSnapshot did: `snapshot_kept` false when the snapshot was consumed (a classic
// snapshot is merged into its volume); `recovered` when it finished one a crash cut short.
struct RevertResult {
  bool snapshot_kept = true;
};

// What RecoverRevert found a crash had left of a revert, and did about it.
struct RevertRecovery {
  enum class Outcome { kNothing, kUndone, kFinished };
  Outcome outcome = Outcome::kNothing;
  std::string what;
};

// Progress of a long wipe, reported as it goes (bytes done of total).
struct WipeProgress {
  uint64_t done_bytes = 0;
  uint64_t total_bytes = 0;
};

// A volume on its way out (StorageBackend::BeginDelete): what the later steps act on.
struct DeletePlan {
  VolumeInfo volume;  // volume.path is the device the wipe clears
  uint32_t partition_number = 0;  // partition pools: the table entry FinishDelete removes
  bool image = false;             // an image slot's delete (BeginDeleteImageSlot), not a volume's
};

}  // namespace hvagent::storage
