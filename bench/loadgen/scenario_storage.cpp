// Scenario 6: lvm2 invocations and wall time per volume create / list / delete, through the
// agent's LvmBackend on a loop-device volume group (root only).

#include <fcntl.h>
#include <unistd.h>

#include <functional>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "bench/loadgen/report.h"
#include "bench/loadgen/scenarios.h"
#include "storage/exec/subprocess_runner.h"
#include "storage/lvm/lvm_backend.h"

namespace hvagent::bench {

using Clock = std::chrono::steady_clock;

namespace {

// Counts the lvm2 runs the backend makes, by subcommand, on the way to the real runner.
class CountingRunner final : public storage::CommandRunner {
 public:
  explicit CountingRunner(storage::CommandRunner& real) : real_(real) {}
  absl::StatusOr<storage::CommandResult> Run(const storage::Command& c) override {
    ++total;
    if (c.argv.size() > 1) ++by_sub[c.argv[1]];
    return real_.Run(c);
  }
  int total = 0;
  std::map<std::string, int> by_sub;

 private:
  storage::CommandRunner& real_;
};

class RefuseWipe final : public storage::BlockWiper {
 public:
  absl::Status Wipe(const std::string&, storage::WipeMode, const ProgressFn&) override {
    return absl::InternalError("the benchmark's pools wipe nothing");
  }
};

std::string FirstExecutable(std::initializer_list<const char*> paths) {
  for (const char* p : paths) {
    if (access(p, X_OK) == 0) return p;
  }
  return "";
}

// A loop device on a sparse file, removed again (with the VG on it) on destruction.
class LoopVg {
 public:
  LoopVg(storage::CommandRunner& runner, std::string losetup, uint64_t bytes) : runner_(runner), losetup_(losetup) {
    char dir[] = "/tmp/hvagent-bench-lvm-XXXXXX";
    if (mkdtemp(dir) == nullptr) return;
    dir_ = dir;
    file_ = dir_ + "/pv.img";
    int fd = open(file_.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) return;
    bool sized = ftruncate(fd, static_cast<off_t>(bytes)) == 0;
    close(fd);
    if (!sized) return;
    auto r = Run({losetup_, "--find", "--show", file_});
    if (r.ok() && r->exit_code == 0) loop_ = std::string(absl::StripAsciiWhitespace(r->stdout_text));
    vg_ = absl::StrCat("hvbench_vg_", getpid());
  }
  ~LoopVg() {
    if (!loop_.empty()) {
      std::vector<std::string> cfg;
      if (!storage::LvmBackend::ProbeDeviceMapper()) cfg = {"--config", "global{activation=0}"};
      auto lvm = [&](std::vector<std::string> args) {
        std::vector<std::string> argv = {"/sbin/lvm", args[0]};
        argv.insert(argv.end(), cfg.begin(), cfg.end());
        argv.insert(argv.end(), args.begin() + 1, args.end());
        (void)Run(argv);
      };
      lvm({"vgremove", "-ff", "-y", vg_});
      lvm({"pvremove", "-ff", "-y", loop_});
      (void)Run({losetup_, "-d", loop_});
    }
    if (!file_.empty()) unlink(file_.c_str());
    if (!dir_.empty()) rmdir(dir_.c_str());
  }
  const std::string& loop() const { return loop_; }
  const std::string& vg() const { return vg_; }

 private:
  absl::StatusOr<storage::CommandResult> Run(std::vector<std::string> argv) {
    return runner_.Run({.argv = std::move(argv),
                        .timeout = std::chrono::seconds(60),
                        .env = {{"LVM_SUPPRESS_FD_WARNINGS", "1"}, {"LC_ALL", "C"}}});
  }
  storage::CommandRunner& runner_;
  std::string losetup_, dir_, file_, loop_, vg_;
};

}  // namespace

absl::Status RunStorage(const Settings& s, Report& report) {
  report.Section("storage", "6. Storage: LvmBackend on a loop-device VG (real lvm2)",
                 {"operation", "count", "p50 ms", "p99 ms", "lvm2 runs per op", "lvm2 subcommands"});
  const std::string losetup = FirstExecutable({"/usr/sbin/losetup", "/sbin/losetup"});
  if (geteuid() != 0 || losetup.empty() || access("/sbin/lvm", X_OK) != 0) {
    report.Note("SKIPPED: needs root, losetup and lvm2 (/sbin/lvm) for a loop-device volume group");
    return absl::OkStatus();
  }
  storage::SubprocessRunner real;
  LoopVg vg(real, losetup, 512ull << 20);
  if (vg.loop().empty()) {
    report.Note("SKIPPED: no loop device could be set up (losetup --find failed)");
    return absl::OkStatus();
  }
  CountingRunner counting(real);
  RefuseWipe wiper;
  storage::PoolConfig pool{.name = "benchpool",
                           .type = storage::PoolType::kLvm,
                           .volume_group = vg.vg(),
                           .physical_volumes = {vg.loop()},
                           .wipe = storage::WipeMode::kNone};
  storage::LvmBackend backend(pool, counting, wiper);
  if (auto st = backend.Prepare(); !st.ok()) return st;
  const int volumes = s.smoke ? 3 : 40;
  struct Op {
    const char* name;
    Latencies lat;
    int runs = 0;
    std::map<std::string, int> subs;
  };
  Op create{"CreateVolume (8 MiB)"}, list{"ListVolumes right after a change"}, list_warm{"ListVolumes again (cache)"},
      remove{"DeleteVolume (wipe none)"};
  auto timed = [&](Op& op, const std::function<absl::Status()>& f) {
    counting.total = 0;
    counting.by_sub.clear();
    auto t0 = Clock::now();
    absl::Status st = f();
    op.lat.Add(Clock::now() - t0);
    op.runs += counting.total;
    for (auto& [k, v] : counting.by_sub) op.subs[k] += v;
    return st;
  };
  for (int i = 0; i < volumes; ++i) {
    auto st = timed(create, [&] {
      return backend.CreateVolume({.name = absl::StrCat("bench-", i), .size_bytes = 8ull << 20}).status();
    });
    if (!st.ok()) return st;
    if (st = timed(list, [&] { return backend.ListVolumes().status(); }); !st.ok()) return st;
    if (st = timed(list_warm, [&] { return backend.ListVolumes().status(); }); !st.ok()) return st;
  }
  for (int i = 0; i < volumes; ++i) {
    auto st = timed(remove, [&] { return backend.DeleteVolume(absl::StrCat("bench-", i), nullptr); });
    if (!st.ok()) return st;
  }
  for (Op* op : {&create, &list, &list_warm, &remove}) {
    std::string subs;
    for (auto& [k, v] : op->subs) {
      absl::StrAppend(&subs, subs.empty() ? "" : ", ", k, absl::StrFormat(" %.2f", static_cast<double>(v) / volumes));
    }
    report.Row({op->name, static_cast<uint64_t>(op->lat.count()), Cell(op->lat.p50() / 1000, 1),
                Cell(op->lat.p99() / 1000, 1), Cell(static_cast<double>(op->runs) / volumes, 2), subs});
  }
  report.Note(
      absl::StrCat("VG ", vg.vg(), " on ", vg.loop(), " (512 MiB sparse file); device-mapper ",
                   storage::LvmBackend::ProbeDeviceMapper() ? "present" : "absent (lvm2 metadata only, activation=0)",
                   "; in process through LvmBackend and the argv-only SubprocessRunner, report cache 5 s"));
  return absl::OkStatus();
}

}  // namespace hvagent::bench
