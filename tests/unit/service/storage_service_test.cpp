#include "agent/service/storage_service.h"

#include <future>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/fakes/fake_hypervisor.h"
#include "tests/fakes/fake_storage_backend.h"

namespace hvagent::service {
namespace {

using ::testing::HasSubstr;

class StorageServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto b = std::make_unique<testing::FakeStorageBackend>(storage::PoolConfig{.name = "vg0"});
    backend_ = b.get();
    std::vector<std::unique_ptr<storage::StorageBackend>> backends;
    backends.push_back(std::move(b));
    svc_ = std::make_unique<StorageService>(hv_, std::move(backends));
    hv::DomainSpec spec{.name = "web1", .vcpus = 1, .memory_mib = 64};
    spec.disks.push_back({"/dev/vg0/root", hv::DiskType::kBlock, "xvda", "", false, ""});
    ASSERT_TRUE(hv_.DefineDomain(spec).ok());
  }
  testing::FakeHypervisor hv_;
  testing::FakeStorageBackend* backend_ = nullptr;
  std::unique_ptr<StorageService> svc_;
};

TEST_F(StorageServiceTest, UnknownPoolIsNotFoundNamingIt) {
  auto r = svc_->CreateVolume("nope", {"v", 1 << 20});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("'nope' is not a configured pool"));
  EXPECT_TRUE(backend_->calls.empty());
}

TEST_F(StorageServiceTest, CreateListAndCapacity) {
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"data", 256 << 20}).ok());
  auto list = svc_->ListVolumes("vg0");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].state, VolumeState::kAvailable);
  auto pools = svc_->ListPools();
  ASSERT_TRUE(pools.ok());
  EXPECT_EQ((*pools)[0].free_bytes, (1ULL << 30) - (256 << 20));
}

TEST_F(StorageServiceTest, AttachPicksNextTargetOfTheDomainsPrefixAndRecordsOwner) {
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"data", 1 << 20}).ok());
  auto v = svc_->AttachVolume("vg0", "data", "web1", "", false);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->state, VolumeState::kAttached);
  EXPECT_EQ(v->volume.attached_to, "web1");
  auto disks = hv_.GetDomainDisks("web1");
  ASSERT_EQ(disks->size(), 2u);
  EXPECT_EQ((*disks)[1].target, "xvdb");
  EXPECT_EQ((*disks)[1].source_path, "/dev/fake/data");
  EXPECT_EQ((*disks)[1].type, hv::DiskType::kBlock);
  EXPECT_EQ(svc_->AttachVolume("vg0", "data", "web1", "", false).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(StorageServiceTest, AttachRolledBackWhenOwnerCannotBeRecorded) {
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"data", 1 << 20}).ok());
  backend_->fail_set_attachment = absl::InternalError("lvchange: failed");
  EXPECT_EQ(svc_->AttachVolume("vg0", "data", "web1", "", false).status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(hv_.GetDomainDisks("web1")->size(), 1u) << "the disk must be detached again";
}

TEST_F(StorageServiceTest, AttachToUnknownDomainChangesNothing) {
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"data", 1 << 20}).ok());
  EXPECT_EQ(svc_->AttachVolume("vg0", "data", "ghost", "", false).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(svc_->GetVolume("vg0", "data")->state, VolumeState::kAvailable);
}

TEST_F(StorageServiceTest, DeleteAttachedIsRefused) {
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"data", 1 << 20}).ok());
  ASSERT_TRUE(svc_->AttachVolume("vg0", "data", "web1", "xvdc", false).ok());
  auto r = svc_->DeleteVolume("vg0", "data");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("web1"));
  ASSERT_TRUE(svc_->DetachVolume("vg0", "data").ok());
  EXPECT_EQ(hv_.GetDomainDisks("web1")->size(), 1u);
  EXPECT_EQ(svc_->GetVolume("vg0", "data")->state, VolumeState::kAvailable);
}

TEST_F(StorageServiceTest, DeleteRunsInBackgroundThenVolumeIsGone) {
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"data", 1 << 20}).ok());
  auto r = svc_->DeleteVolume("vg0", "data");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->state, VolumeState::kDeleting);
  EXPECT_EQ(r->wipe.total_bytes, 1u << 20);
  svc_->WaitForDeletes();
  EXPECT_EQ(svc_->GetVolume("vg0", "data").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(backend_->calls, ::testing::Contains("delete data"));
}

// A wipe can take minutes: it runs without the pool's lock, so the pool's other volumes and
// every read go on, while calls that would change or use the volume being wiped are refused.
TEST_F(StorageServiceTest, DuringAWipeThePoolServesAndTheVolumeIsFenced) {
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"data", 1 << 20}).ok());
  std::promise<void> wiping, finish;
  std::shared_future<void> finish_f = finish.get_future().share();
  backend_->during_wipe = [&wiping, finish_f] {
    wiping.set_value();
    finish_f.wait();
  };
  ASSERT_TRUE(svc_->DeleteVolume("vg0", "data").ok());
  wiping.get_future().wait();  // the worker is inside the wipe now

  auto listed = svc_->ListVolumes("vg0");
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].state, VolumeState::kDeleting);
  EXPECT_EQ((*listed)[0].wipe.done_bytes, (1u << 20) / 2);
  EXPECT_TRUE(svc_->GetPool("vg0").ok());
  EXPECT_TRUE(svc_->CreateVolume("vg0", {"other", 1 << 20}).ok());
  EXPECT_TRUE(svc_->ResizeVolume("vg0", "other", 2 << 20).ok());
  for (auto code : {svc_->AttachVolume("vg0", "data", "web1", "", false).status().code(),
                    svc_->ResizeVolume("vg0", "data", 4 << 20).status().code(),
                    svc_->DeleteVolume("vg0", "data").status().code(),
                    svc_->ClaimVolume({"vg0", "data", 0}, "web1").status().code()}) {
    EXPECT_EQ(code, absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_THAT(std::string(svc_->AttachVolume("vg0", "data", "web1", "", false).status().message()),
              HasSubstr("'data' is being deleted"));
  EXPECT_EQ(hv_.GetDomainDisks("web1")->size(), 1u);

  finish.set_value();
  svc_->WaitForDeletes();
  EXPECT_EQ(svc_->GetVolume("vg0", "data").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(svc_->GetVolume("vg0", "other")->volume.size_bytes, 2u << 20);
}

TEST_F(StorageServiceTest, AFailedWipeKeepsTheVolumeAndLiftsTheFence) {
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"data", 1 << 20}).ok());
  backend_->fail_wipe = absl::InternalError("write: Input/output error");
  ASSERT_TRUE(svc_->DeleteVolume("vg0", "data").ok());
  svc_->WaitForDeletes();
  auto v = svc_->GetVolume("vg0", "data");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->state, VolumeState::kAvailable);
  EXPECT_TRUE(svc_->AttachVolume("vg0", "data", "web1", "", false).ok());
}

TEST_F(StorageServiceTest, AVolumeBeingWrittenIsFencedAndThePoolServes) {
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"other", 1 << 20}).ok());
  std::string seen_path;
  auto v = svc_->CreateVolumeFilled("vg0", {"fresh", 1 << 20}, "image 'deb12'", [&](const storage::VolumeInfo& info) {
    seen_path = info.path;
    // Nothing may use the volume before it holds the image: a guest would boot half a disk.
    for (const absl::Status& s : {svc_->AttachVolume("vg0", "fresh", "web1", "", false).status(),
                                  svc_->ResizeVolume("vg0", "fresh", 2 << 20).status(),
                                  svc_->DeleteVolume("vg0", "fresh").status(),
                                  svc_->ClaimVolume({"vg0", "fresh", 0}, "web1").status()}) {
      EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
      EXPECT_THAT(std::string(s.message()), HasSubstr("'fresh' is being written from image 'deb12'"));
    }
    // The pool's lock is not held meanwhile: the pool's other volumes go on.
    EXPECT_TRUE(svc_->AttachVolume("vg0", "other", "web1", "", false).ok());
    return absl::OkStatus();
  });
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(seen_path, "/dev/fake/fresh");
  EXPECT_EQ(v->state, VolumeState::kAvailable);
  EXPECT_TRUE(svc_->AttachVolume("vg0", "fresh", "web1", "", false).ok());  // the fence is lifted
}

TEST_F(StorageServiceTest, AVolumeWhoseWriteFailsIsDeletedAgain) {
  auto v = svc_->CreateVolumeFilled("vg0", {"fresh", 1 << 20}, "image 'deb12'", [](const storage::VolumeInfo&) {
    return absl::DataLossError("read error on the image");
  });
  EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss);
  svc_->WaitForDeletes();
  EXPECT_EQ(svc_->GetVolume("vg0", "fresh").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StorageServiceTest, AVolumeToBeWrittenStillKeepsThePoolsRules) {
  auto v = svc_->CreateVolumeFilled("nope", {"fresh", 1 << 20}, "image 'deb12'", [](const storage::VolumeInfo&) {
    ADD_FAILURE() << "nothing to write into";
    return absl::OkStatus();
  });
  EXPECT_EQ(v.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StorageServiceTest, ManyDeletesReuseNoStaleState) {
  for (int i = 0; i < 20; ++i) {
    const std::string name = "v" + std::to_string(i);
    ASSERT_TRUE(svc_->CreateVolume("vg0", {name, 1 << 20}).ok());
    ASSERT_TRUE(svc_->DeleteVolume("vg0", name).ok());
  }
  svc_->WaitForDeletes();
  EXPECT_TRUE(svc_->ListVolumes("vg0")->empty());
  EXPECT_EQ(svc_->DeleteVolume("vg0", "v0").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StorageServiceTest, DetachOfVolumeWhoseDomainVanishedReleasesIt) {
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"data", 1 << 20}).ok());
  ASSERT_TRUE(svc_->AttachVolume("vg0", "data", "web1", "", false).ok());
  ASSERT_TRUE(hv_.UndefineDomain("web1").ok());
  auto v = svc_->DetachVolume("vg0", "data");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->volume.attached_to.empty());
}

TEST_F(StorageServiceTest, DetachOfAVolumeThatIsNotAttachedIsNotFound) {
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"data", 1 << 20}).ok());
  auto v = svc_->DetachVolume("vg0", "data");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("not attached to any domain"));
  EXPECT_EQ(svc_->DetachVolume("vg0", "ghost").status().code(), absl::StatusCode::kNotFound);
}

// The guest keeps the device: the detach says so (the hypervisor's reason included) and the
// volume stays attached, so nothing may take it for free.
TEST_F(StorageServiceTest, DetachTheGuestRefusesIsAbortedAndTheVolumeStaysAttached) {
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"data", 1 << 20}).ok());
  ASSERT_TRUE(svc_->AttachVolume("vg0", "data", "web1", "", false).ok());
  hv_.fail_detach = absl::AbortedError("domain 'web1': the guest did not release disk xvdb: device_del timed out");
  auto v = svc_->DetachVolume("vg0", "data");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kAborted);
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("still attached to domain 'web1'"));
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("device_del timed out"));
  auto now = svc_->GetVolume("vg0", "data");
  EXPECT_EQ(now->state, VolumeState::kAttached);
  EXPECT_EQ(now->volume.ownership, storage::Ownership::kBorrowed);
  EXPECT_EQ(svc_->DeleteVolume("vg0", "data").status().code(), absl::StatusCode::kFailedPrecondition);

  hv_.fail_detach = absl::OkStatus();  // the guest lets go: the retry succeeds
  auto retried = svc_->DetachVolume("vg0", "data");
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(retried->state, VolumeState::kAvailable);
  EXPECT_EQ(retried->volume.ownership, storage::Ownership::kNone);
}

// A detach that names its domain: the right one detaches as without it; another one is
// refused naming the field, with the disk still in the guest and the record unchanged.
TEST_F(StorageServiceTest, DetachNamingAnotherDomainIsRefusedAndChangesNothing) {
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"data", 1 << 20}).ok());
  ASSERT_TRUE(svc_->AttachVolume("vg0", "data", "web1", "", false).ok());
  const size_t disks = hv_.GetDomainDisks("web1")->size();
  auto v = svc_->DetachVolume("vg0", "data", "web2");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("domain: volume 'data' is attached to domain 'web1'"));
  EXPECT_EQ(svc_->GetVolume("vg0", "data")->volume.attached_to, "web1");
  EXPECT_EQ(hv_.GetDomainDisks("web1")->size(), disks);
  v = svc_->DetachVolume("vg0", "data", "bad name!");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("domain:"));
  EXPECT_EQ(hv_.GetDomainDisks("web1")->size(), disks);

  v = svc_->DetachVolume("vg0", "data", "web1");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->volume.attached_to.empty());
  EXPECT_EQ(hv_.GetDomainDisks("web1")->size(), disks - 1);
  // Not attached any more: NOT_FOUND, the domain named or not (a retry's answer).
  EXPECT_EQ(svc_->DetachVolume("vg0", "data", "web1").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StorageServiceTest, ReleaseOwnershipTurnsOwnedIntoBorrowedOnly) {
  ASSERT_TRUE(svc_->ClaimVolume({"vg0", "root", 1 << 20}, "web1").ok());
  EXPECT_EQ(svc_->GetVolume("vg0", "root")->volume.ownership, storage::Ownership::kOwned);
  auto v = svc_->ReleaseOwnership("vg0", "root");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->volume.ownership, storage::Ownership::kBorrowed);
  EXPECT_EQ(svc_->GetVolume("vg0", "root")->volume.ownership, storage::Ownership::kBorrowed);
  EXPECT_TRUE(svc_->ReleaseOwnership("vg0", "root").ok());  // borrowed already: as it is
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"free", 1 << 20}).ok());
  EXPECT_EQ(svc_->ReleaseOwnership("vg0", "free").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(svc_->ReleaseOwnership("vg0", "ghost").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StorageServiceTest, ReleaseDeletesOnlyWhatTheDomainOwnsAndTouchesNoOtherDomainsVolume) {
  ASSERT_TRUE(svc_->ClaimVolume({"vg0", "root", 1 << 20}, "web1").ok());
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"data", 1 << 20}).ok());
  ASSERT_TRUE(svc_->ClaimVolume({"vg0", "data", 0}, "web1").ok());
  ASSERT_TRUE(svc_->ClaimVolume({"vg0", "other", 1 << 20}, "web2").ok());
  ASSERT_TRUE(svc_->ReleaseVolume("vg0", "data", "web1", /*delete_if_owned=*/true).ok());
  ASSERT_TRUE(svc_->ReleaseVolume("vg0", "other", "web1", /*delete_if_owned=*/true).ok());
  ASSERT_TRUE(svc_->ReleaseVolume("vg0", "root", "web1", /*delete_if_owned=*/true).ok());
  svc_->WaitForDeletes();
  EXPECT_EQ(svc_->GetVolume("vg0", "root").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(svc_->GetVolume("vg0", "data")->state, VolumeState::kAvailable) << "borrowed: released, kept";
  EXPECT_EQ(svc_->GetVolume("vg0", "other")->volume.attached_to, "web2") << "another domain's: untouched";
}

}  // namespace
}  // namespace hvagent::service
