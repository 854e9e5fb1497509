#pragma once
// FakeStorageBackend: an in-memory pool for service-level tests, with failure injection.

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "absl/strings/str_cat.h"
#include "storage/storage_backend.h"

namespace hvagent::testing {

class FakeStorageBackend final : public storage::StorageBackend {
 public:
  explicit FakeStorageBackend(storage::PoolConfig config, uint64_t capacity = 1ULL << 30)
      : config_(std::move(config)), capacity_(capacity) {}

  absl::Status fail_set_attachment;
  absl::Status fail_get_pool;
  absl::Status fail_wipe;
  std::function<void()> during_wipe;
  std::vector<std::string> calls;
  // Set: the pool holds images, each slot (and each volume) a regular file of this directory
  // (ext4 takes the O_DIRECT writes the image code does). Empty: images are refused as by a
  // backend without them, and volumes are names only.
  std::string image_dir;
  // Set: CloneImageSlot makes a volume sharing the image's blocks, as a thin LVM pool does
  // (recorded as "clone-image <image> <volume>"); unset: Unimplemented, the caller copies.
  bool can_clone = false;
  // Set: volumes are sparse files there ("vol-<name>"), which tests read and write.
  std::string volume_dir;

  // Set: the pool takes snapshots (names only; "snapshot <volume> <name>" etc. in calls), and
  // fail_snapshot is what a create answers; the partition pool's Unimplemented otherwise.
  bool snapshots = false;
  absl::Status fail_snapshot;
  // Called inside CreateSnapshot (to look at the guest while it is held).
  std::function<void()> during_snapshot;

  absl::StatusOr<std::vector<storage::SnapshotInfo>> ListSnapshots(const std::string& volume) override {
    if (!snapshots) return StorageBackend::ListSnapshots(volume);
    if (!volumes_.contains(volume)) return absl::NotFoundError(absl::StrCat("volume '", volume, "' not found"));
    std::vector<storage::SnapshotInfo> out;
    for (const auto& [key, snap] : snaps_) {
      if (key.first == volume) out.push_back(snap);
    }
    return out;
  }
  absl::Status CheckNewSnapshot(const std::string& volume, const std::string& name) override {
    if (!snapshots) return StorageBackend::CheckNewSnapshot(volume, name);
    if (name.empty() || name.find_first_of("/.") == 0 || name.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot: '", name, "' is not a valid snapshot name"));
    }
    if (!volumes_.contains(volume)) return absl::NotFoundError(absl::StrCat("volume '", volume, "' not found"));
    if (snaps_.contains({volume, name})) return absl::AlreadyExistsError("snapshot: exists");
    return absl::OkStatus();
  }
  absl::StatusOr<storage::SnapshotInfo> CreateSnapshot(const std::string& volume, const std::string& name) override {
    if (auto s = CheckNewSnapshot(volume, name); !s.ok()) return s;
    calls.push_back("snapshot " + volume + " " + name);
    if (during_snapshot) during_snapshot();
    if (!fail_snapshot.ok()) return fail_snapshot;
    storage::SnapshotInfo snap{.pool = config_.name, .volume = volume, .name = name,
                               .size_bytes = volumes_[volume].size_bytes, .thin = true};
    // With volume files: the snapshot is a copy of the volume's file beside it, as it was.
    if (!volumes_[volume].path.empty() && volumes_[volume].path.rfind("/dev/", 0) != 0) {
      snap.path = volumes_[volume].path + "@" + name;
      std::filesystem::copy_file(volumes_[volume].path, snap.path, std::filesystem::copy_options::overwrite_existing);
    }
    snaps_[{volume, name}] = snap;
    return snap;
  }
  absl::Status DeleteSnapshot(const std::string& volume, const std::string& name) override {
    if (!snapshots) return StorageBackend::DeleteSnapshot(volume, name);
    calls.push_back("delete-snapshot " + volume + " " + name);
    if (snaps_.erase({volume, name}) == 0) return absl::NotFoundError("snapshot: not found");
    return absl::OkStatus();
  }
  absl::StatusOr<storage::RevertResult> RevertSnapshot(const std::string& volume, const std::string& name) override {
    if (!snapshots) return StorageBackend::RevertSnapshot(volume, name);
    calls.push_back("revert " + volume + " " + name);
    if (!snaps_.contains({volume, name})) return absl::NotFoundError("snapshot: not found");
    return storage::RevertResult{.snapshot_kept = true};
  }

  const storage::PoolConfig& config() const override { return config_; }
  absl::Status Prepare() override { return absl::OkStatus(); }
  absl::StatusOr<storage::PoolInfo> GetPool() override {
    if (!fail_get_pool.ok()) return fail_get_pool;
    uint64_t used = 0;
    for (auto& [n, v] : volumes_) used += v.size_bytes;
    return storage::PoolInfo{config_.name, config_.type, capacity_, capacity_ - used,
                             static_cast<uint32_t>(volumes_.size()), config_.wipe};
  }
  absl::StatusOr<std::vector<storage::VolumeInfo>> ListVolumes() override {
    std::vector<storage::VolumeInfo> out;
    for (auto& [n, v] : volumes_) out.push_back(v);
    return out;
  }
  absl::StatusOr<storage::VolumeInfo> GetVolume(const std::string& name) override {
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return absl::NotFoundError(absl::StrCat("volume '", name, "' not found"));
    return it->second;
  }
  absl::StatusOr<storage::VolumeInfo> CreateVolume(const storage::VolumeSpec& spec) override {
    calls.push_back("create " + spec.name);
    if (volumes_.contains(spec.name)) return absl::AlreadyExistsError("volume.name: exists");
    if (spec.size_bytes > GetPool()->free_bytes) return absl::ResourceExhaustedError("pool full");
    storage::VolumeInfo v{config_.name, spec.name, "/dev/fake/" + spec.name, spec.size_bytes, ""};
    if (!volume_dir.empty() || !image_dir.empty()) {
      // Volumes as sparse files: of their own directory, or beside the image slots of a pool with
      // images, so copies onto them and exports of them are real.
      v.path = !volume_dir.empty() ? volume_dir + "/vol-" + spec.name : image_dir + "/volume-" + spec.name;
      std::ofstream(v.path).close();
      if (truncate(v.path.c_str(), static_cast<off_t>(spec.size_bytes)) != 0) return absl::InternalError("truncate");
    }
    volumes_[spec.name] = v;
    return v;
  }
  absl::StatusOr<storage::VolumeInfo> ResizeVolume(const std::string& name, uint64_t size) override {
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return absl::NotFoundError("volume not found");
    if (size <= it->second.size_bytes) return absl::InvalidArgumentError("volume.size_bytes: must grow");
    it->second.size_bytes = size;
    return it->second;
  }
  absl::StatusOr<storage::DeletePlan> BeginDelete(const std::string& name) override {
    calls.push_back("delete " + name);
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return absl::NotFoundError("volume not found");
    if (!it->second.attached_to.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("volume '", name, "' is attached to domain '", it->second.attached_to, "'; detach it first"));
    }
    return storage::DeletePlan{.volume = it->second};
  }
  // Runs on the service's delete worker, beside other calls: touches nothing of the fake's but
  // `during_wipe`, which a test sets before the delete starts.
  absl::Status WipeForDelete(const storage::DeletePlan& plan, const ProgressFn& progress) override {
    if (progress) progress({plan.volume.size_bytes / 2, plan.volume.size_bytes});
    if (during_wipe) during_wipe();
    if (progress) progress({plan.volume.size_bytes, plan.volume.size_bytes});
    return fail_wipe;
  }
  absl::Status FinishDelete(const storage::DeletePlan& plan) override {
    if (plan.image) {
      calls.push_back("delete-image " + plan.volume.name);
      unlink(plan.volume.path.c_str());
      slots_.erase(plan.volume.name);
      return absl::OkStatus();
    }
    if (!image_dir.empty() || !volume_dir.empty()) unlink(plan.volume.path.c_str());
    volumes_.erase(plan.volume.name);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<storage::ImageSlot>> ListImageSlots() override {
    if (image_dir.empty()) return StorageBackend::ListImageSlots();
    std::vector<storage::ImageSlot> out;
    for (auto& [n, s] : slots_) out.push_back(s);
    return out;
  }
  absl::StatusOr<storage::ImageSlot> CreateImageSlot(const std::string& name, uint64_t size_bytes) override {
    if (image_dir.empty()) return StorageBackend::CreateImageSlot(name, size_bytes);
    calls.push_back("create-image " + name);
    if (slots_.contains(name)) return absl::AlreadyExistsError("image exists");
    if (size_bytes > GetPool()->free_bytes) return absl::ResourceExhaustedError("pool full");
    size_bytes = (size_bytes + (1 << 20) - 1) & ~uint64_t{(1 << 20) - 1};  // 1 MiB, as partitions
    storage::ImageSlot slot{config_.name, name, image_dir + "/" + name, size_bytes, false};
    std::ofstream(slot.path).close();
    if (truncate(slot.path.c_str(), static_cast<off_t>(size_bytes)) != 0) return absl::InternalError("truncate");
    slots_[name] = slot;
    return slot;
  }
  absl::Status SealImageSlot(const std::string& name) override {
    if (image_dir.empty()) return StorageBackend::SealImageSlot(name);
    calls.push_back("seal-image " + name);
    auto it = slots_.find(name);
    if (it == slots_.end()) return absl::NotFoundError("image not found");
    it->second.ready = true;
    return absl::OkStatus();
  }
  absl::StatusOr<storage::DeletePlan> BeginDeleteImageSlot(const std::string& name) override {
    if (image_dir.empty()) return StorageBackend::BeginDeleteImageSlot(name);
    auto it = slots_.find(name);
    if (it == slots_.end()) return absl::NotFoundError("image not found");
    it->second.ready = false;
    return storage::DeletePlan{.volume = {config_.name, name, it->second.path, it->second.size_bytes, ""},
                               .image = true};
  }
  absl::StatusOr<storage::VolumeInfo> CloneImageSlot(const std::string& image,
                                                      const storage::VolumeSpec& spec) override {
    if (!can_clone) return StorageBackend::CloneImageSlot(image, spec);
    calls.push_back(absl::StrCat("clone-image ", image, " ", spec.name));
    auto it = slots_.find(image);
    if (it == slots_.end()) return absl::NotFoundError("image not found");
    if (!it->second.ready) return absl::FailedPreconditionError("image: not ready");
    if (volumes_.contains(spec.name)) return absl::AlreadyExistsError("volume.name: exists");
    storage::VolumeInfo v{config_.name, spec.name, "/dev/fake/" + spec.name, spec.size_bytes, ""};
    volumes_[spec.name] = v;
    return v;
  }
  // Follows the contract: one record of domain and ownership, another domain refused.
  absl::Status SetAttachment(const std::string& name, const std::string& domain,
                             storage::Ownership ownership) override {
    calls.push_back(absl::StrCat("attach-tag ", name, " ", domain,
                                 domain.empty() ? "" : absl::StrCat(" ", storage::OwnershipName(ownership))));
    if (!fail_set_attachment.ok()) return fail_set_attachment;
    if (domain.empty() != (ownership == storage::Ownership::kNone)) {
      return absl::InvalidArgumentError("ownership: does not go with the domain");
    }
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return absl::NotFoundError("volume not found");
    if (!domain.empty() && !it->second.attached_to.empty() && it->second.attached_to != domain) {
      return absl::FailedPreconditionError(absl::StrCat("attached to domain '", it->second.attached_to, "'"));
    }
    it->second.attached_to = domain;
    it->second.ownership = ownership;
    return absl::OkStatus();
  }

 private:
  storage::PoolConfig config_;
  uint64_t capacity_;
  std::map<std::string, storage::VolumeInfo> volumes_;
  std::map<std::string, storage::ImageSlot> slots_;
  std::map<std::pair<std::string, std::string>, storage::SnapshotInfo> snaps_;
};

}  // namespace hvagent::testing
