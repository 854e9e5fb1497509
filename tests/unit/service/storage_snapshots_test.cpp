// StorageService's snapshots against a fake pool and a fake hypervisor: how a running guest is
// held still (freeze with a guest agent, pause without), that it is always let go, what is
// refused before any guest is touched, and the recovery of a hold a crash cut short.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/service/storage_service.h"
#include "tests/fakes/fake_hypervisor.h"
#include "tests/fakes/fake_storage_backend.h"

namespace hvagent::service {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

class StorageSnapshotsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto b = std::make_unique<testing::FakeStorageBackend>(storage::PoolConfig{.name = "vg0"});
    backend_ = b.get();
    backend_->snapshots = true;
    std::vector<std::unique_ptr<storage::StorageBackend>> backends;
    backends.push_back(std::move(b));
    svc_ = std::make_unique<StorageService>(hv_, std::move(backends));
    journal_ = std::move(*Journal::Open(""));
    svc_->SetJournal(journal_.get());
    hv::DomainSpec spec{.name = "web1", .vcpus = 1, .memory_mib = 64};
    spec.disks.push_back({"/dev/vg0/boot", hv::DiskType::kBlock, "xvda", "", false, ""});
    ASSERT_TRUE(hv_.DefineDomain(spec).ok());
    ASSERT_TRUE(svc_->CreateVolume("vg0", {"root", 1 << 20}).ok());
    ASSERT_TRUE(svc_->AttachVolume("vg0", "root", "web1", "", false).ok());
  }
  void Start() { ASSERT_TRUE(hv_.StartDomain("web1").ok()); }
  hv::DomainState State() { return hv_.GetDomain("web1")->state; }

  testing::FakeHypervisor hv_;
  testing::FakeStorageBackend* backend_ = nullptr;
  std::unique_ptr<StorageService> svc_;
  std::unique_ptr<Journal> journal_;
};

TEST_F(StorageSnapshotsTest, StoppedDomainsVolumeIsSnapshottedWithoutHoldingTheGuest) {
  auto r = svc_->CreateSnapshot("vg0", "root", "s1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->quiesce, QuiesceMode::kNone);
  EXPECT_EQ(r->snapshot.name, "s1");
  EXPECT_THAT(hv_.calls, Not(Contains("suspend web1")));
  EXPECT_THAT(backend_->calls, Contains("snapshot root s1"));
}

TEST_F(StorageSnapshotsTest, RunningGuestWithAnAgentIsFrozenNotPaused) {
  Start();
  hv_.guest_agents.insert("web1");
  bool frozen_during = false;
  backend_->during_snapshot = [&] { frozen_during = hv_.frozen.contains("web1") && State() == hv::DomainState::kRunning; };
  auto r = svc_->CreateSnapshot("vg0", "root", "s1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(frozen_during);
  EXPECT_EQ(r->quiesce, QuiesceMode::kFreeze);
  EXPECT_TRUE(hv_.frozen.empty());  // thawed
  EXPECT_THAT(hv_.calls, Not(Contains("suspend web1")));
  EXPECT_TRUE(journal_->Unfinished().empty());
}

TEST_F(StorageSnapshotsTest, RunningGuestWithoutAnAgentIsPausedAndResumed) {
  Start();
  hv::DomainState during = hv::DomainState::kRunning;
  backend_->during_snapshot = [&] { during = State(); };
  auto r = svc_->CreateSnapshot("vg0", "root", "s1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(during, hv::DomainState::kPaused);
  EXPECT_EQ(r->quiesce, QuiesceMode::kPause);
  EXPECT_EQ(State(), hv::DomainState::kRunning);
  EXPECT_LE(r->paused_ms, r->total_ms);
  EXPECT_THAT(hv_.calls, Not(Contains("freeze web1")));
}

TEST_F(StorageSnapshotsTest, AFreezeThatFailsFallsBackToAPauseAndSaysSo) {
  Start();
  hv_.guest_agents.insert("web1");
  hv_.freeze_result = absl::UnavailableError("Guest agent is not responding");
  auto r = svc_->CreateSnapshot("vg0", "root", "s1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->quiesce, QuiesceMode::kPause);
  EXPECT_THAT(r->note, HasSubstr("paused instead"));
  EXPECT_THAT(r->note, HasSubstr("not responding"));
  EXPECT_EQ(State(), hv::DomainState::kRunning);
}

TEST_F(StorageSnapshotsTest, TheGuestIsLetGoWhenTheSnapshotFails) {
  Start();
  backend_->fail_snapshot = absl::InternalError("lvm2 lvcreate: device busy");
  auto paused = svc_->CreateSnapshot("vg0", "root", "s1");
  EXPECT_EQ(paused.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(State(), hv::DomainState::kRunning);
  hv_.guest_agents.insert("web1");
  auto frozen = svc_->CreateSnapshot("vg0", "root", "s2");
  EXPECT_EQ(frozen.status().code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(hv_.frozen.empty());
  EXPECT_TRUE(journal_->Unfinished().empty());
  ASSERT_FALSE(journal_->Recent().empty());
  EXPECT_EQ(journal_->Recent().front().state, v1::OPERATION_STATE_FAILED);
}

TEST_F(StorageSnapshotsTest, BadInputIsRefusedBeforeAnyGuestIsTouched) {
  Start();
  auto slash = svc_->CreateSnapshot("vg0", "root", "a/b");
  EXPECT_EQ(slash.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(slash.status().message(), HasSubstr("snapshot:"));
  EXPECT_EQ(svc_->CreateSnapshot("vg0", "root", "..").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(svc_->CreateSnapshot("vg0", "ghost", "s1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(svc_->CreateSnapshot("nope", "root", "s1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(hv_.calls, Not(Contains("suspend web1")));
  EXPECT_TRUE(journal_->Unfinished().empty());
}

TEST_F(StorageSnapshotsTest, APartitionPoolIsUnimplementedNamingItsKind) {
  auto b = std::make_unique<testing::FakeStorageBackend>(
      storage::PoolConfig{.name = "disk1", .type = storage::PoolType::kPartition});
  std::vector<std::unique_ptr<storage::StorageBackend>> backends;
  backends.push_back(std::move(b));
  StorageService parts(hv_, std::move(backends));
  ASSERT_TRUE(parts.CreateVolume("disk1", {"v", 1 << 20}).ok());
  auto r = parts.CreateSnapshot("disk1", "v", "s1");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(r.status().message(), HasSubstr("partition pool"));
  EXPECT_EQ(parts.ListSnapshots("disk1", "v").status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(parts.RevertSnapshot("disk1", "v", "s1").status().code(), absl::StatusCode::kUnimplemented);
}

TEST_F(StorageSnapshotsTest, RevertIsRefusedWhileTheDomainRunsOrIsPaused) {
  ASSERT_TRUE(svc_->CreateSnapshot("vg0", "root", "s1").ok());
  Start();
  auto r = svc_->RevertSnapshot("vg0", "root", "s1");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("running domain 'web1'"));
  ASSERT_TRUE(hv_.SuspendDomain("web1").ok());
  EXPECT_EQ(svc_->RevertSnapshot("vg0", "root", "s1").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(backend_->calls, Not(Contains("revert root s1")));
  ASSERT_TRUE(hv_.DestroyDomain("web1").ok());
  auto done = svc_->RevertSnapshot("vg0", "root", "s1");
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_TRUE(done->snapshot_kept);
  EXPECT_EQ(done->volume.volume.attached_to, "web1");
  EXPECT_TRUE(journal_->Unfinished().empty());
}

TEST_F(StorageSnapshotsTest, DeletingAVolumeWithSnapshotsNeedsCascade) {
  ASSERT_TRUE(svc_->CreateVolume("vg0", {"data", 1 << 20}).ok());
  ASSERT_TRUE(svc_->CreateSnapshot("vg0", "data", "a").ok());
  ASSERT_TRUE(svc_->CreateSnapshot("vg0", "data", "b").ok());
  auto refused = svc_->DeleteVolume("vg0", "data");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("2 snapshot(s) (a, b)"));
  EXPECT_TRUE(svc_->GetVolume("vg0", "data").ok());
  ASSERT_TRUE(svc_->DeleteVolume("vg0", "data", /*cascade=*/true).ok());
  svc_->WaitForDeletes();
  EXPECT_THAT(backend_->calls, Contains("delete-snapshot data a"));
  EXPECT_THAT(backend_->calls, Contains("delete-snapshot data b"));
  EXPECT_EQ(svc_->GetVolume("vg0", "data").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StorageSnapshotsTest, RecoveryResumesAGuestACrashLeftPausedForASnapshot) {
  Start();
  internal::JournalBegin b;
  b.set_type(v1::OPERATION_KIND_SNAPSHOT_VOLUME);
  b.set_domain("web1");
  b.set_pool("vg0");
  b.set_volume("root");
  b.set_snapshot("s1");
  uint64_t op = *journal_->Begin(b);
  internal::JournalStep pause;
  pause.set_name("pause");
  ASSERT_TRUE(journal_->Step(op, pause).ok());
  ASSERT_TRUE(hv_.SuspendDomain("web1").ok());  // the crash came here
  auto lines = svc_->RecoverSnapshots();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("resumed"));
  EXPECT_EQ(State(), hv::DomainState::kRunning);
  EXPECT_TRUE(journal_->Unfinished().empty());
  EXPECT_EQ(journal_->Recent().front().state, v1::OPERATION_STATE_ROLLED_BACK);  // no snapshot taken
}

TEST_F(StorageSnapshotsTest, RecoveryThawsAGuestACrashLeftFrozen) {
  Start();
  hv_.guest_agents.insert("web1");
  internal::JournalBegin b;
  b.set_type(v1::OPERATION_KIND_SNAPSHOT_VOLUME);
  b.set_domain("web1");
  b.set_pool("vg0");
  b.set_volume("root");
  b.set_snapshot("s1");
  uint64_t op = *journal_->Begin(b);
  internal::JournalStep freeze;
  freeze.set_name("freeze");
  ASSERT_TRUE(journal_->Step(op, freeze).ok());
  ASSERT_TRUE(hv_.FreezeFilesystems("web1").ok());
  ASSERT_TRUE(backend_->CreateSnapshot("root", "s1").ok());  // taken before the crash
  auto lines = svc_->RecoverSnapshots();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("thawed"));
  EXPECT_TRUE(hv_.frozen.empty());
  EXPECT_EQ(journal_->Recent().front().state, v1::OPERATION_STATE_RECOVERED);
}

}  // namespace
}  // namespace hvagent::service
