// The operation journal (RecordFile, Journal) and DomainService::Recover: a crash is simulated by
// doing some of an operation's steps by hand, journalling them and never ending the operation,
// then opening the journal again from its file as a restarted agent would.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "agent/service/domain_service.h"
#include "agent/service/journal.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"
#include "tests/fakes/fake_storage_backend.h"
#include "tests/fakes/fresh_temp_dir.h"

namespace hvagent::service {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::string TempPath(const std::string& name) { return testing::FreshTempDir("hvagent-journal") + "/" + name; }

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

internal::JournalStep Step(const std::string& name, const std::string& pool = "", const std::string& volume = "",
                           bool created = false, bool owned = false) {
  internal::JournalStep s;
  s.set_name(name);
  if (!pool.empty()) {
    s.mutable_volume()->set_pool(pool);
    s.mutable_volume()->set_name(volume);
    s.mutable_volume()->set_created(created);
    s.mutable_volume()->set_owned(owned);
  }
  return s;
}

// A volume a delete listed when it began, as its record showed it.
struct Listed {
  std::string name;
  bool owned = false;
};

TEST(RecordFileTest, AppendsDurablyAndSkipsATornLastLine) {
  const std::string path = TempPath("records");
  {
    auto f = RecordFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    internal::JournalRecord r;
    r.set_op(1);
    r.mutable_end()->set_outcome("ok");
    ASSERT_TRUE((*f)->Append(r).ok());
    r.set_op(2);
    ASSERT_TRUE((*f)->Append(r).ok());
  }
  EXPECT_EQ(Slurp(path), "{\"op\":\"1\",\"end\":{\"outcome\":\"ok\"}}\n{\"op\":\"2\",\"end\":{\"outcome\":\"ok\"}}\n");
  std::ofstream(path, std::ios::app) << "{\"op\":\"3\",\"end\":{\"outc";  // a crash mid-write
  auto f = RecordFile::Open(path);
  ASSERT_TRUE(f.ok());
  std::vector<uint64_t> ops;
  auto skipped = (*f)->Load(internal::JournalRecord(), [&](const google::protobuf::Message& m) {
    ops.push_back(static_cast<const internal::JournalRecord&>(m).op());
  });
  ASSERT_TRUE(skipped.ok());
  EXPECT_EQ(*skipped, 1u);
  EXPECT_THAT(ops, ElementsAre(1, 2));
  ASSERT_TRUE((*f)->Rewrite({}).ok());
  EXPECT_EQ(Slurp(path), "");
  EXPECT_FALSE(std::filesystem::exists(path + ".new"));
}

TEST(RecordFileTest, UnwritableDirectoryIsAnError) {
  auto f = RecordFile::Open("/nonexistent-hvagent-dir/journal");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("/nonexistent-hvagent-dir/journal"));
}

TEST(JournalTest, UnfinishedOperationsSurviveAReopenAndEndedOnesDoNot) {
  const std::string path = TempPath("journal");
  {
    auto j = Journal::Open(path);
    ASSERT_TRUE(j.ok());
    internal::JournalBegin a, b;
    a.set_kind("create");
    a.set_domain("a");
    b.set_kind("delete");
    b.set_domain("b");
    auto op_a = (*j)->Begin(a);
    auto op_b = (*j)->Begin(b);
    ASSERT_TRUE(op_a.ok() && op_b.ok());
    ASSERT_TRUE((*j)->Step(*op_a, Step("claim-volume", "vg0", "a-root", true)).ok());
    ASSERT_TRUE((*j)->Step(*op_a, Step("define")).ok());
    ASSERT_TRUE((*j)->End(*op_b, v1::OPERATION_STATE_SUCCEEDED).ok());
  }
  auto j = Journal::Open(path);
  ASSERT_TRUE(j.ok());
  EXPECT_TRUE((*j)->persistent());
  auto open = (*j)->Unfinished();
  ASSERT_EQ(open.size(), 1u);
  EXPECT_EQ(open[0].begin.domain(), "a");
  ASSERT_EQ(open[0].steps.size(), 2u);
  EXPECT_EQ(open[0].steps[0].volume().name(), "a-root");
  EXPECT_EQ(open[0].steps[1].name(), "define");
  // New operations never reuse an id a crash left behind.
  auto next = (*j)->Begin(internal::JournalBegin());
  ASSERT_TRUE(next.ok());
  EXPECT_GT(*next, open[0].id);
  ASSERT_TRUE((*j)->End(open[0].id, v1::OPERATION_STATE_RECOVERED, "completed").ok());
  ASSERT_TRUE((*j)->End(*next, v1::OPERATION_STATE_SUCCEEDED).ok());
  EXPECT_EQ(Slurp(path), "");  // nothing in flight: the file is emptied
}

// ListOperations' source: ended operations, newest first, bounded, with their typed outcome.
TEST(JournalTest, RecentKeepsEndedOperationsNewestFirstAndBounded) {
  auto j = std::move(*Journal::Open(""));
  internal::JournalBegin create;
  create.set_type(v1::OPERATION_KIND_CREATE_DOMAIN);
  create.set_domain("web1");
  auto first = j->Begin(create);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(j->Step(*first, Step("define")).ok());
  ASSERT_TRUE(j->End(*first, v1::OPERATION_STATE_FAILED, "define: no memory").ok());
  auto second = j->Begin(create);
  ASSERT_TRUE(j->End(*second, v1::OPERATION_STATE_SUCCEEDED).ok());
  auto recent = j->Recent();
  ASSERT_EQ(recent.size(), 2u);
  EXPECT_EQ(recent[0].op.id, *second);
  EXPECT_EQ(recent[1].state, v1::OPERATION_STATE_FAILED);
  EXPECT_EQ(recent[1].message, "define: no memory");
  ASSERT_EQ(recent[1].op.steps.size(), 1u);
  EXPECT_EQ(recent[1].op.begin.type(), v1::OPERATION_KIND_CREATE_DOMAIN);
  EXPECT_GT(recent[1].end_unix_ms, 0);
  for (size_t i = 0; i < Journal::kHistory + 5; ++i) ASSERT_TRUE(j->End(*j->Begin(create), v1::OPERATION_STATE_SUCCEEDED).ok());
  EXPECT_EQ(j->Recent().size(), Journal::kHistory);
  EXPECT_TRUE(j->Unfinished().empty());
}

// Journals written before kinds were an enum (kind: "create"/"delete") are still recovered.
TEST(JournalTest, LegacyStringKindsAreReadAsTypes) {
  const std::string path = TempPath("journal-legacy");
  std::ofstream(path) << "{\"op\":\"4\",\"begin\":{\"kind\":\"delete\",\"domain\":\"old\"}}\n";
  auto j = Journal::Open(path);
  ASSERT_TRUE(j.ok()) << j.status();
  auto open = (*j)->Unfinished();
  ASSERT_EQ(open.size(), 1u);
  EXPECT_EQ(open[0].begin.type(), v1::OPERATION_KIND_DELETE_DOMAIN);
}

// A restarted agent: a fresh journal read from the crashed one's file, fresh services over
// the same (fake) hypervisor and pools.
class RecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = TempPath("journal");
    std::vector<std::unique_ptr<storage::StorageBackend>> backends;
    auto b = std::make_unique<testing::FakeStorageBackend>(storage::PoolConfig{.name = "vg0"}, 1ULL << 30);
    pool_ = b.get();
    backends.push_back(std::move(b));
    storage_ = std::make_unique<StorageService>(hv_, std::move(backends));
    crashed_ = std::move(*Journal::Open(path_));
  }
  // Begins an operation in the "crashed" agent's journal and journals `steps`.
  uint64_t Crashed(const std::string& kind, const std::string& domain, const std::string& uuid, bool start,
                   const std::vector<internal::JournalStep>& steps, bool delete_volumes = false,
                   const std::vector<Listed>& volumes = {}) {
    internal::JournalBegin b;
    b.set_kind(kind);
    b.set_domain(domain);
    b.set_uuid(uuid);
    b.set_start(start);
    b.set_delete_volumes(delete_volumes);
    for (const auto& v : volumes) {
      auto* jv = b.add_volumes();
      jv->set_pool("vg0");
      jv->set_name(v.name);
      jv->set_owned(v.owned);
    }
    uint64_t op = *crashed_->Begin(b);
    for (const auto& s : steps) EXPECT_TRUE(crashed_->Step(op, s).ok());
    return op;
  }
  std::vector<DomainService::Recovery> Restart() {
    crashed_.reset();
    journal_ = std::move(*Journal::Open(path_));
    domains_ = std::make_unique<DomainService>(hv_, clock_, DomainService::Options{}, storage_.get(), journal_.get());
    auto r = domains_->Recover();
    storage_->WaitForDeletes();
    return r;
  }
  void Define(const std::string& name, const std::string& uuid, const std::string& volume = "") {
    hv::DomainSpec s{.name = name, .uuid = uuid, .vcpus = 1, .memory_mib = 64};
    if (!volume.empty()) s.disks.push_back({.source_path = "/dev/fake/" + volume, .type = hv::DiskType::kBlock, .target = "vda"});
    ASSERT_TRUE(hv_.DefineDomain(s).ok());
  }
  std::vector<std::string> VolumeNames() {
    std::vector<std::string> out;
    auto list = storage_->ListVolumes("vg0");
    if (!list.ok()) return {list.status().ToString()};
    for (const auto& v : list.value()) out.push_back(v.volume.name + "@" + v.volume.attached_to);
    std::sort(out.begin(), out.end());
    return out;
  }

  std::string path_;
  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  testing::FakeStorageBackend* pool_ = nullptr;
  std::unique_ptr<StorageService> storage_;
  std::unique_ptr<Journal> crashed_, journal_;
  std::unique_ptr<DomainService> domains_;
};

constexpr char kUuid[] = "7d5c2f4e-1b0a-4c3d-9e8f-0a1b2c3d4e5f";

TEST_F(RecoveryTest, CreateKilledAfterItsVolumeIsUndone) {
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "web1-root", 64 << 20}, "web1").ok());
  Crashed("create", "web1", kUuid, true, {Step("claim-volume", "vg0", "web1-root", true)});
  auto r = Restart();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].outcome, "rolled back");
  EXPECT_THAT(VolumeNames(), IsEmpty());
  EXPECT_TRUE(journal_->Unfinished().empty());
  EXPECT_TRUE(Restart().empty());  // nothing left for the next start
}

TEST_F(RecoveryTest, CreateKilledBeforeStartRemovesTheDomainAndItsNewVolumeButReleasesAnOldOne) {
  ASSERT_TRUE(storage_->CreateVolume("vg0", {"data", 32 << 20}).ok());
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "web1-root", 64 << 20}, "web1").ok());
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "data", 0}, "web1").ok());
  Define("web1", kUuid, "web1-root");
  Crashed("create", "web1", kUuid, /*start=*/true,
          {Step("claim-volume", "vg0", "web1-root", true), Step("claim-volume", "vg0", "data", false), Step("define"),
           Step("start")});
  auto r = Restart();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].outcome, "rolled back");
  EXPECT_FALSE(hv_.GetDomain("web1").ok());
  EXPECT_THAT(VolumeNames(), ElementsAre("data@"));  // existed before: released, not deleted
}

TEST_F(RecoveryTest, CreateThatReachedItsLastStepIsKept) {
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "web1-root", 64 << 20}, "web1").ok());
  Define("web1", kUuid, "web1-root");
  ASSERT_TRUE(hv_.StartDomain("web1").ok());
  Crashed("create", "web1", kUuid, true,
          {Step("claim-volume", "vg0", "web1-root", true), Step("define"), Step("start")});
  auto r = Restart();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].outcome, "completed");
  EXPECT_EQ(hv_.GetDomain("web1")->state, hv::DomainState::kRunning);
  EXPECT_THAT(VolumeNames(), ElementsAre("web1-root@web1"));
}

TEST_F(RecoveryTest, ADomainOfTheSameNameButAnotherUuidIsNotTouched) {
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "other", 16 << 20}, "web1").ok());  // the other web1's volume
  Define("web1", "11111111-2222-4333-8444-555555555555", "other");
  // The crashed create got only as far as journalling a claim of a volume that is not its own.
  Crashed("create", "web1", kUuid, false, {Step("claim-volume", "vg0", "other", false)});
  auto r = Restart();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].outcome, "rolled back");
  EXPECT_TRUE(hv_.GetDomain("web1").ok());
  EXPECT_THAT(VolumeNames(), ElementsAre("other@web1"));  // still the other web1's
}

TEST_F(RecoveryTest, DeleteKilledAfterUndefineFinishesTheVolumes) {
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "web1-root", 64 << 20}, "web1").ok());
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "web1-data", 64 << 20}, "web1").ok());
  // The crashed delete undefined the domain and released (but did not remove) the first volume.
  ASSERT_TRUE(storage_->ReleaseVolume("vg0", "web1-data", "web1", false).ok());
  Crashed("delete", "web1", kUuid, false,
          {Step("undefine"), Step("release-volume", "vg0", "web1-data", false, /*owned=*/true)},
          /*delete_volumes=*/true, {{"web1-data", true}, {"web1-root", true}});
  auto r = Restart();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].outcome, "completed");
  EXPECT_THAT(VolumeNames(), IsEmpty());
}

TEST_F(RecoveryTest, DeleteKilledBeforeAnyStepIsCarriedThrough) {
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "web1-root", 64 << 20}, "web1").ok());
  Define("web1", kUuid, "web1-root");
  ASSERT_TRUE(hv_.StartDomain("web1").ok());
  Crashed("delete", "web1", kUuid, false, {}, /*delete_volumes=*/false, {{"web1-root", true}});
  auto r = Restart();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].outcome, "completed");
  EXPECT_FALSE(hv_.GetDomain("web1").ok());
  EXPECT_THAT(VolumeNames(), ElementsAre("web1-root@"));  // kept, as the request asked
}

// A delete with delete_volumes killed after undefine: the owned root goes, the borrowed data
// volume (attached, or already released) is kept, free.
TEST_F(RecoveryTest, DeleteKilledAfterUndefineDeletesOwnedAndKeepsBorrowedVolumes) {
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "web1-root", 64 << 20}, "web1").ok());
  ASSERT_TRUE(storage_->CreateVolume("vg0", {"data", 32 << 20}).ok());
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "data", 0}, "web1").ok());
  ASSERT_TRUE(storage_->CreateVolume("vg0", {"data2", 32 << 20}).ok());
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "data2", 0}, "web1").ok());
  ASSERT_TRUE(storage_->ReleaseVolume("vg0", "data2", "web1", /*delete_if_owned=*/true).ok());  // released: kept
  Crashed("delete", "web1", kUuid, false, {Step("undefine"), Step("release-volume", "vg0", "data2")},
          /*delete_volumes=*/true, {{"data", false}, {"data2", false}, {"web1-root", true}});
  auto r = Restart();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].outcome, "completed");
  EXPECT_THAT(VolumeNames(), ElementsAre("data2@", "data@"));
}

// A journal written before ownership existed says nothing is owned: recovery deletes nothing,
// even a volume its record shows as owned.
TEST_F(RecoveryTest, DeleteFromAJournalWithoutOwnershipDeletesNoVolume) {
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "web1-root", 64 << 20}, "web1").ok());
  Crashed("delete", "web1", kUuid, false, {Step("undefine")}, /*delete_volumes=*/true, {{"web1-root", false}});
  auto r = Restart();
  ASSERT_EQ(r[0].outcome, "completed");
  EXPECT_THAT(VolumeNames(), ElementsAre("web1-root@"));
}

// The journal says owned, but the volume is free and this delete never released it (an operator
// detached it before the crash): it is not this delete's to remove.
TEST_F(RecoveryTest, DeleteLeavesAFreeVolumeItNeverReleased) {
  ASSERT_TRUE(storage_->CreateVolume("vg0", {"web1-root", 64 << 20}).ok());
  Crashed("delete", "web1", kUuid, false, {Step("undefine")}, /*delete_volumes=*/true, {{"web1-root", true}});
  Restart();
  EXPECT_THAT(VolumeNames(), ElementsAre("web1-root@"));
}

// The journal says owned, but by now the volume's own record says borrowed (ownership was
// released while the delete ran): the record wins, the volume is kept.
TEST_F(RecoveryTest, DeleteKeepsAVolumeWhoseRecordSaysBorrowed) {
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "web1-root", 64 << 20}, "web1").ok());
  ASSERT_TRUE(storage_->ReleaseOwnership("vg0", "web1-root").ok());
  Crashed("delete", "web1", kUuid, false, {Step("undefine")}, /*delete_volumes=*/true, {{"web1-root", true}});
  Restart();
  EXPECT_THAT(VolumeNames(), ElementsAre("web1-root@"));
}

// A domain of the same name but another uuid now has the volume: not the crashed delete's.
TEST_F(RecoveryTest, DeleteLeavesTheVolumesOfAnotherDomainOfTheSameName) {
  ASSERT_TRUE(storage_->ClaimVolume({"vg0", "web1-root", 64 << 20}, "web1").ok());
  Define("web1", "11111111-2222-4333-8444-555555555555", "web1-root");
  Crashed("delete", "web1", kUuid, false, {Step("undefine")}, /*delete_volumes=*/true, {{"web1-root", true}});
  Restart();
  EXPECT_TRUE(hv_.GetDomain("web1").ok());
  EXPECT_THAT(VolumeNames(), ElementsAre("web1-root@web1"));
}

// The hypervisor goes away between define and start: the start fails, and so does the undo.
// The create stays open in the journal; the next Recover (a reconciliation) finishes the undo.
TEST_F(RecoveryTest, ACreateWhoseUndoFailedStaysOpenUntilRecovered) {
  domains_ = std::make_unique<DomainService>(hv_, clock_, DomainService::Options{}, storage_.get(), crashed_.get());
  hv::DomainSpec s{.name = "web3", .vcpus = 1, .memory_mib = 64};
  s.disks.push_back({.source_path = "", .target = "vda"});
  hv_.fail_start = absl::UnavailableError("connection to libvirtd lost");
  hv_.fail_undefine = absl::UnavailableError("connection to libvirtd lost");
  auto d = domains_->Create(s, true, {{0, {"vg0", "web3-root", 16 << 20}}});
  EXPECT_EQ(d.status().code(), absl::StatusCode::kUnavailable);
  ASSERT_EQ(crashed_->Unfinished().size(), 1u) << "left for recovery";
  EXPECT_TRUE(hv_.GetDomain("web3").ok());
  EXPECT_TRUE(domains_->Recover()[0].outcome.starts_with("failed"));  // still unreachable
  EXPECT_EQ(crashed_->Unfinished().size(), 1u);

  hv_.fail_undefine = absl::OkStatus();  // libvirtd is back
  auto r = domains_->Recover();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].outcome, "rolled back");
  storage_->WaitForDeletes();
  EXPECT_FALSE(hv_.GetDomain("web3").ok());
  EXPECT_THAT(VolumeNames(), IsEmpty());
  EXPECT_TRUE(crashed_->Unfinished().empty());
}

TEST_F(RecoveryTest, JournalledCreateAndDeleteLeaveNothingOpen) {
  domains_ = std::make_unique<DomainService>(hv_, clock_, DomainService::Options{}, storage_.get(), crashed_.get());
  hv::DomainSpec s{.name = "web2", .vcpus = 1, .memory_mib = 64};
  s.disks.push_back({.source_path = "", .target = "vda"});
  auto d = domains_->Create(s, true, {{0, {"vg0", "web2-root", 16 << 20}}});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->uuid.empty());
  EXPECT_TRUE(crashed_->Unfinished().empty());
  EXPECT_EQ(Slurp(path_), "");
  ASSERT_TRUE(domains_->Delete("web2", true, true).ok());
  EXPECT_TRUE(crashed_->Unfinished().empty());
  // A create refused by validation journals nothing at all.
  hv::DomainSpec bad{.name = "", .vcpus = 1, .memory_mib = 64};
  EXPECT_FALSE(domains_->Create(bad, false).ok());
  EXPECT_EQ(Slurp(path_), "");
}

}  // namespace
}  // namespace hvagent::service
