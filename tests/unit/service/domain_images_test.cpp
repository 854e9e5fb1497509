// DomainService making a disk's volume from an image (DiskVolume.image): the volume holds the
// image's bytes, is owned by the domain from the moment it exists, goes with the domain, and a
// refused or failed create leaves no volume, no domain and no open operation.
#include <stdlib.h>

#include <filesystem>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/service/domain_service.h"
#include "agent/service/image_service.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_command_runner.h"
#include "tests/fakes/fake_hypervisor.h"
#include "tests/fakes/fake_storage_backend.h"
#include "tests/fakes/test_bytes.h"

namespace hvagent::service {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

// The chunks of an upload; `before_chunk(i)` runs before chunk i is handed out.
class Chunks final : public UploadBody {
 public:
  explicit Chunks(std::vector<std::string> chunks) : chunks_(std::move(chunks)) {}
  absl::StatusOr<bool> Next(std::string* chunk) override {
    if (before_chunk) before_chunk(next_);
    if (next_ >= chunks_.size()) return false;
    *chunk = chunks_[next_++];
    return true;
  }
  std::function<void(size_t)> before_chunk;

 private:
  std::vector<std::string> chunks_;
  size_t next_ = 0;
};


std::string ReadFile(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  std::string out(n, '\0');
  in.read(out.data(), static_cast<std::streamsize>(n));
  out.resize(static_cast<size_t>(in.gcount()));
  return out;
}

class DomainImagesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/var/tmp/hvagent-domimg-XXXXXX";  // ext4, not tmpfs: the copy uses O_DIRECT
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    std::vector<std::unique_ptr<storage::StorageBackend>> backends;
    for (const char* name : {"vg0", "disk1"}) {
      auto b = std::make_unique<testing::FakeStorageBackend>(storage::PoolConfig{.name = name}, 1ULL << 30);
      b->image_dir = dir_ + "/" + name;
      std::filesystem::create_directories(b->image_dir);
      pools_[name] = b.get();
      backends.push_back(std::move(b));
    }
    storage_ = std::make_unique<StorageService>(hv_, std::move(backends));
    journal_ = *Journal::Open("");
    ImageService::Options image_options;
    image_options.on_copy_progress = [this](const CopyProgress& p) {
      if (copy_hook_) copy_hook_(p);
    };
    images_ = std::make_unique<ImageService>(*storage_, *journal_, runner_, image_options);
    domains_ = std::make_unique<DomainService>(hv_, clock_, DomainService::Options{.images = images_.get()},
                                               storage_.get(), journal_.get());
  }
  void TearDown() override {
    storage_->WaitForDeletes();
    std::filesystem::remove_all(dir_);
  }
  // A ready image of `pool` holding `bytes`.
  void Upload(const std::string& pool, const std::string& name, const std::string& bytes) {
    Chunks body({bytes});
    auto image = images_->Upload({.pool = pool, .name = name, .format = ImageFormat::kRaw, .size_bytes = bytes.size()},
                                 body);
    ASSERT_TRUE(image.ok()) << image.status();
  }
  static hv::DomainSpec Spec(const std::string& name) {
    hv::DomainSpec s{.name = name, .vcpus = 1, .memory_mib = 128};
    s.disks.push_back({.source_path = "", .target = "vda"});
    return s;
  }
  static std::vector<DiskVolume> Root(const std::string& image, uint64_t size = 0, const std::string& pool = "vg0") {
    return {{0, {.pool = pool, .name = "web1-root", .create_size_bytes = size, .image = image}}};
  }
  std::vector<storage::VolumeInfo> Volumes(const std::string& pool = "vg0") {
    storage_->WaitForDeletes();
    std::vector<storage::VolumeInfo> out;
    auto listed = storage_->ListVolumes(pool);
    if (!listed.ok()) return {};
    for (const auto& s : *listed) out.push_back(s.volume);
    return out;
  }
  // A refused create: the field named, and nothing made or begun.
  void ExpectRefusedWithNothingMade(const absl::Status& s, absl::StatusCode code, const std::string& field) {
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(field));
    EXPECT_THAT(Volumes("vg0"), IsEmpty());
    EXPECT_THAT(Volumes("disk1"), IsEmpty());
    EXPECT_FALSE(hv_.GetDomain("web1").ok());
    EXPECT_TRUE(journal_->Unfinished().empty());
    for (const auto& op : journal_->Recent()) {
      EXPECT_NE(op.op.begin.type(), v1::OPERATION_KIND_CREATE_DOMAIN) << "no create may have begun";
    }
  }

  std::string dir_;
  std::function<void(const CopyProgress&)> copy_hook_;  // runs after each block a copy writes
  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  testing::FakeCommandRunner runner_;
  std::map<std::string, testing::FakeStorageBackend*> pools_;
  std::unique_ptr<StorageService> storage_;
  std::unique_ptr<Journal> journal_;
  std::unique_ptr<ImageService> images_;
  std::unique_ptr<DomainService> domains_;
};

TEST_F(DomainImagesTest, CreateDomain_DiskFromAnImageHoldsItsBytesAndIsOwned) {
  const std::string bytes = testing::PseudoRandomBytes((3 << 20) + 4096, 11);
  Upload("vg0", "deb12", bytes);
  auto d = domains_->Create(Spec("web1"), /*start=*/true, Root("deb12", 8 << 20));
  ASSERT_TRUE(d.ok()) << d.status();
  auto volumes = Volumes();
  ASSERT_EQ(volumes.size(), 1u);
  EXPECT_EQ(volumes[0].name, "web1-root");
  EXPECT_EQ(volumes[0].size_bytes, 8u << 20) << "create_size_bytes, larger than the image";
  EXPECT_EQ(volumes[0].attached_to, "web1");
  EXPECT_EQ(volumes[0].ownership, storage::Ownership::kOwned);
  EXPECT_TRUE(ReadFile(volumes[0].path, bytes.size()) == bytes) << "the volume does not hold the image's bytes";
  auto disks = hv_.GetDomainDisks("web1");
  ASSERT_EQ(disks->size(), 1u);
  EXPECT_EQ((*disks)[0].source_path, volumes[0].path);
  EXPECT_EQ((*disks)[0].type, hv::DiskType::kBlock);
  int creates = 0;
  for (const auto& op : journal_->Recent()) {
    if (op.op.begin.type() != v1::OPERATION_KIND_CREATE_DOMAIN) continue;
    ++creates;
    EXPECT_EQ(op.state, v1::OPERATION_STATE_SUCCEEDED);
  }
  EXPECT_EQ(creates, 1) << "the create is journalled";
}

TEST_F(DomainImagesTest, CreateDomain_SizeZeroTakesTheImagesSizeAndDeleteRemovesTheVolume) {
  Upload("vg0", "deb12", testing::PseudoRandomBytes(2 << 20, 5));
  ASSERT_TRUE(domains_->Create(Spec("web1"), false, Root("deb12")).ok());
  ASSERT_EQ(Volumes().size(), 1u);
  EXPECT_EQ(Volumes()[0].size_bytes, 2u << 20);
  ASSERT_TRUE(domains_->Delete("web1", /*force=*/true, /*delete_volumes=*/true).ok());
  EXPECT_THAT(Volumes(), IsEmpty());
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/vg0/volume-web1-root"));
  auto image = images_->Get("vg0", "deb12");
  ASSERT_TRUE(image.ok()) << "the image outlives the domain made from it";
  EXPECT_TRUE(image->ready);
}

TEST_F(DomainImagesTest, CreateDomain_UnknownImageIsNotFoundNamingTheField) {
  Upload("vg0", "deb12", testing::PseudoRandomBytes(1 << 20, 1));
  auto d = domains_->Create(Spec("web1"), true, Root("centos9"));
  ExpectRefusedWithNothingMade(d.status(), absl::StatusCode::kNotFound, "spec.disks[0].volume.image");
  EXPECT_THAT(hv_.calls, IsEmpty());
}

TEST_F(DomainImagesTest, CreateDomain_ImageOfAnotherPoolIsNotFound) {
  Upload("disk1", "deb12", testing::PseudoRandomBytes(1 << 20, 2));
  auto d = domains_->Create(Spec("web1"), true, Root("deb12", 0, "vg0"));
  ExpectRefusedWithNothingMade(d.status(), absl::StatusCode::kNotFound, "spec.disks[0].volume.image");
}

TEST_F(DomainImagesTest, CreateDomain_SizeSmallerThanTheImageIsInvalidArgument) {
  Upload("vg0", "deb12", testing::PseudoRandomBytes(2 << 20, 3));
  auto d = domains_->Create(Spec("web1"), true, Root("deb12", 1 << 20));
  ExpectRefusedWithNothingMade(d.status(), absl::StatusCode::kInvalidArgument, "spec.disks[0].volume.create_size_bytes");
}

TEST_F(DomainImagesTest, CreateDomain_BadImageNameIsInvalidArgument) {
  auto d = domains_->Create(Spec("web1"), true, Root("../../etc/shadow"));
  ExpectRefusedWithNothingMade(d.status(), absl::StatusCode::kInvalidArgument, "spec.disks[0].volume.image");
}

TEST_F(DomainImagesTest, CreateDomain_ImageStillImportingIsFailedPrecondition) {
  absl::Status during;
  Chunks body({testing::PseudoRandomBytes(1 << 20, 4), testing::PseudoRandomBytes(1 << 20, 5)});
  body.before_chunk = [&](size_t i) {
    if (i == 1) during = domains_->Create(Spec("web1"), true, Root("deb12")).status();
  };
  ASSERT_TRUE(images_->Upload({.pool = "vg0", .name = "deb12", .format = ImageFormat::kRaw, .size_bytes = 2 << 20}, body)
                  .ok());
  EXPECT_EQ(during.code(), absl::StatusCode::kFailedPrecondition) << during;
  EXPECT_THAT(std::string(during.message()), HasSubstr("spec.disks[0].volume.image"));
  EXPECT_THAT(Volumes(), IsEmpty());
  EXPECT_FALSE(hv_.GetDomain("web1").ok());
}

TEST_F(DomainImagesTest, CreateDomain_WithoutAnImageServiceIsFailedPrecondition) {
  domains_ = std::make_unique<DomainService>(hv_, clock_, DomainService::Options{}, storage_.get(), journal_.get());
  auto d = domains_->Create(Spec("web1"), true, Root("deb12"));
  ExpectRefusedWithNothingMade(d.status(), absl::StatusCode::kFailedPrecondition, "spec.disks[0].volume.image");
}

TEST_F(DomainImagesTest, CreateDomain_ExistingVolumeNameIsRefusedAndTheVolumeKept) {
  Upload("vg0", "deb12", testing::PseudoRandomBytes(1 << 20, 6));
  ASSERT_TRUE(storage_->CreateVolume("vg0", {"web1-root", 4 << 20}).ok());
  auto d = domains_->Create(Spec("web1"), true, Root("deb12"));
  EXPECT_EQ(d.status().code(), absl::StatusCode::kAlreadyExists) << d.status();
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("spec.disks[0].volume"));
  ASSERT_EQ(Volumes().size(), 1u) << "somebody else's volume is never deleted";
  EXPECT_EQ(Volumes()[0].attached_to, "");
  EXPECT_FALSE(hv_.GetDomain("web1").ok());
}

TEST_F(DomainImagesTest, CreateDomain_DefineFailureDeletesTheVolumeMadeFromTheImage) {
  Upload("vg0", "deb12", testing::PseudoRandomBytes(1 << 20, 7));
  hv_.fail_define = absl::InternalError("libvirt says no");
  auto d = domains_->Create(Spec("web1"), true, Root("deb12"));
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(Volumes(), IsEmpty());
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/vg0/volume-web1-root"));
  EXPECT_TRUE(journal_->Unfinished().empty());
}

TEST_F(DomainImagesTest, CreateDomain_StartFailureUndoesDomainAndVolume) {
  Upload("vg0", "deb12", testing::PseudoRandomBytes(1 << 20, 8));
  hv_.fail_start = absl::InternalError("no memory");
  auto d = domains_->Create(Spec("web1"), true, Root("deb12"));
  EXPECT_FALSE(d.ok());
  EXPECT_THAT(Volumes(), IsEmpty());
  EXPECT_FALSE(hv_.GetDomain("web1").ok());
}

// The copy of web1's disk is held mid-way until web2's create is over (or 10 s): with the
// create/delete lock held for the copy, web2 would wait for web1 and the test would fail.
TEST_F(DomainImagesTest, CreateDomain_ASecondCreateProceedsWhileADiskIsCopied) {
  Upload("vg0", "deb12", testing::PseudoRandomBytes(9 << 20, 21));  // three 4 MiB blocks
  Upload("disk1", "alpine", testing::PseudoRandomBytes(1 << 20, 22));
  std::mutex mu;
  std::condition_variable cv;
  bool copying = false, others_done = false;
  copy_hook_ = [&](const CopyProgress& p) {
    if (p.owner != "web1") return;
    std::unique_lock lock(mu);
    copying = true;
    cv.notify_all();
    cv.wait_for(lock, std::chrono::seconds(10), [&] { return others_done; });
  };
  std::atomic<bool> first_over{false};
  absl::StatusOr<hv::DomainInfo> first = absl::UnknownError("not run");
  std::thread t([&] {
    first = domains_->Create(Spec("web1"), false, Root("deb12"));
    first_over = true;
  });
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return copying; })) << "the copy never began";
  }
  auto second = domains_->Create(Spec("web2"), false, {{0, {.pool = "disk1", .name = "web2-root", .image = "alpine"}}});
  const bool second_beat_first = !first_over;
  auto again = domains_->Create(Spec("web1"), false, Root("deb12", 0, "disk1"));
  auto orphans = domains_->Reconcile(/*release_orphans=*/true);
  const auto recovered = domains_->Recover();
  {
    std::lock_guard lock(mu);
    others_done = true;
  }
  cv.notify_all();
  t.join();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second_beat_first) << "web2's create waited for web1's copy";
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << "a name being created is taken";
  ASSERT_TRUE(orphans.ok()) << orphans.status();
  EXPECT_THAT(*orphans, IsEmpty()) << "the volume of a create in flight is no orphan";
  EXPECT_THAT(recovered, IsEmpty()) << "a create in flight is not abandoned";
  ASSERT_TRUE(first.ok()) << first.status();
  auto volumes = Volumes("vg0");
  ASSERT_EQ(volumes.size(), 1u);
  EXPECT_EQ(volumes[0].attached_to, "web1");
  EXPECT_EQ(volumes[0].ownership, storage::Ownership::kOwned);
  EXPECT_THAT(Volumes("disk1"), ::testing::SizeIs(1)) << "the refused second web1 made nothing";
  EXPECT_TRUE(journal_->Unfinished().empty());
}

TEST_F(DomainImagesTest, CreateVolumeFilled_WithAnOwnerRecordsOwnershipBeforeTheFillAndDeletesOnFailure) {
  // What a crash mid-copy leaves: a volume already recorded as the domain's, which the
  // journalled create's recovery releases and deletes (journal_test: CreateKilledAfterItsVolumeIsUndone).
  std::vector<storage::VolumeInfo> during;
  auto v = storage_->CreateVolumeFilled(
      "vg0", {"web1-root", 1 << 20}, "image 'x'",
      [&](const storage::VolumeInfo&) {
        during = Volumes();
        return absl::DataLossError("disk went away");
      },
      "web1");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss);
  ASSERT_EQ(during.size(), 1u);
  EXPECT_EQ(during[0].attached_to, "web1");
  EXPECT_EQ(during[0].ownership, storage::Ownership::kOwned);
  EXPECT_THAT(Volumes(), IsEmpty());
}

}  // namespace
}  // namespace hvagent::service
