// Parser of `lvm fullreport --reportformat json` output.

#include "storage/lvm/lvm_report.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace hvagent::storage::lvm {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Verbatim from lvm2 2.03.16 on this host (fullreport of one VG, activation disabled).
constexpr char kReal[] = R"(  {
      "report": [
          {
              "vg": [
                  {"vg_name":"exp_vg", "vg_size":"264241152", "vg_free":"239075328", "vg_extent_size":"4194304"}
              ]
              ,
              "pv": [
                  {"pv_name":"/dev/loop0"}
              ]
              ,
              "lv": [
                  {"lv_name":"v1", "lv_size":"12582912", "lv_tags":"hvagent,hvagent_vm_dom-1.x", "lv_path":"/dev/exp_vg/v1", "lv_attr":"-wi-XX----", "data_percent":""},
                  {"lv_name":"v2", "lv_size":"12582912", "lv_tags":"", "lv_path":"/dev/exp_vg/v2", "lv_attr":"-wi-XX----", "data_percent":""}
              ]
              ,
              "pvseg": [
              ]
              ,
              "seg": [
              ]
          }
      ]
  }
)";

TEST(LvmReportTest, ParsesRealOutput) {
  auto r = ParseFullReport(kReal, "exp_vg");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->vg.name, "exp_vg");
  EXPECT_EQ(r->vg.size_bytes, 264241152u);
  EXPECT_EQ(r->vg.free_bytes, 239075328u);
  EXPECT_EQ(r->vg.extent_size, 4194304u);
  ASSERT_EQ(r->lvs.size(), 2u);
  EXPECT_EQ(r->lvs[0].name, "v1");
  EXPECT_EQ(r->lvs[0].size_bytes, 12582912u);
  EXPECT_THAT(r->lvs[0].tags, ElementsAre("hvagent", "hvagent_vm_dom-1.x"));
  EXPECT_TRUE(r->lvs[0].HasTag("hvagent"));
  EXPECT_FALSE(r->lvs[0].HasTag("hvagent_vm"));
  EXPECT_EQ(r->lvs[0].path, "/dev/exp_vg/v1");
  EXPECT_EQ(r->lvs[0].attr, "-wi-XX----");
  EXPECT_FALSE(r->lvs[0].data_percent.has_value());
  EXPECT_TRUE(r->lvs[1].tags.empty());
}

TEST(LvmReportTest, AcceptsJsonNumbersAndPercentages) {
  auto r = ParseFullReport(
      R"({"report":[{"vg":[{"vg_name":"v","vg_size":100,"vg_free":0,"vg_extent_size":4}],
          "lv":[{"lv_name":"tp","lv_size":64,"lv_tags":"","lv_path":"","lv_attr":"twi","data_percent":"12.50"}]}]})",
      "v");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->vg.size_bytes, 100u);
  ASSERT_EQ(r->lvs.size(), 1u);
  EXPECT_EQ(*r->lvs[0].data_percent, 12.5);
}

TEST(LvmReportTest, OtherVgOnlyIsNotFound) {
  EXPECT_EQ(ParseFullReport(kReal, "vg0").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ParseFullReport(R"({"report":[]})", "vg0").status().code(), absl::StatusCode::kNotFound);
}

TEST(LvmReportTest, GarbageIsInternalQuotingTheFirstBytes) {
  auto r = ParseFullReport(std::string("\x01garbage ") + std::string(200, 'x'), "vg0");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("output starts with '\\x01garbage xxx"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("..."));
}

TEST(LvmReportTest, WrongShapesAreInternal) {
  const std::string vg = R"("vg":[{"vg_name":"v","vg_size":"8","vg_free":"4","vg_extent_size":"4"}])";
  const std::string lv_ok = R"({"lv_name":"a","lv_size":"4","lv_tags":"","lv_path":"","lv_attr":"-"})";
  for (const std::string& bad : std::vector<std::string>{
           std::string(""),
           std::string("{"),
           std::string("[]"),
           std::string(R"({"report":{}})"),
           std::string(R"({"report":[1]})"),
           std::string(R"({"report":[{}]})"),
           "{\"report\":[{" + vg + "}]}",                      // no lv array
           "{\"report\":[{" + vg + ",\"lv\":[1]}]}",          // lv row not an object
           "{\"report\":[{" + vg + ",\"lv\":[" + lv_ok + "]}]} trailing",
           R"({"report":[{"vg":[{"vg_name":"v","vg_size":"-8","vg_free":"4","vg_extent_size":"4"}],"lv":[]}]})",
           R"({"report":[{"vg":[{"vg_name":"v","vg_size":"8","vg_free":"9","vg_extent_size":"4"}],"lv":[]}]})",
           R"({"report":[{"vg":[{"vg_name":"v","vg_size":"8","vg_free":"4","vg_extent_size":"0"}],"lv":[]}]})",
           R"({"report":[{"vg":[{"vg_name":"v","vg_size":"8","vg_free":"4"}],"lv":[]}]})",
           R"({"report":[{"vg":[{"vg_name":"v","vg_size":"99999999999999999999","vg_free":"4","vg_extent_size":"4"}],"lv":[]}]})",
           R"({"report":[{"vg":[{"vg_name":"v","vg_size":8.5,"vg_free":"4","vg_extent_size":"4"}],"lv":[]}]})",
           R"({"report":[{"vg":[{"vg_name":"v","vg_size":"8 ","vg_free":"4","vg_extent_size":"4"}],"lv":[]}]})",
           "{\"report\":[{" + vg + R"(,"lv":[{"lv_name":"a","lv_size":"4","lv_tags":"","lv_path":""}]}]})",
           "{\"report\":[{" + vg + R"(,"lv":[{"lv_name":"","lv_size":"4","lv_tags":"","lv_path":"","lv_attr":""}]}]})",
           "{\"report\":[{" + vg + R"(,"lv":[{"lv_name":"a","lv_size":"4","lv_tags":[],"lv_path":"","lv_attr":""}]}]})",
           "{\"report\":[{" + vg +
               R"(,"lv":[{"lv_name":"a","lv_size":"4","lv_tags":"","lv_path":"","lv_attr":"","data_percent":"x"}]}]})",
       }) {
    auto r = ParseFullReport(bad, "v");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal) << bad << " -> " << r.status();
  }
}

}  // namespace
}  // namespace hvagent::storage::lvm
