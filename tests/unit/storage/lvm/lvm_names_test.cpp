// Name rules of the LVM backend: lvm2's own and the API's.

#include "storage/lvm/lvm_names.h"

#include <gtest/gtest.h>

namespace hvagent::storage::lvm {
namespace {

TEST(LvmNamesTest, LvNamesFollowLvmRules) {
  for (const std::string& ok : std::vector<std::string>{"a", "vm-1_disk.0", "A+b", "x.", "snap", "pvmov", "_x", "a_tmet"}) {
    EXPECT_TRUE(IsLvmLvName(ok)) << ok;
  }
  for (const std::string& bad : std::vector<std::string>{"", ".", "..", "-a", "a b", "a/b", "a;b", "snapshot", "snapshot0", "pvmove1", "x_cdata",
                          "x_cmeta", "x_corig", "x_mlog", "x_mimage", "x_pmspare", "x_rimage_1", "x_rmeta",
                          "x_tdata", "x_tmeta", "x_vorigin", "x_vdata", std::string(128, 'a')}) {
    EXPECT_FALSE(IsLvmLvName(bad)) << bad;
  }
}

TEST(LvmNamesTest, VgNamesAllowReservedLvWords) {
  EXPECT_TRUE(IsLvmVgName("vg0"));
  EXPECT_TRUE(IsLvmVgName("snapshot"));
  EXPECT_FALSE(IsLvmVgName("-vg"));
  EXPECT_FALSE(IsLvmVgName(".."));
  EXPECT_FALSE(IsLvmVgName("vg/0"));
}

TEST(LvmNamesTest, VolumeNamesMeetBothRules) {
  EXPECT_TRUE(CheckVolumeName("a").ok());
  EXPECT_TRUE(CheckVolumeName("0-vm.disk_1").ok());
  EXPECT_TRUE(CheckVolumeName(std::string(63, 'z')).ok());
  for (const std::string& bad : std::vector<std::string>{"", std::string(64, 'z'), "a+b", "_a", ".a", "-a", "a_tmeta", "snapshot1", "pvmove",
                          "../../etc/passwd", "a;rm -rf /", "$(x)", "a\tb", std::string("a\0b", 3)}) {
    auto s = CheckVolumeName(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(s.message().substr(0, 5), "name:") << bad;
  }
}

TEST(LvmNamesTest, HostileNameIsEscapedInTheMessage) {
  auto s = CheckVolumeName("a\nb\x01");
  EXPECT_NE(s.message().find("a\\nb\\x01"), std::string::npos) << s.message();
}

TEST(LvmNamesTest, DomainNames) {
  EXPECT_TRUE(CheckDomainName("dom-1.x_y").ok());
  EXPECT_TRUE(CheckDomainName(std::string(255, 'd')).ok());
  for (const std::string& bad : std::vector<std::string>{"", "-x", ".x", "a,b", "a b", "a/b", "a+b", std::string(256, 'd')}) {
    EXPECT_EQ(CheckDomainName(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(LvmNamesTest, Tags) {
  EXPECT_TRUE(IsLvmTag("hvagent"));
  EXPECT_TRUE(IsLvmTag("hvagent_vm_a.b-c"));
  EXPECT_TRUE(IsLvmTag("a+.-/=!:&#_"));
  EXPECT_FALSE(IsLvmTag(""));
  EXPECT_FALSE(IsLvmTag("a,b"));
  EXPECT_FALSE(IsLvmTag("a b"));
  EXPECT_FALSE(IsLvmTag(std::string(1025, 't')));
}

TEST(LvmNamesTest, PhysicalVolumePaths) {
  for (const std::string& ok : std::vector<std::string>{"/dev/sdb", "/dev/loop0", "/dev/disk/by-id/nvme-SAMSUNG_123-part1", "/dev/mapper/a:b+c"}) {
    EXPECT_TRUE(CheckPvPath(ok).ok()) << ok;
  }
  for (const std::string& bad : std::vector<std::string>{"", "../../etc/passwd", "/etc/passwd", "/dev/", "/dev", "/dev/../etc/passwd",
                          "/dev/./sda", "/dev//sda", "/dev/sda/", "dev/sda", "/dev/sda b", "/dev/sda;x",
                          "/dev/$(x)", "/devx/sda"}) {
    auto s = CheckPvPath(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(s.message().substr(0, 17), "physical_volumes:") << bad;
  }
}

}  // namespace
}  // namespace hvagent::storage::lvm
