#pragma once
// Name rules for everything the LVM backend passes to lvm2, checked before any command runs.
// lvm2's own rules (lib/misc/lvm-string.c, man lvm "VALID NAMES"): [A-Za-z0-9+_.-], not
// starting with '-', not "." or "..", no reserved suffix-like substrings (_tmeta, _rimage...),
// LV names not starting with "snapshot" or "pvmove". Volume names must also match the API rule
// [A-Za-z0-9][A-Za-z0-9._-]{0,62}, so '+' is refused too. Tags (man lvm "TAGS"):
// [A-Za-z0-9_+.-/=!:&#], at most 1024 characters.

#include <string>

#include "absl/status/status.h"

namespace hvagent::storage::lvm {

inline constexpr size_t kMaxVolumeName = 63;
inline constexpr size_t kMaxDomainName = 255;

// True when `name` is a valid LV name for lvm2 (its rules only).
bool IsLvmLvName(const std::string& name);
// True when `name` is a valid VG name for lvm2.
bool IsLvmVgName(const std::string& name);
// True when `tag` is a valid LVM tag.
bool IsLvmTag(const std::string& tag);

// Volume names: lvm2's LV rules and the API rule. InvalidArgument naming `name`.
absl::Status CheckVolumeName(const std::string& name);
// Domain names recorded in tags: [A-Za-z0-9._-]{1,255}, starting with a letter or digit.
// InvalidArgument naming `domain`.
absl::Status CheckDomainName(const std::string& domain);
// Physical volume paths from the config: absolute, under /dev/, no "." or ".." components, no
// empty components, only [A-Za-z0-9._+:/-]. InvalidArgument naming `physical_volumes`.
absl::Status CheckPvPath(const std::string& path);

}  // namespace hvagent::storage::lvm
