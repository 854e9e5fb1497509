#include "storage/partition/partition_backend.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>
#include <memory>

#include "tests/fakes/fake_command_runner.h"
#include "tests/unit/storage/partition/sfdisk_samples.h"

namespace hvagent::storage {
namespace {

using hvagent::testing::FakeCommandRunner;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
namespace samples = hvagent::testing::sfdisk;
using Argv = std::vector<std::string>;

constexpr uint64_t MiB = 1 << 20;
const Argv kList = {"/usr/sbin/sfdisk", "--json", "/dev/loop0"};

// Records every wipe with how many commands had run before it, so tests can check the order.
class FakeWiper final : public BlockWiper {
 public:
  explicit FakeWiper(FakeCommandRunner& runner) : runner_(runner) {}
  absl::Status Wipe(const std::string& device, WipeMode mode, const ProgressFn& progress) override {
    wipes.push_back({device, mode, runner_.calls().size()});
    if (progress) {
      progress({0, 20 * MiB});
      progress({20 * MiB, 20 * MiB});
    }
    return result;
  }
  struct Call {
    std::string device;
    WipeMode mode;
    size_t commands_before;
  };
  std::vector<Call> wipes;
  absl::Status result;

 private:
  FakeCommandRunner& runner_;
};

class PartitionBackendTest : public ::testing::Test {
 protected:
  static PoolConfig Config(std::string disk = "/dev/loop0") {
    PoolConfig c;
    c.name = "fast";
    c.type = PoolType::kPartition;
    c.disk = std::move(disk);
    c.wipe = WipeMode::kZero;
    return c;
  }
  std::unique_ptr<PartitionBackend> Make(PoolConfig c = Config()) {
    PartitionBackend::Options o;
    o.node_wait = std::chrono::milliseconds(30);
    o.node_ready = [this](const std::string& path) {
      waited_for.push_back(path);
      return node_appears;
    };
    return std::make_unique<PartitionBackend>(std::move(c), runner, wiper, o);
  }
  void ExpectList(const std::string& json) { runner.Expect(kList, FakeCommandRunner::Ok(json)); }

  FakeCommandRunner runner;
  FakeWiper wiper{runner};
  bool node_appears = true;
  std::vector<std::string> waited_for;
};

// ---- Prepare ----

TEST_F(PartitionBackendTest, PrepareLabelsAnEmptyDisk) {
  runner.Expect(kList, FakeCommandRunner::Fail(1, samples::kNoTableStderr));
  runner.Expect({"/usr/sbin/blkid"}, FakeCommandRunner::Fail(2, ""));
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  ExpectList(samples::kEmptyGpt);
  ASSERT_TRUE(Make()->Prepare().ok());
  EXPECT_THAT(runner.calls(), ElementsAre(kList, Argv{"/usr/sbin/blkid", "-p", "-o", "export", "/dev/loop0"},
                                          Argv{"/usr/sbin/parted", "-s", "/dev/loop0", "mklabel", "gpt"}, kList));
}

TEST_F(PartitionBackendTest, PrepareKeepsAnExistingGptWithForeignPartitions) {
  ExpectList(samples::kMixed);
  ASSERT_TRUE(Make()->Prepare().ok());
  EXPECT_THAT(runner.calls(), ElementsAre(kList));
}

TEST_F(PartitionBackendTest, PrepareRefusesAnotherLabel) {
  ExpectList(samples::kDos);
  auto s = Make()->Prepare();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("'dos'"));
  EXPECT_EQ(runner.CountOf("parted"), 0);
}

TEST_F(PartitionBackendTest, PrepareRefusesADiskWithContent) {
  runner.Expect(kList, FakeCommandRunner::Fail(1, samples::kNoTableStderr));
  runner.Expect({"/usr/sbin/blkid"},
                FakeCommandRunner::Ok("DEVNAME=/dev/loop0\nUUID=ab13\nVERSION=1.0\nTYPE=ext4\nUSAGE=filesystem\n"));
  auto s = Make()->Prepare();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("TYPE=ext4"));
  EXPECT_EQ(runner.CountOf("parted"), 0);
}

TEST_F(PartitionBackendTest, PrepareQuotesBlkidFailure) {
  runner.Expect(kList, FakeCommandRunner::Fail(1, samples::kNoTableStderr));
  runner.Expect({"/usr/sbin/blkid"}, FakeCommandRunner::Fail(4, "blkid: error: /dev/loop0: Permission denied"));
  auto s = Make()->Prepare();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("blkid: error: /dev/loop0: Permission denied"));
  EXPECT_EQ(runner.CountOf("parted"), 0);
}

TEST_F(PartitionBackendTest, UnpreparedDiskIsFailedPrecondition) {
  runner.Expect(kList, FakeCommandRunner::Fail(1, samples::kNoTableStderr));
  auto pool = Make()->GetPool();
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kFailedPrecondition);
}

// ---- Reading ----

TEST_F(PartitionBackendTest, GetPoolFromRealTable) {
  ExpectList(samples::kMixed);
  auto pool = Make()->GetPool();
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(pool->name, "fast");
  EXPECT_EQ(pool->type, PoolType::kPartition);
  EXPECT_EQ(pool->capacity_bytes, 126 * MiB);
  EXPECT_EQ(pool->free_bytes, (10 + 2 + 68) * MiB);
  EXPECT_EQ(pool->volume_count, 2u);  // the foreign and the unnamed partition are not ours
  EXPECT_EQ(pool->wipe, WipeMode::kZero);
}

TEST_F(PartitionBackendTest, ListShowsOnlyOurPartitions) {
  ExpectList(samples::kMixed);
  auto list = Make()->ListVolumes();
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name, "db1");
  EXPECT_EQ((*list)[0].path, "/dev/loop0p1");
  EXPECT_EQ((*list)[0].size_bytes, 10 * MiB);
  EXPECT_EQ((*list)[0].attached_to, "");
  EXPECT_EQ((*list)[0].pool, "fast");
  EXPECT_EQ((*list)[1].name, "web");
  EXPECT_EQ((*list)[1].path, "/dev/loop0p3");
  EXPECT_EQ((*list)[1].size_bytes, 20 * MiB);
  EXPECT_EQ((*list)[1].attached_to, "i-2-10-VM");
  EXPECT_THAT(runner.calls(), ElementsAre(kList));
}

TEST_F(PartitionBackendTest, LookalikeNamesAreInvisible) {
  ExpectList(samples::SfdiskJson({{1, 2048, 2048, "hvagent:../../x"},
                                  {2, 4096, 2048, "HVAGENT:y"},
                                  {3, 6144, 2048, "hvagent:z@a b"},
                                  {4, 8192, 2048, "hvagent:ok"}}));
  auto list = Make()->ListVolumes();
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "ok");
}

TEST_F(PartitionBackendTest, GetVolumeOfForeignPartitionIsNotFound) {
  ExpectList(samples::kMixed);
  EXPECT_EQ(Make()->GetVolume("foreign").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(PartitionBackendTest, FourKSectorDisk) {
  ExpectList(samples::k4kSectors);
  auto v = Make()->GetVolume("big");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->size_bytes, 10 * MiB);
}

// ---- Tool failures ----

TEST_F(PartitionBackendTest, SfdiskFailureQuotesItsWords) {
  runner.Expect(kList, FakeCommandRunner::Fail(1, "sfdisk: cannot open /dev/loop0: Permission denied\n"));
  auto s = Make()->ListVolumes().status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("sfdisk: cannot open /dev/loop0: Permission denied"));
  EXPECT_THAT(s.message(), HasSubstr("exit 1"));
}

TEST_F(PartitionBackendTest, SfdiskHangIsDeadlineExceeded) {
  runner.Expect(kList, absl::DeadlineExceededError("/usr/sbin/sfdisk did not finish within 30000 ms and was killed"));
  auto s = Make()->GetPool().status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(s.message(), HasSubstr("sfdisk --json /dev/loop0"));
}

TEST_F(PartitionBackendTest, GarbageJsonIsInternal) {
  ExpectList("Welcome to fdisk (util-linux 2.38.1).\n{\"partitiontable\":");
  auto s = Make()->ListVolumes().status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("sfdisk --json output"));
}

TEST_F(PartitionBackendTest, TableListingAnotherDiskIsRefused) {
  ExpectList(R"({"partitiontable": {"label": "gpt", "sectorsize": 512, "firstlba": 34, "lastlba": 262110,
      "partitions": [{"node": "/dev/sda1", "start": 2048, "size": 2048, "name": "hvagent:x"}]}})");
  EXPECT_EQ(Make()->ListVolumes().status().code(), absl::StatusCode::kInternal);
}

// ---- Hostile input ----

TEST_F(PartitionBackendTest, HostileVolumeNamesAreRejectedBeforeAnyCall) {
  auto backend = Make();
  for (const std::string& name : std::vector<std::string>{"../../etc/passwd", "", "-rf", "a;reboot", "$(reboot)", "`id`", "a b", "vol@dom",
                                 "hvagent:x", "a:b", "a/b", "a\nb", std::string("a\0b", 3), "\xc3\xa9",
                                 "abcdefghijklmnopqrstu"}) {
    EXPECT_EQ(backend->CreateVolume({name, MiB}).status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_EQ(backend->GetVolume(name).status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_EQ(backend->ResizeVolume(name, 2 * MiB).status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_EQ(backend->DeleteVolume(name, nullptr).code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_EQ(backend->SetAttachment(name, "dom", Ownership::kBorrowed).code(), absl::StatusCode::kInvalidArgument) << name;
  }
  EXPECT_TRUE(runner.calls().empty());
  EXPECT_TRUE(wiper.wipes.empty());
}

TEST_F(PartitionBackendTest, BadSizesAreRejectedBeforeAnyCall) {
  auto backend = Make();
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  for (uint64_t size : {uint64_t{0}, max, max - MiB + 2}) {  // a negative int64 arrives as one of these
    auto c = backend->CreateVolume({"v", size});
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << size;
    EXPECT_EQ(backend->ResizeVolume("v", size).status().code(), absl::StatusCode::kInvalidArgument) << size;
  }
  EXPECT_TRUE(runner.calls().empty());
}

// -1 MiB as int64 is exactly the largest size that rounds without overflow.
TEST_F(PartitionBackendTest, LargestRepresentableSizeIsPoolFullNotOverflow) {
  ExpectList(samples::kMixed);
  auto c = Make()->CreateVolume({"v", std::numeric_limits<uint64_t>::max() - MiB + 1});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(runner.CountOf("parted"), 0);
}

TEST_F(PartitionBackendTest, UnconfiguredOrHostileDiskIsNeverTouched) {
  for (const char* disk : {"", "/etc/passwd", "/dev/../etc/passwd", "../../etc/passwd", "/dev/sd b",
                           "/dev/sdb;reboot", "/dev/", "/dev/$(id)"}) {
    auto backend = Make(Config(disk));
    EXPECT_EQ(backend->Prepare().code(), absl::StatusCode::kInvalidArgument) << disk;
    EXPECT_EQ(backend->GetPool().status().code(), absl::StatusCode::kInvalidArgument) << disk;
    EXPECT_EQ(backend->ListVolumes().status().code(), absl::StatusCode::kInvalidArgument) << disk;
    EXPECT_EQ(backend->CreateVolume({"v", MiB}).status().code(), absl::StatusCode::kInvalidArgument) << disk;
    EXPECT_EQ(backend->DeleteVolume("v", nullptr).code(), absl::StatusCode::kInvalidArgument) << disk;
  }
  PoolConfig lvm = Config();
  lvm.type = PoolType::kLvm;
  EXPECT_EQ(Make(lvm)->GetPool().status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(runner.calls().empty());
}

// ---- Create ----

TEST_F(PartitionBackendTest, CreateTakesFirstFitAlignedRegion) {
  ExpectList(samples::kMixed);
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  auto after = samples::MixedParts();
  after.push_back({5, 43008, 10240, "hvagent:new"});
  ExpectList(samples::SfdiskJson(after));
  auto v = Make()->CreateVolume({"new", 5 * MiB - 7});  // rounded up to 5 MiB
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->name, "new");
  EXPECT_EQ(v->path, "/dev/loop0p5");
  EXPECT_EQ(v->size_bytes, 5 * MiB);
  EXPECT_EQ(v->pool, "fast");
  EXPECT_EQ(v->attached_to, "");
  // 21 MiB = sector 43008; 26 MiB - 1 sector = 53247.
  EXPECT_THAT(runner.calls(), ElementsAre(kList,
                                          Argv{"/usr/sbin/parted", "-s", "-a", "none", "/dev/loop0", "unit", "s",
                                               "mkpart", "hvagent:new", "43008s", "53247s"},
                                          kList));
  EXPECT_THAT(waited_for, ElementsAre("/dev/loop0p5"));
}

TEST_F(PartitionBackendTest, CreateSkipsRegionsTooSmall) {
  ExpectList(samples::kMixed);
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  auto after = samples::MixedParts();
  after.push_back({5, 120832, 61440, "hvagent:big"});
  ExpectList(samples::SfdiskJson(after));
  auto v = Make()->CreateVolume({"big", 30 * MiB});  // 10 and 2 MiB gaps are too small: 59 MiB
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(runner.calls()[1], (Argv{"/usr/sbin/parted", "-s", "-a", "none", "/dev/loop0", "unit", "s", "mkpart",
                                     "hvagent:big", "120832s", "182271s"}));
}

TEST_F(PartitionBackendTest, CreateOnEmptyDiskStartsAtOneMiB) {
  ExpectList(samples::kEmptyGpt);
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  ExpectList(samples::SfdiskJson({{1, 2048, 2048, "hvagent:a"}}));
  auto v = Make()->CreateVolume({"a", 1});
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->size_bytes, MiB);
  EXPECT_EQ(runner.calls()[1].back(), "4095s");
  EXPECT_EQ(runner.calls()[1][9], "2048s");
}

TEST_F(PartitionBackendTest, CreateWhenFullIsResourceExhaustedAndChangesNothing) {
  ExpectList(samples::kMixed);
  auto c = Make()->CreateVolume({"huge", 100 * MiB});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(c.status().message(), HasSubstr(absl::StrCat("requested ", 100 * MiB, " bytes")));
  EXPECT_THAT(c.status().message(), HasSubstr(absl::StrCat("largest contiguous free region ", 68 * MiB)));
  EXPECT_THAT(c.status().message(), HasSubstr(absl::StrCat("total free ", 80 * MiB)));
  EXPECT_THAT(runner.calls(), ElementsAre(kList));
}

TEST_F(PartitionBackendTest, CreateExistingIsAlreadyExists) {
  ExpectList(samples::kMixed);
  EXPECT_EQ(Make()->CreateVolume({"web", MiB}).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(runner.CountOf("parted"), 0);
}

TEST_F(PartitionBackendTest, CreateRollsBackWhenPartedFailsAfterWriting) {
  ExpectList(samples::kEmptyGpt);
  runner.Expect({"/usr/sbin/parted", "-s", "-a"},
                FakeCommandRunner::Fail(1, "sh: 1: udevadm: not found\nError: Partition(s) 1 on /dev/loop0 have been "
                                           "written, but we have been unable to inform the kernel of the change\n"));
  ExpectList(samples::SfdiskJson({{1, 2048, 2048, "hvagent:a"}}));
  runner.Expect({"/usr/bin/partx"}, FakeCommandRunner::Ok());
  runner.Expect({"/usr/sbin/parted", "-s", "/dev/loop0", "rm"}, FakeCommandRunner::Ok());
  auto c = Make()->CreateVolume({"a", MiB});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(c.status().message(), HasSubstr("unable to inform the kernel"));
  EXPECT_THAT(c.status().message(), ::testing::Not(HasSubstr("udevadm")));
  auto calls = runner.calls();
  ASSERT_EQ(calls.size(), 5u);
  EXPECT_EQ(calls[3], (Argv{"/usr/bin/partx", "-d", "--nr", "1", "/dev/loop0"}));
  EXPECT_EQ(calls[4], (Argv{"/usr/sbin/parted", "-s", "/dev/loop0", "rm", "1"}));
}

TEST_F(PartitionBackendTest, CreateWhenPartedHangsIsDeadlineExceeded) {
  ExpectList(samples::kEmptyGpt);
  runner.Expect({"/usr/sbin/parted"}, absl::DeadlineExceededError("killed"));
  ExpectList(samples::kEmptyGpt);  // the rollback finds nothing to remove
  auto c = Make()->CreateVolume({"a", MiB});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(runner.calls().size(), 3u);
  EXPECT_EQ(runner.CountOf("partx"), 0);
}

TEST_F(PartitionBackendTest, CreateRollsBackWhenNodeNeverAppears) {
  node_appears = false;
  ExpectList(samples::kEmptyGpt);
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  ExpectList(samples::SfdiskJson({{1, 2048, 2048, "hvagent:a"}}));
  runner.Expect({"/usr/bin/partx", "-a"}, FakeCommandRunner::Ok());
  ExpectList(samples::SfdiskJson({{1, 2048, 2048, "hvagent:a"}}));
  runner.Expect({"/usr/bin/partx", "-d"}, FakeCommandRunner::Ok());
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  auto c = Make()->CreateVolume({"a", MiB});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
  auto calls = runner.calls();
  ASSERT_EQ(calls.size(), 7u);
  EXPECT_EQ(calls[3], (Argv{"/usr/bin/partx", "-a", "--nr", "1", "/dev/loop0"}));
  EXPECT_EQ(calls[6], (Argv{"/usr/sbin/parted", "-s", "/dev/loop0", "rm", "1"}));
}

TEST_F(PartitionBackendTest, CreateDetectsPartedMisplacingThePartition) {
  ExpectList(samples::kEmptyGpt);
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  ExpectList(samples::SfdiskJson({{1, 2049, 2047, "hvagent:a"}}));
  ExpectList(samples::SfdiskJson({{1, 2049, 2047, "hvagent:a"}}));
  runner.Expect({"/usr/bin/partx"}, FakeCommandRunner::Ok());
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  auto c = Make()->CreateVolume({"a", MiB});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(runner.calls().back(), (Argv{"/usr/sbin/parted", "-s", "/dev/loop0", "rm", "1"}));
}

// ---- Delete ----

TEST_F(PartitionBackendTest, DeleteWipesBeforeRemoving) {
  ExpectList(samples::kMixed);
  runner.Expect({"/usr/bin/partx"}, FakeCommandRunner::Ok());
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  std::vector<WipeProgress> seen;
  auto s = Make()->DeleteVolume("db1", [&](const WipeProgress& p) { seen.push_back(p); });
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(wiper.wipes.size(), 1u);
  EXPECT_EQ(wiper.wipes[0].device, "/dev/loop0p1");
  EXPECT_EQ(wiper.wipes[0].mode, WipeMode::kZero);
  EXPECT_EQ(wiper.wipes[0].commands_before, 1u);  // after the listing, before partx and parted
  EXPECT_THAT(runner.calls(), ElementsAre(kList, Argv{"/usr/bin/partx", "-d", "--nr", "1", "/dev/loop0"},
                                          Argv{"/usr/sbin/parted", "-s", "/dev/loop0", "rm", "1"}));
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1].done_bytes, 20 * MiB);
}

TEST_F(PartitionBackendTest, DeleteUsesThePoolsWipeMode) {
  PoolConfig c = Config();
  c.wipe = WipeMode::kDiscard;
  ExpectList(samples::kMixed);
  runner.Expect({"/usr/bin/partx"}, FakeCommandRunner::Ok());
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(Make(c)->DeleteVolume("db1", nullptr).ok());
  EXPECT_EQ(wiper.wipes.at(0).mode, WipeMode::kDiscard);
}

TEST_F(PartitionBackendTest, DeleteWhileAttachedIsRefused) {
  ExpectList(samples::kMixed);
  auto s = Make()->DeleteVolume("web", nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("i-2-10-VM"));
  EXPECT_TRUE(wiper.wipes.empty());
  EXPECT_THAT(runner.calls(), ElementsAre(kList));
}

TEST_F(PartitionBackendTest, ForeignPartitionsAreUntouchable) {
  auto backend = Make();
  for (const char* name : {"foreign", "db2"}) {
    ExpectList(samples::kMixed);
    EXPECT_EQ(backend->DeleteVolume(name, nullptr).code(), absl::StatusCode::kNotFound) << name;
    ExpectList(samples::kMixed);
    EXPECT_EQ(backend->SetAttachment(name, "vm", Ownership::kBorrowed).code(), absl::StatusCode::kNotFound) << name;
    ExpectList(samples::kMixed);
    EXPECT_EQ(backend->ResizeVolume(name, 100 * MiB).status().code(), absl::StatusCode::kNotFound) << name;
  }
  EXPECT_TRUE(wiper.wipes.empty());
  EXPECT_EQ(runner.CountOf("parted"), 0);
  EXPECT_EQ(runner.CountOf("partx"), 0);
}

TEST_F(PartitionBackendTest, DeleteStopsWhenWipeFails) {
  ExpectList(samples::kMixed);
  wiper.result = absl::InternalError("write at offset 0 to /dev/loop0p1: Input/output error");
  auto s = Make()->DeleteVolume("db1", nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("Input/output error"));
  EXPECT_THAT(runner.calls(), ElementsAre(kList));
}

TEST_F(PartitionBackendTest, DeleteOfPartitionInUseKeepsTheTable) {
  ExpectList(samples::kMixed);
  runner.Expect({"/usr/bin/partx"}, FakeCommandRunner::Fail(1, "partx: /dev/loop0: error deleting partition 1"));
  auto s = Make()->DeleteVolume("db1", nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("error deleting partition 1"));
  EXPECT_EQ(runner.CountOf("parted"), 0);
}

TEST_F(PartitionBackendTest, DeleteReaddsToKernelWhenRmFails) {
  ExpectList(samples::kMixed);
  runner.Expect({"/usr/bin/partx", "-d"}, FakeCommandRunner::Ok());
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Fail(1, "Error: Can't write to /dev/loop0"));
  runner.Expect({"/usr/bin/partx", "-a"}, FakeCommandRunner::Ok());
  auto s = Make()->DeleteVolume("db1", nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("Can't write to /dev/loop0"));
  EXPECT_EQ(runner.calls().back(), (Argv{"/usr/bin/partx", "-a", "--nr", "1", "/dev/loop0"}));
}

TEST_F(PartitionBackendTest, DuplicateClaimsAreRefused) {
  ExpectList(samples::SfdiskJson({{1, 2048, 2048, "hvagent:a"}, {2, 4096, 2048, "hvagent:a@vm"}}));
  EXPECT_EQ(Make()->DeleteVolume("a", nullptr).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(wiper.wipes.empty());
}

// ---- Resize ----

TEST_F(PartitionBackendTest, ResizeGrowsIntoFollowingFreeSpace) {
  ExpectList(samples::kMixed);
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  auto after = samples::MixedParts();
  after[2].size = 22 * 2048;
  ExpectList(samples::SfdiskJson(after));
  auto v = Make()->ResizeVolume("web", 22 * MiB);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->size_bytes, 22 * MiB);
  EXPECT_EQ(v->attached_to, "i-2-10-VM");
  // 31 MiB + 22 MiB = 53 MiB = sector 108544; the unnamed partition starts at 110000.
  EXPECT_THAT(runner.calls(), ElementsAre(kList,
                                          Argv{"/usr/sbin/parted", "-s", "-a", "none", "/dev/loop0", "unit", "s",
                                               "resizepart", "3", "108543s"},
                                          kList));
}

TEST_F(PartitionBackendTest, ResizeBlockedByNextPartitionIsResourceExhausted) {
  ExpectList(samples::kMixed);
  auto v = Make()->ResizeVolume("db1", 11 * MiB);
  EXPECT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(v.status().message(), HasSubstr("partition 2"));
  ExpectList(samples::kMixed);
  auto w = Make()->ResizeVolume("web", 23 * MiB);  // 31 + 23 = 54 MiB > 53.7 MiB
  EXPECT_EQ(w.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(w.status().message(), HasSubstr("partition 4"));
  EXPECT_EQ(runner.CountOf("parted"), 0);
}

TEST_F(PartitionBackendTest, ResizeBlockedByEndOfDisk) {
  ExpectList(samples::SfdiskJson({{1, 2048, 2048, "hvagent:a"}, {7, 200704, 40960, "hvagent:last"}}));
  auto v = Make()->ResizeVolume("last", 30 * MiB);  // 98 + 30 > 127
  EXPECT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(v.status().message(), HasSubstr("end of the disk"));
}

TEST_F(PartitionBackendTest, ResizeRefusesShrinkAndIgnoresSameSize) {
  ExpectList(samples::kMixed);
  auto shrink = Make()->ResizeVolume("web", 20 * MiB - 1);
  EXPECT_EQ(shrink.status().code(), absl::StatusCode::kInvalidArgument);
  ExpectList(samples::kMixed);
  auto same = Make()->ResizeVolume("web", 20 * MiB);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->size_bytes, 20 * MiB);
  EXPECT_EQ(runner.CountOf("parted"), 0);
}

// ---- Attachment ----

TEST_F(PartitionBackendTest, AttachAndDetachRenameThePartition) {
  auto backend = Make();
  ExpectList(samples::kMixed);
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(backend->SetAttachment("db1", "instance-0000001a", Ownership::kBorrowed).ok());
  ExpectList(samples::kMixed);
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(backend->SetAttachment("web", "", Ownership::kNone).ok());
  EXPECT_THAT(runner.calls(),
              ElementsAre(kList, Argv{"/usr/sbin/parted", "-s", "/dev/loop0", "name", "1", "hvagent:db1@instance-0000001a"},
                          kList, Argv{"/usr/sbin/parted", "-s", "/dev/loop0", "name", "3", "hvagent:web"}));
}

TEST_F(PartitionBackendTest, AttachToSameDomainIsANoOpAndToAnotherIsRefused) {
  auto backend = Make();
  ExpectList(samples::kMixed);
  EXPECT_TRUE(backend->SetAttachment("web", "i-2-10-VM", Ownership::kBorrowed).ok());
  ExpectList(samples::kMixed);
  EXPECT_EQ(backend->SetAttachment("web", "i-2-11-VM", Ownership::kBorrowed).code(), absl::StatusCode::kFailedPrecondition);
  ExpectList(samples::kMixed);
  EXPECT_TRUE(backend->SetAttachment("db1", "", Ownership::kNone).ok());  // already free
  EXPECT_EQ(runner.CountOf("parted"), 0);
}

TEST_F(PartitionBackendTest, DomainNamesMustFitAndBeSafe) {
  auto backend = Make();
  // "db1" (3) + 24 = 27 fits; + 25 does not.
  ExpectList(samples::kMixed);
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  EXPECT_TRUE(backend->SetAttachment("db1", std::string(24, 'd'), Ownership::kBorrowed).ok());
  auto s = backend->SetAttachment("db1", std::string(25, 'd'), Ownership::kBorrowed);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("does not fit"));
  for (const char* bad : {"a b", "vm@x", "vm:x", "-vm", "vm;reboot", "vm'x", "../../etc/passwd"}) {
    EXPECT_EQ(backend->SetAttachment("db1", bad, Ownership::kBorrowed).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(runner.calls().size(), 2u);
}

TEST_F(PartitionBackendTest, OwnedVolumesAreNamedWithEqualsAndHandedOverInOneRename) {
  auto backend = Make();
  ExpectList(samples::kMixed);
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(backend->SetAttachment("db1", "instance-0000001a", Ownership::kOwned).ok());
  ExpectList(samples::SfdiskJson({{1, 2048, 2048, "hvagent:db1=instance-0000001a"}}));
  auto v = backend->GetVolume("db1");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->attached_to, "instance-0000001a");
  EXPECT_EQ(v->ownership, Ownership::kOwned);
  ExpectList(samples::SfdiskJson({{1, 2048, 2048, "hvagent:db1=instance-0000001a"}}));
  EXPECT_TRUE(backend->SetAttachment("db1", "instance-0000001a", Ownership::kOwned).ok());  // as it is
  ExpectList(samples::SfdiskJson({{1, 2048, 2048, "hvagent:db1=instance-0000001a"}}));
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(backend->SetAttachment("db1", "instance-0000001a", Ownership::kBorrowed).ok());
  ExpectList(samples::SfdiskJson({{1, 2048, 2048, "hvagent:db1=instance-0000001a"}}));
  EXPECT_EQ(backend->SetAttachment("db1", "other", Ownership::kOwned).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(backend->SetAttachment("db1", "", Ownership::kOwned).code(), absl::StatusCode::kInvalidArgument);
  std::vector<Argv> renames;
  for (const auto& c : runner.calls()) {
    if (c[0] == "/usr/sbin/parted") renames.push_back(c);
  }
  EXPECT_THAT(renames, ElementsAre(Argv{"/usr/sbin/parted", "-s", "/dev/loop0", "name", "1", "hvagent:db1=instance-0000001a"},
                                   Argv{"/usr/sbin/parted", "-s", "/dev/loop0", "name", "1", "hvagent:db1@instance-0000001a"}));
}

TEST_F(PartitionBackendTest, AttachedVolumesFromBeforeOwnershipAreBorrowed) {
  ExpectList(samples::kMixed);
  auto v = Make()->GetVolume("web");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->attached_to, "i-2-10-VM");
  EXPECT_EQ(v->ownership, Ownership::kBorrowed);
}

TEST_F(PartitionBackendTest, AttachQuotesPartedFailure) {
  ExpectList(samples::kMixed);
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Fail(1, "Error: Partition doesn't exist."));
  auto s = Make()->SetAttachment("db1", "vm", Ownership::kBorrowed);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("Partition doesn't exist."));
}

}  // namespace
}  // namespace hvagent::storage

// ---- golden image slots ----

namespace hvagent::storage {
namespace {

TEST_F(PartitionBackendTest, ImageSlotIsAnUnsealedPartitionThatNoVolumeListingShows) {
  ExpectList(samples::kEmptyGpt);
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  ExpectList(samples::SfdiskJson({{1, 2048, 4096, "hvimage~deb12"}}));
  auto slot = Make()->CreateImageSlot("deb12", 2 * MiB - 100);
  ASSERT_TRUE(slot.ok()) << slot.status();
  EXPECT_FALSE(slot->ready);
  EXPECT_EQ(slot->path, "/dev/loop0p1");
  EXPECT_EQ(slot->size_bytes, 2 * MiB);
  EXPECT_EQ(runner.calls()[1][8], "hvimage~deb12");
  // An image is no volume: not listed, not counted, and its name is free for a volume.
  ExpectList(samples::SfdiskJson({{1, 2048, 4096, "hvimage:deb12"}}));
  auto volumes = Make()->ListVolumes();
  ASSERT_TRUE(volumes.ok());
  EXPECT_TRUE(volumes->empty());
  ExpectList(samples::SfdiskJson({{1, 2048, 4096, "hvimage:deb12"}}));
  auto images = Make()->ListImageSlots();
  ASSERT_TRUE(images.ok());
  ASSERT_EQ(images->size(), 1u);
  EXPECT_TRUE((*images)[0].ready);
}

TEST_F(PartitionBackendTest, ImageSlotOfAnExistingNameIsAlreadyExistsAndChangesNothing) {
  ExpectList(samples::SfdiskJson({{1, 2048, 4096, "hvimage:deb12"}}));
  auto slot = Make()->CreateImageSlot("deb12", MiB);
  EXPECT_EQ(slot.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(runner.calls().size(), 1u);
}

TEST_F(PartitionBackendTest, SealRenamesTheSlotOnceAndDeleteUnsealsAndWipesBeforeRemoving) {
  ExpectList(samples::SfdiskJson({{1, 2048, 4096, "hvimage~deb12"}}));
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(Make()->SealImageSlot("deb12").ok());
  EXPECT_EQ(runner.calls()[1], (Argv{"/usr/sbin/parted", "-s", "/dev/loop0", "name", "1", "hvimage:deb12"}));
  ExpectList(samples::SfdiskJson({{1, 2048, 4096, "hvimage:deb12"}}));
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  runner.Expect({"/usr/bin/partx"}, FakeCommandRunner::Ok());
  runner.Expect({"/usr/sbin/parted"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(Make()->DeleteImageSlot("deb12", nullptr).ok());
  // Unsealed before the wipe: no copy starts from a half-wiped image, and a crash mid-wipe
  // leaves an unfinished slot that recovery removes.
  EXPECT_EQ(runner.calls()[3], (Argv{"/usr/sbin/parted", "-s", "/dev/loop0", "name", "1", "hvimage~deb12"}));
  ASSERT_EQ(wiper.wipes.size(), 1u);
  EXPECT_EQ(wiper.wipes[0].device, "/dev/loop0p1");
  EXPECT_EQ(wiper.wipes[0].commands_before, 4u);  // list, name, list, unseal: wiped before partx and rm
  EXPECT_EQ(runner.calls().back(), (Argv{"/usr/sbin/parted", "-s", "/dev/loop0", "rm", "1"}));
}

}  // namespace
}  // namespace hvagent::storage
