// DomainService creating and deleting domains whose disks are pool volumes: every failure
// leaves the pools and the hypervisor as they were.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/service/domain_service.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"
#include "tests/fakes/fake_storage_backend.h"

namespace hvagent::service {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

class DomainVolumesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::unique_ptr<storage::StorageBackend>> backends;
    for (const char* name : {"vg0", "disk1"}) {
      auto b = std::make_unique<testing::FakeStorageBackend>(storage::PoolConfig{.name = name}, 1ULL << 30);
      pools_[name] = b.get();
      backends.push_back(std::move(b));
    }
    storage_ = std::make_unique<StorageService>(hv_, std::move(backends));
    domains_ = std::make_unique<DomainService>(hv_, clock_, DomainService::Options{}, storage_.get());
  }

  // A domain with one disk per volume, targets vda, vdb, ...
  static hv::DomainSpec Spec(const std::string& name, size_t disks) {
    hv::DomainSpec s{.name = name, .vcpus = 1, .memory_mib = 128};
    for (size_t i = 0; i < disks; ++i) {
      s.disks.push_back({.source_path = "", .target = std::string("vd") + static_cast<char>('a' + i)});
    }
    return s;
  }
  std::vector<storage::VolumeInfo> Volumes(const std::string& pool) {
    auto v = storage_->ListVolumes(pool);
    std::vector<storage::VolumeInfo> out;
    for (const auto& s : *v) out.push_back(s.volume);
    return out;
  }

  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  std::map<std::string, testing::FakeStorageBackend*> pools_;
  std::unique_ptr<StorageService> storage_;
  std::unique_ptr<DomainService> domains_;
};

TEST_F(DomainVolumesTest, NewAndExistingVolumesBecomeBlockDisksRecordedAsAttached) {
  ASSERT_TRUE(storage_->CreateVolume("disk1", {"data", 64 << 20}).ok());
  auto d = domains_->Create(Spec("web1", 2), /*start=*/true,
                            {{0, {"vg0", "root", 128 << 20}}, {1, {"disk1", "data", 0}}});
  ASSERT_TRUE(d.ok()) << d.status();
  auto disks = hv_.GetDomainDisks("web1");
  ASSERT_EQ(disks->size(), 2u);
  EXPECT_EQ((*disks)[0].source_path, "/dev/fake/root");
  EXPECT_EQ((*disks)[0].type, hv::DiskType::kBlock);
  EXPECT_EQ((*disks)[0].format, "raw");
  EXPECT_EQ((*disks)[1].source_path, "/dev/fake/data");
  EXPECT_EQ(Volumes("vg0")[0].attached_to, "web1");
  EXPECT_EQ(Volumes("vg0")[0].size_bytes, 128u << 20);
  EXPECT_EQ(Volumes("vg0")[0].ownership, storage::Ownership::kOwned) << "created with the domain";
  EXPECT_EQ(Volumes("disk1")[0].attached_to, "web1");
  EXPECT_EQ(Volumes("disk1")[0].ownership, storage::Ownership::kBorrowed) << "it existed before";
}

TEST_F(DomainVolumesTest, PoolFullUndoesTheVolumesAlreadyMade) {
  auto d = domains_->Create(Spec("web1", 2), false, {{0, {"vg0", "root", 128 << 20}}, {1, {"vg0", "big", 2ULL << 30}}});
  EXPECT_EQ(d.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("spec.disks[1].volume"));
  storage_->WaitForDeletes();
  EXPECT_THAT(Volumes("vg0"), IsEmpty());  // root was created, then deleted again
  EXPECT_THAT(pools_["vg0"]->calls, ElementsAre("create root", "attach-tag root web1 owned", "create big",
                                                "attach-tag root ", "delete root"));
  EXPECT_THAT(hv_.calls, IsEmpty());
}

TEST_F(DomainVolumesTest, DefineFailureReleasesExistingAndDeletesNewVolumes) {
  ASSERT_TRUE(storage_->CreateVolume("disk1", {"data", 64 << 20}).ok());
  hv_.fail_define = absl::InternalError("libvirt says no");
  auto d = domains_->Create(Spec("web1", 2), false, {{0, {"vg0", "root", 1 << 20}}, {1, {"disk1", "data", 0}}});
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInternal);
  storage_->WaitForDeletes();
  EXPECT_THAT(Volumes("vg0"), IsEmpty());
  ASSERT_EQ(Volumes("disk1").size(), 1u);  // the existing volume stays, free again
  EXPECT_EQ(Volumes("disk1")[0].attached_to, "");
}

TEST_F(DomainVolumesTest, StartFailureUndefinesAndReleases) {
  hv_.fail_start = absl::FailedPreconditionError("no such kernel");
  auto d = domains_->Create(Spec("web1", 1), true, {{0, {"vg0", "root", 1 << 20}}});
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  storage_->WaitForDeletes();
  EXPECT_THAT(Volumes("vg0"), IsEmpty());
  EXPECT_EQ(hv_.GetDomain("web1").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(DomainVolumesTest, VolumeAttachedElsewhereIsRefusedWithNothingChanged) {
  ASSERT_TRUE(storage_->CreateVolume("disk1", {"data", 1 << 20}).ok());
  ASSERT_TRUE(domains_->Create(Spec("web1", 1), false, {{0, {"disk1", "data", 0}}}).ok());
  auto d = domains_->Create(Spec("web2", 2), false, {{0, {"vg0", "root", 1 << 20}}, {1, {"disk1", "data", 0}}});
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("already attached to domain 'web1'"));
  storage_->WaitForDeletes();
  EXPECT_THAT(Volumes("vg0"), IsEmpty());
  EXPECT_EQ(Volumes("disk1")[0].attached_to, "web1");
  EXPECT_EQ(hv_.GetDomain("web2").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(DomainVolumesTest, BadClaimsAreRefusedBeforeAnyPoolIsTouched) {
  struct Case {
    hv::DomainSpec spec;
    std::vector<DiskVolume> volumes;
    absl::StatusCode code;
    std::string field;
  };
  hv::DomainSpec with_path = Spec("web1", 1);
  with_path.disks[0].source_path = "/dev/sdb";
  hv::DomainSpec qcow = Spec("web1", 1);
  qcow.disks[0].format = "qcow2";
  std::vector<Case> cases = {
      {Spec("web1", 1), {{0, {"nope", "root", 1 << 20}}}, absl::StatusCode::kNotFound, "spec.disks[0].volume"},
      {Spec("web1", 1), {{0, {"", "root", 1 << 20}}}, absl::StatusCode::kInvalidArgument, "spec.disks[0].volume.pool"},
      {Spec("web1", 1), {{0, {"vg0", "", 1 << 20}}}, absl::StatusCode::kInvalidArgument, "spec.disks[0].volume.name"},
      {Spec("web1", 2), {{0, {"vg0", "a", 1 << 20}}, {1, {"vg0", "a", 1 << 20}}}, absl::StatusCode::kInvalidArgument,
       "spec.disks[1].volume"},
      {with_path, {{0, {"vg0", "a", 1 << 20}}}, absl::StatusCode::kInvalidArgument, "spec.disks[0]"},
      {qcow, {{0, {"vg0", "a", 1 << 20}}}, absl::StatusCode::kInvalidArgument, "spec.disks[0].format"},
      {Spec("", 1), {{0, {"vg0", "a", 1 << 20}}}, absl::StatusCode::kInvalidArgument, "spec.name"},
      {Spec("web1", 1), {{3, {"vg0", "a", 1 << 20}}}, absl::StatusCode::kInvalidArgument, "spec.disks[3].volume"},
  };
  for (const auto& c : cases) {
    auto d = domains_->Create(c.spec, false, c.volumes);
    EXPECT_EQ(d.status().code(), c.code) << d.status();
    EXPECT_THAT(std::string(d.status().message()), HasSubstr(c.field));
  }
  EXPECT_THAT(pools_["vg0"]->calls, IsEmpty());
  EXPECT_THAT(hv_.calls, IsEmpty());
}

TEST_F(DomainVolumesTest, ExistingDomainNameIsRefusedBeforeVolumesAreMade) {
  ASSERT_TRUE(domains_->Create(Spec("web1", 0), false).ok());
  auto d = domains_->Create(Spec("web1", 1), false, {{0, {"vg0", "root", 1 << 20}}});
  EXPECT_EQ(d.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(pools_["vg0"]->calls, IsEmpty());
}

TEST_F(DomainVolumesTest, DeleteReleasesOrDeletesTheDomainsVolumes) {
  ASSERT_TRUE(domains_->Create(Spec("web1", 1), false, {{0, {"vg0", "root1", 1 << 20}}}).ok());
  ASSERT_TRUE(domains_->Create(Spec("web2", 1), false, {{0, {"vg0", "root2", 1 << 20}}}).ok());
  ASSERT_TRUE(domains_->Delete("web1", false, /*delete_volumes=*/false).ok());
  ASSERT_TRUE(domains_->Delete("web2", false, /*delete_volumes=*/true).ok());
  storage_->WaitForDeletes();
  auto left = Volumes("vg0");
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].name, "root1");
  EXPECT_EQ(left[0].attached_to, "");
}

// The rule of issue 22: a volume the domain did not create is never deleted with it.
TEST_F(DomainVolumesTest, DeleteWithVolumesDeletesOwnedAndOnlyReleasesBorrowed) {
  ASSERT_TRUE(storage_->CreateVolume("disk1", {"data", 64 << 20}).ok());
  ASSERT_TRUE(storage_->CreateVolume("disk1", {"extra", 64 << 20}).ok());
  ASSERT_TRUE(domains_->Create(Spec("web1", 2), true, {{0, {"vg0", "root", 64 << 20}}, {1, {"disk1", "data", 0}}}).ok());
  auto attached = storage_->AttachVolume("disk1", "extra", "web1", "", false);
  ASSERT_TRUE(attached.ok()) << attached.status();
  EXPECT_EQ(attached->volume.ownership, storage::Ownership::kBorrowed);

  ASSERT_TRUE(domains_->Delete("web1", /*force=*/true, /*delete_volumes=*/true).ok());
  storage_->WaitForDeletes();
  EXPECT_THAT(Volumes("vg0"), IsEmpty());  // root: created with the domain, deleted with it
  auto left = Volumes("disk1");
  ASSERT_EQ(left.size(), 2u);
  for (const auto& v : left) {
    EXPECT_EQ(v.attached_to, "") << v.name;
    EXPECT_EQ(v.ownership, storage::Ownership::kNone) << v.name;
    EXPECT_EQ(v.size_bytes, 64u << 20) << v.name;
  }
  EXPECT_THAT(pools_["disk1"]->calls, ::testing::Not(::testing::Contains(::testing::StartsWith("delete"))));
}

TEST_F(DomainVolumesTest, ReleasedOwnershipKeepsARootDiskThroughADeleteWithVolumes) {
  ASSERT_TRUE(domains_->Create(Spec("web1", 1), false, {{0, {"vg0", "root", 64 << 20}}}).ok());
  auto v = storage_->ReleaseOwnership("vg0", "root");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->volume.ownership, storage::Ownership::kBorrowed);
  EXPECT_EQ(v->volume.attached_to, "web1");
  ASSERT_TRUE(domains_->Delete("web1", false, /*delete_volumes=*/true).ok());
  storage_->WaitForDeletes();
  ASSERT_EQ(Volumes("vg0").size(), 1u);
  EXPECT_EQ(Volumes("vg0")[0].attached_to, "");
}

TEST_F(DomainVolumesTest, WithoutStorageVolumeDisksAreRefused) {
  DomainService plain(hv_, clock_, {});
  auto d = plain.Create(Spec("web1", 1), false, {{0, {"vg0", "root", 1 << 20}}});
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("no storage pools"));
}

// Reconciliation: a volume whose recorded owner the hypervisor does not have.
TEST_F(DomainVolumesTest, ReconcileShowsOrphansAndReleasesThemOnlyWhenAsked) {
  ASSERT_TRUE(domains_->Create(Spec("web1", 1), false, {{0, {"vg0", "root1", 64 << 20}}}).ok());
  ASSERT_TRUE(domains_->Create(Spec("web2", 1), false, {{0, {"vg0", "root2", 64 << 20}}}).ok());
  ASSERT_TRUE(hv_.UndefineDomain("web2").ok());  // behind the agent's back (virsh undefine)

  auto found = domains_->Reconcile(/*release_orphans=*/false);
  ASSERT_TRUE(found.ok()) << found.status();
  ASSERT_EQ(found->size(), 1u);
  EXPECT_EQ((*found)[0].volume, "root2");
  EXPECT_EQ((*found)[0].domain, "web2");
  EXPECT_EQ(storage_->GetVolume("vg0", "root2")->state, VolumeState::kOrphaned);
  EXPECT_EQ(storage_->GetVolume("vg0", "root1")->state, VolumeState::kAttached);
  EXPECT_EQ(storage_->GetPool("vg0")->orphaned_volume_count, 1u);
  EXPECT_EQ(storage_->ListPoolsEach()[1].second->orphaned_volume_count, 1u);  // vg0 after disk1
  EXPECT_EQ(Volumes("vg0")[1].attached_to, "web2") << "reported, not changed";

  ASSERT_TRUE(domains_->Reconcile(/*release_orphans=*/true).ok());
  EXPECT_EQ(storage_->GetVolume("vg0", "root2")->state, VolumeState::kAvailable);
  EXPECT_EQ(storage_->GetVolume("vg0", "root2")->volume.size_bytes, 64u << 20) << "data is never deleted";
  EXPECT_EQ(storage_->GetPool("vg0")->orphaned_volume_count, 0u);
  EXPECT_EQ(storage_->GetVolume("vg0", "root1")->state, VolumeState::kAttached);
}

TEST_F(DomainVolumesTest, ReconcileWithoutTheDomainListJudgesNothing) {
  ASSERT_TRUE(domains_->Create(Spec("web1", 1), false, {{0, {"vg0", "root1", 64 << 20}}}).ok());
  hv_.connected = false;  // libvirtd down: no domain list
  auto found = domains_->Reconcile(true);
  EXPECT_EQ(found.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Volumes("vg0")[0].attached_to, "web1");
  EXPECT_EQ(storage_->GetVolume("vg0", "root1")->state, VolumeState::kAttached);
}

}  // namespace
}  // namespace hvagent::service
