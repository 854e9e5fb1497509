// NIC kinds (Linux bridge, Open vSwitch port, libvirt network), MTU and VLAN: the validator's
// rules with the field each refusal names, the XML libvirt is given, and reading it back.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "hypervisor/domain_spec_validator.h"
#include "hypervisor/domain_xml_builder.h"
#include "hypervisor/libvirt/domain_xml_reader.h"
#include "tests/unit/hypervisor/xml_test_util.h"

namespace hvagent::hv {
namespace {

using ::testing::HasSubstr;

const GuestTarget kQemuX86{"qemu", "hvm", "x86_64"};
constexpr char kPort[] = "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b";

NicSpec Ovs(std::optional<uint32_t> vlan = 100) {
  NicSpec n;
  n.mac = "52:54:00:aa:bb:01";
  n.ovs_bridge = "br-int";
  n.interface_id = kPort;
  n.vlan = vlan;
  return n;
}

void ExpectRefused(const NicSpec& n, const std::string& field) {
  absl::Status s = ValidateNicSpec("nic", n);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(field + ":")) << s;
}

TEST(NicSpecTest, OvsPortWithVlanAndMtuIsAccepted) {
  NicSpec n = Ovs(4094);
  n.mtu = 9000;
  EXPECT_TRUE(ValidateNicSpec("nic", n).ok()) << ValidateNicSpec("nic", n);
  n.vlan = 1;
  n.mtu = 576;
  EXPECT_TRUE(ValidateNicSpec("nic", n).ok());
  n.vlan.reset();  // no tag: Neutron's agent sets it
  n.mtu = 65535;
  EXPECT_TRUE(ValidateNicSpec("nic", n).ok());
}

TEST(NicSpecTest, VlanOutsideOneTo4094IsRefused) {
  for (uint32_t bad : {0u, 4095u, 5000u}) ExpectRefused(Ovs(bad), "nic.ovs.vlan");
}

TEST(NicSpecTest, MtuOutside576To65535IsRefused) {
  for (uint32_t bad : {100u, 575u, 65536u, 100000u}) {
    NicSpec n = Ovs();
    n.mtu = bad;
    ExpectRefused(n, "nic.mtu");
  }
}

TEST(NicSpecTest, BridgeNamesWithShellPathOrControlCharactersOrOver15BytesAreRefused) {
  for (const std::string bad : {"br;reboot", "br/../x", "br 0", "br\t0", "br\n0", "$(id)", "br`x`",
                                "0123456789abcdef", "-br", "br\x01"}) {
    NicSpec ovs = Ovs();
    ovs.ovs_bridge = bad;
    ExpectRefused(ovs, "nic.ovs.bridge");
    NicSpec linux_bridge;
    linux_bridge.bridge = bad;
    ExpectRefused(linux_bridge, "nic.bridge");
  }
  NicSpec fifteen = Ovs();
  fifteen.ovs_bridge = "0123456789abcde";
  EXPECT_TRUE(ValidateNicSpec("nic", fifteen).ok());
}

TEST(NicSpecTest, OvsNeedsAUuidInterfaceIdAndOnlyOvsHasOne) {
  NicSpec n = Ovs();
  n.interface_id = "";
  ExpectRefused(n, "nic.ovs.interface_id");
  n.interface_id = "port-1";
  ExpectRefused(n, "nic.ovs.interface_id");
  n.interface_id = "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b;x";
  ExpectRefused(n, "nic.ovs.interface_id");
  NicSpec bridge;
  bridge.bridge = "br0";
  bridge.interface_id = kPort;
  ExpectRefused(bridge, "nic.ovs.interface_id");
  bridge.interface_id.clear();
  bridge.vlan = 100;
  ExpectRefused(bridge, "nic.ovs.vlan");
}

TEST(NicSpecTest, ExactlyOneAttachment) {
  NicSpec none;
  ExpectRefused(none, "nic");
  NicSpec two = Ovs();
  two.bridge = "br0";
  ExpectRefused(two, "nic");
}

TEST(NicSpecTest, DomainSpecNamesTheNicIndex) {
  DomainSpec s;
  s.name = "web1";
  s.vcpus = 1;
  s.memory_mib = 256;
  s.nics.push_back(Ovs());
  s.nics.push_back(Ovs(4095));
  s.nics[1].mac = "52:54:00:aa:bb:02";
  absl::Status st = ValidateDomainSpec(s);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("spec.nics[1].ovs.vlan"));
}

TEST(NicSpecTest, OvsPortXmlHasVirtualportVlanTagAndMtu) {
  NicSpec n = Ovs(100);
  n.mtu = 1400;
  n.model = "virtio";
  auto xml = DomainXmlBuilder::BuildNic(n, kQemuX86);
  ASSERT_TRUE(xml.ok()) << xml.status();
  Xml x(*xml);
  ASSERT_TRUE(x.ok()) << *xml;
  EXPECT_EQ(x.Get("/interface/@type"), "bridge");
  EXPECT_EQ(x.Get("/interface/source/@bridge"), "br-int");
  EXPECT_EQ(x.Get("/interface/virtualport/@type"), "openvswitch");
  EXPECT_EQ(x.Get("/interface/virtualport/parameters/@interfaceid"), kPort);
  EXPECT_EQ(x.Get("/interface/vlan/tag/@id"), "100");
  EXPECT_EQ(x.Count("/interface/vlan/tag"), 1);
  EXPECT_EQ(x.Get("/interface/mtu/@size"), "1400");
  EXPECT_EQ(x.Get("/interface/mac/@address"), "52:54:00:aa:bb:01");
}

TEST(NicSpecTest, UntaggedOvsPortAndLinuxBridgeHaveNoVlanElement) {
  auto ovs = DomainXmlBuilder::BuildNic(Ovs(std::nullopt), kQemuX86);
  ASSERT_TRUE(ovs.ok());
  Xml x(*ovs);
  EXPECT_EQ(x.Count("/interface/vlan"), 0);
  EXPECT_EQ(x.Count("/interface/mtu"), 0);
  NicSpec bridge;
  bridge.bridge = "br0";
  auto b = DomainXmlBuilder::BuildNic(bridge, kQemuX86);
  ASSERT_TRUE(b.ok());
  Xml y(*b);
  EXPECT_EQ(y.Get("/interface/source/@bridge"), "br0");
  EXPECT_EQ(y.Count("/interface/virtualport"), 0);
}

TEST(NicSpecTest, InvalidNicNeverProducesXml) {
  EXPECT_EQ(DomainXmlBuilder::BuildNic(Ovs(0), kQemuX86).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NicSpecTest, NicsReadBackFromDomainXml) {
  DomainSpec s;
  s.name = "web1";
  s.vcpus = 1;
  s.memory_mib = 256;
  NicSpec ovs = Ovs(200);
  ovs.mtu = 9000;
  s.nics.push_back(ovs);
  NicSpec bridge;
  bridge.mac = "52:54:00:aa:bb:02";
  bridge.bridge = "br0";
  s.nics.push_back(bridge);
  auto xml = DomainXmlBuilder::Build(s, kQemuX86);
  ASSERT_TRUE(xml.ok()) << xml.status();
  auto nics = ParseDomainNics(*xml);
  ASSERT_TRUE(nics.ok()) << nics.status();
  ASSERT_EQ(nics->size(), 2u);
  const NicSpec& a = (*nics)[0].spec;
  EXPECT_EQ(a.mac, "52:54:00:aa:bb:01");
  EXPECT_EQ(a.ovs_bridge, "br-int");
  EXPECT_EQ(a.interface_id, kPort);
  EXPECT_EQ(a.vlan, std::optional<uint32_t>(200));
  EXPECT_EQ(a.mtu, 9000u);
  EXPECT_TRUE(a.bridge.empty());
  const NicSpec& b = (*nics)[1].spec;
  EXPECT_EQ(b.bridge, "br0");
  EXPECT_FALSE(b.vlan.has_value());
  // The element itself, for libvirt to find the device by on detach.
  EXPECT_THAT((*nics)[1].xml, HasSubstr("52:54:00:aa:bb:02"));
  EXPECT_THAT((*nics)[1].xml, HasSubstr("<interface"));
}

}  // namespace
}  // namespace hvagent::hv
