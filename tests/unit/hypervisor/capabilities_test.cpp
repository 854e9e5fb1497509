#include "hypervisor/libvirt/capabilities.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace hvagent::hv {
namespace {

// Shapes taken from what libvirt reports for a Xen ARM64 dom0 and a KVM x86 host.
constexpr char kXenArm[] = R"(<capabilities>
  <host><cpu><arch>aarch64</arch></cpu></host>
  <guest><os_type>xen</os_type><arch name='aarch64'><machine>xenpv</machine><domain type='xen'/></arch></guest>
</capabilities>)";

constexpr char kKvmX86[] = R"(<capabilities>
  <host><cpu><arch>x86_64</arch><model>Skylake-Client-IBRS</model></cpu></host>
  <guest><os_type>hvm</os_type><arch name='i686'><domain type='qemu'/><domain type='kvm'/></arch></guest>
  <guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest>
  <guest><os_type>hvm</os_type><arch name='aarch64'><domain type='qemu'/></arch></guest>
</capabilities>)";

TEST(CapabilitiesTest, ParsesHostAndGuests) {
  auto caps = ParseCapabilities(kKvmX86);
  ASSERT_TRUE(caps.ok()) << caps.status();
  EXPECT_EQ(caps->host_arch, "x86_64");
  EXPECT_EQ(caps->host_cpu_model, "Skylake-Client-IBRS");
  ASSERT_EQ(caps->guests.size(), 3u);
  EXPECT_EQ(caps->guests[1].arch, "x86_64");
  EXPECT_THAT(caps->guests[1].domain_types, ::testing::ElementsAre("qemu", "kvm"));
}

TEST(CapabilitiesTest, ParsesCpuVendorTopologyAndFeatures) {
  auto caps = ParseCapabilities(R"(<capabilities><host><cpu><arch>x86_64</arch><model>Skylake</model>
    <vendor>Intel</vendor><topology sockets='1' dies='1' cores='4' threads='2'/>
    <feature name='vmx'/><feature name='aes'/><feature name='vmx'/><pages unit='KiB' size='4'/>
    </cpu></host></capabilities>)");
  ASSERT_TRUE(caps.ok()) << caps.status();
  EXPECT_EQ(caps->host_cpu_vendor, "Intel");
  EXPECT_EQ(caps->host_sockets, 1u);
  EXPECT_EQ(caps->host_cores, 4u);
  EXPECT_EQ(caps->host_threads, 2u);
  EXPECT_THAT(caps->host_cpu_features, ::testing::ElementsAre("vmx", "aes"));
}

TEST(CapabilitiesTest, OldStyleFeaturesAndNoVendor) {
  // The test driver's shape: flags as children of <features>, no vendor, no topology.
  auto caps = ParseCapabilities(
      "<capabilities><host><cpu><arch>i686</arch><features><pae/><nonpae/></features></cpu></host></capabilities>");
  ASSERT_TRUE(caps.ok()) << caps.status();
  EXPECT_EQ(caps->host_cpu_vendor, "");
  EXPECT_EQ(caps->host_sockets, 0u);
  EXPECT_THAT(caps->host_cpu_features, ::testing::ElementsAre("pae", "nonpae"));
}

TEST(CapabilitiesTest, PrefersKvmForHostArchAndQemuForForeignArch) {
  auto caps = *ParseCapabilities(kKvmX86);
  auto host = SelectGuestTarget(caps, "");
  ASSERT_TRUE(host.ok());
  EXPECT_EQ(host->domain_type, "kvm");
  EXPECT_EQ(host->arch, "x86_64");
  auto arm = SelectGuestTarget(caps, "aarch64");
  ASSERT_TRUE(arm.ok());
  EXPECT_EQ(arm->domain_type, "qemu");
}

TEST(CapabilitiesTest, XenArmGuestsArePvWithXenDomainType) {
  auto caps = *ParseCapabilities(kXenArm);
  auto t = SelectGuestTarget(caps, "");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->domain_type, "xen");
  EXPECT_EQ(t->os_type, "xen");
  EXPECT_EQ(t->arch, "aarch64");
}

TEST(CapabilitiesTest, ArchNotOfferedIsInvalidArgumentNamingSpecArch) {
  auto caps = *ParseCapabilities(kXenArm);
  auto t = SelectGuestTarget(caps, "x86_64");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(t.status().message()), ::testing::HasSubstr("spec.arch"));
}

TEST(CapabilitiesTest, MalformedXmlIsRejected) {
  EXPECT_FALSE(ParseCapabilities("<capabilities><host>").ok());
  EXPECT_FALSE(ParseCapabilities("<domain/>").ok());
}

// [hypervisor] domain_type: the operator's choice is the only type considered (TCG on a host
// whose /dev/kvm does not run guests), and a type the hypervisor lacks is a clear error.
TEST(CapabilitiesTest, AConfiguredDomainTypeIsTheOnlyOneConsidered) {
  auto caps = *ParseCapabilities(kKvmX86);
  auto tcg = SelectGuestTarget(caps, "", "qemu");
  ASSERT_TRUE(tcg.ok()) << tcg.status();
  EXPECT_EQ(tcg->domain_type, "qemu");
  EXPECT_EQ(tcg->arch, "x86_64");
  auto arm_kvm = SelectGuestTarget(caps, "aarch64", "kvm");
  EXPECT_EQ(arm_kvm.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(arm_kvm.status().message()), ::testing::HasSubstr("hypervisor.domain_type"));
  auto xen_on_kvm_host = SelectGuestTarget(caps, "", "xen");
  EXPECT_EQ(xen_on_kvm_host.status().code(), absl::StatusCode::kFailedPrecondition);
  auto nothing = SelectGuestTarget(*ParseCapabilities(kXenArm), "x86_64", "qemu");
  EXPECT_EQ(nothing.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace hvagent::hv
