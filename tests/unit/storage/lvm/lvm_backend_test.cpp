// LvmBackend against a scripted lvm2 (FakeCommandRunner): exact argv of every operation, the
// report cache and its invocation counts, and every failure path.

#include "storage/lvm/lvm_backend.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>

#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_command_runner.h"

namespace hvagent::storage {
namespace {

using ::hvagent::testing::FakeClock;
using ::hvagent::testing::FakeCommandRunner;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Argv = std::vector<std::string>;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kExtent = 4 * kMiB;
const char kLvm[] = "/sbin/lvm";

class FakeWiper final : public BlockWiper {
 public:
  absl::Status Wipe(const std::string& device, WipeMode mode, const ProgressFn& progress) override {
    if (before) before();
    devices.push_back(device);
    modes.push_back(mode);
    if (progress) progress({kMiB, 2 * kMiB});
    return result;
  }
  std::vector<std::string> devices;
  std::vector<WipeMode> modes;
  absl::Status result;
  std::function<void()> before;  // runs as the wipe starts
};

struct Lv {
  std::string name;
  uint64_t size = 8 * kMiB;
  std::string tags = "hvagent";
  std::string attr = "-wi-XX----";
  std::string path;  // default /dev/vg0/<name>
  std::string data_percent;
  std::string metadata_percent;
};

std::string LvJson(const Lv& lv) {
  std::string path = lv.path.empty() ? absl::StrCat("/dev/vg0/", lv.name) : lv.path;
  return absl::StrCat(R"({"lv_name":")", lv.name, R"(", "lv_size":")", lv.size, R"(", "lv_tags":")", lv.tags,
                      R"(", "lv_path":")", path, R"(", "lv_attr":")", lv.attr, R"(", "data_percent":")",
                      lv.data_percent, R"(", "metadata_percent":")", lv.metadata_percent, R"("})");
}

// What `lvm fullreport` prints for vg0 (numbers as strings, as lvm2 does).
std::string ReportJson(uint64_t size, uint64_t free, const std::vector<Lv>& lvs = {}, uint64_t extent = kExtent) {
  std::vector<std::string> rows;
  for (const Lv& lv : lvs) rows.push_back(LvJson(lv));
  return absl::StrCat(R"(  {
      "report": [
          {
              "vg": [
                  {"vg_name":"vg0", "vg_size":")",
                      size, R"(", "vg_free":")", free, R"(", "vg_extent_size":")", extent, R"("}
              ]
              ,
              "pv": [
                  {"pv_name":"/dev/loop0"}
              ]
              ,
              "lv": [
                  )",
                      absl::StrJoin(rows, ",\n                  "), R"(
              ]
              ,
              "pvseg": [
              ]
              ,
              "seg": [
              ]
          }
      ]
  }
)");
}

Argv NoActivation() { return {"--config", "global{activation=0}"}; }

Argv WithLvm(const std::string& sub, const Argv& args, bool dm = false) {
  Argv argv = {kLvm, sub};
  if (!dm) {
    Argv c = NoActivation();
    argv.insert(argv.end(), c.begin(), c.end());
  }
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

Argv ReportArgv(bool dm = false) {
  return WithLvm("fullreport",
                 {"--reportformat", "json", "--units", "b", "--nosuffix",
                  "--configreport", "vg", "-o", "vg_name,vg_size,vg_free,vg_extent_size",
                  "--configreport", "lv", "-o", "lv_name,lv_size,lv_tags,lv_path,lv_attr,data_percent,metadata_percent",
                  "--configreport", "pv", "-o", "pv_name",
                  "--configreport", "pvseg", "-o", "pvseg_start", "-S", "pvseg_start<0",
                  "--configreport", "seg", "-o", "seg_start", "-S", "seg_start<0", "vg0"},
                 dm);
}

const std::string kActivationWarning =
    "  WARNING: Activation disabled. No device-mapper interaction will be attempted.\n";

class LvmBackendTest : public ::testing::Test {
 protected:
  LvmBackend& Backend(bool dm = false) {
    LvmBackend::Options options;
    options.clock = &clock_;
    options.device_mapper_available = [dm] { return dm; };
    backend_ = std::make_unique<LvmBackend>(config_, runner_, wiper_, options);
    return *backend_;
  }
  // Every fullreport answers with the current `report_` (tests change it as lvm2 would).
  void ServeReports() {
    runner_.Always({kLvm, "fullreport"}, [this](const Command& c) {
      seen_.push_back(c);
      return FakeCommandRunner::Ok(report_);
    });
  }
  int Lvm() const { return runner_.CountOf("lvm"); }
  int Sub(const std::string& sub) const {
    int n = 0;
    for (const auto& a : runner_.calls()) n += a.size() > 1 && a[1] == sub;
    return n;
  }
  Argv Last() const { return runner_.calls().back(); }

  PoolConfig config_{.name = "p1", .type = PoolType::kLvm, .volume_group = "vg0", .wipe = WipeMode::kNone};
  FakeCommandRunner runner_;
  FakeWiper wiper_;
  FakeClock clock_;
  std::unique_ptr<LvmBackend> backend_;
  std::string report_ = ReportJson(256 * kMiB, 200 * kMiB,
                                   {{.name = "a1", .tags = "hvagent,hvagent_vm_dom1"},
                                    {.name = "b2", .size = 12 * kMiB},
                                    {.name = "foreign", .tags = ""},
                                    {.name = "other_tagged", .tags = "backup,hvagent_vm_x"}});
  std::vector<Command> seen_;
};

// --- reads and the cache ---------------------------------------------------------------------

TEST_F(LvmBackendTest, ListRunsOneExactFullreportAndHidesUntaggedLvs) {
  ServeReports();
  auto list = Backend().ListVolumes();
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name, "a1");
  EXPECT_EQ((*list)[0].pool, "p1");
  EXPECT_EQ((*list)[0].path, "/dev/vg0/a1");
  EXPECT_EQ((*list)[0].size_bytes, 8 * kMiB);
  EXPECT_EQ((*list)[0].attached_to, "dom1");
  EXPECT_EQ((*list)[1].name, "b2");
  EXPECT_EQ((*list)[1].attached_to, "");
  EXPECT_THAT(runner_.calls(), ElementsAre(ReportArgv()));
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(seen_[0].env, (std::map<std::string, std::string>{{"LVM_SUPPRESS_FD_WARNINGS", "1"}}));
  EXPECT_EQ(seen_[0].timeout, std::chrono::milliseconds(60000));
}

TEST_F(LvmBackendTest, WithDeviceMapperNoConfigOverride) {
  ServeReports();
  ASSERT_TRUE(Backend(/*dm=*/true).ListVolumes().ok());
  EXPECT_TRUE(backend_->device_mapper_available());
  EXPECT_THAT(runner_.calls(), ElementsAre(ReportArgv(/*dm=*/true)));
}

TEST_F(LvmBackendTest, ReportIsCachedUntilTtlThenRefetched) {
  ServeReports();
  LvmBackend& b = Backend();
  ASSERT_TRUE(b.ListVolumes().ok());
  EXPECT_EQ(Lvm(), 1);  // list, cold
  ASSERT_TRUE(b.ListVolumes().ok());
  ASSERT_TRUE(b.GetPool().ok());
  ASSERT_TRUE(b.GetVolume("a1").ok());
  EXPECT_EQ(Lvm(), 1);  // list / pool / get, warm: 0
  clock_.SleepFor(std::chrono::milliseconds(4999));
  ASSERT_TRUE(b.ListVolumes().ok());
  EXPECT_EQ(Lvm(), 1);
  clock_.SleepFor(std::chrono::milliseconds(1));
  ASSERT_TRUE(b.ListVolumes().ok());
  EXPECT_EQ(Lvm(), 2);  // TTL passed
}

TEST_F(LvmBackendTest, GetPoolReportsVgCapacityAndOurVolumeCount) {
  ServeReports();
  auto pool = Backend().GetPool();
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(pool->name, "p1");
  EXPECT_EQ(pool->type, PoolType::kLvm);
  EXPECT_EQ(pool->capacity_bytes, 256 * kMiB);
  EXPECT_EQ(pool->free_bytes, 200 * kMiB);
  EXPECT_EQ(pool->volume_count, 2u);
  EXPECT_EQ(pool->wipe, WipeMode::kNone);
}

TEST_F(LvmBackendTest, EmptyLvPathIsComputed) {
  report_ = ReportJson(256 * kMiB, 200 * kMiB, {{.name = "a1", .path = "/dev/vg0/a1"}});
  report_ = absl::StrCat(report_.substr(0, report_.find("/dev/vg0/a1")),
                         report_.substr(report_.find("/dev/vg0/a1") + std::string("/dev/vg0/a1").size()));
  ServeReports();
  auto v = Backend().GetVolume("a1");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->path, "/dev/vg0/a1");
}

TEST_F(LvmBackendTest, GarbageJsonIsInternalQuotingTheOutput) {
  runner_.Always({kLvm, "fullreport"}, [](const Command&) { return FakeCommandRunner::Ok("Segmentation fault <html>"); });
  auto list = Backend().ListVolumes();
  EXPECT_EQ(list.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(list.status().message(), HasSubstr("Segmentation fault <html>"));
}

TEST_F(LvmBackendTest, WellFormedJsonOfTheWrongShapeIsInternal) {
  for (const std::string& bad : std::vector<std::string>{R"({"report": 3})", R"({"report":[{"vg":[{"vg_name":"vg0","vg_size":"x"}]}]})",
                          R"([])", ""}) {
    FakeCommandRunner runner;
    runner.Always({kLvm, "fullreport"}, [bad](const Command&) { return FakeCommandRunner::Ok(bad); });
    LvmBackend::Options options{.clock = &clock_, .device_mapper_available = [] { return false; }};
    LvmBackend b(config_, runner, wiper_, options);
    auto pool = b.GetPool();
    EXPECT_EQ(pool.status().code(), absl::StatusCode::kInternal) << bad << ": " << pool.status();
  }
}

TEST_F(LvmBackendTest, ReportFailingIsInternalQuotingLvm) {
  runner_.Expect({kLvm, "fullreport"},
                 FakeCommandRunner::Fail(5, kActivationWarning + "  /dev/loop0: read failed: Input/output error\n"));
  auto list = Backend().ListVolumes();
  EXPECT_EQ(list.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(list.status().message(), "lvm2 fullreport failed (exit 5): /dev/loop0: read failed: Input/output error");
}

TEST_F(LvmBackendTest, MissingVgIsFailedPrecondition) {
  runner_.Expect({kLvm, "fullreport"},
                 FakeCommandRunner::Fail(5, kActivationWarning + "  Volume group \"vg0\" not found\n"
                                                                 "  Cannot process volume group vg0\n"));
  auto pool = Backend().GetPool();
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(pool.status().message(), HasSubstr("'vg0' does not exist"));
}

TEST_F(LvmBackendTest, ReportHangIsDeadlineExceeded) {
  runner_.Expect({kLvm, "fullreport"}, absl::DeadlineExceededError("killed after 60000 ms"));
  auto list = Backend().ListVolumes();
  EXPECT_EQ(list.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(list.status().message(), "lvm2 fullreport hung for 60 s and was killed");
}

// --- create ----------------------------------------------------------------------------------

TEST_F(LvmBackendTest, CreateColdCostsTwoInvocationsWithExactArgv) {
  ServeReports();
  runner_.Expect({kLvm, "lvcreate"}, FakeCommandRunner::Ok("  Logical volume \"v1\" created.\n"));
  auto v = Backend().CreateVolume({.name = "v1", .size_bytes = 5 * kMiB + 1});
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->name, "v1");
  EXPECT_EQ(v->pool, "p1");
  EXPECT_EQ(v->path, "/dev/vg0/v1");
  EXPECT_EQ(v->size_bytes, 8 * kMiB);  // rounded up to the 4 MiB extent
  EXPECT_EQ(v->attached_to, "");
  EXPECT_THAT(runner_.calls(),
              ElementsAre(ReportArgv(), WithLvm("lvcreate", {"-an", "-Zn", "--yes", "-n", "v1", "-L", "8388608b",
                                                             "--addtag", "hvagent", "vg0"})));
  EXPECT_EQ(Lvm(), 2);
}

TEST_F(LvmBackendTest, CreateWarmCostsOneAndInvalidatesTheCache) {
  ServeReports();
  runner_.Always({kLvm, "lvcreate"}, [](const Command&) { return FakeCommandRunner::Ok(); });
  LvmBackend& b = Backend();
  ASSERT_TRUE(b.ListVolumes().ok());
  ASSERT_EQ(Lvm(), 1);
  ASSERT_TRUE(b.CreateVolume({.name = "v1", .size_bytes = kMiB}).ok());
  EXPECT_EQ(Lvm(), 2);  // create, warm: lvcreate only
  ASSERT_TRUE(b.ListVolumes().ok());
  EXPECT_EQ(Lvm(), 3);  // the change dropped the cache
  EXPECT_EQ(Sub("fullreport"), 2);
  EXPECT_EQ(Sub("lvcreate"), 1);
}

TEST_F(LvmBackendTest, CreateWithDeviceMapperActivatesAndZeroes) {
  ServeReports();
  runner_.Expect({kLvm, "lvcreate"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(Backend(/*dm=*/true).CreateVolume({.name = "v1", .size_bytes = 4 * kMiB}).ok());
  EXPECT_EQ(Last(), WithLvm("lvcreate", {"--yes", "-n", "v1", "-L", "4194304b", "--addtag", "hvagent", "vg0"}, true));
}

TEST_F(LvmBackendTest, CreateThinUsesTheThinPool) {
  config_.thin_pool = "tp";
  report_ = ReportJson(256 * kMiB, 0,
                       {{.name = "tp", .size = 200 * kMiB, .tags = "", .attr = "twi-XXtz--", .data_percent = "25.00"}});
  ServeReports();
  runner_.Expect({kLvm, "lvcreate"}, FakeCommandRunner::Ok());
  auto v = Backend().CreateVolume({.name = "t1", .size_bytes = 300 * kMiB});  // thin: may overcommit
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(Last(), WithLvm("lvcreate", {"-an", "--yes", "-n", "t1", "-V", "314572800b", "--addtag", "hvagent",
                                         "--thin", "vg0/tp"}));
  auto pool = backend_->GetPool();
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(pool->capacity_bytes, 200 * kMiB);
  EXPECT_EQ(pool->free_bytes, 150 * kMiB);
  EXPECT_EQ(pool->volume_count, 0u);  // the thin pool itself is not a volume
}

TEST_F(LvmBackendTest, CreateThinWithoutThinPoolIsFailedPrecondition) {
  config_.thin_pool = "tp";
  ServeReports();
  auto v = Backend().CreateVolume({.name = "t1", .size_bytes = kMiB});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Sub("lvcreate"), 0);
}

TEST_F(LvmBackendTest, CreateLargerThanFreeIsResourceExhaustedWithoutLvcreate) {
  ServeReports();
  auto v = Backend().CreateVolume({.name = "v1", .size_bytes = 200 * kMiB + 1});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(v.status().message(), HasSubstr("pool 'p1' is full"));
  EXPECT_THAT(v.status().message(), HasSubstr("209715200 bytes free"));
  EXPECT_EQ(Sub("lvcreate"), 0);
}

TEST_F(LvmBackendTest, VgFilledUpBetweenCheckAndCreateIsResourceExhaustedQuotingLvm) {
  ServeReports();
  runner_.Expect({kLvm, "lvcreate"},
                 FakeCommandRunner::Fail(5, kActivationWarning +
                                                "  Volume group \"vg0\" has insufficient free space (1 extents): "
                                                "25 required.\n"));
  auto v = Backend().CreateVolume({.name = "v1", .size_bytes = 100 * kMiB});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(v.status().message(),
            "lvm2 lvcreate failed (exit 5): Volume group \"vg0\" has insufficient free space (1 extents): 25 "
            "required.");
  // lvm2 refused before writing metadata: nothing to clean up, nothing else ran.
  EXPECT_THAT(runner_.calls(), ElementsAre(ReportArgv(), ::testing::_));
  EXPECT_EQ(Sub("lvremove"), 0);
}

TEST_F(LvmBackendTest, LvcreateInsufficientFreeSpaceCapitalizedToo) {
  ServeReports();
  runner_.Expect({kLvm, "lvcreate"},
                 FakeCommandRunner::Fail(5, "  Insufficient free space: 25 extents needed, but only 1 available\n"));
  auto v = Backend().CreateVolume({.name = "v1", .size_bytes = 100 * kMiB});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(v.status().message(), HasSubstr("Insufficient free space: 25 extents needed"));
}

TEST_F(LvmBackendTest, LvcreateHangIsDeadlineExceededAndTheLeftoverLvIsRemoved) {
  ServeReports();
  runner_.Always({kLvm, "lvcreate"}, [this](const Command&) -> absl::StatusOr<CommandResult> {
    // lvm2 committed the LV before it was killed: the next report shows it.
    report_ = ReportJson(256 * kMiB, 192 * kMiB, {{.name = "v1"}});
    return absl::DeadlineExceededError("killed");
  });
  runner_.Expect({kLvm, "lvremove"}, FakeCommandRunner::Ok());
  auto v = Backend().CreateVolume({.name = "v1", .size_bytes = 8 * kMiB});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(v.status().message(), HasSubstr("lvm2 lvcreate hung for 60 s and was killed"));
  EXPECT_THAT(v.status().message(), HasSubstr("the partly created LV was removed"));
  EXPECT_THAT(runner_.calls(), ElementsAre(ReportArgv(), ::testing::_, ReportArgv(),
                                           WithLvm("lvremove", {"--yes", "vg0/v1"})));
}

TEST_F(LvmBackendTest, LvcreateHangWithNothingLeftRemovesNothing) {
  ServeReports();
  runner_.Expect({kLvm, "lvcreate"}, absl::DeadlineExceededError("killed"));
  auto v = Backend().CreateVolume({.name = "v1", .size_bytes = 8 * kMiB});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(v.status().message(), "lvm2 lvcreate hung for 60 s and was killed");
  EXPECT_EQ(Sub("fullreport"), 2);  // before, and the fresh look after
  EXPECT_EQ(Sub("lvremove"), 0);
}

TEST_F(LvmBackendTest, LvcreateOtherFailureIsInternalQuotingLvm) {
  ServeReports();
  runner_.Expect({kLvm, "lvcreate"}, FakeCommandRunner::Fail(5, kActivationWarning + "  Metadata write failed.  \n"));
  auto v = Backend().CreateVolume({.name = "v1", .size_bytes = 8 * kMiB});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(v.status().message(), "lvm2 lvcreate failed (exit 5): Metadata write failed.");
  EXPECT_EQ(Sub("lvremove"), 0);
}

TEST_F(LvmBackendTest, LvcreateSaysAlreadyExistsIsAlreadyExistsWithoutCleanup) {
  ServeReports();
  runner_.Expect({kLvm, "lvcreate"},
                 FakeCommandRunner::Fail(5, "  Logical Volume \"v1\" already exists in volume group \"vg0\"\n"));
  auto v = Backend().CreateVolume({.name = "v1", .size_bytes = 8 * kMiB});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(v.status().message(), HasSubstr("already exists in volume group"));
  EXPECT_EQ(Sub("lvremove"), 0);
  EXPECT_EQ(Lvm(), 2);
}

TEST_F(LvmBackendTest, CreateOverAnExistingNameIsAlreadyExistsWithoutLvcreate) {
  ServeReports();
  LvmBackend& b = Backend();
  EXPECT_EQ(b.CreateVolume({.name = "a1", .size_bytes = kMiB}).status().code(), absl::StatusCode::kAlreadyExists);
  auto foreign = b.CreateVolume({.name = "foreign", .size_bytes = kMiB});
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(foreign.status().message(), HasSubstr("does not manage"));
  EXPECT_EQ(Sub("lvcreate"), 0);
}

// --- hostile input ---------------------------------------------------------------------------

TEST_F(LvmBackendTest, HostileNamesAreRejectedBeforeAnyCommand) {
  LvmBackend& b = Backend();
  for (const std::string& name : std::vector<std::string>{"../../etc/passwd", "a;rm -rf /", "$(x)", "_tmeta", "x_tmeta", "a_rimage_0", "snapshot1",
                           "pvmove0", "-x", ".", "..", "", "a b", "a+b", "a/b", "a\nb", std::string(64, 'a'),
                           std::string("a\0b", 3)}) {
    auto c = b.CreateVolume({.name = name, .size_bytes = kMiB});
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(c.status().message(), HasSubstr("name: ")) << name;
    EXPECT_EQ(b.GetVolume(name).status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_EQ(b.ResizeVolume(name, kMiB).status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_EQ(b.DeleteVolume(name, nullptr).code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_EQ(b.SetAttachment(name, "dom1", Ownership::kBorrowed).code(), absl::StatusCode::kInvalidArgument) << name;
  }
  EXPECT_TRUE(runner_.calls().empty());
}

TEST_F(LvmBackendTest, LongestValidNameIsAccepted) {
  ServeReports();
  runner_.Expect({kLvm, "lvcreate"}, FakeCommandRunner::Ok());
  EXPECT_TRUE(Backend().CreateVolume({.name = std::string(63, 'a'), .size_bytes = kMiB}).ok());
}

TEST_F(LvmBackendTest, HostileSizesAreRejectedBeforeAnyCommand) {
  LvmBackend& b = Backend();
  for (uint64_t size : {uint64_t{0}, std::numeric_limits<uint64_t>::max(), uint64_t{1} << 63,
                        (uint64_t{1} << 62) + 1}) {
    auto c = b.CreateVolume({.name = "v1", .size_bytes = size});
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << size;
    EXPECT_THAT(c.status().message(), HasSubstr("size_bytes: ")) << size;
    EXPECT_EQ(b.ResizeVolume("a1", size).status().code(), absl::StatusCode::kInvalidArgument) << size;
  }
  EXPECT_TRUE(runner_.calls().empty());
}

TEST_F(LvmBackendTest, HugeSizeThatOverflowsAfterRoundingIsRejected) {
  // An extent size that does not divide 2^62 (lvm2's are powers of two; the parser takes any).
  report_ = ReportJson(256 * kMiB, 200 * kMiB, {}, uint64_t{3} << 39);
  ServeReports();
  auto c = Backend().CreateVolume({.name = "v1", .size_bytes = uint64_t{1} << 62});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Sub("lvcreate"), 0);
}

TEST_F(LvmBackendTest, HostileDomainNamesAreRejectedBeforeAnyCommand) {
  LvmBackend& b = Backend();
  for (const std::string& domain : std::vector<std::string>{"../x", "a,b", "a b", "-x", "$(x)", "a;b", std::string(256, 'd')}) {
    auto s = b.SetAttachment("a1", domain, Ownership::kBorrowed);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << domain;
    EXPECT_THAT(s.message(), HasSubstr("domain")) << domain;
  }
  EXPECT_TRUE(runner_.calls().empty());
}

TEST_F(LvmBackendTest, BadConfigIsRejectedBeforeAnyCommand) {
  config_.volume_group = "vg0;reboot";
  EXPECT_EQ(Backend().ListVolumes().status().code(), absl::StatusCode::kInvalidArgument);
  config_.volume_group = "vg0";
  config_.thin_pool = "tp_tmeta";
  EXPECT_EQ(Backend().ListVolumes().status().code(), absl::StatusCode::kInvalidArgument);
  config_.thin_pool = "";
  config_.type = PoolType::kPartition;
  EXPECT_EQ(Backend().ListVolumes().status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(runner_.calls().empty());
}

// --- untagged LVs are not ours ---------------------------------------------------------------

TEST_F(LvmBackendTest, UntaggedLvIsInvisibleAndUntouchable) {
  ServeReports();
  LvmBackend& b = Backend();
  for (const std::string& name : std::vector<std::string>{"foreign", "other_tagged"}) {
    EXPECT_EQ(b.GetVolume(name).status().code(), absl::StatusCode::kNotFound) << name;
    EXPECT_EQ(b.ResizeVolume(name, 100 * kMiB).status().code(), absl::StatusCode::kNotFound) << name;
    EXPECT_EQ(b.DeleteVolume(name, nullptr).code(), absl::StatusCode::kNotFound) << name;
    EXPECT_EQ(b.SetAttachment(name, "dom1", Ownership::kBorrowed).code(), absl::StatusCode::kNotFound) << name;
    EXPECT_EQ(b.SetAttachment(name, "", Ownership::kNone).code(), absl::StatusCode::kNotFound) << name;
  }
  EXPECT_EQ(Sub("fullreport"), Lvm());  // nothing but reports ran
}

// --- resize ----------------------------------------------------------------------------------

TEST_F(LvmBackendTest, ResizeGrowsWithExactArgv) {
  ServeReports();
  runner_.Expect({kLvm, "lvextend"}, FakeCommandRunner::Ok());
  auto v = Backend().ResizeVolume("b2", 13 * kMiB);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->size_bytes, 16 * kMiB);
  EXPECT_THAT(runner_.calls(), ElementsAre(ReportArgv(), WithLvm("lvextend", {"-L", "16777216b", "vg0/b2"})));
}

TEST_F(LvmBackendTest, ResizeShrinkIsRefused) {
  ServeReports();
  auto v = Backend().ResizeVolume("b2", 8 * kMiB);
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(v.status().message(), HasSubstr("size_bytes: "));
  EXPECT_THAT(v.status().message(), HasSubstr("shrinking"));
  EXPECT_EQ(Sub("lvextend"), 0);
  EXPECT_EQ(Sub("lvreduce"), 0);
}

TEST_F(LvmBackendTest, ResizeToTheSameRoundedSizeRunsNothing) {
  ServeReports();
  auto v = Backend().ResizeVolume("b2", 12 * kMiB - 1);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->size_bytes, 12 * kMiB);
  EXPECT_EQ(Lvm(), 1);
}

TEST_F(LvmBackendTest, ResizeBeyondFreeIsResourceExhausted) {
  ServeReports();
  auto v = Backend().ResizeVolume("b2", 213 * kMiB);  // +204 MiB > 200 MiB free
  EXPECT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Sub("lvextend"), 0);
}

TEST_F(LvmBackendTest, LvextendFailureQuotesLvm) {
  ServeReports();
  runner_.Expect({kLvm, "lvextend"},
                 FakeCommandRunner::Fail(5, "  Insufficient free space: 1 extents needed, but only 0 available\n"));
  auto v = Backend().ResizeVolume("b2", 16 * kMiB);
  EXPECT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(v.status().message(), HasSubstr("lvm2 lvextend failed (exit 5): Insufficient free space"));
}

// --- attach / detach -------------------------------------------------------------------------

TEST_F(LvmBackendTest, AttachAddsTheVmTagInOneLvchange) {
  ServeReports();
  runner_.Expect({kLvm, "lvchange"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(Backend().SetAttachment("b2", "dom-2.x_y", Ownership::kBorrowed).ok());
  EXPECT_THAT(runner_.calls(),
              ElementsAre(ReportArgv(), WithLvm("lvchange", {"--addtag", "hvagent_vm_dom-2.x_y", "vg0/b2"})));
}

TEST_F(LvmBackendTest, DetachDeletesTheVmTag) {
  ServeReports();
  runner_.Expect({kLvm, "lvchange"}, FakeCommandRunner::Ok());
  LvmBackend& b = Backend();
  ASSERT_TRUE(b.SetAttachment("a1", "", Ownership::kNone).ok());
  EXPECT_EQ(Last(), WithLvm("lvchange", {"--deltag", "hvagent_vm_dom1", "vg0/a1"}));
  EXPECT_EQ(Lvm(), 2);  // cold
  ASSERT_TRUE(b.SetAttachment("b2", "", Ownership::kNone).ok());  // nothing to clear: report only (cache dropped)
  EXPECT_EQ(Lvm(), 3);
  EXPECT_EQ(Sub("lvchange"), 1);
}

TEST_F(LvmBackendTest, AttachToTheSameDomainIsANoOpAndToAnotherIsRefused) {
  ServeReports();
  LvmBackend& b = Backend();
  EXPECT_TRUE(b.SetAttachment("a1", "dom1", Ownership::kBorrowed).ok());
  auto other = b.SetAttachment("a1", "dom2", Ownership::kBorrowed);
  EXPECT_EQ(other.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(other.message(), HasSubstr("attached to domain 'dom1'"));
  EXPECT_EQ(Sub("lvchange"), 0);
  EXPECT_EQ(Lvm(), 1);
}

// --- ownership ---------------------------------------------------------------------------

TEST_F(LvmBackendTest, OwnershipIsReadFromTheOwnedByTagOfTheAttachedDomainOnly) {
  report_ = ReportJson(256 * kMiB, 200 * kMiB,
                       {{.name = "root", .tags = "hvagent,hvagent_owned_by_web1,hvagent_vm_web1"},
                        {.name = "data", .tags = "hvagent,hvagent_vm_web1"},
                        {.name = "stale", .tags = "hvagent,hvagent_owned_by_old,hvagent_vm_web1"},
                        {.name = "free", .tags = "hvagent,hvagent_owned_by_old"}});
  ServeReports();
  auto list = Backend().ListVolumes();
  ASSERT_TRUE(list.ok()) << list.status();
  std::map<std::string, Ownership> got;
  for (const auto& v : *list) got[v.name] = v.ownership;
  EXPECT_EQ(got["root"], Ownership::kOwned);
  EXPECT_EQ(got["data"], Ownership::kBorrowed);  // also what an agent before ownership recorded
  EXPECT_EQ(got["stale"], Ownership::kBorrowed) << "an owned_by tag of another domain counts for nothing";
  EXPECT_EQ(got["free"], Ownership::kNone);
}

TEST_F(LvmBackendTest, AttachOwnedAddsBothTagsInOneLvchange) {
  ServeReports();
  runner_.Expect({kLvm, "lvchange"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(Backend().SetAttachment("b2", "web1", Ownership::kOwned).ok());
  EXPECT_THAT(runner_.calls(), ElementsAre(ReportArgv(), WithLvm("lvchange", {"--addtag", "hvagent_vm_web1", "--addtag",
                                                                             "hvagent_owned_by_web1", "vg0/b2"})));
}

TEST_F(LvmBackendTest, HandingOverAndDetachingChangeTheTagsTogether) {
  report_ = ReportJson(256 * kMiB, 200 * kMiB,
                       {{.name = "root", .tags = "hvagent,hvagent_owned_by_web1,hvagent_vm_web1"},
                        {.name = "free", .tags = "hvagent,hvagent_owned_by_old"}});
  ServeReports();
  runner_.Always({kLvm, "lvchange"}, [](const Command&) { return FakeCommandRunner::Ok(); });
  LvmBackend& b = Backend();
  ASSERT_TRUE(b.SetAttachment("root", "web1", Ownership::kOwned).ok());  // already so: report only
  EXPECT_EQ(Sub("lvchange"), 0);
  ASSERT_TRUE(b.SetAttachment("root", "web1", Ownership::kBorrowed).ok());
  EXPECT_EQ(Last(), WithLvm("lvchange", {"--deltag", "hvagent_owned_by_web1", "vg0/root"}));
  ASSERT_TRUE(b.SetAttachment("root", "", Ownership::kNone).ok());
  EXPECT_EQ(Last(), WithLvm("lvchange", {"--deltag", "hvagent_vm_web1", "--deltag", "hvagent_owned_by_web1",
                                         "vg0/root"}));
  // A stale owned_by tag goes in the same lvchange that attaches the volume as borrowed.
  ASSERT_TRUE(b.SetAttachment("free", "web2", Ownership::kBorrowed).ok());
  EXPECT_EQ(Last(), WithLvm("lvchange", {"--deltag", "hvagent_owned_by_old", "--addtag", "hvagent_vm_web2",
                                         "vg0/free"}));
}

TEST_F(LvmBackendTest, OwnershipWithoutADomainOrADomainWithoutOneIsRefused) {
  LvmBackend& b = Backend();
  EXPECT_EQ(b.SetAttachment("b2", "", Ownership::kOwned).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b.SetAttachment("b2", "web1", Ownership::kNone).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(runner_.calls().empty());
}

TEST_F(LvmBackendTest, LvchangeFailureQuotesLvm) {
  ServeReports();
  runner_.Expect({kLvm, "lvchange"}, FakeCommandRunner::Fail(5, "  Failed to find logical volume \"vg0/b2\"\n"));
  auto s = Backend().SetAttachment("b2", "dom1", Ownership::kBorrowed);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("Failed to find logical volume"));
}

// --- delete ----------------------------------------------------------------------------------

TEST_F(LvmBackendTest, DeleteColdCostsTwoWarmOne) {
  ServeReports();
  runner_.Always({kLvm, "lvremove"}, [](const Command&) { return FakeCommandRunner::Ok(); });
  LvmBackend& b = Backend();
  ASSERT_TRUE(b.DeleteVolume("b2", nullptr).ok());
  EXPECT_THAT(runner_.calls(), ElementsAre(ReportArgv(), WithLvm("lvremove", {"--yes", "vg0/b2"})));
  ASSERT_TRUE(b.ListVolumes().ok());  // warm the cache
  ASSERT_EQ(Lvm(), 3);
  ASSERT_TRUE(b.DeleteVolume("b2", nullptr).ok());
  EXPECT_EQ(Lvm(), 4);  // delete, warm: lvremove only
  EXPECT_TRUE(wiper_.devices.empty());  // WipeMode::kNone
}

TEST_F(LvmBackendTest, DeleteWhileAttachedIsRefused) {
  ServeReports();
  auto s = Backend().DeleteVolume("a1", nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("attached to domain 'dom1'"));
  EXPECT_EQ(Sub("lvremove"), 0);
}

TEST_F(LvmBackendTest, DeleteThatMustWipeWithoutDeviceMapperIsRefused) {
  config_.wipe = WipeMode::kZero;
  ServeReports();
  auto s = Backend().DeleteVolume("b2", nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("cannot wipe volume 'b2'"));
  EXPECT_THAT(s.message(), HasSubstr("device-mapper unavailable"));
  EXPECT_TRUE(wiper_.devices.empty());
  EXPECT_EQ(Sub("lvremove"), 0);
}

TEST_F(LvmBackendTest, DeleteWipesTheActiveLvThenRemovesIt) {
  config_.wipe = WipeMode::kDiscard;
  report_ = ReportJson(256 * kMiB, 200 * kMiB, {{.name = "b2", .attr = "-wi-a-----"}});
  ServeReports();
  runner_.Expect({kLvm, "lvremove"}, FakeCommandRunner::Ok());
  std::vector<WipeProgress> seen;
  ASSERT_TRUE(Backend(/*dm=*/true).DeleteVolume("b2", [&](const WipeProgress& p) { seen.push_back(p); }).ok());
  EXPECT_THAT(wiper_.devices, ElementsAre("/dev/vg0/b2"));
  EXPECT_THAT(wiper_.modes, ElementsAre(WipeMode::kDiscard));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].total_bytes, 2 * kMiB);
  EXPECT_THAT(runner_.calls(), ElementsAre(ReportArgv(true), WithLvm("lvremove", {"--yes", "vg0/b2"}, true)));
}

TEST_F(LvmBackendTest, DeleteActivatesAnInactiveLvBeforeWiping) {
  config_.wipe = WipeMode::kZero;
  report_ = ReportJson(256 * kMiB, 200 * kMiB, {{.name = "b2", .attr = "-wi-------"}});
  ServeReports();
  runner_.Expect({kLvm, "lvchange"}, FakeCommandRunner::Ok());
  runner_.Expect({kLvm, "lvremove"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(Backend(/*dm=*/true).DeleteVolume("b2", nullptr).ok());
  EXPECT_THAT(runner_.calls(), ElementsAre(ReportArgv(true), WithLvm("lvchange", {"-ay", "vg0/b2"}, true),
                                           WithLvm("lvremove", {"--yes", "vg0/b2"}, true)));
  EXPECT_THAT(wiper_.devices, ElementsAre("/dev/vg0/b2"));
}

TEST_F(LvmBackendTest, FailedWipeKeepsTheVolume) {
  config_.wipe = WipeMode::kZero;
  report_ = ReportJson(256 * kMiB, 200 * kMiB, {{.name = "b2", .attr = "-wi-a-----"}});
  ServeReports();
  wiper_.result = absl::InternalError("write: Input/output error");
  auto s = Backend(/*dm=*/true).DeleteVolume("b2", nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("the volume was kept"));
  EXPECT_THAT(s.message(), HasSubstr("Input/output error"));
  EXPECT_EQ(Sub("lvremove"), 0);
}

TEST_F(LvmBackendTest, LvremoveOfAnOpenLvIsFailedPrecondition) {
  ServeReports();
  runner_.Expect({kLvm, "lvremove"}, FakeCommandRunner::Fail(5, "  Logical volume vg0/b2 in use.\n"));
  auto s = Backend().DeleteVolume("b2", nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("lvm2 lvremove failed (exit 5): Logical volume vg0/b2 in use."));
}

TEST_F(LvmBackendTest, LvremoveHangIsDeadlineExceededNamingTheTimeout) {
  ServeReports();
  runner_.Expect({kLvm, "lvremove"}, absl::DeadlineExceededError("killed"));
  LvmBackend::Options options{.timeout = std::chrono::milliseconds(1500), .clock = &clock_,
                              .device_mapper_available = [] { return false; }};
  LvmBackend b(config_, runner_, wiper_, options);
  auto s = b.DeleteVolume("b2", nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(s.message(), "lvm2 lvremove hung for 1.5 s and was killed");
}

TEST_F(LvmBackendTest, DeleteOfAMissingVolumeIsNotFound) {
  ServeReports();
  EXPECT_EQ(Backend().DeleteVolume("nope", nullptr).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Sub("lvremove"), 0);
}

// --- prepare ---------------------------------------------------------------------------------

TEST_F(LvmBackendTest, PrepareCreatesAMissingVgOnItsPhysicalVolumes) {
  config_.physical_volumes = {"/dev/loop0", "/dev/disk/by-id/nvme-x_1"};
  runner_.Expect({kLvm, "fullreport"}, FakeCommandRunner::Fail(5, "  Volume group \"vg0\" not found\n"));
  runner_.Expect({kLvm, "vgcreate"}, FakeCommandRunner::Ok("  Volume group \"vg0\" successfully created\n"));
  ASSERT_TRUE(Backend().Prepare().ok());
  EXPECT_THAT(runner_.calls(),
              ElementsAre(ReportArgv(), WithLvm("vgcreate", {"vg0", "/dev/loop0", "/dev/disk/by-id/nvme-x_1"})));
}

TEST_F(LvmBackendTest, PrepareOfAnExistingVgRunsOneReport) {
  config_.physical_volumes = {"/dev/loop0"};
  ServeReports();
  LvmBackend& b = Backend();
  ASSERT_TRUE(b.Prepare().ok());
  ASSERT_TRUE(b.Prepare().ok());
  EXPECT_EQ(Lvm(), 2);  // a fresh report each time, nothing else
  EXPECT_EQ(Sub("fullreport"), 2);
}

TEST_F(LvmBackendTest, PrepareWithoutVgOrPhysicalVolumesIsFailedPrecondition) {
  runner_.Expect({kLvm, "fullreport"}, FakeCommandRunner::Fail(5, "  Volume group \"vg0\" not found\n"));
  auto s = Backend().Prepare();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("no physical_volumes"));
}

TEST_F(LvmBackendTest, PrepareRefusesADeviceWithData) {
  config_.physical_volumes = {"/dev/loop0"};
  runner_.Expect({kLvm, "fullreport"}, FakeCommandRunner::Fail(5, "  Volume group \"vg0\" not found\n"));
  runner_.Expect({kLvm, "vgcreate"},
                 FakeCommandRunner::Fail(5, "WARNING: ext4 signature detected on /dev/loop0 at offset 1080. Wipe it? "
                                            "[y/n]: [n]\n  Aborted wiping of ext4.\n  1 existing signature left on "
                                            "the device.\n"));
  auto s = Backend().Prepare();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("Aborted wiping of ext4"));
}

TEST_F(LvmBackendTest, PrepareRejectsHostilePhysicalVolumesBeforeAnyCommand) {
  for (const std::string& pv : std::vector<std::string>{"../../etc/passwd", "/dev/../etc/passwd", "/etc/passwd", "/dev/", "/dev//sda",
                         "/dev/sda;reboot", "/dev/./sda", "dev/sda", "/dev/sda b"}) {
    config_.physical_volumes = {"/dev/loop0", pv};
    auto s = Backend().Prepare();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << pv;
    EXPECT_THAT(s.message(), HasSubstr("physical_volumes")) << pv;
  }
  EXPECT_TRUE(runner_.calls().empty());
}

TEST_F(LvmBackendTest, PrepareCreatesAMissingThinPoolWithDeviceMapper) {
  config_.thin_pool = "tp";
  ServeReports();
  runner_.Expect({kLvm, "lvcreate"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(Backend(/*dm=*/true).Prepare().ok());
  EXPECT_EQ(Last(), WithLvm("lvcreate", {"--yes", "--type", "thin-pool", "-l", "90%FREE", "-n", "tp", "vg0"}, true));
}

TEST_F(LvmBackendTest, PrepareCreatesVgThenThinPool) {
  config_.thin_pool = "tp";
  config_.physical_volumes = {"/dev/sdb"};
  runner_.Expect({kLvm, "fullreport"}, FakeCommandRunner::Fail(5, "  Volume group \"vg0\" not found\n"));
  runner_.Expect({kLvm, "vgcreate"}, FakeCommandRunner::Ok());
  runner_.Expect({kLvm, "fullreport"}, FakeCommandRunner::Ok(ReportJson(256 * kMiB, 256 * kMiB)));
  runner_.Expect({kLvm, "lvcreate"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(Backend(/*dm=*/true).Prepare().ok());
  EXPECT_EQ(Sub("vgcreate"), 1);
  EXPECT_EQ(Sub("fullreport"), 2);
  EXPECT_EQ(Sub("lvcreate"), 1);
}

TEST_F(LvmBackendTest, PrepareCannotCreateAThinPoolWithoutDeviceMapper) {
  config_.thin_pool = "tp";
  ServeReports();
  auto s = Backend().Prepare();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("device-mapper unavailable"));
  EXPECT_EQ(Sub("lvcreate"), 0);
}

TEST_F(LvmBackendTest, PrepareWithAnExistingThinPoolRunsOneReport) {
  config_.thin_pool = "tp";
  report_ = ReportJson(256 * kMiB, 0, {{.name = "tp", .size = 200 * kMiB, .tags = "", .attr = "twi-XXtz--"}});
  ServeReports();
  ASSERT_TRUE(Backend().Prepare().ok());
  EXPECT_EQ(Lvm(), 1);
}

TEST_F(LvmBackendTest, PrepareRefusesAThinPoolNameTakenByAnotherLv) {
  config_.thin_pool = "tp";
  report_ = ReportJson(256 * kMiB, 0, {{.name = "tp", .tags = ""}});
  ServeReports();
  EXPECT_EQ(Backend(/*dm=*/true).Prepare().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Sub("lvcreate"), 0);
}

// --- golden images and thin clones ------------------------------------------------------------

class LvmImageTest : public LvmBackendTest {
 protected:
  LvmImageTest() {
    report_ = ReportJson(256 * kMiB, 200 * kMiB,
                         {{.name = "hvimage+deb12", .size = 12 * kMiB, .tags = "hvagent_image", .attr = "-ri-a-----"},
                          {.name = "hvimage+half", .tags = "hvagent_image_importing", .attr = "-wi-a-----"},
                          {.name = "hvimage+stray", .tags = ""},
                          {.name = "b2", .size = 12 * kMiB}});
  }
  void Thin() {
    config_.thin_pool = "tp";
    report_ = ReportJson(
        256 * kMiB, 0,
        {{.name = "tp", .size = 200 * kMiB, .tags = "", .attr = "twi-aotz--", .data_percent = "12.50",
          .metadata_percent = "3.25"},
         {.name = "hvimage+deb12", .size = 12 * kMiB, .tags = "hvagent_image", .attr = "Vri-a-tz--"},
         {.name = "hvimage+half", .tags = "hvagent_image_importing", .attr = "Vwi-a-tz--"}});
  }
};

TEST_F(LvmImageTest, ImagesWithoutDeviceMapperAreRefusedBeforeAnyCommand) {
  ServeReports();
  LvmBackend& b = Backend(/*dm=*/false);
  for (absl::Status s : {b.ListImageSlots().status(), b.CreateImageSlot("deb12", kMiB).status(),
                         b.SealImageSlot("deb12"), b.BeginDeleteImageSlot("deb12").status()}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(s.message(), HasSubstr("pool: 'p1' cannot hold images"));
    EXPECT_THAT(s.message(), HasSubstr("device-mapper"));
  }
  EXPECT_EQ(Lvm(), 0);
}

TEST_F(LvmImageTest, ListShowsTaggedImageLvsOnlyAndNeverAsVolumes) {
  ServeReports();
  LvmBackend& b = Backend(/*dm=*/true);
  auto slots = b.ListImageSlots();
  ASSERT_TRUE(slots.ok()) << slots.status();
  ASSERT_EQ(slots->size(), 2u);  // hvimage+stray carries no image tag: not ours
  EXPECT_EQ((*slots)[0].name, "deb12");
  EXPECT_EQ((*slots)[0].path, "/dev/vg0/hvimage+deb12");
  EXPECT_EQ((*slots)[0].size_bytes, 12 * kMiB);
  EXPECT_TRUE((*slots)[0].ready);
  EXPECT_EQ((*slots)[1].name, "half");
  EXPECT_FALSE((*slots)[1].ready);
  auto volumes = b.ListVolumes();
  ASSERT_TRUE(volumes.ok());
  ASSERT_EQ(volumes->size(), 1u);
  EXPECT_EQ((*volumes)[0].name, "b2");
  EXPECT_EQ(b.GetPool()->volume_count, 1u);
  // The image's LV name is no volume name: it cannot be attached, resized or deleted as one.
  EXPECT_EQ(b.GetVolume("hvimage+deb12").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b.SetAttachment("hvimage+deb12", "dom1", Ownership::kBorrowed).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b.BeginDelete("hvimage+deb12").status().code(), absl::StatusCode::kInvalidArgument);
  // And a volume of the image's own name is another object.
  EXPECT_EQ(b.GetVolume("deb12").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Sub("lvchange") + Sub("lvremove"), 0);
}

TEST_F(LvmImageTest, CreateThickSlotIsOneTaggedLvcreateRoundedToExtents) {
  ServeReports();
  runner_.Expect({kLvm, "lvcreate"}, FakeCommandRunner::Ok());
  auto slot = Backend(/*dm=*/true).CreateImageSlot("deb13", 9 * kMiB + 4096);
  ASSERT_TRUE(slot.ok()) << slot.status();
  EXPECT_EQ(Last(), WithLvm("lvcreate", {"--yes", "-n", "hvimage+deb13", "--addtag", "hvagent_image_importing", "-L",
                                         "12582912b", "vg0"}, true));
  EXPECT_EQ(slot->path, "/dev/vg0/hvimage+deb13");
  EXPECT_EQ(slot->size_bytes, 12 * kMiB);
  EXPECT_FALSE(slot->ready);
}

TEST_F(LvmImageTest, CreateThinSlotIsAThinLvOfTheThinPool) {
  Thin();
  ServeReports();
  runner_.Expect({kLvm, "lvcreate"}, FakeCommandRunner::Ok());
  auto slot = Backend(/*dm=*/true).CreateImageSlot("deb13", 300 * kMiB);
  ASSERT_TRUE(slot.ok()) << slot.status();
  EXPECT_EQ(Last(), WithLvm("lvcreate", {"--yes", "-n", "hvimage+deb13", "--addtag", "hvagent_image_importing", "-V",
                                         "314572800b", "--thin", "vg0/tp"}, true));
}

TEST_F(LvmImageTest, CreateSlotRefusesTakenNamesBadNamesAndNoRoomBeforeLvcreate) {
  ServeReports();
  LvmBackend& b = Backend(/*dm=*/true);
  EXPECT_EQ(b.CreateImageSlot("deb12", kMiB).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(b.CreateImageSlot("half", kMiB).status().code(), absl::StatusCode::kAlreadyExists);
  auto bad = b.CreateImageSlot("a;b", kMiB);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("image: "));
  auto full = b.CreateImageSlot("big", 201 * kMiB);
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.status().message(), HasSubstr("image 'big' needs"));
  EXPECT_EQ(Sub("lvcreate"), 0);
}

TEST_F(LvmImageTest, CreateSlotKilledMidwayRemovesTheLvItLeft) {
  ServeReports();
  runner_.Always({kLvm, "lvcreate"}, [this](const Command&) -> absl::StatusOr<CommandResult> {
    report_ = ReportJson(256 * kMiB, 188 * kMiB, {{.name = "hvimage+deb13", .tags = "hvagent_image_importing"}});
    return absl::DeadlineExceededError("killed");
  });
  runner_.Expect({kLvm, "lvremove"}, FakeCommandRunner::Ok());
  auto slot = Backend(/*dm=*/true).CreateImageSlot("deb13", kMiB);
  EXPECT_EQ(slot.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(slot.status().message(), HasSubstr("the partly created LV was removed"));
  EXPECT_EQ(Last(), WithLvm("lvremove", {"--yes", "vg0/hvimage+deb13"}, true));
}

TEST_F(LvmImageTest, SealMakesTheLvReadOnlyAndReadyInOneLvchange) {
  ServeReports();
  runner_.Expect({kLvm, "lvchange"}, FakeCommandRunner::Ok());
  LvmBackend& b = Backend(/*dm=*/true);
  ASSERT_TRUE(b.SealImageSlot("half").ok());
  EXPECT_EQ(Last(), WithLvm("lvchange", {"--permission", "r", "--deltag", "hvagent_image_importing", "--addtag",
                                         "hvagent_image", "vg0/hvimage+half"}, true));
  EXPECT_EQ(Sub("lvchange"), 1);
  ASSERT_TRUE(b.SealImageSlot("deb12").ok());  // already sealed: nothing to do
  EXPECT_EQ(Sub("lvchange"), 1);
  EXPECT_EQ(b.SealImageSlot("nope").code(), absl::StatusCode::kNotFound);
}

TEST_F(LvmImageTest, DeleteOfASealedImageUnsealsWipesAndRemovesIt) {
  config_.wipe = WipeMode::kZero;
  ServeReports();
  runner_.Expect({kLvm, "lvchange"}, FakeCommandRunner::Ok());
  runner_.Expect({kLvm, "lvremove"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(Backend(/*dm=*/true).DeleteImageSlot("deb12", nullptr).ok());
  EXPECT_THAT(runner_.calls(),
              ElementsAre(ReportArgv(true),
                          WithLvm("lvchange", {"--deltag", "hvagent_image", "--addtag", "hvagent_image_importing",
                                               "--permission", "rw", "vg0/hvimage+deb12"}, true),
                          WithLvm("lvremove", {"--yes", "vg0/hvimage+deb12"}, true)));
  EXPECT_THAT(wiper_.devices, ElementsAre("/dev/vg0/hvimage+deb12"));
}

TEST_F(LvmImageTest, DeleteOfAnUnfinishedImageNeedsNoLvchange) {
  ServeReports();
  runner_.Expect({kLvm, "lvremove"}, FakeCommandRunner::Ok());
  auto plan = Backend(/*dm=*/true).BeginDeleteImageSlot("half");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->image);
  EXPECT_EQ(plan->volume.name, "half");
  ASSERT_TRUE(backend_->FinishDelete(*plan).ok());
  EXPECT_EQ(Sub("lvchange"), 0);
  EXPECT_EQ(Last(), WithLvm("lvremove", {"--yes", "vg0/hvimage+half"}, true));
}

TEST_F(LvmImageTest, ThinCloneIsASnapshotOfTheImageLvWithNoDataCopied) {
  Thin();
  ServeReports();
  runner_.Expect({kLvm, "lvcreate"}, FakeCommandRunner::Ok());
  auto v = Backend(/*dm=*/true).CloneImageSlot("deb12", {.name = "web1", .size_bytes = 12 * kMiB});
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(Last(), WithLvm("lvcreate", {"--yes", "-s", "--setactivationskip", "n", "--permission", "rw", "-n", "web1",
                                         "--addtag", "hvagent", "vg0/hvimage+deb12"}, true));
  EXPECT_EQ(v->path, "/dev/vg0/web1");
  EXPECT_EQ(v->size_bytes, 12 * kMiB);
  EXPECT_EQ(Sub("lvextend"), 0);  // the image's size was asked: nothing to grow
  EXPECT_TRUE(wiper_.devices.empty());
}

TEST_F(LvmImageTest, ThinCloneLargerThanTheImageIsGrown) {
  Thin();
  ServeReports();
  runner_.Expect({kLvm, "lvcreate"}, FakeCommandRunner::Ok());
  runner_.Expect({kLvm, "lvextend"}, FakeCommandRunner::Ok());
  auto v = Backend(/*dm=*/true).CloneImageSlot("deb12", {.name = "web1", .size_bytes = 1024 * kMiB + 1});
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(Last(), WithLvm("lvextend", {"-L", "1077936128b", "vg0/web1"}, true));
  EXPECT_EQ(v->size_bytes, 1077936128u);
}

TEST_F(LvmImageTest, ThinCloneThatCannotBeGrownIsRemovedAgain) {
  Thin();
  ServeReports();
  runner_.Always({kLvm, "lvcreate"}, [this](const Command&) -> absl::StatusOr<CommandResult> {
    report_ = ReportJson(256 * kMiB, 0, {{.name = "tp", .tags = "", .attr = "twi-aotz--"}, {.name = "web1"}});
    return FakeCommandRunner::Ok();
  });
  runner_.Expect({kLvm, "lvextend"}, FakeCommandRunner::Fail(5, "  Thin pool vg0/tp is full.\n"));
  runner_.Expect({kLvm, "lvremove"}, FakeCommandRunner::Ok());
  auto v = Backend(/*dm=*/true).CloneImageSlot("deb12", {.name = "web1", .size_bytes = 64 * kMiB});
  EXPECT_FALSE(v.ok());
  EXPECT_THAT(v.status().message(), HasSubstr("growing clone 'web1'"));
  EXPECT_THAT(v.status().message(), HasSubstr("the partly created LV was removed"));
  EXPECT_EQ(Last(), WithLvm("lvremove", {"--yes", "vg0/web1"}, true));
}

TEST_F(LvmImageTest, CloneRefusalsRunNoLvcreate) {
  Thin();
  ServeReports();
  LvmBackend& b = Backend(/*dm=*/true);
  auto importing = b.CloneImageSlot("half", {.name = "web1", .size_bytes = 12 * kMiB});
  EXPECT_EQ(importing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(importing.status().message(), HasSubstr("image: 'half' is not ready"));
  EXPECT_EQ(b.CloneImageSlot("nope", {.name = "web1", .size_bytes = kMiB}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(b.CloneImageSlot("deb12", {.name = "tp", .size_bytes = 12 * kMiB}).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(b.CloneImageSlot("deb12", {.name = "-x", .size_bytes = 12 * kMiB}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Sub("lvcreate"), 0);
}

TEST_F(LvmImageTest, ThickPoolsDoNotCloneTheCallerCopies) {
  ServeReports();
  auto v = Backend(/*dm=*/true).CloneImageSlot("deb12", {.name = "web1", .size_bytes = 12 * kMiB});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(Lvm(), 0);
}

TEST_F(LvmImageTest, ThinPoolDataAndMetadataUsageAreInThePoolInfo) {
  Thin();
  ServeReports();
  auto pool = Backend(/*dm=*/true).GetPool();
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(pool->thin_data_percent, 12.5);
  EXPECT_EQ(pool->thin_metadata_percent, 3.25);
  config_.thin_pool.clear();
  report_ = ReportJson(256 * kMiB, 200 * kMiB);
  auto thick = Backend(/*dm=*/true).GetPool();
  ASSERT_TRUE(thick.ok());
  EXPECT_FALSE(thick->thin_data_percent.has_value());
  EXPECT_FALSE(thick->thin_metadata_percent.has_value());
}

TEST(LvmBackendProbeTest, ProbeMatchesOpeningDeviceMapperControl) {
  // On this host /dev/mapper/control exists but cannot be opened (ENODEV): false. Either way
  // the probe must not crash and must agree with a second call.
  EXPECT_EQ(LvmBackend::ProbeDeviceMapper(), LvmBackend::ProbeDeviceMapper());
}

// --- snapshots ------------------------------------------------------------------------------

class LvmSnapshotTest : public LvmBackendTest {
 protected:
  LvmSnapshotTest() {
    report_ = ReportJson(256 * kMiB, 200 * kMiB,
                         {{.name = "web1", .size = 100 * kMiB, .tags = "hvagent,hvagent_vm_d1,hvagent_owned_by_d1",
                           .attr = "owi-a-----"},
                          {.name = "hvsnap+web1+old", .size = 20 * kMiB, .tags = "hvagent_snapshot",
                           .attr = "swi-a-s---", .data_percent = "35.00"},
                          {.name = "hvsnap+web1+gone", .size = 20 * kMiB, .tags = "hvagent_snapshot",
                           .attr = "Swi-I-s---"},
                          {.name = "hvrevold+b2", .tags = "hvagent"}});
  }
  void Thin() {
    config_.thin_pool = "tp";
    report_ = ReportJson(256 * kMiB, 0,
                         {{.name = "tp", .size = 200 * kMiB, .tags = "", .attr = "twi-aotz--", .data_percent = "10.00"},
                          {.name = "web1", .size = 100 * kMiB, .tags = "hvagent,hvagent_vm_d1", .attr = "Vwi-a-tz--"},
                          {.name = "hvsnap+web1+s1", .size = 100 * kMiB, .tags = "hvagent_snapshot",
                           .attr = "Vwi---tz-k"}});
  }
  // lvcreate adds `lv` to what later reports show, as lvm2 would.
  void CreateAdds(Lv lv) {
    runner_.Always({kLvm, "lvcreate"}, [this, lv](const Command&) -> absl::StatusOr<CommandResult> {
      std::string rows = report_.substr(0, report_.find("\n              ]\n              ,\n              \"pvseg\""));
      report_ = rows + ",\n                  " + LvJson(lv) + report_.substr(rows.size());
      return FakeCommandRunner::Ok();
    });
  }
};

TEST_F(LvmSnapshotTest, ThinSnapshotIsOneLvcreateWithoutASize) {
  Thin();
  ServeReports();
  CreateAdds({.name = "hvsnap+web1+s2", .size = 100 * kMiB, .tags = "hvagent_snapshot", .attr = "Vwi---tz-k"});
  auto s = Backend(/*dm=*/true).CreateSnapshot("web1", "s2");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(Sub("lvcreate"), 1);
  for (const auto& argv : runner_.calls()) {
    if (argv[1] != "lvcreate") continue;
    EXPECT_EQ(argv, WithLvm("lvcreate", {"--yes", "-s", "-n", "hvsnap+web1+s2", "--addtag", "hvagent_snapshot",
                                         "vg0/web1"}, true));
  }
  EXPECT_TRUE(s->thin);
  EXPECT_EQ(s->reserve_bytes, 0u);
  EXPECT_EQ(s->size_bytes, 100 * kMiB);
}

TEST_F(LvmSnapshotTest, ClassicSnapshotReservesThePercentOfTheVolumeInWholeExtents) {
  config_.snapshot_reserve_percent = 10;  // 10 MiB of 100, rounded up to 12 MiB (4 MiB extents)
  ServeReports();
  CreateAdds({.name = "hvsnap+web1+s2", .size = 12 * kMiB, .tags = "hvagent_snapshot", .attr = "swi-a-s---",
              .data_percent = "0.00"});
  auto s = Backend(/*dm=*/true).CreateSnapshot("web1", "s2");
  ASSERT_TRUE(s.ok()) << s.status();
  bool seen = false;
  for (const auto& argv : runner_.calls()) {
    if (argv[1] != "lvcreate") continue;
    seen = true;
    EXPECT_EQ(argv, WithLvm("lvcreate", {"--yes", "-s", "-n", "hvsnap+web1+s2", "--addtag", "hvagent_snapshot", "-L",
                                         "12582912b", "vg0/web1"}, true));
  }
  EXPECT_TRUE(seen);
  EXPECT_FALSE(s->thin);
  EXPECT_EQ(s->reserve_bytes, 12 * kMiB);
  EXPECT_EQ(s->size_bytes, 100 * kMiB);
}

TEST_F(LvmSnapshotTest, AReserveThatDoesNotFitIsResourceExhaustedBeforeLvm2Runs) {
  config_.snapshot_reserve_percent = 100;
  report_ = ReportJson(256 * kMiB, 40 * kMiB,
                       {{.name = "web1", .size = 100 * kMiB, .tags = "hvagent", .attr = "-wi-a-----"}});
  ServeReports();
  auto s = Backend(/*dm=*/true).CreateSnapshot("web1", "s2");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.status().message(), HasSubstr("copy-on-write reserve of 104857600 bytes"));
  EXPECT_EQ(Sub("lvcreate"), 0);
}

TEST_F(LvmSnapshotTest, BadNamesAndMissingVolumesAreRefusedBeforeAnyChange) {
  ServeReports();
  LvmBackend& b = Backend(/*dm=*/true);
  for (const std::string& bad : std::vector<std::string>{"a/b", "..", "", "-x", std::string(49, 'a'), "x_tmeta", "a+b",
                                                          "../../etc"}) {
    auto s = b.CreateSnapshot("web1", bad);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.status().message(), HasSubstr("snapshot:")) << bad;
  }
  EXPECT_EQ(b.CreateSnapshot("web1/../x", "s").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.CreateSnapshot("web1/../x", "s").status().message(), HasSubstr("volume:"));
  EXPECT_EQ(b.CreateSnapshot("ghost", "s").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(b.CreateSnapshot("web1", "old").status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(b.RevertSnapshot("web1", "nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(b.DeleteSnapshot("web1", "a/b").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Sub("lvcreate") + Sub("lvremove") + Sub("lvconvert"), 0);
}

TEST_F(LvmSnapshotTest, WithoutDeviceMapperNoSnapshotIsAttempted) {
  ServeReports();
  auto s = Backend(/*dm=*/false).CreateSnapshot("web1", "s2");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(), HasSubstr("device-mapper"));
  EXPECT_EQ(Sub("lvcreate"), 0);
  EXPECT_TRUE(backend_->ListSnapshots("web1").ok());  // reading them needs no device-mapper
}

TEST_F(LvmSnapshotTest, SnapshotsAndRevertLeftoversAreNeverVolumes) {
  ServeReports();
  LvmBackend& b = Backend();
  auto volumes = b.ListVolumes();
  ASSERT_TRUE(volumes.ok());
  for (const auto& v : *volumes) {
    EXPECT_EQ(v.name.find('+'), std::string::npos) << v.name;
  }
  EXPECT_EQ(volumes->size(), 1u);  // web1 only
  auto snaps = b.ListSnapshots("web1");
  ASSERT_TRUE(snaps.ok()) << snaps.status();
  ASSERT_EQ(snaps->size(), 2u);
  EXPECT_EQ((*snaps)[0].name, "gone");
  EXPECT_FALSE((*snaps)[0].valid);
  EXPECT_EQ((*snaps)[1].name, "old");
  EXPECT_TRUE((*snaps)[1].valid);
  EXPECT_EQ((*snaps)[1].reserve_bytes, 20 * kMiB);
  EXPECT_EQ((*snaps)[1].reserve_used_percent, 35.0);
  EXPECT_EQ((*snaps)[1].size_bytes, 100 * kMiB);
  auto pool = b.GetPool();
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ(pool->volume_count, 1u);
  EXPECT_EQ(pool->snapshot_count, 2u);
  EXPECT_EQ(pool->snapshot_reserve_bytes, 40 * kMiB);
  EXPECT_EQ(pool->snapshot_reserve_used_bytes, 7 * kMiB + 20 * kMiB);
  EXPECT_EQ(pool->snapshot_fullest_percent, 100.0);  // the invalid one
}

TEST_F(LvmSnapshotTest, ClassicRevertIsOneMergeThatConsumesTheSnapshot) {
  ServeReports();
  runner_.Expect({kLvm, "lvconvert"}, FakeCommandRunner::Ok());
  auto r = Backend(/*dm=*/true).RevertSnapshot("web1", "old");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->snapshot_kept);
  EXPECT_EQ(Last(), WithLvm("lvconvert", {"--merge", "-i", "1", "vg0/hvsnap+web1+old"}, true));
  auto invalid = backend_->RevertSnapshot("web1", "gone");
  EXPECT_EQ(invalid.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(LvmSnapshotTest, ThinRevertSwapsInASnapshotOfTheSnapshotCarryingTheVolumesTags) {
  Thin();
  ServeReports();
  runner_.Always({kLvm, "lvcreate"}, [](const Command&) { return FakeCommandRunner::Ok(); });
  runner_.Always({kLvm, "lvrename"}, [](const Command&) { return FakeCommandRunner::Ok(); });
  runner_.Always({kLvm, "lvremove"}, [](const Command&) { return FakeCommandRunner::Ok(); });
  auto r = Backend(/*dm=*/true).RevertSnapshot("web1", "s1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->snapshot_kept);
  std::vector<Argv> changes;
  for (const auto& argv : runner_.calls()) {
    if (argv[1] != "fullreport") changes.push_back(argv);
  }
  EXPECT_THAT(changes,
              ElementsAre(WithLvm("lvcreate", {"--yes", "-s", "--setactivationskip", "n", "--permission", "rw", "-n",
                                               "hvrevert+web1", "--addtag", "hvagent", "--addtag", "hvagent_vm_d1",
                                               "vg0/hvsnap+web1+s1"}, true),
                          WithLvm("lvrename", {"vg0/web1", "vg0/hvrevold+web1"}, true),
                          WithLvm("lvrename", {"vg0/hvrevert+web1", "vg0/web1"}, true),
                          WithLvm("lvremove", {"--yes", "vg0/hvrevold+web1"}, true)));
}

TEST_F(LvmSnapshotTest, RecoveryPutsTheRevertedVolumeInPlaceAfterACrashBetweenRenames) {
  Thin();
  report_ = ReportJson(256 * kMiB, 0,
                       {{.name = "tp", .size = 200 * kMiB, .tags = "", .attr = "twi-aotz--"},
                        {.name = "hvrevold+web1", .tags = "hvagent", .attr = "Vwi-a-tz--"},
                        {.name = "hvrevert+web1", .tags = "hvagent", .attr = "Vwi-a-tz--"}});
  ServeReports();
  runner_.Always({kLvm, "lvrename"}, [](const Command&) { return FakeCommandRunner::Ok(); });
  runner_.Always({kLvm, "lvremove"}, [](const Command&) { return FakeCommandRunner::Ok(); });
  auto r = Backend(/*dm=*/true).RecoverRevert("web1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->outcome, RevertRecovery::Outcome::kFinished);
  EXPECT_THAT(runner_.calls(), ::testing::Contains(WithLvm("lvrename", {"vg0/hvrevert+web1", "vg0/web1"}, true)));
  EXPECT_EQ(Last(), WithLvm("lvremove", {"--yes", "vg0/hvrevold+web1"}, true));
}

TEST_F(LvmSnapshotTest, RecoveryRemovesTheHalfMadeCopyWhenTheVolumeWasNeverSwapped) {
  Thin();
  report_ = ReportJson(256 * kMiB, 0,
                       {{.name = "tp", .size = 200 * kMiB, .tags = "", .attr = "twi-aotz--"},
                        {.name = "web1", .tags = "hvagent", .attr = "Vwi-a-tz--"},
                        {.name = "hvrevert+web1", .tags = "hvagent", .attr = "Vwi-a-tz--"}});
  ServeReports();
  runner_.Expect({kLvm, "lvremove"}, FakeCommandRunner::Ok());
  auto r = Backend(/*dm=*/true).RecoverRevert("web1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->outcome, RevertRecovery::Outcome::kUndone);
  EXPECT_EQ(Last(), WithLvm("lvremove", {"--yes", "vg0/hvrevert+web1"}, true));
  EXPECT_EQ(Sub("lvrename"), 0);
}

// Deleting snapshots and wiping (docs/snapshots.md, "Deleting a snapshot"). This kernel has no
// device-mapper, so the decision is tested here through lvm2's recorded argv and the wiper's
// calls; the real split and wipe need the Xen ARM64 dom0 tier.
TEST_F(LvmSnapshotTest, ClassicSnapshotDeleteSplitsOffItsStoreWipesItThenRemovesIt) {
  config_.wipe = WipeMode::kZero;
  ServeReports();
  size_t calls_at_wipe = 0;
  runner_.Expect({kLvm, "lvconvert"}, FakeCommandRunner::Ok());
  runner_.Expect({kLvm, "lvremove"}, FakeCommandRunner::Ok());
  LvmBackend& b = Backend(/*dm=*/true);
  wiper_.before = [&] { calls_at_wipe = runner_.calls().size(); };
  ASSERT_TRUE(b.DeleteSnapshot("web1", "old").ok());
  std::vector<Argv> changes;
  for (const auto& argv : runner_.calls()) {
    if (argv[1] != "fullreport") changes.push_back(argv);
  }
  EXPECT_THAT(changes, ElementsAre(WithLvm("lvconvert", {"--yes", "--splitsnapshot", "vg0/hvsnap+web1+old"}, true),
                                   WithLvm("lvremove", {"--yes", "vg0/hvsnap+web1+old"}, true)));
  // Never zeros through the snapshot device (that would fill and invalidate its store): the
  // wipe comes after the split, of the LV split off, before the remove.
  EXPECT_THAT(wiper_.devices, ElementsAre("/dev/vg0/hvsnap+web1+old"));
  EXPECT_THAT(wiper_.modes, ElementsAre(WipeMode::kZero));
  ASSERT_GT(calls_at_wipe, 0u);
  EXPECT_EQ(runner_.calls()[calls_at_wipe - 1][1], "lvconvert");
  EXPECT_EQ(Sub("lvremove"), 1);
}

TEST_F(LvmSnapshotTest, AnInvalidClassicSnapshotsStoreIsWipedToo) {
  config_.wipe = WipeMode::kDiscard;
  ServeReports();
  runner_.Always({kLvm, "lvconvert"}, [](const Command&) { return FakeCommandRunner::Ok(); });
  runner_.Always({kLvm, "lvchange"}, [](const Command&) { return FakeCommandRunner::Ok(); });
  runner_.Expect({kLvm, "lvremove"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(Backend(/*dm=*/true).DeleteSnapshot("web1", "gone").ok());  // "Swi-I-s---": overflowed, inactive
  EXPECT_THAT(runner_.calls(), ::testing::Contains(WithLvm("lvchange", {"-ay", "vg0/hvsnap+web1+gone"}, true)));
  EXPECT_THAT(wiper_.devices, ElementsAre("/dev/vg0/hvsnap+web1+gone"));
  EXPECT_EQ(Last(), WithLvm("lvremove", {"--yes", "vg0/hvsnap+web1+gone"}, true));
}

TEST_F(LvmSnapshotTest, AFailedWipeKeepsTheSplitStoreAndASecondDeleteFinishesIt) {
  config_.wipe = WipeMode::kZero;
  ServeReports();
  runner_.Expect({kLvm, "lvconvert"}, FakeCommandRunner::Ok());
  wiper_.result = absl::InternalError("write: Input/output error");
  LvmBackend& b = Backend(/*dm=*/true);
  absl::Status failed = b.DeleteSnapshot("web1", "old");
  EXPECT_EQ(failed.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(failed.message(), HasSubstr("it was kept"));
  EXPECT_EQ(Sub("lvremove"), 0);
  // lvm2 now reports the store as a plain LV under the snapshot's name: listed as invalid (it
  // holds no content), and deleted again without another split.
  report_ = ReportJson(256 * kMiB, 200 * kMiB,
                       {{.name = "web1", .size = 100 * kMiB, .tags = "hvagent", .attr = "-wi-a-----"},
                        {.name = "hvsnap+web1+old", .size = 20 * kMiB, .tags = "hvagent_snapshot",
                         .attr = "-wi-a-----"}});
  clock_.SleepFor(std::chrono::minutes(1));  // past the report cache
  auto listed = b.ListSnapshots("web1");
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_FALSE((*listed)[0].valid);
  EXPECT_FALSE((*listed)[0].thin);
  wiper_.result = absl::OkStatus();
  runner_.Expect({kLvm, "lvremove"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(b.DeleteSnapshot("web1", "old").ok());
  EXPECT_EQ(Sub("lvconvert"), 1);
  EXPECT_EQ(wiper_.devices.size(), 2u);
  EXPECT_EQ(Last(), WithLvm("lvremove", {"--yes", "vg0/hvsnap+web1+old"}, true));
}

TEST_F(LvmSnapshotTest, ThinSnapshotsAndPoolsWithoutWipingAreRemovedOnly) {
  Thin();
  config_.wipe = WipeMode::kZero;
  ServeReports();
  runner_.Expect({kLvm, "lvremove"}, FakeCommandRunner::Ok());
  ASSERT_TRUE(Backend(/*dm=*/true).DeleteSnapshot("web1", "s1").ok());
  EXPECT_TRUE(wiper_.devices.empty());  // the thin pool zeroes blocks it provisions again
  EXPECT_EQ(Sub("lvconvert"), 0);
  EXPECT_EQ(Last(), WithLvm("lvremove", {"--yes", "vg0/hvsnap+web1+s1"}, true));
}

}  // namespace
}  // namespace hvagent::storage
