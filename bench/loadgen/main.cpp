// hvagent_bench: holds hvagentd against direct libvirt (issue 9). Starts its own agents (and a
// private libvirtd where the agent and the benchmark must see the same domains), runs the
// chosen scenarios, prints one table per scenario and writes the figures as JSON.
//
//   hvagent_bench [--all | --scenario overhead,throughput,scale,footprint,events,storage]
//                 [--smoke] [--json FILE] [--hvagentd PATH] [--metrics-bench PATH]
//                 [--agent-log-level LEVEL] [--grpc ADDR --rest-port PORT --direct-uri URI]
//
// --smoke runs every scenario with tiny counts (CI: proves it runs; the figures mean nothing).
// --grpc/--rest-port/--direct-uri point overhead and throughput at an agent already running
// (direct-uri: the libvirt URI that agent uses); the other scenarios always start their own.
// Exit status: 0 when every chosen scenario ran (or was skipped for want of libvirtd, root or
// lvm2, which the table says), 1 when one failed, 2 for usage errors.

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <sys/utsname.h>

#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/loadgen/scenarios.h"
#include "common/log.h"

namespace {

using namespace hvagent::bench;

using ScenarioFn = absl::Status (*)(const Settings&, Report&);
const std::vector<std::pair<std::string, ScenarioFn>>& Scenarios() {
  static const std::vector<std::pair<std::string, ScenarioFn>> all = {
      {"overhead", RunOverhead},   {"throughput", RunThroughput}, {"scale", RunScale},
      {"footprint", RunFootprint}, {"events", RunEvents},         {"storage", RunStorage}};
  return all;
}

int Usage() {
  std::cerr << "usage: hvagent_bench [--all | --scenario NAME[,NAME...]] [--smoke] [--json FILE]\n"
               "                     [--hvagentd PATH] [--metrics-bench PATH] [--agent-log-level LEVEL]\n"
               "                     [--grpc HOST:PORT --rest-port PORT --direct-uri URI]\n"
               "scenarios: overhead throughput scale footprint events storage (default: all)\n";
  return 2;
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

void MachineFacts(Report& report, bool smoke) {
  utsname u{};
  uname(&u);
  unsigned long libvirt = 0;
  virGetVersion(&libvirt, nullptr, nullptr);
  report.Fact("mode", smoke ? "smoke (tiny counts; figures are not meaningful)" : "full");
  report.Fact("date", absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::Now(), absl::UTCTimeZone()));
  report.Fact("machine", absl::StrCat(std::thread::hardware_concurrency(), " CPUs, ", CpuModel(), ", ", u.sysname, " ",
                                      u.release, " ", u.machine));
  report.Fact("libvirt", absl::StrCat(libvirt / 1000000, ".", libvirt / 1000 % 1000, ".", libvirt % 1000));
}

// The benchmark's own libvirt connections receive events (scenario 5): libvirt needs an event
// loop registered before the first connection is opened, and a thread that runs it.
void StartLibvirtEventLoop() {
  virSetErrorFunc(nullptr, [](void*, virErrorPtr) {});  // errors are reported where they matter
  virEventRegisterDefaultImpl();
  std::thread([] {
    while (true) virEventRunDefaultImpl();
  }).detach();
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings{.hvagentd = HVAGENT_BENCH_HVAGENTD, .metrics_bench = HVAGENT_BENCH_METRICS_BENCH};
  std::vector<std::string> chosen;
  std::string json;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::optional<std::string> {
      if (i + 1 >= argc) return std::nullopt;
      return std::string(argv[++i]);
    };
    std::optional<std::string> v;
    if (a == "--all") {
      chosen.clear();
    } else if (a == "--smoke") {
      settings.smoke = true;
    } else if (a == "--scenario" && (v = value())) {
      for (absl::string_view name : absl::StrSplit(*v, ',', absl::SkipEmpty())) chosen.emplace_back(name);
    } else if (a == "--json" && (v = value())) {
      json = *v;
    } else if (a == "--hvagentd" && (v = value())) {
      settings.hvagentd = *v;
    } else if (a == "--metrics-bench" && (v = value())) {
      settings.metrics_bench = *v;
    } else if (a == "--agent-log-level" && (v = value())) {
      settings.agent_log_level = *v;
    } else if (a == "--grpc" && (v = value())) {
      settings.grpc_address = *v;
    } else if (a == "--rest-port" && (v = value())) {
      if (!absl::SimpleAtoi(*v, &settings.rest_port)) return Usage();
    } else if (a == "--direct-uri" && (v = value())) {
      settings.direct_uri = *v;
    } else {
      return Usage();
    }
  }
  if (!settings.grpc_address.empty() && (settings.rest_port == 0 || settings.direct_uri.empty())) {
    std::cerr << "--grpc needs --rest-port and --direct-uri too\n";
    return 2;
  }
  for (const std::string& c : chosen) {
    bool known = false;
    for (const auto& [name, fn] : Scenarios()) known = known || name == c;
    if (!known) {
      std::cerr << "unknown scenario '" << c << "'\n";
      return Usage();
    }
  }
  hvagent::log::Configure(spdlog::level::warn, hvagent::log::Format::kText);  // LvmBackend logs each change
  StartLibvirtEventLoop();
  Report report;
  MachineFacts(report, settings.smoke);
  int failed = 0;
  for (const auto& [name, fn] : Scenarios()) {
    if (!chosen.empty() && std::find(chosen.begin(), chosen.end(), name) == chosen.end()) continue;
    std::cerr << "hvagent_bench: running " << name << (settings.smoke ? " (smoke)" : "") << "...\n";
    const auto t0 = std::chrono::steady_clock::now();
    absl::Status s = fn(settings, report);
    if (absl::IsFailedPrecondition(s)) {
      // This machine lacks what the scenario needs (libvirtd, a user to run it as).
      report.Note(absl::StrCat("SKIPPED: ", s.message()));
      std::cerr << "hvagent_bench: " << name << " skipped: " << s.message() << "\n";
    } else if (!s.ok()) {
      ++failed;
      report.Note(absl::StrCat("FAILED: ", s.ToString()));
      std::cerr << "hvagent_bench: " << name << " failed: " << s << "\n";
    }
    std::cerr << "hvagent_bench: " << name << " took "
              << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count()
              << " ms\n";
  }
  report.Print(std::cout);
  if (!json.empty()) {
    std::ofstream out(json);
    out << report.Json();
    if (!out) {
      std::cerr << "cannot write " << json << "\n";
      return 1;
    }
  }
  return failed == 0 ? 0 : 1;
}
