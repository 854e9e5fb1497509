#pragma once
// PartitionBackend: a pool that is one whole disk (PoolConfig::disk) with a GPT label; volumes
// are GPT partitions named "hvagent:<volume>" ("hvagent:<volume>@<domain>" while attached,
// '=' instead of '@' when the domain owns the volume; see gpt_layout.h for the exact rule: volume
// names are at most 20 characters here, and volume plus domain at most 27). The partition table is the only record, so restarts need no database.
// Partitions without that label are not ours: never listed, changed or removed, and their
// space is never handed out.
//
// Tools (argv only, through CommandRunner): `sfdisk --json` reads the table; `parted -s` makes
// every change (mklabel, mkpart, resizepart, name, rm) because it takes everything from argv
// (sfdisk wants a script on stdin) and tells the kernel about each changed partition with
// BLKPG, which works while other partitions of the disk are open; `partx -d` drops a partition
// from the kernel before it leaves the table, so a partition still open fails cleanly with the
// table untouched; `blkid -p` checks a disk without a table is really empty before Prepare
// labels it. Partition nodes come from devtmpfs as soon as the kernel knows the partition (no
// udev needed); the backend waits for the node and never creates one.
//
// Layout: every partition starts and ends on a 1 MiB boundary; sizes are rounded up to 1 MiB.
// Create takes the first free region large enough. capacity_bytes is the 1 MiB-aligned span
// usable for partitions (disk minus GPT overhead); free_bytes is the sum of all free aligned
// regions; a create larger than the largest region fails with ResourceExhausted naming both.
// Resize grows in place only, into free space directly after the partition; otherwise
// ResourceExhausted (the pool lacks room for this volume, as for Create).
// Delete: FailedPrecondition while attached; wipes through BlockWiper per PoolConfig::wipe, then
// removes the partition (partx -d, parted rm). The attachment record is the guard against
// wiping a disk in use: the wiper's O_EXCL open refuses mounted or claimed partitions, but a
// plain open (e.g. a QEMU not recorded as attached) is only noticed after the wipe, when
// `partx -d` fails and the partition stays (FailedPrecondition).
// Single-threaded (storage_backend.h); FinishDelete removes the partition BeginDelete found.
// Costs (tool invocations): create 3, list / get / pool 1, delete 3 (+ the wipe), resize 3,
// attach/detach 2, Prepare 1 (4 when it labels the disk). A failed create adds a rollback.

#include <chrono>
#include <functional>
#include <string>

#include "storage/block_wiper.h"
#include "storage/exec/command_runner.h"
#include "storage/partition/gpt_layout.h"
#include "storage/storage_backend.h"

namespace hvagent::storage {

class PartitionBackend final : public StorageBackend {
 public:
  struct Options {
    std::string sfdisk = "/usr/sbin/sfdisk";
    std::string parted = "/usr/sbin/parted";
    std::string partx = "/usr/bin/partx";
    std::string blkid = "/usr/sbin/blkid";
    std::chrono::milliseconds timeout{30000};
    // How long to wait for a new partition's /dev node, polled every 10 ms.
    std::chrono::milliseconds node_wait{5000};
    // Whether `path` exists as a block device; the default stats it. Unit tests replace it.
    std::function<bool(const std::string& path)> node_ready;
  };

  PartitionBackend(PoolConfig config, CommandRunner& runner, BlockWiper& wiper)
      : PartitionBackend(std::move(config), runner, wiper, Options{}) {}
  PartitionBackend(PoolConfig config, CommandRunner& runner, BlockWiper& wiper, Options options);

  const PoolConfig& config() const override { return config_; }
  // Creates an empty GPT when the disk has no partition table and no signature at all; refuses
  // (FailedPrecondition) a disk with another label (e.g. dos) or with any content blkid knows.
  absl::Status Prepare() override;
  absl::StatusOr<PoolInfo> GetPool() override;
  absl::StatusOr<std::vector<VolumeInfo>> ListVolumes() override;
  absl::StatusOr<VolumeInfo> GetVolume(const std::string& name) override;
  absl::StatusOr<VolumeInfo> CreateVolume(const VolumeSpec& spec) override;
  absl::StatusOr<VolumeInfo> ResizeVolume(const std::string& name, uint64_t new_size_bytes) override;
  absl::StatusOr<DeletePlan> BeginDelete(const std::string& name) override;
  absl::Status WipeForDelete(const DeletePlan& plan, const ProgressFn& progress) override;
  absl::Status FinishDelete(const DeletePlan& plan) override;
  // FailedPrecondition when attached to another domain (detach first); InvalidArgument when the
  // domain name is not [A-Za-z0-9][A-Za-z0-9._+-]* or does not fit beside the volume's name.
  // One `parted name` records domain and ownership together.
  absl::Status SetAttachment(const std::string& name, const std::string& domain, Ownership ownership) override;

  // Images are partitions named "hvimage~<name>" while imported, "hvimage:<name>" once sealed.
  absl::StatusOr<std::vector<ImageSlot>> ListImageSlots() override;
  absl::StatusOr<ImageSlot> CreateImageSlot(const std::string& name, uint64_t size_bytes) override;
  absl::Status SealImageSlot(const std::string& name) override;
  absl::StatusOr<DeletePlan> BeginDeleteImageSlot(const std::string& name) override;

 private:
  struct Found {
    gpt::Table table;
    gpt::Partition partition;
    gpt::VolumeLabel label;
  };

  absl::Status CheckConfig() const;
  absl::StatusOr<CommandResult> RunTool(std::vector<std::string> argv) const;
  absl::Status RunChecked(std::vector<std::string> argv) const;
  absl::StatusOr<gpt::Table> ReadTable() const;
  absl::StatusOr<Found> FindVolume(const std::string& name) const;
  VolumeInfo Info(const gpt::Table& table, const gpt::Partition& p, const gpt::VolumeLabel& label) const;
  bool WaitForNode(const std::string& path) const;
  void RollBackCreate(const std::string& label);
  // Takes a wiped partition out of the kernel, then the table (partx -d, parted rm); `what`
  // names it in messages. FailedPrecondition while it is open.
  absl::Status RemovePartition(const std::string& what, const std::string& path, uint32_t number);
  absl::StatusOr<std::pair<gpt::Table, gpt::Partition>> CreatePartition(const gpt::Table& table,
                                                                         const std::string& label, uint64_t requested);
  absl::StatusOr<std::pair<gpt::Table, gpt::Partition>> FindImage(const std::string& name) const;
  ImageSlot Slot(const gpt::Table& table, const gpt::Partition& p, const gpt::ImageLabel& label) const;

  PoolConfig config_;
  CommandRunner& runner_;
  BlockWiper& wiper_;
  Options options_;
};

}  // namespace hvagent::storage
