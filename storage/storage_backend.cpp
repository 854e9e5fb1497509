#include "storage/storage_backend.h"

#include "absl/strings/str_cat.h"

namespace hvagent::storage {
namespace {
absl::Status NoImages(const PoolConfig& c) {
  return absl::FailedPreconditionError(
      absl::StrCat("pool: '", c.name, "' cannot hold images (images are kept on partition and LVM pools)"));
}
}  // namespace

absl::StatusOr<std::vector<ImageSlot>> StorageBackend::ListImageSlots() { return NoImages(config()); }
absl::StatusOr<ImageSlot> StorageBackend::CreateImageSlot(const std::string&, uint64_t) { return NoImages(config()); }
absl::Status StorageBackend::SealImageSlot(const std::string&) { return NoImages(config()); }
absl::StatusOr<DeletePlan> StorageBackend::BeginDeleteImageSlot(const std::string&) { return NoImages(config()); }
absl::StatusOr<VolumeInfo> StorageBackend::CloneImageSlot(const std::string&, const VolumeSpec&) {
  return absl::UnimplementedError(absl::StrCat("pool '", config().name, "' cannot share an image's blocks"));
}

}  // namespace hvagent::storage
