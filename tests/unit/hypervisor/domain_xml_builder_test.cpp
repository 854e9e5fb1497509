#include "hypervisor/domain_xml_builder.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "hypervisor/domain_spec_validator.h"
#include "hypervisor/libvirt/domain_xml_reader.h"
#include "tests/unit/hypervisor/xml_test_util.h"

namespace hvagent::hv {
namespace {

using ::testing::HasSubstr;

const GuestTarget kQemuX86{"qemu", "hvm", "x86_64"};
const GuestTarget kXenArm{"xen", "xen", "aarch64"};
const GuestTarget kKvmArm{"kvm", "hvm", "aarch64"};

DomainSpec Base(const std::string& name = "web1") {
  DomainSpec s;
  s.name = name;
  s.vcpus = 2;
  s.memory_mib = 512;
  return s;
}

TEST(DomainXmlBuilderTest, QemuGuestWithFirmwareDiskNicAndConsole) {
  DomainSpec s = Base();
  s.uuid = "6695eb01-f6a4-8304-79aa-97f2502e193f";
  s.boot = FirmwareBoot{FirmwareType::kBios, ""};
  s.disks.push_back({"/var/lib/img/web1.raw", DiskType::kFile, "vda", "", false, ""});
  s.nics.push_back({"52:54:00:aa:bb:cc", "default", "", "virtio"});
  s.serial_console = true;
  auto xml = DomainXmlBuilder::Build(s, kQemuX86);
  ASSERT_TRUE(xml.ok()) << xml.status();
  Xml x(*xml);
  ASSERT_TRUE(x.ok()) << *xml;
  EXPECT_EQ(x.Get("/domain/@type"), "qemu");
  EXPECT_EQ(x.Get("/domain/name"), "web1");
  EXPECT_EQ(x.Get("/domain/uuid"), "6695eb01-f6a4-8304-79aa-97f2502e193f");
  EXPECT_EQ(x.Get("/domain/memory"), "512");
  EXPECT_EQ(x.Get("/domain/memory/@unit"), "MiB");
  EXPECT_EQ(x.Get("/domain/vcpu"), "2");
  EXPECT_EQ(x.Get("/domain/os/type"), "hvm");
  EXPECT_EQ(x.Get("/domain/os/type/@arch"), "x86_64");
  EXPECT_EQ(x.Get("/domain/os/boot/@dev"), "hd");
  EXPECT_EQ(x.Count("/domain/features/acpi"), 1);
  EXPECT_EQ(x.Get("/domain/devices/disk/@type"), "file");
  EXPECT_EQ(x.Get("/domain/devices/disk/driver/@type"), "raw");
  EXPECT_EQ(x.Get("/domain/devices/disk/source/@file"), "/var/lib/img/web1.raw");
  EXPECT_EQ(x.Get("/domain/devices/disk/target/@bus"), "virtio");
  EXPECT_EQ(x.Get("/domain/devices/interface/@type"), "network");
  EXPECT_EQ(x.Get("/domain/devices/interface/source/@network"), "default");
  EXPECT_EQ(x.Get("/domain/devices/interface/mac/@address"), "52:54:00:aa:bb:cc");
  EXPECT_EQ(x.Get("/domain/devices/console/target/@type"), "serial");
  EXPECT_EQ(x.Count("/domain/devices/serial"), 1);
}

TEST(DomainXmlBuilderTest, XenArmGuestBootsKernelWithPhyDiskAndXenConsole) {
  DomainSpec s = Base();
  s.boot = DirectKernelBoot{"/var/lib/hvagent/Image", "/var/lib/hvagent/initrd", "console=hvc0 root=/dev/xvda"};
  s.disks.push_back({"/dev/vg0/web1", DiskType::kBlock, "xvda", "", false, ""});
  s.nics.push_back({"", "", "xenbr0", ""});
  s.serial_console = true;
  auto xml = DomainXmlBuilder::Build(s, kXenArm);
  ASSERT_TRUE(xml.ok()) << xml.status();
  Xml x(*xml);
  EXPECT_EQ(x.Get("/domain/@type"), "xen");
  EXPECT_EQ(x.Get("/domain/os/type"), "xen");
  EXPECT_EQ(x.Count("/domain/os/type/@arch"), 0);  // see domain_xml_arm64_test.cpp
  EXPECT_EQ(x.Get("/domain/os/kernel"), "/var/lib/hvagent/Image");
  EXPECT_EQ(x.Get("/domain/os/initrd"), "/var/lib/hvagent/initrd");
  EXPECT_EQ(x.Get("/domain/os/cmdline"), "console=hvc0 root=/dev/xvda");
  EXPECT_EQ(x.Count("/domain/features"), 0);
  EXPECT_EQ(x.Get("/domain/devices/disk/@type"), "block");
  EXPECT_EQ(x.Get("/domain/devices/disk/driver/@name"), "phy");
  EXPECT_EQ(x.Get("/domain/devices/disk/source/@dev"), "/dev/vg0/web1");
  EXPECT_EQ(x.Get("/domain/devices/disk/target/@bus"), "xen");
  EXPECT_EQ(x.Get("/domain/devices/interface/source/@bridge"), "xenbr0");
  EXPECT_EQ(x.Get("/domain/devices/console/target/@type"), "xen");
  EXPECT_EQ(x.Count("/domain/devices/serial"), 0);
}

// A config drive on QEMU/KVM: a CD-ROM drive on an emulated bus, read-only, read back as one.
TEST(DomainXmlBuilderTest, CdromIsAReadOnlyDriveOnAnEmulatedBusAndReadsBack) {
  DomainSpec s = Base();
  s.disks.push_back({"/dev/vg0/web1", DiskType::kBlock, "vda", "", false, ""});
  DiskSpec cd{"/dev/vg0/web1-config", DiskType::kBlock, "hdd", "", false, ""};
  cd.cdrom = true;
  s.disks.push_back(cd);
  auto xml = DomainXmlBuilder::Build(s, kQemuX86);
  ASSERT_TRUE(xml.ok()) << xml.status();
  Xml x(*xml);
  EXPECT_EQ(x.Get("/domain/devices/disk[2]/@device"), "cdrom");
  EXPECT_EQ(x.Get("/domain/devices/disk[2]/target/@bus"), "ide");
  EXPECT_EQ(x.Count("/domain/devices/disk[2]/readonly"), 1) << "read-only even without readonly set";
  EXPECT_EQ(x.Get("/domain/devices/disk[1]/@device"), "disk");
  EXPECT_EQ(x.Count("/domain/devices/disk[1]/readonly"), 0);
  auto disks = ParseDomainDisks(*xml);
  ASSERT_TRUE(disks.ok()) << disks.status();
  ASSERT_EQ(disks->size(), 2u);
  EXPECT_FALSE((*disks)[0].cdrom);
  EXPECT_TRUE((*disks)[1].cdrom);
  EXPECT_TRUE((*disks)[1].readonly);
  EXPECT_EQ((*disks)[1].target, "hdd");
}

TEST(DomainXmlBuilderTest, CdromOnAVirtioTargetOrOnXenArmIsRefusedNamingTheField) {
  DomainSpec s = Base();
  DiskSpec cd{"/dev/vg0/web1-config", DiskType::kBlock, "vdb", "", true, ""};
  cd.cdrom = true;
  s.disks.push_back(cd);
  auto virtio = DomainXmlBuilder::Build(s, kQemuX86);
  EXPECT_EQ(virtio.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(virtio.status().message()), HasSubstr("spec.disks[0].device"));
  s.disks[0].target = "sda";
  EXPECT_TRUE(DomainXmlBuilder::Build(s, kKvmArm).ok()) << "scsi on ARM";
  s.boot = DirectKernelBoot{"/var/lib/hvagent/Image", "", ""};
  s.disks[0].target = "xvdb";
  auto xen = DomainXmlBuilder::Build(s, kXenArm);
  EXPECT_EQ(xen.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(xen.status().message()), HasSubstr("spec.disks[0].device"));
}

TEST(DomainXmlBuilderTest, KernelCmdlineIsEscapedAndRoundTrips) {
  DomainSpec s = Base();
  const std::string cmdline = "init=/bin/sh x='<devices>' y=\"a&b\"";
  s.boot = DirectKernelBoot{"/boot/vmlinuz", "", cmdline};
  auto xml = DomainXmlBuilder::Build(s, kQemuX86);
  ASSERT_TRUE(xml.ok()) << xml.status();
  EXPECT_THAT(*xml, ::testing::Not(HasSubstr("<devices>'")));
  Xml x(*xml);
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(x.Get("/domain/os/cmdline"), cmdline);
  EXPECT_EQ(x.Count("/domain/devices/*"), 0);
}

// Labels live in <metadata> under the agent's namespace, escaped, and read back unchanged
// (markup, quotes, spaces at either end, non-ASCII) from the domain document.
TEST(DomainXmlBuilderTest, LabelsAreEscapedIntoMetadataAndRoundTrip) {
  DomainSpec s = Base();
  s.labels = {{"cloudstack.instance", "i-2-100-VM"},
              {"markup", "</hvagent:label><name>evil</name> & \"q\" 'a'"},
              {"spaces", "  two  "},
              {"empty", ""},
              {"utf8", "caf\xc3\xa9"}};
  auto xml = DomainXmlBuilder::Build(s, kQemuX86);
  ASSERT_TRUE(xml.ok()) << xml.status();
  EXPECT_THAT(*xml, ::testing::Not(HasSubstr("<name>evil")));
  EXPECT_THAT(*xml, HasSubstr("xmlns:hvagent='urn:hvagent:labels:1'"));
  Xml x(*xml);
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(x.Get("/domain/name"), "web1");  // the injected <name> did not become one
  EXPECT_EQ(x.Count("/domain/name"), 1);
  EXPECT_EQ(x.Count("/domain/metadata/*"), 1);
  auto back = ParseDomainLabels(*xml);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, s.labels);
}

TEST(DomainXmlBuilderTest, NoLabelsNoMetadata) {
  auto xml = DomainXmlBuilder::Build(Base(), kQemuX86);
  ASSERT_TRUE(xml.ok());
  EXPECT_THAT(*xml, ::testing::Not(HasSubstr("metadata")));
  auto back = ParseDomainLabels(*xml);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->empty());
}

// The element alone (another prefix, or none as virDomainGetMetadata returns it); other
// namespaces' elements and entries the agent would refuse are not labels.
TEST(DomainXmlReaderTest, LabelsFromTheMetadataElementAlone) {
  auto labels = ParseDomainLabels(
      "<x:labels xmlns:x='urn:hvagent:labels:1'><x:label key='a' value='1'/><x:label key='Bad' value='2'/>"
      "<x:label key='c' value='line&#10;break'/><y:label xmlns:y='urn:other' key='d' value='foreign'/>"
      "<x:label key='e' value='&lt;ok&gt;'/></x:labels>");
  ASSERT_TRUE(labels.ok()) << labels.status();
  EXPECT_EQ(*labels, (std::map<std::string, std::string>{{"a", "1"}, {"e", "<ok>"}}));
  // libvirt's own answer for our namespace: the element with the namespace stripped.
  auto stripped = ParseDomainLabels("<labels>\n  <label key=\"a\" value=\"b\"/>\n</labels>\n");
  ASSERT_TRUE(stripped.ok()) << stripped.status();
  EXPECT_EQ(*stripped, (std::map<std::string, std::string>{{"a", "b"}}));
  auto foreign = ParseDomainLabels(
      "<domain><metadata><y:labels xmlns:y='urn:someone-else'><y:label key='a' value='1'/></y:labels>"
      "</metadata></domain>");
  ASSERT_TRUE(foreign.ok());
  EXPECT_TRUE(foreign->empty());
  EXPECT_FALSE(ParseDomainLabels("<domain><metadata>").ok());
}

// The display is locked from the start: a password that expired in 2000, so QEMU starts with
// password authentication on and nobody gets in before a ticket sets a live one.
TEST(DomainXmlBuilderTest, VncDisplayListensOnTheGivenAddressLockedByAnExpiredPassword) {
  DomainSpec s = Base();
  s.vnc = true;
  s.vnc_listen = "192.0.2.10";
  s.vnc_locked_password = "Xy12ab9Q";
  auto xml = DomainXmlBuilder::Build(s, kQemuX86);
  ASSERT_TRUE(xml.ok()) << xml.status();
  Xml x(*xml);
  EXPECT_EQ(x.Count("/domain/devices/graphics"), 1);
  EXPECT_EQ(x.Get("/domain/devices/graphics/@type"), "vnc");
  EXPECT_EQ(x.Get("/domain/devices/graphics/@autoport"), "yes");
  EXPECT_EQ(x.Get("/domain/devices/graphics/@listen"), "192.0.2.10");
  EXPECT_EQ(x.Get("/domain/devices/graphics/listen/@address"), "192.0.2.10");
  EXPECT_EQ(x.Get("/domain/devices/graphics/@passwd"), "Xy12ab9Q");
  EXPECT_EQ(x.Get("/domain/devices/graphics/@passwdValidTo"), "2000-01-01T00:00:00");
  auto valid = ValidateWithLibvirtSchema(*xml);
  EXPECT_TRUE(valid.ok() || absl::IsFailedPrecondition(valid)) << valid;
  // Without spec.vnc: no display at all.
  EXPECT_THAT(*DomainXmlBuilder::Build(Base(), kQemuX86), ::testing::Not(HasSubstr("graphics")));
}

TEST(DomainXmlBuilderTest, VncOnXenIsRefusedNamingTheField) {
  DomainSpec s = Base();
  s.boot = DirectKernelBoot{"/boot/vmlinuz", "", ""};
  s.vnc = true;
  auto xml = DomainXmlBuilder::Build(s, kXenArm);
  EXPECT_EQ(xml.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(xml.status().message(), HasSubstr("spec.vnc: only for QEMU/KVM guests"));
}

// The update keeps the live element as libvirt wrote it (listen, port, keymap) and sets the
// password and its end; a domain without VNC (a SPICE display only) has nothing to update.
TEST(DomainXmlReaderTest, VncPasswordUpdateKeepsTheLiveElementAndSetsThePassword) {
  const std::string live =
      "<domain><devices><graphics type='spice' port='5930'/>"
      "<graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1' keymap='de'>"
      "<listen type='address' address='127.0.0.1'/></graphics></devices></domain>";
  auto u = VncPasswordUpdateXml(live, "pa&ss'1", "2030-01-02T03:04:05");
  ASSERT_TRUE(u.ok()) << u.status();
  ASSERT_TRUE(u->has_value());
  EXPECT_EQ((*u)->display.listen, "127.0.0.1");
  EXPECT_EQ((*u)->display.port, 5901);
  Xml x((*u)->device_xml);
  ASSERT_TRUE(x.ok()) << (*u)->device_xml;
  EXPECT_EQ(x.Get("/graphics/@type"), "vnc");
  EXPECT_EQ(x.Get("/graphics/@port"), "5901");
  EXPECT_EQ(x.Get("/graphics/@keymap"), "de");
  EXPECT_EQ(x.Get("/graphics/listen/@address"), "127.0.0.1");
  EXPECT_EQ(x.Get("/graphics/@passwd"), "pa&ss'1");  // escaped on the way out, intact on the way in
  EXPECT_EQ(x.Get("/graphics/@passwdValidTo"), "2030-01-02T03:04:05");
  // The listen address from <listen> when the element has no attribute.
  auto nested = VncPasswordUpdateXml(
      "<domain><devices><graphics type='vnc' port='5902'><listen type='address' address='10.0.0.5'/>"
      "</graphics></devices></domain>",
      "x", "2030-01-02T03:04:05");
  ASSERT_TRUE(nested.ok() && nested->has_value());
  EXPECT_EQ((*nested)->display.listen, "10.0.0.5");
  auto none = VncPasswordUpdateXml("<domain><devices><graphics type='spice' port='5930'/></devices></domain>", "x",
                                   "2030-01-02T03:04:05");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  // A display whose port is not known yet (autoport, not started) cannot be handed out.
  auto no_port = VncPasswordUpdateXml(
      "<domain><devices><graphics type='vnc' port='-1' autoport='yes'/></devices></domain>", "x",
      "2030-01-02T03:04:05");
  EXPECT_EQ(no_port.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(DomainXmlBuilderTest, XenPvGuestWithoutKernelIsRejected) {
  DomainSpec s = Base();
  auto xml = DomainXmlBuilder::Build(s, kXenArm);
  EXPECT_EQ(xml.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(xml.status().message(), HasSubstr("spec.kernel"));
}

TEST(DomainXmlBuilderTest, BiosOnArmIsRejected) {
  DomainSpec s = Base();
  s.boot = FirmwareBoot{FirmwareType::kBios, ""};
  auto xml = DomainXmlBuilder::Build(s, kKvmArm);
  EXPECT_EQ(xml.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(xml.status().message(), HasSubstr("spec.firmware.type"));
}

TEST(DomainXmlBuilderTest, UefiAutoSelectOrExplicitLoader) {
  DomainSpec s = Base();
  s.boot = FirmwareBoot{FirmwareType::kUefi, ""};
  Xml automatic(*DomainXmlBuilder::Build(s, kKvmArm));
  EXPECT_EQ(automatic.Get("/domain/os/@firmware"), "efi");
  EXPECT_EQ(automatic.Count("/domain/os/loader"), 0);

  s.boot = FirmwareBoot{FirmwareType::kUefi, "/usr/share/AAVMF/AAVMF_CODE.fd"};
  Xml explicit_loader(*DomainXmlBuilder::Build(s, kKvmArm));
  EXPECT_EQ(explicit_loader.Get("/domain/os/@firmware"), "");
  EXPECT_EQ(explicit_loader.Get("/domain/os/loader"), "/usr/share/AAVMF/AAVMF_CODE.fd");
  EXPECT_EQ(explicit_loader.Get("/domain/os/loader/@readonly"), "yes");
}

TEST(DomainXmlBuilderTest, ArchNotOfferedIsRejected) {
  DomainSpec s = Base();
  s.arch = "aarch64";
  auto xml = DomainXmlBuilder::Build(s, kQemuX86);
  EXPECT_EQ(xml.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(xml.status().message(), HasSubstr("spec.arch"));
}

TEST(DomainXmlBuilderTest, InvalidSpecNeverProducesXml) {
  DomainSpec s = Base("a'/><devices><disk>");
  auto xml = DomainXmlBuilder::Build(s, kQemuX86);
  EXPECT_EQ(xml.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(xml.status().message(), HasSubstr("spec.name"));
}

// libvirt's DAC driver chowns a guest's files to the QEMU user while it runs (dynamic
// ownership). A host file the agent did not create must never be relabelled: each file
// disk's source says so, and the image's own header cannot pull in a backing file.
TEST(DomainXmlBuilderTest, FileDisksAreNeverRelabelledNorFollowBackingFiles) {
  DomainSpec s = Base();
  s.boot = FirmwareBoot{FirmwareType::kBios, ""};
  s.disks.push_back({"/srv/images/web1.qcow2", DiskType::kFile, "vda", "", false, "qcow2"});
  s.disks.push_back({"/dev/vg0/web1-data", DiskType::kBlock, "vdb", "", false, ""});
  auto xml = DomainXmlBuilder::Build(s, kQemuX86);
  ASSERT_TRUE(xml.ok()) << xml.status();
  Xml x(*xml);
  const std::string file = "/domain/devices/disk[target/@dev='vda']";
  EXPECT_EQ(x.Get(file + "/source/@file"), "/srv/images/web1.qcow2");
  EXPECT_EQ(x.Count(file + "/source/seclabel"), 1);
  EXPECT_EQ(x.Get(file + "/source/seclabel/@model"), "dac");
  EXPECT_EQ(x.Get(file + "/source/seclabel/@relabel"), "no");
  EXPECT_EQ(x.Count(file + "/backingStore"), 1);
  EXPECT_EQ(x.Count(file + "/backingStore/*"), 0);  // empty: no backing chain at all
  // A pool volume (block) is the agent's own: libvirt hands it to the guest's user as usual.
  const std::string block = "/domain/devices/disk[target/@dev='vdb']";
  EXPECT_EQ(x.Get(block + "/source/@dev"), "/dev/vg0/web1-data");
  EXPECT_EQ(x.Count(block + "/source/seclabel"), 0);
  EXPECT_EQ(x.Count(block + "/backingStore"), 0);
  EXPECT_TRUE(ValidateWithLibvirtSchema(*xml).ok()) << ValidateWithLibvirtSchema(*xml);
  // The same for a hot-plugged file disk.
  auto disk = DomainXmlBuilder::BuildDisk(s.disks[0], kQemuX86);
  ASSERT_TRUE(disk.ok()) << disk.status();
  Xml d(*disk);
  EXPECT_EQ(d.Get("/disk/source/seclabel/@relabel"), "no");
}

TEST(DomainXmlBuilderTest, DefaultBusFollowsTargetPrefix) {
  EXPECT_EQ(DomainXmlBuilder::DefaultBus("xvda"), "xen");
  EXPECT_EQ(DomainXmlBuilder::DefaultBus("vdb"), "virtio");
  EXPECT_EQ(DomainXmlBuilder::DefaultBus("sdc"), "scsi");
  EXPECT_EQ(DomainXmlBuilder::DefaultBus("hdd"), "ide");
}

}  // namespace
}  // namespace hvagent::hv

namespace hvagent::hv {
namespace {

// max_vcpus leaves hot-plug headroom: the guest boots with `current`, UpdateDomain raises it.
TEST(DomainXmlBuilderTest, MaxVcpusBecomesTheVcpuCeilingWithCurrent) {
  DomainSpec s = Base();
  s.vcpus = 1;
  s.max_vcpus = 4;
  auto xml = DomainXmlBuilder::Build(s, kQemuX86);
  ASSERT_TRUE(xml.ok()) << xml.status();
  Xml x(*xml);
  EXPECT_EQ(x.Get("/domain/vcpu"), "4");
  EXPECT_EQ(x.Get("/domain/vcpu/@current"), "1");
  s.max_vcpus = 0;  // none: one figure, no attribute
  Xml plain(*DomainXmlBuilder::Build(s, kQemuX86));
  EXPECT_EQ(plain.Get("/domain/vcpu"), "1");
  EXPECT_EQ(plain.Get("/domain/vcpu/@current"), "");
  s.max_vcpus = 0;
  s.vcpus = 2;
  s.max_vcpus = 1;  // below vcpus
  auto bad = DomainXmlBuilder::Build(s, kQemuX86);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("spec.max_vcpus"));
}

// Nova's hw:cpu_sockets/cores/threads: the topology lands in <cpu>, with or without a model.
TEST(DomainXmlBuilderTest, CpuTopologyShapesTheGuestCpu) {
  DomainSpec s = Base();
  s.vcpus = 4;
  s.cpu_topology = GuestCpuTopology{2, 1, 2};
  auto xml = DomainXmlBuilder::Build(s, kQemuX86);
  ASSERT_TRUE(xml.ok()) << xml.status();
  Xml x(*xml);
  EXPECT_EQ(x.Get("/domain/cpu/topology/@sockets"), "2");
  EXPECT_EQ(x.Get("/domain/cpu/topology/@cores"), "1");
  EXPECT_EQ(x.Get("/domain/cpu/topology/@threads"), "2");
  EXPECT_EQ(x.Get("/domain/cpu/@mode"), "");  // libvirt's default CPU, only shaped
  s.cpu_model = "qemu64";
  Xml custom(*DomainXmlBuilder::Build(s, kQemuX86));
  EXPECT_EQ(custom.Get("/domain/cpu/model"), "qemu64");
  EXPECT_EQ(custom.Get("/domain/cpu/topology/@sockets"), "2");
  s.cpu_model.clear();
  s.cpu_topology.reset();
  Xml none(*DomainXmlBuilder::Build(s, kQemuX86));
  EXPECT_EQ(none.Count("/domain/cpu"), 0);
}

// With hot-plug headroom the topology describes the maximum, as libvirt requires.
TEST(DomainXmlBuilderTest, CpuTopologyMustMatchTheVcpuMaximum) {
  DomainSpec s = Base();
  s.vcpus = 2;
  s.cpu_topology = GuestCpuTopology{2, 2, 1};
  auto bad = DomainXmlBuilder::Build(s, kQemuX86);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("spec.cpu_topology"));
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("(2)"));
  s.max_vcpus = 4;
  EXPECT_TRUE(DomainXmlBuilder::Build(s, kQemuX86).ok());
  s.cpu_topology = GuestCpuTopology{0, 2, 2};
  auto zero = DomainXmlBuilder::Build(s, kQemuX86);
  EXPECT_THAT(std::string(zero.status().message()), HasSubstr("spec.cpu_topology: sockets, cores and threads"));
}

// Nova's quota:cpu_shares: <cputune><shares>, bounded, QEMU/KVM only.
TEST(DomainXmlBuilderTest, CpuSharesBecomeCputune) {
  DomainSpec s = Base();
  s.cpu_shares = 2048;
  Xml x(*DomainXmlBuilder::Build(s, kQemuX86));
  EXPECT_EQ(x.Get("/domain/cputune/shares"), "2048");
  s.cpu_shares = 0;
  Xml none(*DomainXmlBuilder::Build(s, kQemuX86));
  EXPECT_EQ(none.Count("/domain/cputune"), 0);
  s.cpu_shares = kMaxCpuShares + 1;
  auto big = DomainXmlBuilder::Build(s, kQemuX86);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(big.status().message()), HasSubstr("spec.cpu_shares"));
}

// libxl ignores both: refused with the field's name rather than silently dropped.
TEST(DomainXmlBuilderTest, CpuTopologyAndSharesAreRefusedOnXen) {
  DomainSpec s = Base();
  s.boot = DirectKernelBoot{"/var/lib/hvagent/Image", "", "console=hvc0"};
  s.cpu_topology = GuestCpuTopology{1, 2, 1};
  auto topo = DomainXmlBuilder::Build(s, kXenArm);
  EXPECT_EQ(topo.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(topo.status().message()), HasSubstr("spec.cpu_topology: only for QEMU/KVM"));
  s.cpu_topology.reset();
  s.cpu_shares = 512;
  auto shares = DomainXmlBuilder::Build(s, kXenArm);
  EXPECT_THAT(std::string(shares.status().message()), HasSubstr("spec.cpu_shares: only for QEMU/KVM"));
}

}  // namespace
}  // namespace hvagent::hv

namespace hvagent::hv {
namespace {

// What libvirt's QEMU driver stores for a guest the builder wrote (units and defaults filled in).
constexpr char kQemuStored[] = R"(<domain type='kvm'>
  <name>web1</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <memory unit='KiB'>524288</memory>
  <currentMemory unit='KiB'>524288</currentMemory>
  <vcpu placement='static' current='2'>4</vcpu>
  <cputune><shares>300</shares></cputune>
  <os firmware='efi'>
    <type arch='aarch64' machine='virt-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/AAVMF/AAVMF_CODE.fd</loader>
    <boot dev='hd'/>
  </os>
  <features><acpi/><gic version='3'/></features>
  <cpu mode='host-passthrough' check='none'><topology sockets='1' dies='1' cores='2' threads='2'/></cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-aarch64</emulator>
    <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg0/r'/><target dev='vda' bus='virtio'/></disk>
    <serial type='pty'><log file='/var/log/hvagent/console/web1.log' append='off'/><target port='0'/></serial>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1' passwd='x'/>
  </devices>
</domain>)";

TEST(ParseDomainSpecTest, ReadsWhatLibvirtStoredIntoTheModel) {
  auto s = ParseDomainSpec(kQemuStored);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->name, "web1");
  EXPECT_EQ(s->memory_mib, 512u);
  EXPECT_EQ(s->vcpus, 2u);
  EXPECT_EQ(s->max_vcpus, 4u);
  EXPECT_EQ(s->cpu_shares, 300u);
  EXPECT_EQ(s->arch, "aarch64");
  EXPECT_EQ(s->machine, "virt-7.2");
  const auto* fw = std::get_if<FirmwareBoot>(&s->boot);
  ASSERT_NE(fw, nullptr);  // firmware='efi': the hypervisor's pick, not the loader it wrote down
  EXPECT_EQ(fw->type, FirmwareType::kUefi);
  EXPECT_TRUE(fw->loader_path.empty());
  EXPECT_EQ(s->gic_version, "3");
  EXPECT_EQ(s->cpu_model, "host");
  ASSERT_TRUE(s->cpu_topology.has_value());
  EXPECT_EQ(s->cpu_topology->sockets, 1u);
  EXPECT_EQ(s->cpu_topology->cores, 2u);
  EXPECT_TRUE(s->serial_console);
  EXPECT_TRUE(s->console_log_path.empty());  // the destination writes its own log
  EXPECT_TRUE(s->vnc);
  EXPECT_TRUE(s->vnc_locked_password.empty());
  ASSERT_EQ(s->disks.size(), 1u);
  EXPECT_EQ(s->disks[0].target, "vda");
  EXPECT_TRUE(ValidateDomainSpec(*s).ok());
}

TEST(ParseDomainSpecTest, BuilderOutputRoundTripsForKernelBootOnXenAndQemu) {
  DomainSpec in = Base();
  in.uuid = "6695eb01-f6a4-8304-79aa-97f2502e193f";
  in.boot = DirectKernelBoot{"/boot/vmlinuz", "/boot/initrd.img", "root=/dev/xvda rw"};
  in.serial_console = true;
  in.labels = {{"k", "v"}};
  in.disks.push_back({.source_path = "/dev/vg0/r", .type = DiskType::kBlock, .target = "xvda"});
  auto xml = DomainXmlBuilder::Build(in, kXenArm);
  ASSERT_TRUE(xml.ok()) << xml.status();
  auto out = ParseDomainSpec(*xml);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->uuid, in.uuid);
  EXPECT_EQ(out->memory_mib, 512u);
  EXPECT_EQ(std::get<DirectKernelBoot>(out->boot).cmdline, "root=/dev/xvda rw");
  EXPECT_EQ(std::get<DirectKernelBoot>(out->boot).initrd_path, "/boot/initrd.img");
  EXPECT_TRUE(out->machine.empty());  // Xen on Arm takes none: a read-back must not add one
  EXPECT_TRUE(out->cpu_model.empty());
  EXPECT_TRUE(out->serial_console);
  EXPECT_FALSE(out->vnc);
  EXPECT_EQ(out->labels, in.labels);
  EXPECT_TRUE(DomainXmlBuilder::Build(*out, kXenArm).ok());  // and it defines again there

  in.disks[0].target = "vda";
  in.vnc = true;
  in.cpu_model = "cortex-a57";
  auto qemu = DomainXmlBuilder::Build(in, kKvmArm);
  ASSERT_TRUE(qemu.ok()) << qemu.status();
  auto back = ParseDomainSpec(*qemu);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->cpu_model, "cortex-a57");
  EXPECT_EQ(back->machine, "virt");
  EXPECT_TRUE(back->vnc);
  EXPECT_EQ(DomainXmlBuilder::Build(*back, kXenArm).status().code(), absl::StatusCode::kInvalidArgument);
}

// An x86 guest as libvirt's QEMU driver stores it after an operator's `virsh attach-device
// --config` of a guest agent channel, an RNG, a watchdog, a macvtap NIC, a floppy and SPICE, beside
// what libvirt adds to every definition by itself (controllers, input, video, memballoon, audio).
constexpr char kQemuWithExtras[] = R"(<domain type='kvm'>
  <name>web1</name>
  <memory unit='KiB'>524288</memory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='block' device='disk'><source dev='/dev/vg0/r'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><source file='/var/lib/hvagent/iso/cfg.iso'/><target dev='sda' bus='sata'/></disk>
    <disk type='file' device='floppy'><source file='/tmp/f.img'/><target dev='fda' bus='fdc'/></disk>
    <controller type='usb' index='0' model='qemu-xhci'/>
    <controller type='pci' index='0' model='pcie-root'/>
    <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/><model type='virtio'/></interface>
    <interface type='direct'><mac address='52:54:00:00:00:02'/><source dev='eth0' mode='vepa'/></interface>
    <serial type='pty'><target type='isa-serial' port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <input type='mouse' bus='ps2'/>
    <input type='keyboard' bus='ps2'/>
    <graphics type='vnc' port='-1' autoport='yes'/>
    <graphics type='spice' autoport='yes'/>
    <audio id='1' type='none'/>
    <video><model type='virtio' heads='1' primary='yes'/></video>
    <watchdog model='i6300esb' action='reset'/>
    <memballoon model='virtio'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>)";

TEST(ParseUnmodelledDevicesTest, ListsWhatAnOperatorAddedAndNothingLibvirtAddsByItself) {
  auto extra = ParseUnmodelledDevices(kQemuWithExtras);
  ASSERT_TRUE(extra.ok()) << extra.status();
  EXPECT_THAT(*extra, ::testing::ElementsAre("<disk type='file' device='floppy'>", "<interface type='direct'>",
                                             "<channel type='unix'> org.qemu.guest_agent.0",
                                             "<graphics type='spice'>", "<watchdog model='i6300esb'>",
                                             "<rng model='virtio'>"));
  // What the agent defined, as libvirt stored it, and the builder's own output: nothing extra.
  auto stored = ParseUnmodelledDevices(kQemuStored);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_THAT(*stored, ::testing::IsEmpty());
  DomainSpec in = Base();
  in.vnc = true;
  in.serial_console = true;
  in.disks.push_back({.source_path = "/dev/vg0/r", .type = DiskType::kBlock, .target = "vda"});
  in.disks.push_back({.source_path = "/dev/vg0/cfg", .type = DiskType::kBlock, .target = "hdd", .cdrom = true});
  in.nics.push_back({.mac = "52:54:00:00:00:01", .bridge = "br0"});
  auto built = DomainXmlBuilder::Build(in, kQemuX86);
  ASSERT_TRUE(built.ok()) << built.status();
  auto own = ParseUnmodelledDevices(*built);
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_THAT(*own, ::testing::IsEmpty());
  EXPECT_FALSE(ParseUnmodelledDevices("<domain").ok());
}

}  // namespace
}  // namespace hvagent::hv
