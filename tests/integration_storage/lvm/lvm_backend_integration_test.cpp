// LvmBackend against real lvm2 on a loop device (root). Each test gets a fresh 256 MiB sparse
// file, a loop device and a VG of its own (hvit_vg_<pid>_<n>), all removed in TearDown, also
// when the test fails. Where /dev/mapper/control cannot be opened (this machine's kernel has
// no device-mapper) lvm2 runs with activation disabled: metadata only, so pools here use
// WipeMode::kNone (real wipes are covered by the Xen system test, whose dom0 has dm-mod).
// Every result is checked against lvm2's own plain-text `vgs` / `lvs`, not the backend's parser.

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <functional>
#include <iostream>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "storage/exec/subprocess_runner.h"
#include "storage/lvm/lvm_backend.h"

namespace hvagent::storage {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kFileBytes = 256 * kMiB;
const char kLvmBin[] = "/sbin/lvm";

std::string FirstExisting(std::initializer_list<const char*> paths) {
  for (const char* p : paths) {
    if (access(p, X_OK) == 0) return p;
  }
  return "";
}

// A BlockWiper that must not be reached (pools here wipe nothing).
class NoWiper final : public BlockWiper {
 public:
  absl::Status Wipe(const std::string& device, WipeMode, const ProgressFn&) override {
    ADD_FAILURE() << "unexpected wipe of " << device;
    return absl::InternalError("unexpected wipe");
  }
};

// Counts the lvm2 invocations the backend makes, by subcommand, on the way to the real runner.
class CountingRunner final : public CommandRunner {
 public:
  explicit CountingRunner(CommandRunner& real) : real_(real) {}
  absl::StatusOr<CommandResult> Run(const Command& c) override {
    if (c.argv.size() > 1) ++by_sub[c.argv[1]];
    ++total;
    return real_.Run(c);
  }
  void Reset() {
    total = 0;
    by_sub.clear();
  }
  int total = 0;
  std::map<std::string, int> by_sub;

 private:
  CommandRunner& real_;
};

struct LvLine {
  uint64_t size = 0;
  std::string tags;
};

class LvmIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (loop devices and lvm2)";
    losetup_ = FirstExisting({"/usr/sbin/losetup", "/sbin/losetup"});
    if (losetup_.empty()) GTEST_SKIP() << "losetup not installed";
    if (access(kLvmBin, X_OK) != 0) GTEST_SKIP() << "lvm2 not installed (" << kLvmBin << ")";
    dm_ = LvmBackend::ProbeDeviceMapper();

    char dir[] = "/tmp/hvit_lvm_XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr) << strerror(errno);
    dir_ = dir;
    file_ = dir_ + "/pv.img";
    int fd = open(file_.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0) << strerror(errno);
    ASSERT_EQ(ftruncate(fd, kFileBytes), 0) << strerror(errno);
    close(fd);

    auto loop = Run({losetup_, "--find", "--show", file_});
    ASSERT_EQ(loop.exit_code, 0) << loop.stderr_text;
    loop_ = std::string(absl::StripAsciiWhitespace(loop.stdout_text));
    ASSERT_TRUE(absl::StartsWith(loop_, "/dev/loop")) << loop_;

    static int counter = 0;
    vg_ = absl::StrCat("hvit_vg_", getpid(), "_", ++counter);
    config_ = PoolConfig{.name = "itpool",
                         .type = PoolType::kLvm,
                         .volume_group = vg_,
                         .physical_volumes = {loop_},
                         .wipe = WipeMode::kNone};
    backend_ = std::make_unique<LvmBackend>(config_, runner_, wiper_);
    EXPECT_EQ(backend_->device_mapper_available(), dm_);
  }

  // Always runs, also after a failed SetUp or test: leave no VG, PV, loop device or file.
  void TearDown() override {
    backend_.reset();
    if (!loop_.empty()) {
      Lvm("vgremove", {"-ff", "-y", vg_});
      Lvm("pvremove", {"-ff", "-y", loop_});
      auto detach = Run({losetup_, "-d", loop_});
      EXPECT_EQ(detach.exit_code, 0) << "losetup -d " << loop_ << ": " << detach.stderr_text;
    }
    if (!file_.empty()) unlink(file_.c_str());
    if (!dir_.empty()) rmdir(dir_.c_str());
  }

  CommandResult Run(std::vector<std::string> argv) {
    auto r = runner_.Run(Command{.argv = std::move(argv),
                                 .timeout = std::chrono::seconds(60),
                                 .env = {{"LVM_SUPPRESS_FD_WARNINGS", "1"}}});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : CommandResult{};
  }
  CommandResult Lvm(const std::string& sub, std::vector<std::string> args) {
    std::vector<std::string> argv = {kLvmBin, sub};
    if (!dm_) {
      argv.push_back("--config");
      argv.push_back("global{activation=0}");
    }
    argv.insert(argv.end(), args.begin(), args.end());
    return Run(std::move(argv));
  }

  // lvm2's own view, in plain text.
  std::pair<uint64_t, uint64_t> VgSizeFree() {
    auto r = Lvm("vgs", {"--noheadings", "--units", "b", "--nosuffix", "--separator", "|", "-o", "vg_size,vg_free", vg_});
    EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
    std::vector<std::string> f = absl::StrSplit(absl::StripAsciiWhitespace(r.stdout_text), '|');
    uint64_t size = 0, free = 0;
    EXPECT_TRUE(f.size() == 2 && absl::SimpleAtoi(f[0], &size) && absl::SimpleAtoi(f[1], &free)) << r.stdout_text;
    return {size, free};
  }
  std::map<std::string, LvLine> Lvs() {
    auto r = Lvm("lvs", {"--noheadings", "--units", "b", "--nosuffix", "--separator", "|", "-o",
                         "lv_name,lv_size,lv_tags", vg_});
    EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
    std::map<std::string, LvLine> out;
    for (absl::string_view line : absl::StrSplit(r.stdout_text, '\n', absl::SkipWhitespace())) {
      std::vector<std::string> f = absl::StrSplit(absl::StripAsciiWhitespace(line), '|');
      if (f.size() != 3) {
        ADD_FAILURE() << "lvs line: " << line;
        continue;
      }
      LvLine lv;
      EXPECT_TRUE(absl::SimpleAtoi(f[1], &lv.size)) << line;
      lv.tags = f[2];
      out[f[0]] = lv;
    }
    return out;
  }

  SubprocessRunner runner_;
  NoWiper wiper_;
  bool dm_ = false;
  std::string losetup_, dir_, file_, loop_, vg_;
  PoolConfig config_;
  std::unique_ptr<LvmBackend> backend_;
};

TEST_F(LvmIntegrationTest, PrepareCreatesTheVgOnThePvAndIsIdempotent) {
  ASSERT_TRUE(backend_->Prepare().ok());
  auto [size, free] = VgSizeFree();
  EXPECT_GT(size, 240 * kMiB);
  EXPECT_LE(size, kFileBytes);
  EXPECT_EQ(size, free);
  auto pv = Lvm("pvs", {"--noheadings", "-o", "vg_name", loop_});
  EXPECT_EQ(absl::StripAsciiWhitespace(pv.stdout_text), vg_);
  ASSERT_TRUE(backend_->Prepare().ok());

  auto pool = backend_->GetPool();
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(pool->name, "itpool");
  EXPECT_EQ(pool->capacity_bytes, size);
  EXPECT_EQ(pool->free_bytes, free);
  EXPECT_EQ(pool->volume_count, 0u);
}

TEST_F(LvmIntegrationTest, CreateListResizeTagDeleteAgainstRealMetadata) {
  ASSERT_TRUE(backend_->Prepare().ok());
  auto [size, free0] = VgSizeFree();

  auto v = backend_->CreateVolume({.name = "disk-1.a_b", .size_bytes = 5 * kMiB + 1});
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->size_bytes, 8 * kMiB);  // 4 MiB extents
  EXPECT_EQ(v->path, absl::StrCat("/dev/", vg_, "/disk-1.a_b"));
  auto lvs = Lvs();
  ASSERT_EQ(lvs.count("disk-1.a_b"), 1u);
  EXPECT_EQ(lvs["disk-1.a_b"].size, 8 * kMiB);
  EXPECT_EQ(lvs["disk-1.a_b"].tags, "hvagent");
  ASSERT_TRUE(backend_->CreateVolume({.name = "second", .size_bytes = 4 * kMiB}).ok());

  auto list = backend_->ListVolumes();
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name, "disk-1.a_b");
  EXPECT_EQ((*list)[0].size_bytes, 8 * kMiB);
  EXPECT_EQ((*list)[1].name, "second");
  auto pool = backend_->GetPool();
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ(pool->capacity_bytes, size);
  EXPECT_EQ(pool->free_bytes, VgSizeFree().second);
  EXPECT_EQ(pool->free_bytes, free0 - 12 * kMiB);
  EXPECT_EQ(pool->volume_count, 2u);
  EXPECT_EQ(backend_->CreateVolume({.name = "second", .size_bytes = kMiB}).status().code(),
            absl::StatusCode::kAlreadyExists);

  auto grown = backend_->ResizeVolume("disk-1.a_b", 20 * kMiB);
  ASSERT_TRUE(grown.ok()) << grown.status();
  EXPECT_EQ(grown->size_bytes, 20 * kMiB);
  EXPECT_EQ(Lvs()["disk-1.a_b"].size, 20 * kMiB);
  EXPECT_EQ(backend_->ResizeVolume("disk-1.a_b", 8 * kMiB).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Lvs()["disk-1.a_b"].size, 20 * kMiB);

  ASSERT_TRUE(backend_->SetAttachment("disk-1.a_b", "dom-1", Ownership::kBorrowed).ok());
  EXPECT_EQ(Lvs()["disk-1.a_b"].tags, "hvagent,hvagent_vm_dom-1");
  auto got = backend_->GetVolume("disk-1.a_b");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->attached_to, "dom-1");
  EXPECT_EQ(backend_->SetAttachment("disk-1.a_b", "dom-2", Ownership::kBorrowed).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(backend_->DeleteVolume("disk-1.a_b", nullptr).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Lvs().count("disk-1.a_b"), 1u);
  ASSERT_TRUE(backend_->SetAttachment("disk-1.a_b", "", Ownership::kNone).ok());
  EXPECT_EQ(Lvs()["disk-1.a_b"].tags, "hvagent");

  ASSERT_TRUE(backend_->DeleteVolume("disk-1.a_b", nullptr).ok());
  ASSERT_TRUE(backend_->DeleteVolume("second", nullptr).ok());
  EXPECT_TRUE(Lvs().empty());
  EXPECT_EQ(VgSizeFree().second, free0);
  EXPECT_EQ(backend_->GetVolume("second").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(LvmIntegrationTest, PoolFullCreateIsResourceExhaustedAndCreatesNothing) {
  ASSERT_TRUE(backend_->Prepare().ok());
  auto [size, free] = VgSizeFree();
  auto v = backend_->CreateVolume({.name = "huge", .size_bytes = free + 1});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted) << v.status();
  EXPECT_TRUE(Lvs().empty());
  EXPECT_EQ(VgSizeFree().second, free);
  ASSERT_TRUE(backend_->CreateVolume({.name = "exact", .size_bytes = free}).ok());  // all of it fits
  EXPECT_EQ(VgSizeFree().second, 0u);
}

TEST_F(LvmIntegrationTest, VgFilledUpBehindTheCacheIsResourceExhaustedQuotingLvm) {
  ASSERT_TRUE(backend_->Prepare().ok());
  ASSERT_TRUE(backend_->ListVolumes().ok());  // the backend now caches the VG as empty
  std::vector<std::string> args;
  if (!dm_) args = {"-an", "-Zn"};
  for (std::string a : {"-y", "-n", "filler", "-l", "100%FREE", vg_.c_str()}) args.push_back(a);
  auto filler = Lvm("lvcreate", args);
  ASSERT_EQ(filler.exit_code, 0) << filler.stderr_text;

  auto v = backend_->CreateVolume({.name = "late", .size_bytes = 8 * kMiB});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted) << v.status();
  EXPECT_TRUE(absl::StrContains(v.status().message(), "lvm2 lvcreate failed")) << v.status();
  EXPECT_TRUE(absl::StrContains(absl::AsciiStrToLower(v.status().message()), "insufficient free")) << v.status();
  auto lvs = Lvs();
  EXPECT_EQ(lvs.size(), 1u);
  EXPECT_EQ(lvs.count("late"), 0u);
}

TEST_F(LvmIntegrationTest, UntaggedLvIsInvisibleAndUntouchable) {
  ASSERT_TRUE(backend_->Prepare().ok());
  std::vector<std::string> args;
  if (!dm_) args = {"-an", "-Zn"};
  for (std::string a : {"-y", "-n", "manual", "-L", "8m", vg_.c_str()}) args.push_back(a);
  auto manual = Lvm("lvcreate", args);
  ASSERT_EQ(manual.exit_code, 0) << manual.stderr_text;

  auto list = backend_->ListVolumes();
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_TRUE(list->empty());
  EXPECT_EQ(backend_->GetPool()->volume_count, 0u);
  EXPECT_EQ(backend_->GetVolume("manual").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(backend_->ResizeVolume("manual", 16 * kMiB).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(backend_->SetAttachment("manual", "dom1", Ownership::kBorrowed).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(backend_->DeleteVolume("manual", nullptr).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(backend_->CreateVolume({.name = "manual", .size_bytes = kMiB}).status().code(),
            absl::StatusCode::kAlreadyExists);
  auto lvs = Lvs();
  ASSERT_EQ(lvs.count("manual"), 1u);
  EXPECT_EQ(lvs["manual"].size, 8 * kMiB);
  EXPECT_EQ(lvs["manual"].tags, "");
}

TEST_F(LvmIntegrationTest, HostileNamesChangeNothing) {
  ASSERT_TRUE(backend_->Prepare().ok());
  for (const std::string& name : std::vector<std::string>{"../../etc/passwd", "a;rm -rf /", "$(x)", "_tmeta",
                                                          "snapshot1", "-x", std::string(64, 'a')}) {
    EXPECT_EQ(backend_->CreateVolume({.name = name, .size_bytes = kMiB}).status().code(),
              absl::StatusCode::kInvalidArgument)
        << name;
  }
  EXPECT_EQ(backend_->CreateVolume({.name = "ok", .size_bytes = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend_->CreateVolume({.name = "ok", .size_bytes = ~uint64_t{0}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Lvs().empty());
}

TEST_F(LvmIntegrationTest, WipingDeleteWithoutDeviceMapperIsRefusedAndKeepsTheVolume) {
  if (dm_) GTEST_SKIP() << "device-mapper present: wipes are possible here";
  ASSERT_TRUE(backend_->Prepare().ok());
  ASSERT_TRUE(backend_->CreateVolume({.name = "keep", .size_bytes = 4 * kMiB}).ok());
  PoolConfig zeroing = config_;
  zeroing.wipe = WipeMode::kZero;
  LvmBackend wiping(zeroing, runner_, wiper_);
  auto s = wiping.DeleteVolume("keep", nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "device-mapper unavailable")) << s;
  EXPECT_EQ(Lvs().count("keep"), 1u);
}

// The numbers quoted in lvm_backend.h, measured against real lvm2.
TEST_F(LvmIntegrationTest, InvocationCountsColdAndWarm) {
  CountingRunner counting(runner_);
  LvmBackend b(config_, counting, wiper_);
  ASSERT_TRUE(b.Prepare().ok());
  std::map<std::string, int> cost;
  auto measure = [&](const std::string& what, const std::function<bool()>& op) {
    counting.Reset();
    EXPECT_TRUE(op()) << what;
    cost[what] = counting.total;
  };
  measure("create cold", [&] { return b.CreateVolume({.name = "c1", .size_bytes = 4 * kMiB}).ok(); });
  measure("list cold", [&] { return b.ListVolumes().ok(); });
  measure("list warm", [&] { return b.ListVolumes().ok(); });
  measure("create warm", [&] { return b.CreateVolume({.name = "c2", .size_bytes = 4 * kMiB}).ok(); });
  measure("attach cold", [&] { return b.SetAttachment("c2", "dom1", Ownership::kBorrowed).ok(); });
  measure("detach cold", [&] { return b.SetAttachment("c2", "", Ownership::kNone).ok(); });
  measure("resize cold", [&] { return b.ResizeVolume("c2", 8 * kMiB).ok(); });
  measure("delete cold", [&] { return b.DeleteVolume("c1", nullptr).ok(); });
  ASSERT_TRUE(b.GetPool().ok());
  measure("delete warm", [&] { return b.DeleteVolume("c2", nullptr).ok(); });
  std::vector<std::string> shown;
  for (const auto& [what, n] : cost) shown.push_back(absl::StrCat(what, "=", n));
  std::cout << "lvm2 invocations: " << absl::StrJoin(shown, ", ") << "\n";
  EXPECT_EQ(cost["create cold"], 2);
  EXPECT_EQ(cost["create warm"], 1);
  EXPECT_EQ(cost["list cold"], 1);
  EXPECT_EQ(cost["list warm"], 0);
  EXPECT_EQ(cost["delete cold"], 2);
  EXPECT_EQ(cost["delete warm"], 1);
  EXPECT_EQ(cost["attach cold"], 2);
  EXPECT_EQ(cost["detach cold"], 2);
  EXPECT_EQ(cost["resize cold"], 2);
  EXPECT_TRUE(Lvs().empty());
}

TEST_F(LvmIntegrationTest, MissingVgWithoutPhysicalVolumesIsFailedPrecondition) {
  PoolConfig no_pvs = config_;
  no_pvs.physical_volumes.clear();
  LvmBackend b(no_pvs, runner_, wiper_);
  EXPECT_EQ(b.Prepare().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(b.GetPool().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(b.ListVolumes().status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace hvagent::storage
