// Domain XML for ARM64 guests on Xen (libxl) and QEMU/KVM, each checked for structure and
// validated by libvirt's own schema; and what libxl on ARM cannot do, refused up front.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "hypervisor/domain_xml_builder.h"
#include "tests/unit/hypervisor/xml_test_util.h"

namespace hvagent::hv {
namespace {

using ::testing::HasSubstr;

const GuestTarget kXenArm{"xen", "xen", "aarch64"};
const GuestTarget kKvmArm{"kvm", "hvm", "aarch64"};
const GuestTarget kTcgArm{"qemu", "hvm", "aarch64"};
const GuestTarget kKvmX86{"kvm", "hvm", "x86_64"};
const GuestTarget kTcgX86{"qemu", "hvm", "x86_64"};

DomainSpec KernelGuest(const std::string& target_prefix, DiskType type = DiskType::kBlock) {
  DomainSpec s{.name = "arm1", .vcpus = 2, .memory_mib = 512};
  s.boot = DirectKernelBoot{"/var/lib/hvagent/vmlinuz", "/var/lib/hvagent/initrd.img", "console=hvc0 root=/dev/xvda"};
  s.disks.push_back({.source_path = "/dev/vg0/arm1-root", .type = type, .target = target_prefix + "a"});
  s.nics.push_back({.mac = "00:16:3e:00:00:01", .bridge = "xenbr0"});
  s.serial_console = true;
  return s;
}

TEST(DomainXmlArm64Test, XenGuestBootsItsKernelWithPhyDisksAVifAndTheXenConsole) {
  auto xml = DomainXmlBuilder::Build(KernelGuest("xvd"), kXenArm);
  ASSERT_TRUE(xml.ok()) << xml.status();
  Xml x(*xml);
  EXPECT_EQ(x.Get("/domain/@type"), "xen");
  EXPECT_EQ(x.Get("/domain/os/type"), "xen");
  // No arch attribute: libvirt's schema allows none but x86 for os type xen, and the libxl
  // driver fills in the host's (aarch64).
  EXPECT_EQ(x.Count("/domain/os/type/@arch"), 0);
  EXPECT_EQ(x.Get("/domain/os/type/@machine"), "");  // libvirt's xenpv default
  EXPECT_EQ(x.Get("/domain/os/kernel"), "/var/lib/hvagent/vmlinuz");
  EXPECT_EQ(x.Get("/domain/os/initrd"), "/var/lib/hvagent/initrd.img");
  EXPECT_EQ(x.Get("/domain/os/cmdline"), "console=hvc0 root=/dev/xvda");
  EXPECT_EQ(x.Count("/domain/os/loader"), 0);  // ARM guests have no BIOS
  EXPECT_EQ(x.Get("/domain/devices/disk/@type"), "block");
  EXPECT_EQ(x.Get("/domain/devices/disk/driver/@name"), "phy");
  EXPECT_EQ(x.Get("/domain/devices/disk/source/@dev"), "/dev/vg0/arm1-root");
  EXPECT_EQ(x.Get("/domain/devices/disk/target/@dev"), "xvda");
  EXPECT_EQ(x.Get("/domain/devices/disk/target/@bus"), "xen");
  EXPECT_EQ(x.Get("/domain/devices/interface/@type"), "bridge");
  EXPECT_EQ(x.Get("/domain/devices/interface/source/@bridge"), "xenbr0");
  EXPECT_EQ(x.Count("/domain/devices/interface/model"), 0);
  EXPECT_EQ(x.Get("/domain/devices/console/target/@type"), "xen");
  EXPECT_EQ(x.Count("/domain/cpu"), 0);
  EXPECT_EQ(x.Count("/domain/features"), 0);
  EXPECT_TRUE(ValidateWithLibvirtSchema(*xml).ok()) << ValidateWithLibvirtSchema(*xml);
}

TEST(DomainXmlArm64Test, WhatLibxlOnArmCannotDoIsRefusedNamingTheField) {
  struct Case {
    std::string what;
    DomainSpec spec;
    std::string field;
  };
  std::vector<Case> cases;
  {
    DomainSpec s = KernelGuest("xvd", DiskType::kFile);
    cases.push_back({"file disk", s, "spec.disks[0].type"});
  }
  {
    DomainSpec s = KernelGuest("vd");
    cases.push_back({"virtio disk name", s, "spec.disks[0].target"});
  }
  {
    DomainSpec s = KernelGuest("xvd");
    s.disks[0].bus = "virtio";
    cases.push_back({"virtio bus", s, "spec.disks[0].bus"});
  }
  {
    DomainSpec s = KernelGuest("xvd");
    s.disks[0].type = DiskType::kFile;
    s.disks[0].format = "qcow2";
    cases.push_back({"qcow2", s, "spec.disks[0].format"});
  }
  {
    DomainSpec s = KernelGuest("xvd");
    s.nics[0].model = "e1000";
    cases.push_back({"emulated NIC", s, "spec.nics[0].model"});
  }
  {
    DomainSpec s = KernelGuest("xvd");
    s.boot = FirmwareBoot{FirmwareType::kUefi, ""};
    cases.push_back({"UEFI", s, "spec.kernel"});
  }
  {
    DomainSpec s = KernelGuest("xvd");
    s.machine = "virt";
    cases.push_back({"machine", s, "spec.machine"});
  }
  {
    DomainSpec s = KernelGuest("xvd");
    s.cpu_model = "cortex-a57";
    cases.push_back({"cpu model", s, "spec.cpu_model"});
  }
  {
    DomainSpec s = KernelGuest("xvd");
    s.gic_version = "3";
    cases.push_back({"gic", s, "spec.gic_version"});
  }
  for (const auto& c : cases) {
    auto xml = DomainXmlBuilder::Build(c.spec, kXenArm);
    EXPECT_EQ(xml.status().code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_THAT(std::string(xml.status().message()), HasSubstr(c.field)) << c.what;
  }
}

TEST(DomainXmlArm64Test, KvmGuestIsAVirtMachineWithHostCpuAndHostGic) {
  DomainSpec s = KernelGuest("vd");
  s.nics[0].bridge = "br0";
  auto xml = DomainXmlBuilder::Build(s, kKvmArm);
  ASSERT_TRUE(xml.ok()) << xml.status();
  Xml x(*xml);
  EXPECT_EQ(x.Get("/domain/@type"), "kvm");
  EXPECT_EQ(x.Get("/domain/os/type"), "hvm");
  EXPECT_EQ(x.Get("/domain/os/type/@machine"), "virt");
  EXPECT_EQ(x.Get("/domain/cpu/@mode"), "host-passthrough");
  EXPECT_EQ(x.Get("/domain/features/gic/@version"), "host");
  EXPECT_EQ(x.Count("/domain/features/acpi"), 0);  // ACPI on ARM virt only with UEFI
  EXPECT_EQ(x.Get("/domain/devices/disk/target/@bus"), "virtio");
  EXPECT_EQ(x.Get("/domain/devices/interface/model/@type"), "virtio");
  EXPECT_EQ(x.Get("/domain/devices/serial/@type"), "pty");
  EXPECT_TRUE(ValidateWithLibvirtSchema(*xml).ok()) << ValidateWithLibvirtSchema(*xml);
}

TEST(DomainXmlArm64Test, TcgGuestEmulatesACpuModelAndGicV3) {
  auto xml = DomainXmlBuilder::Build(KernelGuest("vd"), kTcgArm);
  ASSERT_TRUE(xml.ok()) << xml.status();
  Xml x(*xml);
  EXPECT_EQ(x.Get("/domain/@type"), "qemu");
  EXPECT_EQ(x.Get("/domain/cpu/@mode"), "custom");
  EXPECT_EQ(x.Get("/domain/cpu/model"), "max");
  EXPECT_EQ(x.Get("/domain/features/gic/@version"), "3");
  EXPECT_TRUE(ValidateWithLibvirtSchema(*xml).ok()) << ValidateWithLibvirtSchema(*xml);

  DomainSpec named = KernelGuest("vd");
  named.cpu_model = "cortex-a57";
  named.gic_version = "2";
  xml = DomainXmlBuilder::Build(named, kTcgArm);
  ASSERT_TRUE(xml.ok()) << xml.status();
  Xml y(*xml);
  EXPECT_EQ(y.Get("/domain/cpu/model"), "cortex-a57");
  EXPECT_EQ(y.Get("/domain/features/gic/@version"), "2");

  named.cpu_model = "host";
  EXPECT_THAT(std::string(DomainXmlBuilder::Build(named, kTcgArm).status().message()), HasSubstr("needs KVM"));
}

TEST(DomainXmlArm64Test, UefiGuestGetsAcpiAndTheFirmware) {
  DomainSpec s{.name = "efi1", .vcpus = 1, .memory_mib = 256};
  s.boot = FirmwareBoot{FirmwareType::kUefi, ""};
  s.disks.push_back({.source_path = "/dev/vg0/efi1", .type = DiskType::kBlock, .target = "vda"});
  auto xml = DomainXmlBuilder::Build(s, kKvmArm);
  ASSERT_TRUE(xml.ok()) << xml.status();
  Xml x(*xml);
  EXPECT_EQ(x.Get("/domain/os/@firmware"), "efi");
  EXPECT_EQ(x.Count("/domain/features/acpi"), 1);
  EXPECT_TRUE(ValidateWithLibvirtSchema(*xml).ok()) << ValidateWithLibvirtSchema(*xml);

  s.boot = FirmwareBoot{FirmwareType::kUefi, "/usr/share/AAVMF/AAVMF_CODE.fd"};
  xml = DomainXmlBuilder::Build(s, kTcgArm);
  ASSERT_TRUE(xml.ok()) << xml.status();
  Xml y(*xml);
  EXPECT_EQ(y.Get("/domain/os/loader"), "/usr/share/AAVMF/AAVMF_CODE.fd");
  EXPECT_EQ(y.Get("/domain/os/loader/@type"), "pflash");
  EXPECT_TRUE(ValidateWithLibvirtSchema(*xml).ok()) << ValidateWithLibvirtSchema(*xml);
}

TEST(DomainXmlArm64Test, ArmOnlyAndQemuOnlySettingsAreRefusedElsewhere) {
  DomainSpec s{.name = "x1", .vcpus = 1, .memory_mib = 256};
  s.boot = FirmwareBoot{FirmwareType::kBios, ""};
  s.gic_version = "3";
  EXPECT_THAT(std::string(DomainXmlBuilder::Build(s, kKvmX86).status().message()), HasSubstr("only for ARM"));
  s.gic_version.clear();
  s.cpu_model = "Skylake-Server";
  auto xml = DomainXmlBuilder::Build(s, kKvmX86);
  ASSERT_TRUE(xml.ok()) << xml.status();
  EXPECT_EQ(Xml(*xml).Get("/domain/cpu/model"), "Skylake-Server");
  EXPECT_THAT(std::string(DomainXmlBuilder::Build(s, {"test", "hvm", "x86_64"}).status().message()),
              HasSubstr("only for QEMU/KVM"));
}

// Every target the agent builds for, through libvirt's own schema.
TEST(DomainXmlArm64Test, EveryTargetValidatesAgainstLibvirtsSchema) {
  DomainSpec bios{.name = "x86vm", .vcpus = 1, .memory_mib = 256};
  bios.boot = FirmwareBoot{FirmwareType::kBios, ""};
  bios.disks.push_back({.source_path = "/var/lib/img/x.qcow2", .type = DiskType::kFile, .target = "vda",
                        .format = "qcow2"});
  bios.nics.push_back({.network = "default", .model = "virtio"});
  bios.serial_console = true;
  for (const GuestTarget& t : {kKvmX86, kTcgX86}) {
    auto xml = DomainXmlBuilder::Build(bios, t);
    ASSERT_TRUE(xml.ok()) << xml.status();
    EXPECT_TRUE(ValidateWithLibvirtSchema(*xml).ok()) << t.domain_type << ": " << ValidateWithLibvirtSchema(*xml);
  }
  for (const GuestTarget& t : {kKvmArm, kTcgArm}) {
    auto xml = DomainXmlBuilder::Build(KernelGuest("vd"), t);
    ASSERT_TRUE(xml.ok()) << xml.status();
    EXPECT_TRUE(ValidateWithLibvirtSchema(*xml).ok()) << t.domain_type << ": " << ValidateWithLibvirtSchema(*xml);
  }
  auto disk = DomainXmlBuilder::BuildDisk(KernelGuest("xvd").disks[0], kXenArm);
  ASSERT_TRUE(disk.ok());
  EXPECT_THAT(*disk, HasSubstr("phy"));
  // The validator itself rejects broken XML, so the checks above can fail.
  EXPECT_FALSE(ValidateWithLibvirtSchema("<domain type='kvm'><name>x</name><vcpu>many</vcpu></domain>").ok());
}

}  // namespace
}  // namespace hvagent::hv
