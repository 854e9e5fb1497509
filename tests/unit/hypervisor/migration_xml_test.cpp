// RetargetDisks: the destination's definition of a domain migrating live.
#include "hypervisor/libvirt/migration_xml.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace hvagent::hv {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kLive[] = R"(<domain type='qemu'><name>web1</name><uuid>6f1c3c5e-4b39-4c1a-9d3e-2d1f0a7b8c9d</uuid>
<devices>
<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/loop3p1'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/var/lib/a.raw'/><target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='cdrom'><source file='/var/lib/cfg.iso'/><target dev='hdc' bus='ide'/></disk>
</devices></domain>)";

TEST(RetargetDisksTest, PointsEachCopiedDiskAtTheDestinationsDeviceAndLeavesTheRest) {
  auto out = RetargetDisks(kLive, {{"vda", "/dev/loop7p2"}, {"vdb", "/dev/vg1/web1-data"}});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT(*out, HasSubstr("<source dev=\"/dev/loop7p2\"/>"));
  EXPECT_THAT(*out, HasSubstr("<disk type=\"block\" device=\"disk\"><driver name=\"qemu\" type=\"raw\"/><source "
                              "dev=\"/dev/vg1/web1-data\"/><target dev=\"vdb\""));
  EXPECT_THAT(*out, Not(HasSubstr("/dev/loop3p1")));
  EXPECT_THAT(*out, Not(HasSubstr("/var/lib/a.raw")));
  EXPECT_THAT(*out, HasSubstr("/var/lib/cfg.iso"));  // not copied: untouched
  EXPECT_THAT(*out, HasSubstr("<uuid>6f1c3c5e-4b39-4c1a-9d3e-2d1f0a7b8c9d</uuid>"));
}

TEST(RetargetDisksTest, EscapesThePathAndRefusesATargetTheDomainLacksOrXmlThatDoesNotParse) {
  auto out = RetargetDisks(kLive, {{"vda", "/dev/x'\"<y"}});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT(*out, HasSubstr("dev=\"/dev/x'&quot;&lt;y\""));
  auto missing = RetargetDisks(kLive, {{"vdz", "/dev/loop7p2"}});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.status().message(), HasSubstr("'vdz'"));
  EXPECT_EQ(RetargetDisks("<domain", {}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace hvagent::hv
