// DomainService's NIC rules: which bridges a NIC may join ([network] policy), at creation and on
// hotplug, MAC generation, and detaching by MAC. The hypervisor is the in-memory fake.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/service/domain_service.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"

namespace hvagent::service {
namespace {

using ::testing::HasSubstr;
using testing::FakeClock;
using testing::FakeHypervisor;

constexpr char kPort[] = "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b";

hv::NicSpec Ovs(const std::string& bridge, uint32_t vlan = 100) {
  hv::NicSpec n;
  n.ovs_bridge = bridge;
  n.interface_id = kPort;
  n.vlan = vlan;
  return n;
}

hv::NicSpec LinuxBridge(const std::string& name) {
  hv::NicSpec n;
  n.bridge = name;
  return n;
}

class DomainNicsTest : public ::testing::Test {
 protected:
  DomainNicsTest() {
    hv::DomainSpec s;
    s.name = "web1";
    s.vcpus = 1;
    s.memory_mib = 256;
    EXPECT_TRUE(svc_.Create(s, true).ok());
    hv_.calls.clear();
  }
  FakeHypervisor hv_;
  FakeClock clock_;
  DomainService svc_{hv_, clock_, {.networks = {.bridges = std::vector<std::string>{"br0"}, .ovs_bridges = {"br-int"}}}};
};

TEST_F(DomainNicsTest, AttachNic_GeneratesALocallyAdministeredUnicastMac) {
  auto a = svc_.AttachNic("web1", Ovs("br-int"));
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->mac.size(), 17u);
  const int first = std::stoi(a->mac.substr(0, 2), nullptr, 16);
  EXPECT_EQ(first & 0x02, 0x02) << a->mac;  // locally administered
  EXPECT_EQ(first & 0x01, 0x00) << a->mac;  // unicast
  hv::NicSpec other = Ovs("br-int");
  other.interface_id = "5b1e0c2d-3a4f-4e6b-8c7d-9e0f1a2b3c4d";
  auto b = svc_.AttachNic("web1", other);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_NE(a->mac, b->mac);
  auto nics = hv_.GetDomainNics("web1");
  ASSERT_TRUE(nics.ok());
  ASSERT_EQ(nics->size(), 2u);
  EXPECT_EQ((*nics)[0].interface_id, kPort);
  EXPECT_EQ((*nics)[0].vlan, std::optional<uint32_t>(100));
}

TEST_F(DomainNicsTest, AttachNic_KeepsAGivenMacAndRefusesItTwice) {
  hv::NicSpec n = Ovs("br-int");
  n.mac = "52:54:00:12:34:56";
  auto a = svc_.AttachNic("web1", n);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->mac, "52:54:00:12:34:56");
  n.mac = "52:54:00:12:34:56";
  EXPECT_EQ(svc_.AttachNic("web1", n).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(DomainNicsTest, AttachNic_RefusesATapNameTheDomainUsesAlready) {
  // The same Neutron port twice: both would be named tap3f2a9c1e-5b (Nova's devname).
  ASSERT_TRUE(svc_.AttachNic("web1", Ovs("br-int")).ok());
  hv_.calls.clear();
  auto again = svc_.AttachNic("web1", Ovs("br-int"));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();
  EXPECT_THAT(std::string(again.status().message()), HasSubstr("nic.target_dev: 'tap3f2a9c1e-5b'"));
  // A bridge NIC given that name explicitly collides too; another name does not.
  hv::NicSpec b = LinuxBridge("br0");
  b.target_dev = "tap3f2a9c1e-5b";
  EXPECT_EQ(svc_.AttachNic("web1", b).status().code(), absl::StatusCode::kAlreadyExists);
  for (const std::string& c : hv_.calls) EXPECT_NE(c.rfind("attach-nic", 0), 0u) << c;  // never reached it
  b.target_dev = "tapother";
  auto ok = svc_.AttachNic("web1", b);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->target_dev, "tapother");
}

TEST_F(DomainNicsTest, AttachNic_BridgeNotAllowedIsPermissionDeniedNamingTheFieldAndTouchesNothing) {
  auto ovs = svc_.AttachNic("web1", Ovs("br-ex"));
  EXPECT_EQ(ovs.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(ovs.status().message(), HasSubstr("nic.ovs.bridge"));
  EXPECT_THAT(ovs.status().message(), HasSubstr("br-int"));
  auto linux_bridge = svc_.AttachNic("web1", LinuxBridge("br1"));
  EXPECT_EQ(linux_bridge.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(linux_bridge.status().message(), HasSubstr("nic.bridge"));
  // An OVS bridge is not a Linux bridge: each list allows its own kind only.
  EXPECT_EQ(svc_.AttachNic("web1", LinuxBridge("br-int")).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(hv_.calls.empty());
}

TEST_F(DomainNicsTest, AttachNic_BadInputIsInvalidArgumentBeforeTheHypervisor) {
  EXPECT_EQ(svc_.AttachNic("web1", Ovs("br-int", 4095)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(svc_.AttachNic("web1", Ovs("br;x")).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(svc_.AttachNic("we/b1", Ovs("br-int")).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(hv_.calls.empty());
}

TEST_F(DomainNicsTest, AttachNic_UnknownDomainIsNotFound) {
  EXPECT_EQ(svc_.AttachNic("ghost", Ovs("br-int")).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(DomainNicsTest, DetachNic_RemovesByMacAndUnknownMacIsNotFound) {
  auto a = svc_.AttachNic("web1", Ovs("br-int"));
  ASSERT_TRUE(a.ok());
  auto missing = svc_.DetachNic("web1", "52:54:00:00:00:99");
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(svc_.DetachNic("web1", a->mac).ok());
  EXPECT_TRUE(hv_.GetDomainNics("web1")->empty());
  EXPECT_EQ(svc_.DetachNic("web1", "not-a-mac").code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(DomainNicsTest, Create_NicOnABridgeNotAllowedIsRefusedBeforeDefine) {
  hv::DomainSpec s;
  s.name = "web2";
  s.vcpus = 1;
  s.memory_mib = 256;
  s.nics.push_back(LinuxBridge("br0"));
  s.nics.push_back(Ovs("br-ex"));
  auto d = svc_.Create(s, false);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(d.status().message(), HasSubstr("spec.nics[1].ovs.bridge"));
  EXPECT_TRUE(hv_.calls.empty());
}

TEST(DomainNicsPolicyTest, WithoutNetworkConfigAnyLinuxBridgeButNoOvsBridge) {
  FakeHypervisor hv;
  FakeClock clock;
  DomainService svc(hv, clock, {});
  hv::DomainSpec s;
  s.name = "web1";
  s.vcpus = 1;
  s.memory_mib = 256;
  s.nics.push_back(LinuxBridge("cloudbr0"));
  ASSERT_TRUE(svc.Create(s, false).ok());
  EXPECT_EQ(svc.AttachNic("web1", Ovs("br-int")).status().code(), absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace hvagent::service
