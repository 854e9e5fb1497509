#include "storage/partition/gpt_layout.h"

#include <gtest/gtest.h>

#include "tests/unit/storage/partition/sfdisk_samples.h"

namespace hvagent::storage::gpt {
namespace {

namespace samples = hvagent::testing::sfdisk;
constexpr uint64_t MiB = 1 << 20;

TEST(PartitionGptLayout, ParsesRealEmptyGpt) {
  auto t = ParseSfdiskJson(samples::kEmptyGpt, "/dev/loop0");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->label, "gpt");
  EXPECT_EQ(t->sector_size, 512u);
  EXPECT_EQ(t->first_lba, 34u);
  EXPECT_EQ(t->last_lba, 262110u);
  EXPECT_TRUE(t->partitions.empty());
  EXPECT_EQ(t->UsableBegin(), 1 * MiB);
  EXPECT_EQ(t->UsableEnd(), 127 * MiB);  // 262111 sectors = 127.98 MiB, rounded down
  auto free = FreeRegions(*t);
  ASSERT_EQ(free.size(), 1u);
  EXPECT_EQ(free[0].begin, 1 * MiB);
  EXPECT_EQ(free[0].end, 127 * MiB);
}

TEST(PartitionGptLayout, ParsesRealMixedTable) {
  auto t = ParseSfdiskJson(samples::kMixed, "/dev/loop0");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->partitions.size(), 4u);
  EXPECT_EQ(t->partitions[0].number, 1u);
  EXPECT_EQ(t->partitions[0].node, "/dev/loop0p1");
  EXPECT_EQ(t->partitions[0].start, 2048u);
  EXPECT_EQ(t->partitions[0].size, 20480u);
  EXPECT_EQ(t->partitions[0].name, "hvagent:db1");
  EXPECT_EQ(t->partitions[2].name, "hvagent:web@i-2-10-VM");
  EXPECT_EQ(t->partitions[3].name, "");  // unnamed: no "name" field at all
  EXPECT_EQ(t->partitions[3].type, "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
}

TEST(PartitionGptLayout, FreeRegionsAreAlignedAndSkipEveryPartition) {
  auto t = ParseSfdiskJson(samples::kMixed, "/dev/loop0");
  ASSERT_TRUE(t.ok());
  auto free = FreeRegions(*t);
  // 1-11 db1, 11-21 foreign, 31-51 web, 53.7-58.6 unnamed (unaligned), usable end 127.
  ASSERT_EQ(free.size(), 3u);
  EXPECT_EQ(free[0].begin, 21 * MiB);
  EXPECT_EQ(free[0].end, 31 * MiB);
  EXPECT_EQ(free[1].begin, 51 * MiB);
  EXPECT_EQ(free[1].end, 53 * MiB);  // 110000 * 512 = 53.71 MiB, rounded down
  EXPECT_EQ(free[2].begin, 59 * MiB);  // (110000 + 10001) * 512 = 58.59 MiB, rounded up
  EXPECT_EQ(free[2].end, 127 * MiB);
}

TEST(PartitionGptLayout, FourKSectors) {
  auto t = ParseSfdiskJson(samples::k4kSectors, "/dev/loop0");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->sector_size, 4096u);
  EXPECT_EQ(t->StartBytes(t->partitions[0]), 1 * MiB);
  EXPECT_EQ(t->EndBytes(t->partitions[0]), 11 * MiB);
  auto free = FreeRegions(*t);
  ASSERT_EQ(free.size(), 1u);
  EXPECT_EQ(free[0].begin, 11 * MiB);
  EXPECT_EQ(free[0].end, 63 * MiB);  // 16379 * 4096 = 63.98 MiB
}

TEST(PartitionGptLayout, ParsesDosLabel) {
  auto t = ParseSfdiskJson(samples::kDos, "/dev/loop0");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->label, "dos");
}

TEST(PartitionGptLayout, RejectsGarbage) {
  for (const char* bad : {"", "garbage", "{", "[]", "{\"partitiontable\": 3}", "{\"partitiontable\": {}}",
                          R"({"partitiontable": {"label": "gpt", "sectorsize": "512"}})",
                          R"({"partitiontable": {"label": "gpt", "sectorsize": 512, "firstlba": 34}})",
                          R"({"partitiontable": {"label": "gpt", "sectorsize": 500, "firstlba": 34, "lastlba": 9}})",
                          R"({"partitiontable": {"label": "gpt", "sectorsize": 512, "firstlba": -1, "lastlba": 9}})",
                          R"({"partitiontable": {"label": "gpt", "sectorsize": 512, "firstlba": 34, "lastlba": 9}})",
                          R"({"partitiontable": {"label": "gpt", "sectorsize": 512, "firstlba": 34, "lastlba": 99,
                              "partitions": {}}})",
                          R"({"partitiontable": {"label": "gpt", "sectorsize": 512, "firstlba": 34, "lastlba": 99,
                              "partitions": [{"node": "/dev/loop0p1", "start": 2048}]}})",
                          R"({"partitiontable": {"label": "gpt", "sectorsize": 512, "firstlba": 34, "lastlba": 99,
                              "partitions": [{"node": "/dev/loop0p1", "start": 2048, "size": 1.5}]}})",
                          R"({"partitiontable": {"label": "gpt", "sectorsize": 512, "firstlba": 34, "lastlba": 99,
                              "partitions": [{"node": "/dev/loop0p1", "start": 18446744073709551615, "size": 1}]}})",
                          R"({"partitiontable": {"label": "gpt", "sectorsize": 512, "firstlba": 34, "lastlba": 99,
                              "partitions": [{"node": "/dev/loop0p1", "start": 1, "size": 1, "name": 7}]}})"}) {
    auto t = ParseSfdiskJson(bad, "/dev/loop0");
    EXPECT_FALSE(t.ok()) << bad;
    if (!t.ok()) {
      EXPECT_EQ(t.status().code(), absl::StatusCode::kInternal) << bad;
    }
  }
}

TEST(PartitionGptLayout, RejectsNodesOfAnotherDisk) {
  for (const char* node : {"/dev/sda1", "/dev/loop1p1", "/dev/loop0", "/dev/loop01", "/dev/loop0p01", "../loop0p1"}) {
    std::string json = absl::StrCat(R"({"partitiontable": {"label": "gpt", "sectorsize": 512, "firstlba": 34,
        "lastlba": 99999, "partitions": [{"node": ")", node, R"(", "start": 2048, "size": 2048}]}})");
    EXPECT_FALSE(ParseSfdiskJson(json, "/dev/loop0").ok()) << node;
  }
}

TEST(PartitionGptLayout, PartitionPathRule) {
  EXPECT_EQ(PartitionPath("/dev/sdb", 3), "/dev/sdb3");
  EXPECT_EQ(PartitionPath("/dev/vdb", 12), "/dev/vdb12");
  EXPECT_EQ(PartitionPath("/dev/nvme0n1", 3), "/dev/nvme0n1p3");
  EXPECT_EQ(PartitionPath("/dev/loop3", 3), "/dev/loop3p3");
  EXPECT_EQ(PartitionPath("/dev/mmcblk0", 1), "/dev/mmcblk0p1");
  EXPECT_EQ(PartitionPath("/dev/disk/by-id/ata-X_123", 2), "/dev/disk/by-id/ata-X_123-part2");
  EXPECT_EQ(PartitionNumber("/dev/sdb", "/dev/sdb3"), 3u);
  EXPECT_EQ(PartitionNumber("/dev/nvme0n1", "/dev/nvme0n1p12"), 12u);
  EXPECT_EQ(PartitionNumber("/dev/disk/by-id/ata-X_123", "/dev/disk/by-id/ata-X_123-part2"), 2u);
  EXPECT_FALSE(PartitionNumber("/dev/sdb", "/dev/sdbp3"));
  EXPECT_FALSE(PartitionNumber("/dev/nvme0n1", "/dev/nvme0n13"));
  EXPECT_FALSE(PartitionNumber("/dev/sdb", "/dev/sdc3"));
  EXPECT_FALSE(PartitionNumber("/dev/sdb", "/dev/sdb"));
  EXPECT_FALSE(PartitionNumber("/dev/sdb", "/dev/sdb99999999999"));
}

TEST(PartitionGptLayout, Labels) {
  auto free = ParseLabel("hvagent:db1");
  ASSERT_TRUE(free);
  EXPECT_EQ(free->volume, "db1");
  EXPECT_EQ(free->domain, "");
  auto attached = ParseLabel("hvagent:web@i-2-10-VM");
  ASSERT_TRUE(attached);
  EXPECT_EQ(attached->volume, "web");
  EXPECT_EQ(attached->domain, "i-2-10-VM");
  EXPECT_FALSE(attached->owned);
  auto owned = ParseLabel("hvagent:root=i-2-10-VM");
  ASSERT_TRUE(owned);
  EXPECT_EQ(owned->volume, "root");
  EXPECT_EQ(owned->domain, "i-2-10-VM");
  EXPECT_TRUE(owned->owned);
  EXPECT_EQ(MakeLabel("web", "i-2-10-VM"), "hvagent:web@i-2-10-VM");
  EXPECT_EQ(MakeLabel("root", "i-2-10-VM", /*owned=*/true), "hvagent:root=i-2-10-VM");
  EXPECT_EQ(MakeLabel("db1", ""), "hvagent:db1");
  // Names that merely look like ours are not ours.
  for (const char* name : {"", "foreign", "HVAGENT:x", "hvagent:", "hvagent:@d", "hvagent:x@", "hvagent:../../x",
                           "hvagent:a b", "hvagent:x@y@z", "hvagent:-x", "hvagent:x@d;rm", " hvagent:x", "hvagent:x=", "hvagent:=d", "hvagent:x=d@e", "hvagent:x@d=e",
                           "hvagent:abcdefghijklmnopqrstu"}) {
    EXPECT_FALSE(ParseLabel(name)) << name;
  }
  // The longest label that fits 36 characters.
  std::string longest = MakeLabel(std::string(20, 'v'), std::string(7, 'd'));
  EXPECT_EQ(longest.size(), kMaxGptName);
  EXPECT_TRUE(ParseLabel(longest));
  EXPECT_EQ(kMaxVolumeAndDomain, 27u);
}

TEST(PartitionGptLayout, NameAndPathValidation) {
  EXPECT_TRUE(IsVolumeName("a"));
  EXPECT_TRUE(IsVolumeName("vm-12_disk.0"));
  EXPECT_TRUE(IsVolumeName(std::string(20, 'x')));
  for (const char* bad : {"", "../../etc/passwd", "-a", ".a", "a b", "a;b", "a$(x)", "a@b", "a:b", "a/b", "é",
                          "abcdefghijklmnopqrstu"}) {
    EXPECT_FALSE(IsVolumeName(bad)) << bad;
  }
  EXPECT_TRUE(IsDomainName("instance-0000001a"));
  EXPECT_TRUE(IsDomainName("i-2-10-VM"));
  for (const char* bad : {"", "a b", "a@b", "a:b", "-a", "a'b", "a\"b", "a\nb"}) EXPECT_FALSE(IsDomainName(bad)) << bad;
  EXPECT_TRUE(IsDiskPath("/dev/sdb"));
  EXPECT_TRUE(IsDiskPath("/dev/loop3"));
  EXPECT_TRUE(IsDiskPath("/dev/disk/by-id/nvme-Samsung_SSD_980_S64DNF0R123456"));
  for (const char* bad : {"", "/dev/", "/dev", "/etc/passwd", "/dev/../etc/passwd", "/dev/sd b", "/dev/sdb;reboot",
                          "dev/sdb", "/dev//sdb", "/dev/sdb/", "/dev/$(x)"}) {
    EXPECT_FALSE(IsDiskPath(bad)) << bad;
  }
}

}  // namespace
}  // namespace hvagent::storage::gpt

namespace hvagent::storage::gpt {
namespace {

TEST(GptLayoutTest, ImageLabelsAreNoVolumeLabels) {
  EXPECT_EQ(MakeImageLabel("deb12", false), "hvimage~deb12");
  EXPECT_EQ(MakeImageLabel("deb12", true), "hvimage:deb12");
  auto ready = ParseImageLabel("hvimage:deb12");
  ASSERT_TRUE(ready.has_value());
  EXPECT_EQ(ready->image, "deb12");
  EXPECT_TRUE(ready->ready);
  auto importing = ParseImageLabel("hvimage~deb12");
  ASSERT_TRUE(importing.has_value());
  EXPECT_FALSE(importing->ready);
  EXPECT_FALSE(ParseLabel("hvimage:deb12").has_value());
  EXPECT_FALSE(ParseImageLabel("hvagent:deb12").has_value());
  EXPECT_FALSE(ParseImageLabel("hvimage:").has_value());
  EXPECT_FALSE(ParseImageLabel("hvimage:a/b").has_value());
  EXPECT_FALSE(ParseImageLabel("hvimage:abcdefghijklmnopqrstu").has_value());  // 21 characters
}

}  // namespace
}  // namespace hvagent::storage::gpt
