#include "storage/partition/gpt_layout.h"

#include <algorithm>
#include <exception>
#include <limits>

#include <cpprest/json.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace hvagent::storage::gpt {
namespace {

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

uint64_t AlignUp(uint64_t v) { return v > kMax - (kAlign - 1) ? kMax / kAlign * kAlign : (v + kAlign - 1) / kAlign * kAlign; }
uint64_t AlignDown(uint64_t v) { return v / kAlign * kAlign; }

bool IsAlnum(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

bool AllOf(const std::string& s, size_t from, absl::string_view extra) {
  for (size_t i = from; i < s.size(); ++i) {
    if (!IsAlnum(s[i]) && extra.find(s[i]) == absl::string_view::npos) return false;
  }
  return true;
}

absl::Status Bad(const std::string& what) { return absl::InternalError(absl::StrCat("sfdisk --json output: ", what)); }

// Reads a non-negative integer field; sfdisk prints sector counts as JSON numbers.
absl::StatusOr<uint64_t> U64(const web::json::value& obj, const std::string& field) {
  if (!obj.has_field(field)) return Bad(absl::StrCat("missing \"", field, "\""));
  const web::json::value& v = obj.at(field);
  if (!v.is_number() || !v.as_number().is_uint64()) return Bad(absl::StrCat("\"", field, "\" is not a non-negative integer"));
  return v.as_number().to_uint64();
}

absl::StatusOr<std::string> Str(const web::json::value& obj, const std::string& field, bool required) {
  if (!obj.has_field(field)) {
    if (required) return Bad(absl::StrCat("missing \"", field, "\""));
    return std::string();
  }
  const web::json::value& v = obj.at(field);
  if (!v.is_string()) return Bad(absl::StrCat("\"", field, "\" is not a string"));
  return v.as_string();
}

absl::StatusOr<Table> ParseTable(const web::json::value& root, const std::string& disk) {
  if (!root.is_object() || !root.has_field("partitiontable") || !root.at("partitiontable").is_object()) {
    return Bad("no \"partitiontable\" object");
  }
  const web::json::value& pt = root.at("partitiontable");
  Table t;
  auto label = Str(pt, "label", true);
  if (!label.ok()) return label.status();
  t.label = *label;
  if (auto unit = Str(pt, "unit", false); !unit.ok() || (!unit->empty() && *unit != "sectors")) {
    return Bad("unit is not sectors");
  }
  auto ss = U64(pt, "sectorsize");
  if (!ss.ok()) return ss.status();
  if (*ss < 512 || *ss > 65536 || (*ss & (*ss - 1)) != 0) return Bad(absl::StrCat("implausible sector size ", *ss));
  t.sector_size = *ss;
  const uint64_t max_sectors = kMax / t.sector_size - 1;
  if (t.label == "gpt") {
    auto first = U64(pt, "firstlba");
    auto last = U64(pt, "lastlba");
    if (!first.ok()) return first.status();
    if (!last.ok()) return last.status();
    if (*first > *last || *last >= max_sectors) return Bad("firstlba/lastlba out of range");
    t.first_lba = *first;
    t.last_lba = *last;
  }
  if (!pt.has_field("partitions")) return t;
  if (!pt.at("partitions").is_array()) return Bad("\"partitions\" is not an array");
  for (const web::json::value& p : pt.at("partitions").as_array()) {
    if (!p.is_object()) return Bad("a partition is not an object");
    Partition part;
    auto node = Str(p, "node", true);
    auto start = U64(p, "start");
    auto size = U64(p, "size");
    auto name = Str(p, "name", false);
    auto type = Str(p, "type", false);
    for (const absl::Status& s : {node.status(), start.status(), size.status(), name.status(), type.status()}) {
      if (!s.ok()) return s;
    }
    auto number = PartitionNumber(disk, *node);
    if (!number) return Bad(absl::StrCat("partition node '", *node, "' is not a partition of ", disk));
    if (*start > max_sectors || *size > max_sectors - *start) return Bad(absl::StrCat(*node, ": start/size out of range"));
    part.number = *number;
    part.node = *node;
    part.start = *start;
    part.size = *size;
    part.name = *name;
    part.type = *type;
    t.partitions.push_back(std::move(part));
  }
  return t;
}

}  // namespace

uint64_t Table::UsableBegin() const { return AlignUp(first_lba * sector_size); }
uint64_t Table::UsableEnd() const {
  uint64_t end = AlignDown((last_lba + 1) * sector_size);
  return std::max(end, UsableBegin());
}

absl::StatusOr<Table> ParseSfdiskJson(const std::string& json, const std::string& disk) {
  try {
    return ParseTable(web::json::value::parse(json), disk);
  } catch (const std::exception& e) {
    return Bad(absl::StrCat("not JSON (", e.what(), ")"));
  }
}

std::string PartitionPath(const std::string& disk, uint32_t number) {
  if (absl::StartsWith(disk, "/dev/disk/by-")) return absl::StrCat(disk, "-part", number);
  bool digit_end = !disk.empty() && disk.back() >= '0' && disk.back() <= '9';
  return absl::StrCat(disk, digit_end ? "p" : "", number);
}

std::optional<uint32_t> PartitionNumber(const std::string& disk, const std::string& node) {
  if (!absl::StartsWith(node, disk)) return std::nullopt;
  size_t i = disk.size();
  while (i < node.size() && (node[i] < '0' || node[i] > '9')) ++i;
  std::string digits = node.substr(i);
  if (digits.empty() || digits.size() > 6 || digits[0] == '0' ||
      digits.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  uint32_t n = static_cast<uint32_t>(std::stoul(digits));
  // Only the exact spelling of the rule counts ("/dev/sdb" + "x3" is not partition 3).
  if (PartitionPath(disk, n) != node) return std::nullopt;
  return n;
}

std::vector<Region> FreeRegions(const Table& table) {
  std::vector<const Partition*> parts;
  for (const auto& p : table.partitions) parts.push_back(&p);
  std::sort(parts.begin(), parts.end(), [](const Partition* a, const Partition* b) { return a->start < b->start; });
  std::vector<Region> out;
  const uint64_t usable_end = table.UsableEnd();
  uint64_t cursor = table.UsableBegin();
  auto gap = [&](uint64_t until) {
    uint64_t b = AlignUp(cursor);
    uint64_t e = AlignDown(std::min(until, usable_end));
    if (e > b) out.push_back({b, e});
  };
  for (const Partition* p : parts) {
    gap(table.StartBytes(*p));
    cursor = std::max(cursor, table.EndBytes(*p));
  }
  gap(usable_end);
  return out;
}

bool IsVolumeName(const std::string& name) {
  return !name.empty() && name.size() <= kMaxVolumeName && IsAlnum(name[0]) && AllOf(name, 1, "._-");
}

bool IsDomainName(const std::string& name) {
  return !name.empty() && name.size() <= kMaxVolumeAndDomain && IsAlnum(name[0]) && AllOf(name, 1, "._+-");
}

bool IsDiskPath(const std::string& path) {
  return path.size() > 5 && path.size() <= 255 && absl::StartsWith(path, "/dev/") && AllOf(path, 5, "._+:/-") &&
         path.back() != '/' && !absl::StrContains(path, "..") && !absl::StrContains(path, "//");
}

std::optional<VolumeLabel> ParseLabel(const std::string& partition_name) {
  if (!absl::StartsWith(partition_name, kNamePrefix) || partition_name.size() > kMaxGptName) return std::nullopt;
  std::string rest = partition_name.substr(kPrefixLength);
  VolumeLabel label;
  size_t at = rest.find_first_of("@=");
  label.volume = rest.substr(0, at);
  if (at != std::string::npos) {
    label.owned = rest[at] == '=';
    label.domain = rest.substr(at + 1);
    if (!IsDomainName(label.domain)) return std::nullopt;
  }
  if (!IsVolumeName(label.volume)) return std::nullopt;
  return label;
}

std::string MakeLabel(const std::string& volume, const std::string& domain, bool owned) {
  if (domain.empty()) return absl::StrCat(kNamePrefix, volume);
  return absl::StrCat(kNamePrefix, volume, owned ? "=" : "@", domain);
}

std::optional<ImageLabel> ParseImageLabel(const std::string& partition_name) {
  const size_t prefix = sizeof(kImagePrefix) - 1;
  ImageLabel label;
  if (absl::StartsWith(partition_name, kImagePrefix)) {
    label.ready = true;
  } else if (!absl::StartsWith(partition_name, kImportingPrefix)) {
    return std::nullopt;
  }
  label.image = partition_name.substr(prefix);
  if (!IsVolumeName(label.image)) return std::nullopt;
  return label;
}

std::string MakeImageLabel(const std::string& image, bool ready) {
  return absl::StrCat(ready ? kImagePrefix : kImportingPrefix, image);
}

}  // namespace hvagent::storage::gpt
