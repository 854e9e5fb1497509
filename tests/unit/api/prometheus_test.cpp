#include "agent/api/prometheus.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "absl/strings/str_split.h"

namespace hvagent::api {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

service::MetricsSample Sample() {
  service::MetricsSample s;
  s.hypervisor_connected = true;
  service::Capacity c;
  c.arch = "aarch64";
  c.hypervisor_type = "Xen";
  c.hypervisor_version = "4.17.0";
  c.cpus = 8;
  c.memory_total_bytes = 16ULL << 30;
  c.pools.push_back({.name = "vg0", .type = storage::PoolType::kLvm, .capacity_bytes = 100, .free_bytes = 40,
                     .volume_count = 2});
  s.capacity = c;
  hv::DomainStats d;
  d.name = "web\"1\\\n";
  d.uuid = "u-1";
  d.state = hv::DomainState::kRunning;
  d.cpu_time_ns = 2'500'000'000;
  d.balloon_current_kib = 1024;
  d.disks.push_back({.target = "xvda", .read_bytes = 4096, .write_bytes = 0});
  d.nics.push_back({.name = "vif3.0", .rx_bytes = 7});
  hv::DomainStats stopped;
  stopped.name = "db1";
  stopped.uuid = "u-2";
  stopped.state = hv::DomainState::kShutoff;
  s.domains = std::vector<hv::DomainStats>{d, stopped};
  return s;
}

// name{labels} -> value, and the families with their TYPE.
struct Parsed {
  std::map<std::string, std::string> samples;
  std::map<std::string, std::string> types;
  std::vector<std::string> family_order;
};
Parsed Parse(const std::string& text) {
  Parsed p;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&line, "# TYPE ")) {
      std::vector<std::string> f = absl::StrSplit(line, ' ');
      p.types[f[0]] = f[1];
      p.family_order.push_back(f[0]);
    } else if (line[0] != '#') {
      size_t sp = line.rfind(' ');
      p.samples[std::string(line.substr(0, sp))] = std::string(line.substr(sp + 1));
    }
  }
  return p;
}

TEST(PrometheusTest, ConventionalNamesUnitsAndValues) {
  Parsed p = Parse(RenderPrometheus(Sample()));
  EXPECT_EQ(p.samples[R"(hvagent_domain_cpu_seconds_total{domain="web\"1\\\n",uuid="u-1"})"], "2.5");
  EXPECT_EQ(p.types["hvagent_domain_cpu_seconds_total"], "counter");
  EXPECT_EQ(p.samples[R"(hvagent_domain_memory_bytes{domain="web\"1\\\n",uuid="u-1"})"], "1048576");
  EXPECT_EQ(p.samples[R"(hvagent_domain_disk_read_bytes_total{domain="web\"1\\\n",uuid="u-1",disk="xvda"})"],
            "4096");
  EXPECT_EQ(p.samples[R"(hvagent_domain_disk_written_bytes_total{domain="web\"1\\\n",uuid="u-1",disk="xvda"})"],
            "0");  // a real zero is reported
  EXPECT_EQ(p.samples[R"(hvagent_domain_network_receive_bytes_total{domain="web\"1\\\n",uuid="u-1",interface="vif3.0"})"],
            "7");
  EXPECT_EQ(p.samples[R"(hvagent_pool_free_bytes{pool="vg0",type="lvm"})"], "40");
  EXPECT_EQ(p.samples[R"(hvagent_host_memory_bytes)"], "17179869184");
  EXPECT_EQ(p.samples[R"(hvagent_host_info{arch="aarch64",hypervisor="Xen",hypervisor_version="4.17.0"})"], "1");
  EXPECT_EQ(p.samples[R"(hvagent_domains{state="running"})"], "1");
  EXPECT_EQ(p.samples[R"(hvagent_domains{state="shutoff"})"], "1");
  EXPECT_EQ(p.samples[R"(hvagent_domains{state="paused"})"], "0");
  for (const auto& [name, type] : p.types) {
    EXPECT_TRUE(name.rfind("hvagent_", 0) == 0) << name;
    if (type == "counter") {
      EXPECT_TRUE(name.size() > 6 && name.substr(name.size() - 6) == "_total") << name;
    }
  }
}

TEST(PrometheusTest, WhatWasNotReadIsAbsentNotZero) {
  Parsed p = Parse(RenderPrometheus(Sample()));
  // db1 is stopped: libvirt reports no CPU time or memory for it.
  for (const auto& [series, value] : p.samples) {
    if (series.find(R"(domain="db1")") == std::string::npos) continue;
    EXPECT_EQ(series.rfind("hvagent_domain_info", 0), 0u) << series;
  }
  // No NIC tx figure was reported for vif3.0.
  EXPECT_FALSE(p.samples.contains(R"(hvagent_domain_network_transmit_bytes_total{domain="web\"1\\\n",uuid="u-1",interface="vif3.0"})"));

  service::MetricsSample down;
  down.capacity = absl::UnavailableError("libvirt connection lost");
  down.domains = absl::UnavailableError("libvirt connection lost");
  std::string text = RenderPrometheus(down);
  EXPECT_THAT(text, HasSubstr("hvagent_hypervisor_connected 0\n"));
  EXPECT_THAT(text, HasSubstr("hvagent_collect_errors{part=\"domains\"} 1\n"));
  EXPECT_THAT(text, Not(HasSubstr("hvagent_host_cpus")));
  EXPECT_THAT(text, Not(HasSubstr("hvagent_domains{")));
}

TEST(PrometheusTest, ThinPoolUsageIsReportedForThinPoolsOnly) {
  service::MetricsSample s = Sample();
  s.capacity->pools.push_back({.name = "thin", .type = storage::PoolType::kLvm, .capacity_bytes = 100,
                               .free_bytes = 12, .thin_data_percent = 88.5, .thin_metadata_percent = 4.25});
  Parsed p = Parse(RenderPrometheus(s));
  EXPECT_EQ(p.types["hvagent_pool_thin_data_percent"], "gauge");
  EXPECT_EQ(p.types["hvagent_pool_thin_metadata_percent"], "gauge");
  EXPECT_EQ(p.samples[R"(hvagent_pool_thin_data_percent{pool="thin"})"], "88.5");
  EXPECT_EQ(p.samples[R"(hvagent_pool_thin_metadata_percent{pool="thin"})"], "4.25");
  // vg0 is thick: no thin figures at all, rather than a zero that would look like an empty pool.
  EXPECT_EQ(p.samples.count(R"(hvagent_pool_thin_data_percent{pool="vg0"})"), 0u);
  EXPECT_EQ(p.samples.count(R"(hvagent_pool_thin_metadata_percent{pool="vg0"})"), 0u);
}

TEST(PrometheusTest, EachFamilyOnceWithHelpAndTypeAndItsSamplesTogether) {
  std::string text = RenderPrometheus(Sample());
  Parsed p = Parse(text);
  std::set<std::string> unique(p.family_order.begin(), p.family_order.end());
  EXPECT_EQ(unique.size(), p.family_order.size());
  // Samples of one family are contiguous: once a family ended, its name does not come back.
  std::set<std::string> closed;
  std::string current;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (line[0] == '#') continue;
    std::string family(line.substr(0, line.find_first_of("{ ")));
    if (family != current) {
      EXPECT_FALSE(closed.contains(family)) << family << " appears in two blocks";
      closed.insert(current);
      current = family;
    }
  }
  EXPECT_THAT(text, HasSubstr("# HELP hvagent_domain_cpu_seconds_total "));
}

}  // namespace
}  // namespace hvagent::api

namespace hvagent::api {
namespace {

TEST(PrometheusTest, EventChannelsOnXenAndAnExplicitZeroSupportedElsewhere) {
  service::MetricsSample s = Sample();
  hv::EventChannelReport r;
  hv::DomainEventChannels d;
  d.domid = 3;
  d.name = "web1";
  d.abi = hv::EvtchnAbi::kFifo;
  d.ports_bound = 40;
  d.port_limit = 1023;
  d.limit_exact = true;
  r.domains.push_back(d);
  r.host_ports_bound = 40;
  s.event_channels = r;
  Parsed p = Parse(RenderPrometheus(s));
  EXPECT_EQ(p.samples["hvagent_evtchn_supported"], "1");
  EXPECT_EQ(p.samples[R"(hvagent_evtchn_ports_bound{domid="3",domain="web1"})"], "40");
  EXPECT_EQ(p.samples[R"(hvagent_evtchn_port_limit{domid="3",domain="web1",abi="fifo",exact="true"})"], "1023");
  EXPECT_EQ(p.samples[R"(hvagent_evtchn_headroom_ports{domid="3",domain="web1"})"], "983");
  EXPECT_EQ(p.samples["hvagent_evtchn_host_ports_bound"], "40");

  s.event_channels = absl::UnimplementedError("event channels: only on Xen hosts (hypervisor is qemu)");
  std::string text = RenderPrometheus(s);
  EXPECT_THAT(text, HasSubstr("hvagent_evtchn_supported 0\n"));
  EXPECT_THAT(text, Not(HasSubstr("hvagent_evtchn_ports_bound")));
  EXPECT_THAT(text, HasSubstr("hvagent_collect_errors{part=\"event_channels\"} 0\n"));

  s.event_channels = absl::PermissionDeniedError("xc_evtchn_status: EPERM");
  EXPECT_THAT(RenderPrometheus(s), HasSubstr("hvagent_collect_errors{part=\"event_channels\"} 1\n"));
}

}  // namespace
}  // namespace hvagent::api
