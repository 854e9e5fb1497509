#include "storage/lvm/lvm_names.h"

#include <array>
#include <string_view>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace hvagent::storage::lvm {
namespace {

constexpr std::array<const char*, 12> kReservedSubstrings = {
    "_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare",
    "_rimage", "_rmeta", "_tdata", "_tmeta", "_vorigin", "_vdata"};

bool IsAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

// lvm2's name charset and the rules shared by VG and LV names.
bool IsLvmBaseName(const std::string& name) {
  if (name.empty() || name.size() > 127 || name == "." || name == ".." || name[0] == '-') return false;
  for (char c : name) {
    if (!IsAlnum(c) && c != '+' && c != '_' && c != '.' && c != '-') return false;
  }
  return true;
}

std::string Quoted(const std::string& s) {
  std::string shown = s.size() > 80 ? s.substr(0, 80) + "..." : s;
  return absl::StrCat("'", absl::CHexEscape(shown), "'");
}

}  // namespace

bool IsLvmVgName(const std::string& name) { return IsLvmBaseName(name); }

bool IsLvmLvName(const std::string& name) {
  if (!IsLvmBaseName(name)) return false;
  if (absl::StartsWith(name, "snapshot") || absl::StartsWith(name, "pvmove")) return false;
  for (const char* reserved : kReservedSubstrings) {
    if (absl::StrContains(name, reserved)) return false;
  }
  return true;
}

bool IsLvmTag(const std::string& tag) {
  if (tag.empty() || tag.size() > 1024 || tag[0] == '-') return false;
  for (char c : tag) {
    if (!IsAlnum(c) && std::string_view("_+.-/=!:&#").find(c) == std::string_view::npos) return false;
  }
  return true;
}

absl::Status CheckVolumeName(const std::string& name) {
  bool api_ok = !name.empty() && name.size() <= kMaxVolumeName && IsAlnum(name[0]);
  for (char c : name) {
    if (!IsAlnum(c) && c != '.' && c != '_' && c != '-') api_ok = false;
  }
  if (!api_ok) {
    return absl::InvalidArgumentError(absl::StrCat("name: ", Quoted(name), " must be 1-", kMaxVolumeName,
                                                   " of [A-Za-z0-9._-], starting with a letter or digit"));
  }
  if (!IsLvmLvName(name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "name: ", Quoted(name),
        " is reserved by LVM (it starts with 'snapshot' or 'pvmove' or contains a reserved part such as '_tmeta')"));
  }
  return absl::OkStatus();
}

absl::Status CheckDomainName(const std::string& domain) {
  bool ok = !domain.empty() && domain.size() <= kMaxDomainName && IsAlnum(domain[0]);
  for (char c : domain) {
    if (!IsAlnum(c) && c != '.' && c != '_' && c != '-') ok = false;
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("domain: ", Quoted(domain), " must be 1-", kMaxDomainName,
                                                 " of [A-Za-z0-9._-], starting with a letter or digit"));
}

absl::Status CheckPvPath(const std::string& path) {
  auto bad = [&](const char* why) {
    return absl::InvalidArgumentError(absl::StrCat("physical_volumes: ", Quoted(path), " ", why));
  };
  if (!absl::StartsWith(path, "/dev/") || path.size() == 5) return bad("is not a device path under /dev/");
  if (path.size() > 4096) return bad("is too long");
  for (char c : path) {
    if (!IsAlnum(c) && std::string_view("._+:/-").find(c) == std::string_view::npos) {
      return bad("contains a character other than [A-Za-z0-9._+:/-]");
    }
  }
  for (absl::string_view part : absl::StrSplit(absl::string_view(path).substr(1), '/')) {
    if (part.empty() || part == "." || part == "..") return bad("has an empty, '.' or '..' component");
  }
  return absl::OkStatus();
}

}  // namespace hvagent::storage::lvm
