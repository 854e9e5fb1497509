#include "storage/storage_backend.h"

#include "absl/strings/str_cat.h"

namespace hvagent::storage {
namespace {
absl::Status NoImages(const PoolConfig& c) {
  return absl::FailedPreconditionError(
      absl::StrCat("pool: '", c.name, "' cannot hold images (images are kept on partition and LVM pools)"));
}
absl::Status NoSnapshots(const PoolConfig& c) {
  const char* kind = c.type == PoolType::kPartition ? "a partition pool" : "not an LVM pool";
  return absl::UnimplementedError(absl::StrCat("pool: '", c.name, "' is ", kind,
                                               ", which has no volume snapshots (LVM pools have, thin or classic)"));
}
}  // namespace

absl::StatusOr<std::vector<SnapshotInfo>> StorageBackend::ListSnapshots(const std::string&) {
  return NoSnapshots(config());
}
absl::StatusOr<SnapshotInfo> StorageBackend::CreateSnapshot(const std::string&, const std::string&) {
  return NoSnapshots(config());
}
absl::Status StorageBackend::CheckNewSnapshot(const std::string&, const std::string&) {
  return NoSnapshots(config());
}
absl::Status StorageBackend::DeleteSnapshot(const std::string&, const std::string&) { return NoSnapshots(config()); }
absl::StatusOr<RevertResult> StorageBackend::RevertSnapshot(const std::string&, const std::string&) {
  return NoSnapshots(config());
}
absl::StatusOr<RevertRecovery> StorageBackend::RecoverRevert(const std::string&) { return RevertRecovery{}; }

absl::StatusOr<std::vector<ImageSlot>> StorageBackend::ListImageSlots() { return NoImages(config()); }
absl::StatusOr<ImageSlot> StorageBackend::CreateImageSlot(const std::string&, uint64_t) { return NoImages(config()); }
absl::Status StorageBackend::SealImageSlot(const std::string&) { return NoImages(config()); }
absl::StatusOr<DeletePlan> StorageBackend::BeginDeleteImageSlot(const std::string&) { return NoImages(config()); }
absl::StatusOr<VolumeInfo> StorageBackend::CloneImageSlot(const std::string&, const VolumeSpec&) {
  return absl::UnimplementedError(absl::StrCat("pool '", config().name, "' cannot share an image's blocks"));
}

}  // namespace hvagent::storage
