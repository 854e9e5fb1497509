#pragma once
// Parser for the JSON of `lvm fullreport --reportformat json --units b --nosuffix` restricted
// to one VG (see LvmBackend for the exact fields). lvm2 prints numbers as strings ("4194304");
// plain JSON numbers are accepted too. Anything else (not JSON, missing or mistyped fields,
// sizes that are not non-negative integers) is Internal, quoting the first bytes of the output.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hvagent::storage::lvm {

struct VgRow {
  std::string name;
  uint64_t size_bytes = 0;
  uint64_t free_bytes = 0;
  uint64_t extent_size = 0;
};

struct LvRow {
  std::string name;
  uint64_t size_bytes = 0;
  std::vector<std::string> tags;
  std::string path;  // empty when lvm2 does not know it (e.g. hidden LVs)
  std::string attr;  // lv_attr, e.g. "-wi-a-----"
  std::optional<double> data_percent;      // thin pools and thin volumes only
  std::optional<double> metadata_percent;  // thin pools only

  bool HasTag(const std::string& tag) const;
};

struct Report {
  VgRow vg;
  std::vector<LvRow> lvs;
};

// Fields requested per sub-report, in the order passed to `-o`.
inline constexpr char kVgFields[] = "vg_name,vg_size,vg_free,vg_extent_size";
inline constexpr char kLvFields[] = "lv_name,lv_size,lv_tags,lv_path,lv_attr,data_percent,metadata_percent";

// Parses the report of VG `vg_name`. NotFound when the output is a valid report without that
// VG; Internal for garbage.
absl::StatusOr<Report> ParseFullReport(const std::string& json, const std::string& vg_name);

}  // namespace hvagent::storage::lvm
