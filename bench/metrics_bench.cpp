// metrics_bench: how long the agent takes to produce /metrics and the bulk stats for N domains
// on libvirt's test driver, against the same facts fetched with a loop of per-domain libvirt
// calls (what the agent avoids). Prints a table; --json FILE also writes the figures.
//
//   build/bench/metrics_bench [--domains 100,1000] [--reps 20] [--json out.json]
//
// Each figure is the median (and p90) of --reps runs, all on one connection in one process,
// so the ratios compare like with like on a noisy shared machine.

#include <libvirt/libvirt.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/api/prometheus.h"
#include "agent/service/host_service.h"
#include "agent/service/metrics_collector.h"
#include "common/clock.h"
#include "common/log.h"
#include "hypervisor/libvirt/libvirt_hypervisor.h"

namespace {

using namespace hvagent;
using Ms = std::chrono::duration<double, std::milli>;

struct Figure {
  double p50_ms = 0;
  double p90_ms = 0;
};

Figure Measure(int reps, const std::function<void()>& f) {
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(Ms(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms[std::min(ms.size() - 1, ms.size() * 9 / 10)]};
}

// The baseline: what a naive agent does, one lookup and one info call per domain.
void PerDomainLoop(virConnectPtr conn) {
  virDomainPtr* doms = nullptr;
  int n = virConnectListAllDomains(conn, &doms, 0);
  for (int i = 0; i < n; ++i) {
    virDomainInfo info;
    virDomainPtr d = virDomainLookupByName(conn, virDomainGetName(doms[i]));
    if (d != nullptr) {
      virDomainGetInfo(d, &info);
      virDomainFree(d);
    }
    virDomainFree(doms[i]);
  }
  free(doms);
}

int Run(const std::vector<int>& sizes, int reps, const std::string& json_path) {
  hv::LibvirtHypervisor hv({.uri = "test:///default"});
  virConnectPtr conn = virConnectOpen("test:///default");  // the same in-process test driver
  if (conn == nullptr) {
    std::cerr << "cannot open test:///default\n";
    return 1;
  }
  SystemClock clock;
  service::HostService host(hv);
  service::MetricsCollector metrics(hv, host, clock, {.max_age = std::chrono::milliseconds(0)});

  std::printf("%8s | %22s | %22s | %22s | %10s | %12s\n", "domains", "/metrics p50 / p90 ms",
              "bulk stats p50 / p90 ms", "per-domain loop ms", "loop/bulk", "/metrics KiB");
  std::string json = "[";
  int defined = 0;
  for (int n : sizes) {
    for (; defined < n; ++defined) {
      hv::DomainSpec spec{.name = absl::StrCat("bench-", defined), .vcpus = 1, .memory_mib = 64};
      if (auto s = hv.DefineDomain(spec); !s.ok()) {
        std::cerr << s.message() << "\n";
        return 1;
      }
      if (auto s = hv.StartDomain(spec.name); !s.ok()) {
        std::cerr << s.message() << "\n";
        return 1;
      }
    }
    size_t bytes = 0;
    Figure prom = Measure(reps, [&] { bytes = api::RenderPrometheus(*metrics.Latest()).size(); });
    Figure bulk = Measure(reps, [&] { (void)hv.GetAllDomainStats(); });
    Figure loop = Measure(reps, [&] { PerDomainLoop(conn); });
    std::printf("%8d | %10.2f / %9.2f | %10.2f / %9.2f | %10.2f / %9.2f | %9.1fx | %12.1f\n", n, prom.p50_ms,
                prom.p90_ms, bulk.p50_ms, bulk.p90_ms, loop.p50_ms, loop.p90_ms,
                bulk.p50_ms > 0 ? loop.p50_ms / bulk.p50_ms : 0.0, static_cast<double>(bytes) / 1024);
    absl::StrAppend(&json, json.size() > 1 ? "," : "", "{\"domains\":", n, ",\"metrics_p50_ms\":", prom.p50_ms,
                    ",\"metrics_p90_ms\":", prom.p90_ms, ",\"bulk_stats_p50_ms\":", bulk.p50_ms,
                    ",\"per_domain_loop_p50_ms\":", loop.p50_ms, ",\"metrics_bytes\":", bytes, "}");
  }
  json += "]\n";
  virConnectClose(conn);
  if (!json_path.empty()) std::ofstream(json_path) << json;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> sizes = {100, 1000};
  int reps = 20;
  std::string json;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--domains") {
      sizes.clear();
      for (absl::string_view s : absl::StrSplit(v, ',')) {
        int n = 0;
        if (!absl::SimpleAtoi(s, &n) || n < 1 || n > 100000) {
          std::cerr << "--domains: a comma-separated list of counts\n";
          return 2;
        }
        sizes.push_back(n);
      }
      std::sort(sizes.begin(), sizes.end());
      ++i;
    } else if (a == "--reps") {
      if (!absl::SimpleAtoi(v, &reps) || reps < 1) {
        std::cerr << "--reps: a positive count\n";
        return 2;
      }
      ++i;
    } else if (a == "--json") {
      json = v;
      ++i;
    } else {
      std::cerr << "usage: metrics_bench [--domains 100,1000] [--reps 20] [--json FILE]\n";
      return 2;
    }
  }
  log::Configure(spdlog::level::warn, log::Format::kText);
  return Run(sizes, reps, json);
}
