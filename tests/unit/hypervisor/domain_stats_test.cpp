// ParseDomainStats against typed-parameter records built the way virConnectGetAllDomainStats
// returns them.
#include "hypervisor/libvirt/domain_stats.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace hvagent::hv {
namespace {

class Record {
 public:
  Record& ULL(const std::string& field, unsigned long long v) {
    virTypedParameter p = Named(field, VIR_TYPED_PARAM_ULLONG);
    p.value.ul = v;
    params_.push_back(p);
    return *this;
  }
  Record& UInt(const std::string& field, unsigned int v) {
    virTypedParameter p = Named(field, VIR_TYPED_PARAM_UINT);
    p.value.ui = v;
    params_.push_back(p);
    return *this;
  }
  Record& Int(const std::string& field, int v) {
    virTypedParameter p = Named(field, VIR_TYPED_PARAM_INT);
    p.value.i = v;
    params_.push_back(p);
    return *this;
  }
  Record& Str(const std::string& field, const std::string& v) {
    strings_.push_back(std::make_unique<std::string>(v));
    virTypedParameter p = Named(field, VIR_TYPED_PARAM_STRING);
    p.value.s = strings_.back()->data();
    params_.push_back(p);
    return *this;
  }
  DomainStats Parse() const {
    return ParseDomainStats("web1", "u-1", params_.data(), static_cast<int>(params_.size()));
  }

 private:
  static virTypedParameter Named(const std::string& field, int type) {
    virTypedParameter p{};
    std::strncpy(p.field, field.c_str(), VIR_TYPED_PARAM_FIELD_LENGTH - 1);
    p.type = type;
    return p;
  }
  std::vector<virTypedParameter> params_;
  std::vector<std::unique_ptr<std::string>> strings_;
};

TEST(DomainStatsTest, FullQemuRecord) {
  Record r;
  r.Int("state.state", VIR_DOMAIN_RUNNING).Int("state.reason", 1);
  r.ULL("cpu.time", 1234567890).ULL("cpu.user", 1).ULL("cpu.system", 2);
  r.ULL("balloon.current", 65536).ULL("balloon.maximum", 131072).ULL("balloon.rss", 40000);
  r.UInt("vcpu.current", 2).UInt("vcpu.maximum", 4).Int("vcpu.0.state", 1);
  r.UInt("net.count", 1).Str("net.0.name", "vnet0").ULL("net.0.rx.bytes", 100).ULL("net.0.rx.pkts", 3);
  r.ULL("net.0.tx.bytes", 200).ULL("net.0.tx.pkts", 4).ULL("net.0.rx.errs", 0);
  r.UInt("block.count", 2).Str("block.0.name", "vda").Str("block.0.path", "/dev/vg/root");
  r.ULL("block.0.rd.reqs", 10).ULL("block.0.rd.bytes", 4096).ULL("block.0.wr.reqs", 5).ULL("block.0.wr.bytes", 512);
  r.Str("block.1.name", "vdb").ULL("block.1.rd.bytes", 7);
  DomainStats s = r.Parse();
  EXPECT_EQ(s.name, "web1");
  EXPECT_EQ(s.uuid, "u-1");
  EXPECT_EQ(s.state, DomainState::kRunning);
  EXPECT_EQ(s.cpu_time_ns, 1234567890u);
  EXPECT_EQ(s.vcpus, 2u);
  EXPECT_EQ(s.balloon_current_kib, 65536u);
  EXPECT_EQ(s.balloon_maximum_kib, 131072u);
  EXPECT_EQ(s.rss_kib, 40000u);
  ASSERT_EQ(s.nics.size(), 1u);
  EXPECT_EQ(s.nics[0].name, "vnet0");
  EXPECT_EQ(s.nics[0].rx_bytes, 100u);
  EXPECT_EQ(s.nics[0].tx_bytes, 200u);
  EXPECT_EQ(s.nics[0].rx_packets, 3u);
  EXPECT_EQ(s.nics[0].tx_packets, 4u);
  ASSERT_EQ(s.disks.size(), 2u);
  EXPECT_EQ(s.disks[0].target, "vda");
  EXPECT_EQ(s.disks[0].read_bytes, 4096u);
  EXPECT_EQ(s.disks[0].write_bytes, 512u);
  EXPECT_EQ(s.disks[0].read_requests, 10u);
  EXPECT_EQ(s.disks[0].write_requests, 5u);
  EXPECT_EQ(s.disks[1].target, "vdb");
  EXPECT_EQ(s.disks[1].read_bytes, 7u);
  EXPECT_FALSE(s.disks[1].write_bytes.has_value());  // not reported: absent, not 0
}

TEST(DomainStatsTest, StoppedDomainHasOnlyItsState) {
  Record r;
  r.Int("state.state", VIR_DOMAIN_SHUTOFF).Int("state.reason", 1).UInt("block.count", 0).UInt("net.count", 0);
  DomainStats s = r.Parse();
  EXPECT_EQ(s.state, DomainState::kShutoff);
  EXPECT_FALSE(s.cpu_time_ns.has_value());
  EXPECT_FALSE(s.vcpus.has_value());
  EXPECT_FALSE(s.balloon_current_kib.has_value());
  EXPECT_TRUE(s.disks.empty());
  EXPECT_TRUE(s.nics.empty());
}

TEST(DomainStatsTest, CountsMayComeAfterTheirEntries) {
  Record r;
  r.Str("block.0.name", "xvda").ULL("block.0.wr.bytes", 9).UInt("block.count", 1);
  DomainStats s = r.Parse();
  ASSERT_EQ(s.disks.size(), 1u);
  EXPECT_EQ(s.disks[0].target, "xvda");
  EXPECT_EQ(s.disks[0].write_bytes, 9u);
}

TEST(DomainStatsTest, MalformedEntriesAreSkippedNotFatal) {
  Record r;
  r.UInt("block.count", 1);
  r.Str("block.0.name", "vda");
  r.ULL("block.5.rd.bytes", 1);        // index beyond block.count
  r.ULL("block.x.rd.bytes", 1);        // not a number
  r.Str("block.0.rd.bytes", "lots");   // wrong type
  r.Int("cpu.time", -5);               // negative counter
  r.ULL("net.0.rx.bytes", 3);          // no net.count at all
  r.Str("mystery.field", "?");
  DomainStats s = r.Parse();
  ASSERT_EQ(s.disks.size(), 1u);
  EXPECT_FALSE(s.disks[0].read_bytes.has_value());
  EXPECT_FALSE(s.cpu_time_ns.has_value());
  EXPECT_TRUE(s.nics.empty());
}

TEST(DomainStatsTest, HugeCountDoesNotAllocateWithoutBound) {
  Record r;
  r.ULL("block.count", 1ULL << 40);
  DomainStats s = r.Parse();
  EXPECT_LE(s.disks.size(), 4096u);
}

TEST(DomainStatsTest, EveryLibvirtStateMaps) {
  EXPECT_EQ(DomainStateFromLibvirt(VIR_DOMAIN_PAUSED), DomainState::kPaused);
  EXPECT_EQ(DomainStateFromLibvirt(VIR_DOMAIN_CRASHED), DomainState::kCrashed);
  EXPECT_EQ(DomainStateFromLibvirt(VIR_DOMAIN_PMSUSPENDED), DomainState::kPmSuspended);
  EXPECT_EQ(DomainStateFromLibvirt(99), DomainState::kUnknown);
}

// The per-domain fallback (drivers without virConnectGetAllDomainStats, such as libxl).
TEST(PerDomainStatsTest, InfoAndDeviceCountersMapAndMinusOneMeansAbsent) {
  PerDomainCalls calls;
  calls.info = virDomainInfo{.state = VIR_DOMAIN_RUNNING, .maxMem = 1048576, .memory = 524288,
                             .nrVirtCpu = 2, .cpuTime = 123456789};
  calls.id = 7;
  virDomainBlockStatsStruct disk{.rd_req = 10, .rd_bytes = 4096, .wr_req = -1, .wr_bytes = 8192, .errs = -1};
  calls.disks.emplace_back("xvda", disk);
  calls.disks.emplace_back("xvdb", std::nullopt);  // the call failed
  virDomainInterfaceStatsStruct nic{.rx_bytes = 100, .rx_packets = 2, .rx_errs = 0, .rx_drop = 0,
                                    .tx_bytes = -1, .tx_packets = 3, .tx_errs = 0, .tx_drop = 0};
  calls.nics.emplace_back("vif7.0", nic);

  DomainStats s = StatsFromPerDomainCalls("g1", "u-1", calls);
  EXPECT_EQ(s.name, "g1");
  EXPECT_EQ(s.uuid, "u-1");
  EXPECT_EQ(s.id, 7u);
  EXPECT_EQ(s.state, DomainState::kRunning);
  EXPECT_EQ(s.vcpus, 2u);
  EXPECT_EQ(s.cpu_time_ns, 123456789u);
  EXPECT_EQ(s.balloon_current_kib, 524288u);
  EXPECT_EQ(s.balloon_maximum_kib, 1048576u);
  EXPECT_FALSE(s.rss_kib.has_value());  // no per-domain call reports it
  ASSERT_EQ(s.disks.size(), 2u);
  EXPECT_EQ(s.disks[0].target, "xvda");
  EXPECT_EQ(s.disks[0].read_bytes, 4096u);
  EXPECT_EQ(s.disks[0].read_requests, 10u);
  EXPECT_EQ(s.disks[0].write_bytes, 8192u);
  EXPECT_FALSE(s.disks[0].write_requests.has_value());
  EXPECT_EQ(s.disks[1].target, "xvdb");
  EXPECT_FALSE(s.disks[1].read_bytes.has_value());
  ASSERT_EQ(s.nics.size(), 1u);
  EXPECT_EQ(s.nics[0].name, "vif7.0");
  EXPECT_EQ(s.nics[0].rx_bytes, 100u);
  EXPECT_EQ(s.nics[0].rx_packets, 2u);
  EXPECT_FALSE(s.nics[0].tx_bytes.has_value());
  EXPECT_EQ(s.nics[0].tx_packets, 3u);
}

TEST(PerDomainStatsTest, StoppedDomainReportsNoCpuTimeOrMemoryInUse) {
  PerDomainCalls calls;
  calls.info = virDomainInfo{.state = VIR_DOMAIN_SHUTOFF, .maxMem = 65536, .memory = 65536, .nrVirtCpu = 1,
                             .cpuTime = 0};
  DomainStats s = StatsFromPerDomainCalls("off", "u-2", calls);
  EXPECT_EQ(s.state, DomainState::kShutoff);
  EXPECT_FALSE(s.id.has_value());
  EXPECT_FALSE(s.cpu_time_ns.has_value());
  EXPECT_FALSE(s.balloon_current_kib.has_value());
  EXPECT_EQ(s.balloon_maximum_kib, 65536u);
  EXPECT_EQ(s.vcpus, 1u);
}

TEST(PerDomainStatsTest, NoInfoMeansUnknownStateAndNoFigures) {
  DomainStats s = StatsFromPerDomainCalls("x", "u-3", PerDomainCalls{});
  EXPECT_EQ(s.state, DomainState::kUnknown);
  EXPECT_FALSE(s.vcpus.has_value());
  EXPECT_FALSE(s.cpu_time_ns.has_value());
  EXPECT_FALSE(s.balloon_maximum_kib.has_value());
}

}  // namespace
}  // namespace hvagent::hv
