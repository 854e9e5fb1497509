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

// A domain of one vCPU and 256 MiB; each test adds its NICs.
DomainSpec Web1() {
  DomainSpec s;
  s.name = "web1";
  s.vcpus = 1;
  s.memory_mib = 256;
  return s;
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
  DomainSpec s = Web1();
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

TEST(NicSpecTest, TargetDevIsATapNameOnly) {
  NicSpec n = Ovs();
  for (const std::string good : {"tap3f2a9c1e-5b", "tapX", "tap_a-1234567b"}) {
    n.target_dev = good;
    EXPECT_TRUE(ValidateNicSpec("nic", n).ok()) << good;
  }
  // libvirt's own names, other kinds of interface, too long, path or shell characters.
  for (const std::string bad : {"tap", "vnet0", "vif3.0", "eth0", "br-int", "tap3f2a9c1e-5b7d", "tap.1",
                                "tap/x", "tap x", "tap;id", "TAPx", "macvtap0", "tap\n"}) {
    n.target_dev = bad;
    ExpectRefused(n, "nic.target_dev");
  }
}

TEST(NicSpecTest, TwoNicsWithOneTapNameAreRefusedDefaultsIncluded) {
  DomainSpec s = Web1();
  s.nics.push_back(Ovs());
  NicSpec same_port = Ovs();  // the same port id's first 11 characters: the same default name
  same_port.mac = "52:54:00:aa:bb:02";
  same_port.interface_id = "3f2a9c1e-5bff-4e8f-9a0b-1c2d3e4f5a6b";
  s.nics.push_back(same_port);
  absl::Status st = ValidateDomainSpec(s);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("spec.nics[1].target_dev: 'tap3f2a9c1e-5b' is used twice"));
  s.nics[1].target_dev = "tapsecond";
  EXPECT_TRUE(ValidateDomainSpec(s).ok()) << ValidateDomainSpec(s);
}

TEST(NicSpecTest, OvsPortsTapIsNamedByItsPortAsNovaNamesItAndAGivenNameWins) {
  // Stable across starts, so Neutron's OVS agent matches the tap's removal and return by name.
  auto ovs = DomainXmlBuilder::BuildNic(Ovs(), kQemuX86);
  ASSERT_TRUE(ovs.ok()) << ovs.status();
  EXPECT_EQ(Xml(*ovs).Get("/interface/target/@dev"), "tap3f2a9c1e-5b");
  NicSpec named = Ovs();
  named.target_dev = "tapmine";
  auto x = DomainXmlBuilder::BuildNic(named, kQemuX86);
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(Xml(*x).Get("/interface/target/@dev"), "tapmine");
  // A Linux bridge NIC without a name: libvirt's vnetN, no <target>.
  NicSpec bridge;
  bridge.bridge = "br0";
  auto b = DomainXmlBuilder::BuildNic(bridge, kQemuX86);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(Xml(*b).Count("/interface/target"), 0);
  bridge.target_dev = "tap1234";
  b = DomainXmlBuilder::BuildNic(bridge, kQemuX86);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(Xml(*b).Get("/interface/target/@dev"), "tap1234");
}

TEST(NicSpecTest, InvalidNicNeverProducesXml) {
  EXPECT_EQ(DomainXmlBuilder::BuildNic(Ovs(0), kQemuX86).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NicSpecTest, NicsReadBackFromDomainXml) {
  DomainSpec s = Web1();
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
  EXPECT_EQ(a.target_dev, "tap3f2a9c1e-5b");
  EXPECT_TRUE(a.bridge.empty());
  const NicSpec& b = (*nics)[1].spec;
  EXPECT_EQ(b.bridge, "br0");
  EXPECT_FALSE(b.vlan.has_value());
  EXPECT_EQ(b.target_dev, "");
  // The element itself, for libvirt to find the device by on detach.
  EXPECT_THAT((*nics)[1].xml, HasSubstr("52:54:00:aa:bb:02"));
  EXPECT_THAT((*nics)[1].xml, HasSubstr("<interface"));
}


// A running QEMU guest's XML as libvirt writes it (trimmed to what matters): the four kinds of
// interface, each with the tap libvirt made for it, and the agent's labels.
constexpr char kLiveXml[] = R"(<domain type='qemu' id='7'>
  <name>web1</name>
  <metadata>
    <hvagent:labels xmlns:hvagent="urn:hvagent:labels:1">
      <hvagent:label key="team" value="web"/>
    </hvagent:labels>
  </metadata>
  <devices>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:01'/>
      <source bridge='br0'/>
      <target dev='vnet0'/>
      <model type='virtio'/>
      <alias name='net0'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:02'/>
      <source network='default' portid='0c7b2bd5-4f4a-4b3e-9d7d-0e4b2f7a1c11' bridge='virbr0'/>
      <target dev='vnet1'/>
      <model type='e1000'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:03'/>
      <source bridge='br-int'/>
      <vlan>
        <tag id='42'/>
      </vlan>
      <virtualport type='openvswitch'>
        <parameters interfaceid='3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b' profileid=''/>
      </virtualport>
      <target dev='vnet2'/>
      <model type='virtio'/>
      <mtu size='1450'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:aa:bb:04'/>
      <model type='rtl8139'/>
    </interface>
  </devices>
</domain>)";

TEST(DomainFactsTest, RunningGuestsNicsCarryTheirKindVlanPortIdAndTap) {
  auto facts = ParseDomainFacts(kLiveXml);
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_EQ(facts->labels, (std::map<std::string, std::string>{{"team", "web"}}));
  ASSERT_EQ(facts->nics.size(), 4u);
  const NicInfo& bridge = facts->nics[0];
  EXPECT_EQ(bridge.spec.mac, "52:54:00:aa:bb:01");
  EXPECT_EQ(bridge.spec.bridge, "br0");
  EXPECT_EQ(bridge.spec.model, "virtio");
  EXPECT_EQ(bridge.host_device, "vnet0");
  EXPECT_EQ(bridge.spec.target_dev, "");  // libvirt's generated name is the guest's, not the spec's
  const NicInfo& network = facts->nics[1];
  EXPECT_EQ(network.spec.network, "default");
  EXPECT_TRUE(network.spec.bridge.empty());  // libvirt's bridge of the network is not the NIC's
  EXPECT_EQ(network.spec.model, "e1000");
  EXPECT_EQ(network.host_device, "vnet1");
  const NicInfo& ovs = facts->nics[2];
  EXPECT_EQ(ovs.spec.ovs_bridge, "br-int");
  EXPECT_EQ(ovs.spec.interface_id, kPort);
  EXPECT_EQ(ovs.spec.vlan, std::optional<uint32_t>(42));
  EXPECT_EQ(ovs.spec.mtu, 1450u);
  EXPECT_EQ(ovs.host_device, "vnet2");
  const NicInfo& user = facts->nics[3];  // a kind the agent does not make: MAC and model only
  EXPECT_EQ(user.spec.mac, "52:54:00:aa:bb:04");
  EXPECT_EQ(user.spec.model, "rtl8139");
  EXPECT_TRUE(user.spec.bridge.empty() && user.spec.network.empty() && user.spec.ovs_bridge.empty());
  EXPECT_TRUE(user.host_device.empty());
}

TEST(DomainFactsTest, ADefinitionHasNoHostDevices) {
  DomainSpec s = Web1();
  s.nics.push_back(Ovs(std::nullopt));
  NicSpec net;
  net.mac = "52:54:00:aa:bb:05";
  net.network = "default";
  s.nics.push_back(net);
  auto xml = DomainXmlBuilder::Build(s, kQemuX86);
  ASSERT_TRUE(xml.ok()) << xml.status();
  auto facts = ParseDomainFacts(*xml);
  ASSERT_TRUE(facts.ok()) << facts.status();
  ASSERT_EQ(facts->nics.size(), 2u);
  EXPECT_EQ(facts->nics[0].spec.interface_id, kPort);
  EXPECT_FALSE(facts->nics[0].spec.vlan.has_value());  // no tag set: none read
  EXPECT_EQ(facts->nics[1].spec.network, "default");
  for (const NicInfo& n : facts->nics) EXPECT_EQ(n.host_device, "") << n.spec.mac;
  EXPECT_TRUE(facts->labels.empty());
}

TEST(DomainFactsTest, XmlThatIsNotXmlIsAnError) {
  EXPECT_FALSE(ParseDomainFacts("<domain><devices>").ok());
}

}  // namespace
}  // namespace hvagent::hv
