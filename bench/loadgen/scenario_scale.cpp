// Scenario 3: how /metrics and the bulk domain statistics scale with 100 and 1000 domains, in
// process (metrics_bench), through the agent, and through a libvirtd.

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "bench/loadgen/grpc_load.h"
#include "bench/loadgen/processes.h"
#include "bench/loadgen/scenarios.h"
#include "hvagent/v1/domain.grpc.pb.h"
#include "hvagent/v1/host.grpc.pb.h"
#include "hvagent/v1/metrics.grpc.pb.h"
#include "hypervisor/libvirt/domain_stats.h"

namespace hvagent::bench {
namespace {

// The test driver's fake host (16 CPUs, 3 GiB, with its own 8 GiB "test" domain) must admit
// 1000 domains of 1 vCPU and 32 MiB: the agent admits by capacity on every driver
// (deploy/test-driver.toml), so this scenario overcommits as far as the policy allows.
constexpr char kScaleConfig[] =
    "[metrics]\nmax_age_ms = 100\n"
    "[capacity]\ncpu_allocation_ratio = 64\nmemory_allocation_ratio = 16\nreserved_memory_mib = 0\n";

using Clock = std::chrono::steady_clock;

// metrics_bench measures the in-process side (the agent's collector and renderer on
// test:///default against a per-domain libvirt loop); run it and fold its JSON in.
absl::Status InProcessScale(const Settings& s, Report& report, const std::vector<int>& sizes, int reps) {
  const std::string json_file = absl::StrCat("/tmp/hvagent-bench-metrics-", getpid(), ".json");
  std::vector<std::string> argv = {
      s.metrics_bench, "--domains", absl::StrJoin(sizes, ","), "--reps", std::to_string(reps), "--json", json_file};
  const std::string log = json_file + ".log";
  auto child = ChildProcess::Spawn({.argv = argv, .output_file = log});
  if (!child.ok()) return child.status();
  while (child->Running()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::ifstream in(json_file);
  std::stringstream text;
  text << in.rdbuf();
  unlink(json_file.c_str());
  google::protobuf::ListValue list;
  if (!google::protobuf::util::JsonStringToMessage(text.str(), &list).ok() || list.values_size() == 0) {
    return absl::InternalError(absl::StrCat("metrics_bench wrote no figures; see ", log));
  }
  unlink(log.c_str());
  for (const auto& v : list.values()) {
    const auto& f = v.struct_value().fields();
    auto num = [&](const char* k) { return f.contains(k) ? f.at(k).number_value() : 0.0; };
    double bulk = num("bulk_stats_p50_ms"), loop = num("per_domain_loop_p50_ms");
    report.Row({"in process (metrics_bench)", static_cast<int>(num("domains")), Cell(num("metrics_p50_ms"), 2),
                Cell(num("metrics_p90_ms"), 2), Cell(bulk, 2), Cell(loop, 2), Cell(bulk > 0 ? loop / bulk : 0.0, 1),
                Cell(num("metrics_bytes") / 1024, 0), ""});
  }
  return absl::OkStatus();
}

// Creates domains bench-scale-<from..to-1> through the agent's gRPC API, 16 calls in flight.
absl::Status CreateThroughAgent(v1::DomainService::Stub& stub, int from, int to) {
  grpc::CompletionQueue cq;
  struct Call {
    grpc::ClientContext ctx;
    v1::Domain out;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::Domain>> reader;
  };
  std::vector<std::unique_ptr<Call>> calls;
  int next = from, pending = 0;
  auto start = [&] {
    auto c = std::make_unique<Call>();
    v1::CreateDomainRequest req;
    req.set_start(true);
    req.mutable_spec()->set_name(absl::StrCat("bench-scale-", next++));
    req.mutable_spec()->set_vcpus(1);
    req.mutable_spec()->set_memory_mib(32);  // 1000 of them fit kScaleConfig's fake host
    c->reader = stub.AsyncCreateDomain(&c->ctx, req, &cq);
    c->reader->Finish(&c->out, &c->status, c.get());
    calls.push_back(std::move(c));
    ++pending;
  };
  while (next < to && pending < 16) start();
  void* tag = nullptr;
  bool ok = false;
  while (pending > 0 && cq.Next(&tag, &ok)) {
    --pending;
    auto* c = static_cast<Call*>(tag);
    if (!ok || !c->status.ok()) return absl::InternalError(absl::StrCat("CreateDomain: ", c->status.error_message()));
    if (next < to) start();
  }
  return absl::OkStatus();
}

// Through a libvirtd every libvirt call is a round trip, which is what bulk statistics save.
// The loop is metrics_bench's baseline (list, then a lookup and an info call per domain).
void PerDomainLoop(virConnectPtr conn) {
  virDomainPtr* doms = nullptr;
  int n = virConnectListAllDomains(conn, &doms, 0);
  for (int i = 0; i < n; ++i) {
    virDomainInfo info;
    if (virDomainPtr d = virDomainLookupByName(conn, virDomainGetName(doms[i]))) {
      virDomainGetInfo(d, &info);
      virDomainFree(d);
    }
    virDomainFree(doms[i]);
  }
  free(doms);
}

void BulkStats(virConnectPtr conn) {
  virDomainStatsRecordPtr* records = nullptr;
  if (virConnectGetAllDomainStats(conn, hv::kDomainStatsGroups, &records, 0) >= 0)
    virDomainStatsRecordListFree(records);
}

absl::Status DaemonScale(const Settings& s, Report& report, const std::vector<int>& sizes, int reps) {
  auto daemon = PrivateLibvirtd::Start();
  if (!daemon.ok()) return daemon.status();
  auto agent = AgentProcess::Start({.binary = s.hvagentd,
                                    .hypervisor_uri = daemon->uri(),
                                    .config_toml = kScaleConfig,
                                    .log_level = s.agent_log_level});
  if (!agent.ok()) return agent.status();
  virConnectPtr conn = virConnectOpen(daemon->uri().c_str());
  if (conn == nullptr) return absl::UnavailableError(virGetLastErrorMessage());
  auto http = HttpConnection::Connect(agent->rest_port());
  if (!http.ok()) {
    virConnectClose(conn);
    return http.status();
  }
  // GetCapacity alone, to show which part of a sample grows with the domains.
  auto host = v1::HostService::NewStub(MakeChannels(agent->grpc_address(), 1)[0]);
  grpc::CompletionQueue cq;
  v1::GetCapacityRequest cap_req;
  int defined = 1;  // the driver's own "test"
  for (int n : sizes) {
    if (auto st = DefineTestDomains(conn, absl::StrCat("bench-scale-", defined, "-"), n - defined); !st.ok()) {
      virConnectClose(conn);
      return st;
    }
    defined = n;
    Latencies prom, bulk, loop, capacity;
    size_t bytes = 0;
    for (int r = 0; r < reps; ++r) {
      std::this_thread::sleep_for(std::chrono::milliseconds(110));
      auto t0 = Clock::now();
      auto resp = http->Get("/metrics");
      if (!resp.ok() || resp->status != 200) {
        virConnectClose(conn);
        return absl::InternalError("GET /metrics failed");
      }
      prom.Add(Clock::now() - t0);
      bytes = resp->body.size();
      t0 = Clock::now();
      BulkStats(conn);
      bulk.Add(Clock::now() - t0);
      t0 = Clock::now();
      PerDomainLoop(conn);
      loop.Add(Clock::now() - t0);
      v1::Capacity cap;
      t0 = Clock::now();
      if (AsyncUnary<v1::Capacity>(
              cq, [&](auto* ctx, auto* q, size_t) { return host->PrepareAsyncGetCapacity(ctx, cap_req, q); }, &cap)
              .ok()) {
        capacity.Add(Clock::now() - t0);
      }
    }
    report.Row({"libvirtd (test+unix): agent /metrics; bulk and loop direct", n, Cell(prom.p50() / 1000, 2),
                Cell(prom.Quantile(0.9) / 1000, 2), Cell(bulk.p50() / 1000, 2), Cell(loop.p50() / 1000, 2),
                Cell(bulk.p50() > 0 ? loop.p50() / bulk.p50() : 0.0, 1), Cell(static_cast<double>(bytes) / 1024, 0),
                Cell(static_cast<double>(ReadProcFacts(agent->pid()).rss_kib) / 1024, 1)});
    report.Note(absl::StrFormat("libvirtd, %d domains: gRPC GetCapacity alone p50 %.2f ms (part of every sample)", n,
                                capacity.p50() / 1000));
  }
  virConnectClose(conn);
  return absl::OkStatus();
}

}  // namespace

absl::Status RunScale(const Settings& s, Report& report) {
  report.Section("scale", "3. Scale: /metrics and bulk domain statistics on test:///default",
                 {"where", "domains", "/metrics p50 ms", "/metrics p90 ms", "bulk stats p50 ms",
                  "per-domain loop p50 ms", "loop / bulk", "/metrics KiB", "agent RSS MiB"});
  const std::vector<int> sizes = s.smoke ? std::vector<int>{10, 50} : std::vector<int>{100, 1000};
  const int reps = s.smoke ? 3 : 20;
  if (auto st = InProcessScale(s, report, sizes, reps); !st.ok()) return st;

  // End to end: the same reads over the wire from an agent whose sample is always stale
  // (max_age 100 ms, each read 110 ms after the last), so each one collects afresh, as a
  // Prometheus scrape every 15 s would.
  auto agent = AgentProcess::Start(
      {.binary = s.hvagentd, .config_toml = kScaleConfig, .log_level = s.agent_log_level});
  if (!agent.ok()) return agent.status();
  auto channel = MakeChannels(agent->grpc_address(), 1)[0];
  auto domains = v1::DomainService::NewStub(channel);
  auto metrics = v1::MetricsService::NewStub(channel);
  auto http = HttpConnection::Connect(agent->rest_port());
  if (!http.ok()) return http.status();
  grpc::CompletionQueue cq;
  int defined = 0;
  for (int n : sizes) {
    auto t0 = Clock::now();
    if (auto st = CreateThroughAgent(*domains, defined, n - 1); !st.ok()) return st;  // plus the driver's "test"
    double create_s = std::chrono::duration<double>(Clock::now() - t0).count();
    const int defined_before = defined;
    defined = n - 1;
    Latencies prom, stats;
    size_t bytes = 0;
    for (int r = 0; r < reps; ++r) {
      std::this_thread::sleep_for(std::chrono::milliseconds(110));
      auto p0 = Clock::now();
      auto resp = http->Get("/metrics");
      if (!resp.ok() || resp->status != 200) return absl::InternalError("GET /metrics failed");
      prom.Add(Clock::now() - p0);
      bytes = resp->body.size();
      std::this_thread::sleep_for(std::chrono::milliseconds(110));
      v1::GetDomainStatsResponse out;
      v1::GetDomainStatsRequest req;
      auto g0 = Clock::now();
      auto st = AsyncUnary<v1::GetDomainStatsResponse>(
          cq, [&](auto* ctx, auto* q, size_t) { return metrics->PrepareAsyncGetDomainStats(ctx, req, q); }, &out);
      if (!st.ok()) return absl::InternalError(absl::StrCat("GetDomainStats: ", st.error_message()));
      stats.Add(Clock::now() - g0);
    }
    report.Row({"through the agent (REST /metrics, gRPC GetDomainStats)", n, Cell(prom.p50() / 1000, 2),
                Cell(prom.Quantile(0.9) / 1000, 2), Cell(stats.p50() / 1000, 2), "", "",
                Cell(static_cast<double>(bytes) / 1024, 0),
                Cell(static_cast<double>(ReadProcFacts(agent->pid()).rss_kib) / 1024, 1)});
    report.Note(absl::StrFormat("%d domains created and started through gRPC CreateDomain in %.1f s",
                                n - 1 - defined_before, create_s));
  }
  if (auto st = DaemonScale(s, report, sizes, reps); absl::IsFailedPrecondition(st)) {
    report.Note(absl::StrCat("libvirtd rows SKIPPED: ", st.message()));
  } else if (!st.ok()) {
    return st;
  }
  report.Note(absl::StrCat(reps,
                           " reps per figure; through the agent each read finds a stale sample and collects afresh "
                           "(metrics.max_age_ms = 100, reads 110 ms apart)"));
  report.Note("target: <= 50 ms for /metrics and bulk stats at 1000 domains");
  return absl::OkStatus();
}

}  // namespace hvagent::bench
