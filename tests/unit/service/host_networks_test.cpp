// HostNetworks and DomainService's use of it: the exact `ip` argv it runs, idempotency,
// ownership (the alias), removal when the last domain using a network goes, rollback, and the
// bad input that must leave the host alone. `ip` is a small in-memory model of the kernel's
// links behind the fake runner (the real one runs in tests/integration/host_networks).
#include <algorithm>
#include <map>
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_join.h"
#include "agent/service/domain_service.h"
#include "agent/service/host_networks.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_command_runner.h"
#include "tests/fakes/fake_hypervisor.h"

namespace hvagent::service {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::FakeClock;
using testing::FakeCommandRunner;
using testing::FakeHypervisor;
using Argv = std::vector<std::string>;

constexpr char kIp[] = "/usr/sbin/ip";

// The links of one host as `ip` shows and changes them.
class IpModel {
 public:
  struct Link {
    std::string alias;
    std::string master;
    std::string underlay;  // a VLAN's parent, a VXLAN's dev
    bool vxlan = false;
    std::string mtu = "1500";
    bool up = false;
    bool bridge = false;
  };
  std::map<std::string, Link> links;
  // A command whose argv joined by spaces contains this fails (exit 2).
  std::string fail_when;

  explicit IpModel(FakeCommandRunner& runner) {
    links["eth1"] = {};
    runner.Always({kIp}, [this](const storage::Command& c) { return Run(c.argv); });
  }

  absl::StatusOr<storage::CommandResult> Run(const Argv& a) {
    const std::string line = absl::StrJoin(a, " ");
    if (!fail_when.empty() && line.find(fail_when) != std::string::npos) {
      return FakeCommandRunner::Fail(2, "RTNETLINK answers: Operation not permitted");
    }
    // Reads: `ip -j -d link show {dev NAME | type bridge | master BRIDGE}`.
    if (a.size() == 7 && a[1] == "-j" && a[2] == "-d" && a[5] == "dev") {
      auto it = links.find(a[6]);
      if (it == links.end()) return FakeCommandRunner::Fail(1, "Device \"" + a[6] + "\" does not exist.");
      return FakeCommandRunner::Ok("[" + Json(it->first, it->second) + "]\n");
    }
    if (a.size() == 7 && a[1] == "-j" && a[2] == "-d" && (a[5] == "type" || a[5] == "master")) {
      std::vector<std::string> out;
      for (const auto& [name, l] : links) {
        if (a[5] == "type" ? l.bridge : l.master == a[6]) out.push_back(Json(name, l));
      }
      return FakeCommandRunner::Ok("[" + absl::StrJoin(out, ",") + "]\n");
    }
    if (a[1] == "link" && a[2] == "add") {
      const std::string name = *(std::find(a.begin(), a.end(), "name") + 1);
      if (links.count(name) != 0) return FakeCommandRunner::Fail(2, "RTNETLINK answers: File exists");
      links[name] = {};
      links[name].bridge = a.back() == "bridge";
      links[name].vxlan = std::find(a.begin(), a.end(), "vxlan") != a.end();
      for (const char* under : {"link", "dev"}) {
        if (auto u = std::find(a.begin() + 3, a.end(), under); u != a.end() && u + 1 != a.end()) {
          links[name].underlay = *(u + 1);
        }
      }
      return FakeCommandRunner::Ok();
    }
    if (a[1] == "link" && a[2] == "set" && a.size() >= 5) {
      auto it = links.find(a[4]);
      if (it == links.end()) return FakeCommandRunner::Fail(1, "Cannot find device");
      if (a[5] == "alias") it->second.alias = a[6];
      if (a[5] == "master") it->second.master = a[6];
      if (a[5] == "mtu") it->second.mtu = a[6];
      if (a[5] == "up") it->second.up = true;
      return FakeCommandRunner::Ok();
    }
    if (a[1] == "link" && a[2] == "del") {
      if (links.erase(a[4]) == 0) return FakeCommandRunner::Fail(1, "Cannot find device");
      for (auto& [name, l] : links) {
        if (l.master == a[4]) l.master.clear();  // the kernel frees a deleted bridge's ports
      }
      return FakeCommandRunner::Ok();
    }
    return absl::InternalError("IpModel: unknown command " + line);
  }

 private:
  // As `ip -j -d` shows a link: a VLAN's parent as "link", a VXLAN's dev inside linkinfo.
  static std::string Json(const std::string& name, const Link& l) {
    std::string j = "{\"ifindex\":3,\"ifname\":\"" + name + "\",\"mtu\":" + l.mtu;
    if (!l.alias.empty()) j += ",\"ifalias\":\"" + l.alias + "\"";
    if (l.vxlan) {
      j += ",\"linkinfo\":{\"info_kind\":\"vxlan\",\"info_data\":{\"link\":\"" + l.underlay + "\"}}";
    } else if (!l.underlay.empty()) {
      j += ",\"link\":\"" + l.underlay + "\"";
    }
    return j + "}";
  }
};

hv::HostNetwork Vlan(uint32_t id, std::string physical = "eth1") {
  return {hv::HostNetwork::Kind::kVlan, std::move(physical), id};
}
hv::HostNetwork Vxlan(uint32_t id, std::string physical = "eth1") {
  return {hv::HostNetwork::Kind::kVxlan, std::move(physical), id};
}

// Only the commands that change something (not the `-j ... show` reads).
std::vector<Argv> Changes(const FakeCommandRunner& runner) {
  std::vector<Argv> out;
  for (const auto& a : runner.calls()) {
    if (a.size() > 1 && a[1] != "-j") out.push_back(a);
  }
  return out;
}

class HostNetworksTest : public ::testing::Test {
 protected:
  FakeCommandRunner runner_;
  IpModel ip_{runner_};
  HostNetworks nets_{runner_, {.physical_interfaces = {"eth1"}, .mtu = 9000}};
};

TEST_F(HostNetworksTest, Ensure_VlanRunsExactlyTheseIpCommands) {
  auto made = nets_.Ensure("nic", Vlan(100));
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_TRUE(*made);
  EXPECT_THAT(Changes(runner_),
              ElementsAre(Argv{kIp, "link", "add", "name", "brvlan100", "type", "bridge"},
                          Argv{kIp, "link", "set", "dev", "brvlan100", "alias", "hvagent-managed"},
                          Argv{kIp, "link", "add", "link", "eth1", "name", "eth1.100", "type", "vlan", "id", "100"},
                          Argv{kIp, "link", "set", "dev", "eth1.100", "alias", "hvagent-managed"},
                          Argv{kIp, "link", "set", "dev", "eth1.100", "mtu", "9000"},
                          Argv{kIp, "link", "set", "dev", "brvlan100", "mtu", "9000"},
                          Argv{kIp, "link", "set", "dev", "eth1.100", "master", "brvlan100"},
                          Argv{kIp, "link", "set", "dev", "eth1.100", "up"},
                          Argv{kIp, "link", "set", "dev", "brvlan100", "up"}));
  EXPECT_EQ(ip_.links["eth1.100"].master, "brvlan100");
  EXPECT_TRUE(ip_.links["brvlan100"].up);
}

TEST_F(HostNetworksTest, Ensure_VxlanUsesTheVniGroupOnThePhysicalInterface) {
  ASSERT_TRUE(nets_.Ensure("nic", Vxlan(5000)).ok());
  const auto changes = Changes(runner_);
  ASSERT_GE(changes.size(), 3u);
  // 5000 = 0x001388: group 239.0.19.136.
  EXPECT_EQ(changes[2], (Argv{kIp, "link", "add", "name", "vxlan5000", "type", "vxlan", "id", "5000", "group",
                              "239.0.19.136", "dev", "eth1", "dstport", "4789"}));
  EXPECT_EQ(ip_.links["vxlan5000"].master, "brvx5000");
}

TEST_F(HostNetworksTest, Ensure_IsIdempotentAndMakesNothingTheSecondTime) {
  ASSERT_TRUE(nets_.Ensure("nic", Vlan(100)).ok());
  const size_t links = ip_.links.size();
  const size_t before = Changes(runner_).size();
  auto again = nets_.Ensure("nic", Vlan(100));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(*again);
  EXPECT_EQ(ip_.links.size(), links);
  for (size_t i = before; i < Changes(runner_).size(); ++i) {
    EXPECT_NE(Changes(runner_)[i][2], "add") << absl::StrJoin(Changes(runner_)[i], " ");
  }
}

TEST_F(HostNetworksTest, Ensure_RefusesABridgeItDidNotMakeAndTouchesNothing) {
  ip_.links["brvlan100"] = {};  // an operator's own
  auto made = nets_.Ensure("spec.nics[0]", Vlan(100));
  EXPECT_EQ(made.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(made.status().message(), HasSubstr("spec.nics[0]"));
  EXPECT_THAT(made.status().message(), HasSubstr("brvlan100"));
  EXPECT_TRUE(Changes(runner_).empty());
}

// Bridges and VXLAN uplinks are named by the id alone: the same id over a second physical
// interface would bridge two physical networks' VLAN 100 together, or ride the first's underlay.
TEST_F(HostNetworksTest, Ensure_TheSameIdOverAnotherPhysicalInterfaceIsRefusedAndJoinsNothing) {
  HostNetworks two{runner_, {.physical_interfaces = {"eth1", "eth2"}}};
  ip_.links["eth2"] = {};
  ASSERT_TRUE(two.Ensure("nic", Vlan(100)).ok());
  ASSERT_TRUE(two.Ensure("nic", Vxlan(5000)).ok());
  const size_t before = Changes(runner_).size();
  auto vlan = two.Ensure("spec.nics[1]", Vlan(100, "eth2"));
  EXPECT_EQ(vlan.status().code(), absl::StatusCode::kFailedPrecondition) << vlan.status();
  EXPECT_THAT(vlan.status().message(),
              HasSubstr("spec.nics[1].vlan.physical: VLAN 100 is this host's network brvlan100 over eth1.100 already"));
  auto vx = two.Ensure("nic", Vxlan(5000, "eth2"));
  EXPECT_EQ(vx.status().code(), absl::StatusCode::kFailedPrecondition) << vx.status();
  EXPECT_THAT(vx.status().message(),
              HasSubstr("nic.vxlan.physical: VNI 5000 is this host's network brvx5000 over vxlan5000 on eth1 already"));
  EXPECT_EQ(Changes(runner_).size(), before);  // nothing made, nothing joined
  EXPECT_EQ(ip_.links.count("eth2.100"), 0u);
  // The same ids over their own interface again, and other ids over eth2, are fine.
  EXPECT_TRUE(two.Ensure("nic", Vlan(100)).ok());
  EXPECT_TRUE(two.Ensure("nic", Vxlan(5000)).ok());
  auto other = two.Ensure("nic", Vlan(200, "eth2"));
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(ip_.links["eth2.200"].master, "brvlan200");
}

TEST_F(HostNetworksTest, Ensure_FailureLeavesNothingBehind) {
  ip_.fail_when = "master";
  EXPECT_FALSE(nets_.Ensure("nic", Vxlan(42)).ok());
  EXPECT_EQ(ip_.links.count("vxlan42"), 0u);
  EXPECT_EQ(ip_.links.count("brvx42"), 0u);
  EXPECT_EQ(ip_.links.size(), 1u);  // eth1 only
}

TEST_F(HostNetworksTest, BridgeFor_PhysicalNotConfiguredIsPermissionDeniedNamingTheField) {
  auto b = nets_.BridgeFor("spec.nics[1]", Vlan(100, "eth9"));
  EXPECT_EQ(b.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(b.status().message(), HasSubstr("spec.nics[1].vlan.physical"));
  EXPECT_THAT(b.status().message(), HasSubstr("eth1"));
  EXPECT_EQ(nets_.BridgeFor("nic", Vxlan(7)).value(), "brvx7");
}

TEST_F(HostNetworksTest, RemoveIfOwned_KeepsABridgeWithAForeignPortAndOneItDidNotMake) {
  ASSERT_TRUE(nets_.Ensure("nic", Vlan(100)).ok());
  ip_.links["vnet9"] = {.master = "brvlan100"};  // a foreign guest's tap
  ASSERT_TRUE(nets_.RemoveIfOwned("brvlan100").ok());
  EXPECT_EQ(ip_.links.count("brvlan100"), 1u);
  ip_.links["br0"] = {};
  ASSERT_TRUE(nets_.RemoveIfOwned("br0").ok());
  EXPECT_EQ(ip_.links.count("br0"), 1u);
  ip_.links.erase("vnet9");
  ASSERT_TRUE(nets_.RemoveIfOwned("brvlan100").ok());
  EXPECT_EQ(ip_.links.count("brvlan100"), 0u);
  EXPECT_EQ(ip_.links.count("eth1.100"), 0u);
  EXPECT_EQ(ip_.links.count("eth1"), 1u);
}

// DomainService: the domains' definitions are the reference count.
class DomainHostNetworksTest : public HostNetworksTest {
 protected:
  static hv::DomainSpec Spec(const std::string& name, std::vector<hv::HostNetwork> nets) {
    hv::DomainSpec s;
    s.name = name;
    s.vcpus = 1;
    s.memory_mib = 256;
    for (auto& n : nets) {
      hv::NicSpec nic;
      nic.host_network = n;
      s.nics.push_back(nic);
    }
    return s;
  }
  FakeHypervisor hv_;
  FakeClock clock_;
  DomainService svc_{hv_, clock_, {.networks = {.bridges = std::vector<std::string>{"br0"}}, .host_networks = &nets_}};
};

TEST_F(DomainHostNetworksTest, Create_AttachesTheGuestToTheAgentsBridge) {
  ASSERT_TRUE(svc_.Create(Spec("a", {Vlan(100)}), false).ok());
  auto nics = hv_.GetDomainNics("a");
  ASSERT_TRUE(nics.ok());
  ASSERT_EQ(nics->size(), 1u);
  EXPECT_EQ((*nics)[0].bridge, "brvlan100");  // not in `bridges`, yet allowed: the agent's own
  EXPECT_EQ(ip_.links["eth1.100"].master, "brvlan100");
}

TEST_F(DomainHostNetworksTest, Delete_RemovesTheNetworkOnlyWithItsLastDomain) {
  ASSERT_TRUE(svc_.Create(Spec("a", {Vlan(100)}), false).ok());
  ASSERT_TRUE(svc_.Create(Spec("b", {Vlan(100)}), false).ok());
  ASSERT_TRUE(svc_.Delete("a", false).ok());
  EXPECT_EQ(ip_.links.count("brvlan100"), 1u) << "b still uses it";
  ASSERT_TRUE(svc_.Delete("b", false).ok());
  EXPECT_EQ(ip_.links.count("brvlan100"), 0u);
  EXPECT_EQ(ip_.links.count("eth1.100"), 0u);
}

TEST_F(DomainHostNetworksTest, Delete_CountsAForeignDomainOnTheBridge) {
  ASSERT_TRUE(svc_.Create(Spec("a", {Vxlan(42)}), false).ok());
  // Defined behind the agent's back (virsh), on the agent's bridge: it counts as a user.
  hv::DomainSpec foreign = Spec("foreign", {});
  hv::NicSpec nic;
  nic.bridge = "brvx42";
  foreign.nics.push_back(nic);
  ASSERT_TRUE(hv_.DefineDomain(foreign).ok());
  ASSERT_TRUE(svc_.Delete("a", false).ok());
  EXPECT_EQ(ip_.links.count("brvx42"), 1u);
}

TEST_F(DomainHostNetworksTest, Create_DefineFailureRemovesTheNetworkItMade) {
  ASSERT_TRUE(svc_.Create(Spec("a", {Vlan(100)}), false).ok());
  hv_.fail_define = absl::InternalError("libvirt says no");
  EXPECT_FALSE(svc_.Create(Spec("b", {Vlan(100), Vxlan(7)}), false).ok());
  EXPECT_EQ(ip_.links.count("brvx7"), 0u) << "made for b: undone";
  EXPECT_EQ(ip_.links.count("vxlan7"), 0u);
  EXPECT_EQ(ip_.links.count("brvlan100"), 1u) << "a's: kept";
}

TEST_F(DomainHostNetworksTest, Create_StartFailureRemovesTheNetworkItMade) {
  hv_.fail_start = absl::InternalError("qemu died");
  EXPECT_FALSE(svc_.Create(Spec("a", {Vxlan(7)}), true).ok());
  EXPECT_EQ(ip_.links.count("brvx7"), 0u);
  EXPECT_FALSE(hv_.GetDomain("a").ok());
}

TEST_F(DomainHostNetworksTest, Create_BadInputNamesTheFieldAndRunsNoIp) {
  struct Case {
    hv::HostNetwork net;
    absl::StatusCode code;
    const char* field;
  };
  const Case cases[] = {
      {Vlan(0), absl::StatusCode::kInvalidArgument, "spec.nics[0].vlan.id"},
      {Vlan(4095), absl::StatusCode::kInvalidArgument, "spec.nics[0].vlan.id"},
      {Vlan(5000), absl::StatusCode::kInvalidArgument, "spec.nics[0].vlan.id"},
      {Vxlan(0), absl::StatusCode::kInvalidArgument, "spec.nics[0].vxlan.id"},
      {Vxlan(16777216), absl::StatusCode::kInvalidArgument, "spec.nics[0].vxlan.id"},
      {Vlan(10, "eth1;reboot"), absl::StatusCode::kInvalidArgument, "spec.nics[0].vlan.physical"},
      {Vlan(10, "../eth1"), absl::StatusCode::kInvalidArgument, "spec.nics[0].vlan.physical"},
      {Vlan(10, "eth 1"), absl::StatusCode::kInvalidArgument, "spec.nics[0].vlan.physical"},
      {Vxlan(10, "abcdefghijklmnop"), absl::StatusCode::kInvalidArgument, "spec.nics[0].vxlan.physical"},
      {Vlan(1000, "enp129s0f1np1"), absl::StatusCode::kInvalidArgument, "spec.nics[0].vlan.physical"},
      {Vlan(10, "eth2"), absl::StatusCode::kPermissionDenied, "spec.nics[0].vlan.physical"},
  };
  for (const Case& c : cases) {
    auto r = svc_.Create(Spec("bad", {c.net}), false);
    EXPECT_EQ(r.status().code(), c.code) << c.field << " " << c.net.physical << " " << c.net.id;
    EXPECT_THAT(r.status().message(), HasSubstr(c.field));
  }
  hv::DomainSpec mtu = Spec("bad", {Vlan(10)});
  mtu.nics[0].mtu = 100;
  EXPECT_THAT(svc_.Create(mtu, false).status().message(), HasSubstr("spec.nics[0].mtu"));
  mtu.nics[0].mtu = 100000;
  EXPECT_THAT(svc_.Create(mtu, false).status().message(), HasSubstr("spec.nics[0].mtu"));
  EXPECT_TRUE(runner_.calls().empty());
  EXPECT_EQ(ip_.links.size(), 1u);
}

TEST_F(DomainHostNetworksTest, AttachAndDetachNic_MakeAndRemoveTheNetwork) {
  ASSERT_TRUE(svc_.Create(Spec("a", {}), false).ok());
  hv::NicSpec nic;
  nic.host_network = Vxlan(77);
  auto attached = svc_.AttachNic("a", nic);
  ASSERT_TRUE(attached.ok()) << attached.status();
  EXPECT_EQ(attached->bridge, "brvx77");
  EXPECT_EQ(ip_.links.count("vxlan77"), 1u);
  ASSERT_TRUE(svc_.DetachNic("a", attached->mac).ok());
  EXPECT_EQ(ip_.links.count("brvx77"), 0u);
  EXPECT_EQ(ip_.links.count("vxlan77"), 0u);
}

TEST_F(DomainHostNetworksTest, AttachNic_HypervisorFailureRemovesTheNetwork) {
  ASSERT_TRUE(svc_.Create(Spec("a", {}), false).ok());
  hv_.fail_attach = absl::InternalError("no");
  hv::NicSpec nic;
  nic.host_network = Vlan(12);
  EXPECT_FALSE(svc_.AttachNic("a", nic).ok());
  EXPECT_EQ(ip_.links.size(), 1u);
}

TEST_F(DomainHostNetworksTest, Recover_RemovesTheAgentsNetworksNoDomainUses) {
  ASSERT_TRUE(svc_.Create(Spec("a", {Vlan(100)}), false).ok());
  ASSERT_TRUE(nets_.Ensure("nic", Vxlan(9)).ok());  // as a crash before the define leaves it
  ip_.links["br0"] = {.bridge = true};               // the operator's: never the agent's to remove
  svc_.Recover();
  EXPECT_EQ(ip_.links.count("brvx9"), 0u);
  EXPECT_EQ(ip_.links.count("vxlan9"), 0u);
  EXPECT_EQ(ip_.links.count("brvlan100"), 1u) << "domain a uses it";
  EXPECT_EQ(ip_.links.count("br0"), 1u);
}

TEST(HostNetworksNoAgentNetworks, VlanNicIsPermissionDeniedWithoutHostNetworks) {
  FakeHypervisor hv;
  FakeClock clock;
  DomainService svc{hv, clock, {}};
  hv::DomainSpec s;
  s.name = "a";
  s.vcpus = 1;
  s.memory_mib = 256;
  hv::NicSpec nic;
  nic.host_network = Vlan(100);
  s.nics.push_back(nic);
  auto r = svc.Create(s, false);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(r.status().message(), HasSubstr("spec.nics[0].vlan"));
}

}  // namespace
}  // namespace hvagent::service
