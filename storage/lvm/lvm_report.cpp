#include "storage/lvm/lvm_report.h"

#include <algorithm>
#include <exception>

#include <cpprest/json.h>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace hvagent::storage::lvm {
namespace {

using web::json::value;

class Parser {
 public:
  explicit Parser(const std::string& json) : json_(json) {}

  absl::Status Bad(const std::string& what) const {
    std::string head = json_.substr(0, 64);
    return absl::InternalError(absl::StrCat("lvm2 fullreport output is not a usable report (", what,
                                            "); output starts with '", absl::CHexEscape(head), "'",
                                            json_.size() > 64 ? "..." : ""));
  }

  absl::StatusOr<std::string> Str(const value& row, const char* field) const {
    if (!row.has_field(field)) return Bad(absl::StrCat("field ", field, " missing"));
    const value& v = row.at(field);
    if (v.is_string()) return v.as_string();
    if (v.is_number()) return v.serialize();
    return Bad(absl::StrCat("field ", field, " is not a string"));
  }

  absl::StatusOr<uint64_t> U64(const value& row, const char* field) const {
    if (row.has_field(field) && row.at(field).is_number()) {
      const value& v = row.at(field);
      if (v.as_number().is_uint64()) return v.as_number().to_uint64();
      return Bad(absl::StrCat("field ", field, " is not a non-negative integer"));
    }
    auto s = Str(row, field);
    if (!s.ok()) return s.status();
    uint64_t n = 0;
    if (s->empty() || s->find_first_not_of("0123456789") != std::string::npos || !absl::SimpleAtoi(*s, &n)) {
      return Bad(absl::StrCat("field ", field, " is '", absl::CHexEscape(s->substr(0, 32)),
                              "', not a non-negative integer"));
    }
    return n;
  }

  absl::StatusOr<std::optional<double>> Percent(const value& row, const char* field) const {
    if (!row.has_field(field)) return std::optional<double>();
    auto s = Str(row, field);
    if (!s.ok()) return s.status();
    if (s->empty()) return std::optional<double>();
    double d = 0;
    if (!absl::SimpleAtod(*s, &d) || !(d >= 0 && d <= 100)) {
      return Bad(absl::StrCat("field ", field, " is '", absl::CHexEscape(s->substr(0, 32)), "', not a percentage"));
    }
    return std::optional<double>(d);
  }

  absl::StatusOr<Report> Parse(const std::string& vg_name) const {
    value root;
    try {
      root = value::parse(json_);
    } catch (const std::exception& e) {
      return Bad(absl::StrCat("not JSON: ", e.what()));
    }
    if (!root.is_object() || !root.has_field("report") || !root.at("report").is_array()) {
      return Bad("no \"report\" array");
    }
    for (const value& entry : root.at("report").as_array()) {
      if (!entry.is_object()) return Bad("a report entry is not an object");
      if (!entry.has_field("vg") || !entry.at("vg").is_array()) return Bad("a report entry has no \"vg\" array");
      const auto& vgs = entry.at("vg").as_array();
      if (vgs.size() != 1 || !vgs.at(0).is_object()) continue;
      auto name = Str(vgs.at(0), "vg_name");
      if (!name.ok()) return name.status();
      if (*name != vg_name) continue;
      return ParseEntry(entry);
    }
    return absl::NotFoundError(absl::StrCat("volume group '", vg_name, "' is not in lvm2's report"));
  }

 private:
  absl::StatusOr<Report> ParseEntry(const value& entry) const {
    Report report;
    const value& vg = entry.at("vg").as_array().at(0);
    auto name = Str(vg, "vg_name");
    auto size = U64(vg, "vg_size");
    auto free = U64(vg, "vg_free");
    auto extent = U64(vg, "vg_extent_size");
    for (const absl::Status& s : {name.status(), size.status(), free.status(), extent.status()}) {
      if (!s.ok()) return s;
    }
    if (*extent == 0 || *free > *size) return Bad("vg_extent_size is 0 or vg_free exceeds vg_size");
    report.vg = VgRow{*name, *size, *free, *extent};
    if (!entry.has_field("lv") || !entry.at("lv").is_array()) return Bad("no \"lv\" array");
    for (const value& row : entry.at("lv").as_array()) {
      if (!row.is_object()) return Bad("an lv row is not an object");
      LvRow lv;
      auto lv_name = Str(row, "lv_name");
      auto lv_size = U64(row, "lv_size");
      auto tags = Str(row, "lv_tags");
      auto path = Str(row, "lv_path");
      auto attr = Str(row, "lv_attr");
      auto percent = Percent(row, "data_percent");
      auto meta = Percent(row, "metadata_percent");
      for (const absl::Status& s : {lv_name.status(), lv_size.status(), tags.status(), path.status(), attr.status(),
                                    percent.status(), meta.status()}) {
        if (!s.ok()) return s;
      }
      if (lv_name->empty()) return Bad("an lv row has an empty lv_name");
      lv.name = *lv_name;
      lv.size_bytes = *lv_size;
      for (absl::string_view t : absl::StrSplit(*tags, ',', absl::SkipWhitespace())) {
        lv.tags.emplace_back(absl::StripAsciiWhitespace(t));
      }
      lv.path = *path;
      lv.attr = *attr;
      lv.data_percent = *percent;
      lv.metadata_percent = *meta;
      report.lvs.push_back(std::move(lv));
    }
    return report;
  }

  const std::string& json_;
};

}  // namespace

bool LvRow::HasTag(const std::string& tag) const { return std::find(tags.begin(), tags.end(), tag) != tags.end(); }

absl::StatusOr<Report> ParseFullReport(const std::string& json, const std::string& vg_name) {
  return Parser(json).Parse(vg_name);
}

}  // namespace hvagent::storage::lvm
