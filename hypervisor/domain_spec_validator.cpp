#include "hypervisor/domain_spec_validator.h"

#include <algorithm>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace hvagent::hv {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

bool IsNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
}

// Letters/digits first, then [A-Za-z0-9._-], at most max_len.
bool IsSimpleName(absl::string_view s, size_t max_len) {
  if (s.empty() || s.size() > max_len) return false;
  if (!absl::ascii_isalnum(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s) {
    if (!IsNameChar(c)) return false;
  }
  return true;
}

bool IsHex(char c) { return absl::ascii_isxdigit(static_cast<unsigned char>(c)); }

bool IsCanonicalUuid(absl::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    bool dash = (i == 8 || i == 13 || i == 18 || i == 23);
    if (dash ? s[i] != '-' : !IsHex(s[i])) return false;
  }
  return true;
}

bool IsMac(absl::string_view s) {
  if (s.size() != 17) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i % 3 == 2 ? s[i] != ':' : !IsHex(s[i])) return false;
  }
  // A multicast address (low bit of the first octet) can't be a NIC's address.
  int first = std::stoi(std::string(s.substr(0, 2)), nullptr, 16);
  return (first & 1) == 0;
}

// XML (and so libvirt) takes UTF-8 only; a path with stray bytes would make the document invalid.
bool IsValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = s[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    uint32_t cp = len == 1 ? c : c & (0x7f >> len);
    for (size_t k = 1; k < len; ++k) {
      unsigned char cc = s[i + k];
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    // U+FFFE and U+FFFF are not XML characters either.
    if (cp == 0xfffe || cp == 0xffff) return false;
    i += len;
  }
  return true;
}

absl::Status ValidatePath(absl::string_view field, absl::string_view path, bool required) {
  if (path.empty()) {
    return required ? Invalid(field, "is required") : absl::OkStatus();
  }
  if (path.size() > 4096) return Invalid(field, "is longer than 4096 characters");
  if (path[0] != '/') return Invalid(field, "must be an absolute path");
  for (unsigned char c : path) {
    if (c < 0x20 || c == 0x7f) return Invalid(field, "must not contain control characters");
  }
  if (!IsValidUtf8(path)) return Invalid(field, "must be valid UTF-8");
  // ',' and ':' carry meaning in Xen disk specs and QEMU options; the rest are shell, glob
  // and markup characters that no disk, kernel or firmware path needs (XML escaping would make
  // them harmless in libvirt's XML, but Xen's hotplug scripts and operators' tools meet them too).
  if (path.find_first_of(",:") != absl::string_view::npos) {
    return Invalid(field, "must not contain ',' or ':'");
  }
  if (path.find_first_of("'\"<>&;|$`\\*?") != absl::string_view::npos) {
    return Invalid(field, "must not contain quotes or any of < > & ; | $ ` \\ * ?");
  }
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") return Invalid(field, "must not contain '..'");
  }
  return absl::OkStatus();
}

bool IsDiskTarget(absl::string_view t) {
  absl::string_view rest;
  for (absl::string_view prefix : {"xvd", "vd", "sd", "hd"}) {
    if (t.substr(0, prefix.size()) == prefix) {
      rest = t.substr(prefix.size());
      break;
    }
  }
  if (rest.empty() || rest.size() > 2) return false;
  for (char c : rest) {
    if (c < 'a' || c > 'z') return false;
  }
  return true;
}

bool OneOf(absl::string_view v, std::initializer_list<absl::string_view> allowed) {
  for (auto a : allowed) {
    if (v == a) return true;
  }
  return false;
}

absl::Status ValidateBoot(const DomainSpec& spec) {
  if (const auto* kernel = std::get_if<DirectKernelBoot>(&spec.boot)) {
    if (auto s = ValidatePath("spec.kernel.kernel_path", kernel->kernel_path, true); !s.ok()) return s;
    if (auto s = ValidatePath("spec.kernel.initrd_path", kernel->initrd_path, false); !s.ok()) return s;
    if (kernel->cmdline.size() > 4096) return Invalid("spec.kernel.cmdline", "is longer than 4096 characters");
    for (unsigned char c : kernel->cmdline) {
      if (c < 0x20 || c >= 0x7f) return Invalid("spec.kernel.cmdline", "must be printable ASCII");
    }
  } else if (const auto* fw = std::get_if<FirmwareBoot>(&spec.boot)) {
    if (auto s = ValidatePath("spec.firmware.loader_path", fw->loader_path, false); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ValidateDisks(const DomainSpec& spec) {
  if (spec.disks.size() > kMaxDisks) return Invalid("spec.disks", absl::StrCat("at most ", kMaxDisks, " disks"));
  std::set<absl::string_view> targets;
  for (size_t i = 0; i < spec.disks.size(); ++i) {
    std::string field = absl::StrCat("spec.disks[", i, "]");
    if (auto s = ValidateDiskSpec(field, spec.disks[i]); !s.ok()) return s;
    if (!targets.insert(spec.disks[i].target).second) return Invalid(field + ".target", "is used twice");
  }
  return absl::OkStatus();
}

absl::Status ValidateNics(const DomainSpec& spec) {
  if (spec.nics.size() > kMaxNics) return Invalid("spec.nics", absl::StrCat("at most ", kMaxNics, " NICs"));
  std::set<std::string> macs;
  std::set<std::string> taps;
  for (size_t i = 0; i < spec.nics.size(); ++i) {
    const NicSpec& n = spec.nics[i];
    std::string field = absl::StrCat("spec.nics[", i, "]");
    if (auto s = ValidateNicSpec(field, n); !s.ok()) return s;
    if (!n.mac.empty() && !macs.insert(absl::AsciiStrToLower(n.mac)).second) {
      return Invalid(field + ".mac", "is used twice");
    }
    // Two ovs ports whose ids share their first 11 characters would share a default name too.
    if (std::string tap = TapName(n); !tap.empty() && !taps.insert(tap).second) {
      return Invalid(field + ".target_dev", absl::StrCat("'", tap, "' is used twice"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool IsTapName(absl::string_view name) {
  if (name.size() < 4 || name.size() > 15 || !absl::StartsWith(name, "tap")) return false;
  return std::all_of(name.begin() + 3, name.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
}

absl::Status ValidateMac(absl::string_view field, absl::string_view mac) {
  if (!IsMac(mac)) return Invalid(field, "must be a unicast MAC like 52:54:00:12:34:56");
  return absl::OkStatus();
}

absl::Status ValidateNicSpec(absl::string_view field_prefix, const NicSpec& n) {
  const std::string field(field_prefix);
  if (!n.mac.empty() && !IsMac(n.mac)) return Invalid(field + ".mac", "must be a unicast MAC like 52:54:00:12:34:56");
  // A host network's bridge is filled in by the agent, so it counts as that one kind.
  const int kinds = !n.network.empty() + (!n.bridge.empty() || n.host_network.has_value()) + !n.ovs_bridge.empty();
  if (kinds != 1) return Invalid(field, "exactly one of network, bridge, ovs, vlan or vxlan is required");
  if (!n.network.empty() && !IsSimpleName(n.network, 64)) {
    return Invalid(field + ".network", "must be 1-64 of [A-Za-z0-9._-]");
  }
  // Interface names reach the kernel and ovs-vsctl: the kernel's 15 bytes (IFNAMSIZ - 1), and
  // no '/', whitespace, shell or control characters.
  constexpr absl::string_view kIfName = "must be 1-15 of [A-Za-z0-9._-], starting with a letter or digit (a Linux "
                                        "interface name)";
  if (!n.bridge.empty() && !IsSimpleName(n.bridge, 15)) return Invalid(field + ".bridge", kIfName);
  if (n.host_network.has_value()) {
    const HostNetwork& h = *n.host_network;
    const bool vlan = h.kind == HostNetwork::Kind::kVlan;
    const std::string sub = field + (vlan ? ".vlan" : ".vxlan");
    if (h.physical.empty()) return Invalid(sub + ".physical", "is required");
    if (!IsSimpleName(h.physical, 15)) return Invalid(sub + ".physical", kIfName);
    if (vlan && (h.id < kMinVlan || h.id > kMaxVlan)) {
      // 0 is 802.1Q's priority tag and 4095 is reserved.
      return Invalid(sub + ".id", absl::StrCat("must be ", kMinVlan, "-", kMaxVlan));
    }
    if (!vlan && (h.id < 1 || h.id > kMaxVni)) return Invalid(sub + ".id", absl::StrCat("must be 1-", kMaxVni));
    // The sub-interface is named <physical>.<id>, which must fit the kernel's 15 bytes too.
    if (vlan && h.physical.size() + 1 + std::to_string(h.id).size() > 15) {
      return Invalid(sub + ".physical", "with '.<id>' appended must fit 15 bytes (the VLAN interface's name)");
    }
  }
  if (!n.ovs_bridge.empty() && !IsSimpleName(n.ovs_bridge, 15)) return Invalid(field + ".ovs.bridge", kIfName);
  if (n.ovs_bridge.empty()) {
    if (!n.interface_id.empty()) return Invalid(field + ".ovs.interface_id", "only an ovs NIC has one");
    if (n.vlan.has_value()) return Invalid(field + ".ovs.vlan", "only an ovs NIC has one");
  } else {
    if (n.interface_id.empty()) return Invalid(field + ".ovs.interface_id", "is required");
    if (!IsCanonicalUuid(n.interface_id)) {
      return Invalid(field + ".ovs.interface_id", "must be a canonical UUID (8-4-4-4-12 hex digits)");
    }
    // 0 is "priority tag only" and 4095 is reserved by 802.1Q.
    if (n.vlan.has_value() && (*n.vlan < kMinVlan || *n.vlan > kMaxVlan)) {
      return Invalid(field + ".ovs.vlan", absl::StrCat("must be ", kMinVlan, "-", kMaxVlan));
    }
  }
  if (!n.target_dev.empty() && !IsTapName(n.target_dev)) {
    return Invalid(field + ".target_dev", "must be 'tap' and 1-12 of [A-Za-z0-9_-] (a tap's name, as Nova's devname)");
  }
  if (n.mtu != 0 && (n.mtu < kMinMtu || n.mtu > kMaxMtu)) {
    return Invalid(field + ".mtu", absl::StrCat("must be ", kMinMtu, "-", kMaxMtu, " (or 0: the bridge's)"));
  }
  if (!n.model.empty() && !OneOf(n.model, {"virtio", "e1000", "e1000e", "rtl8139", "netfront"})) {
    return Invalid(field + ".model", "must be one of virtio, e1000, e1000e, rtl8139, netfront");
  }
  return absl::OkStatus();
}

absl::Status ValidateDiskSpec(absl::string_view field_prefix, const DiskSpec& d) {
  std::string field(field_prefix);
  if (auto s = ValidatePath(field + ".source_path", d.source_path, true); !s.ok()) return s;
  if (!IsDiskTarget(d.target)) {
    return Invalid(field + ".target", "must look like vda, sdb, hdc or xvda");
  }
  if (!d.bus.empty() && !OneOf(d.bus, {"virtio", "xen", "scsi", "sata", "ide", "usb"})) {
    return Invalid(field + ".bus", "must be one of virtio, xen, scsi, sata, ide, usb");
  }
  if (!d.format.empty() && !OneOf(d.format, {"raw", "qcow2"})) {
    return Invalid(field + ".format", "must be raw or qcow2");
  }
  if (d.type == DiskType::kBlock && d.format == "qcow2") {
    return Invalid(field + ".format", "block devices are raw");
  }
  // virtio-blk and Xen's PV disks have no CD-ROM kind: the drive sits on an emulated bus.
  const std::string bus = d.bus.empty() ? (absl::StartsWith(d.target, "hd") ? "ide" : absl::StartsWith(d.target, "sd") ? "scsi" : "")
                                        : d.bus;
  if (d.cdrom && !OneOf(bus, {"ide", "sata", "scsi"})) {
    return Invalid(field + ".device", "a CD-ROM sits on an ide, sata or scsi bus: use a target like hdc or sda");
  }
  return absl::OkStatus();
}

namespace {

bool IsLabelKey(absl::string_view k) {
  if (k.empty() || k.size() > kMaxLabelKeyBytes) return false;
  auto lower_or_digit = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!lower_or_digit(k[0])) return false;
  for (char c : k) {
    if (!lower_or_digit(c) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

// Well-formed UTF-8 (shortest forms, no surrogates) with no C0/C1 control characters or DEL:
// the value becomes XML text, which cannot hold most controls, and is shown to operators.
bool IsPrintableUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      if (b < 0x20 || b == 0x7f) return false;
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((b & 0xe0) == 0xc0) {
      len = 2, cp = b & 0x1f;
    } else if ((b & 0xf0) == 0xe0) {
      len = 3, cp = b & 0x0f;
    } else if ((b & 0xf8) == 0xf0) {
      len = 4, cp = b & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t j = 1; j < len; ++j) {
      const auto c = static_cast<unsigned char>(s[i + j]);
      if ((c & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3f);
    }
    static constexpr uint32_t kMinOfLength[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinOfLength[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    if (cp >= 0x80 && cp <= 0x9f) return false;  // C1 controls
    i += len;
  }
  return true;
}

}  // namespace

absl::Status ValidateDomainLabels(const std::map<std::string, std::string>& labels) {
  if (labels.size() > kMaxLabels) {
    return Invalid("spec.labels", absl::StrCat("at most ", kMaxLabels, " labels, got ", labels.size()));
  }
  for (const auto& [key, value] : labels) {
    // The key is quoted only once it is known to be harmless; a bad one is shown truncated.
    if (!IsLabelKey(key)) {
      std::string shown = IsPrintableUtf8(key) ? key.substr(0, 64) : std::string("?");
      return Invalid(absl::StrCat("spec.labels[\"", shown, "\"]"),
                     "key must match [a-z0-9][a-z0-9._-]{0,62}");
    }
    const std::string field = absl::StrCat("spec.labels[\"", key, "\"]");
    if (value.size() > kMaxLabelValueBytes) {
      return Invalid(field, absl::StrCat("value must be at most ", kMaxLabelValueBytes, " bytes, got ", value.size()));
    }
    if (!IsPrintableUtf8(value)) return Invalid(field, "value must be UTF-8 text without control characters");
  }
  return absl::OkStatus();
}

absl::Status ValidateDomainName(absl::string_view field, absl::string_view name) {
  if (name.empty()) return Invalid(field, "is required");
  if (!IsSimpleName(name, 64)) {
    return Invalid(field, "must be 1-64 characters of [A-Za-z0-9._-], starting with a letter or digit");
  }
  return absl::OkStatus();
}

// libvirt refuses a topology whose product differs from the vCPU maximum; saying so here names
// the field, where libvirt's own message would come back from define with no field at all.
static absl::Status ValidateCpuTune(const DomainSpec& spec) {
  if (spec.cpu_topology) {
    const GuestCpuTopology& t = *spec.cpu_topology;
    if (t.sockets < 1 || t.cores < 1 || t.threads < 1) {
      return Invalid("spec.cpu_topology", absl::StrCat("sockets, cores and threads must each be at least 1, got ",
                                                       t.sockets, "x", t.cores, "x", t.threads));
    }
    const uint64_t product = uint64_t{t.sockets} * t.cores * t.threads;
    const uint32_t vcpu_max = std::max(spec.vcpus, spec.max_vcpus);
    if (product != vcpu_max) {
      return Invalid("spec.cpu_topology",
                     absl::StrCat("sockets x cores x threads (", t.sockets, "x", t.cores, "x", t.threads, " = ",
                                  product, ") must equal the vCPU maximum (", vcpu_max, ")"));
    }
  }
  if (spec.cpu_shares > kMaxCpuShares) {
    return Invalid("spec.cpu_shares",
                   absl::StrCat("must be 0 (default) or between 1 and ", kMaxCpuShares, ", got ", spec.cpu_shares));
  }
  return absl::OkStatus();
}

absl::Status ValidateDomainSpec(const DomainSpec& spec) {
  if (auto s = ValidateDomainName("spec.name", spec.name); !s.ok()) return s;
  if (!spec.uuid.empty() && !IsCanonicalUuid(spec.uuid)) {
    return Invalid("spec.uuid", "must be a canonical UUID (8-4-4-4-12 hex digits)");
  }
  if (spec.vcpus < 1 || spec.vcpus > kMaxVcpus) {
    return Invalid("spec.vcpus", absl::StrCat("must be between 1 and ", kMaxVcpus, ", got ", spec.vcpus));
  }
  if (spec.max_vcpus != 0 && (spec.max_vcpus < spec.vcpus || spec.max_vcpus > kMaxVcpus)) {
    return Invalid("spec.max_vcpus", absl::StrCat("must be 0 or between vcpus (", spec.vcpus, ") and ", kMaxVcpus,
                                                  ", got ", spec.max_vcpus));
  }
  if (spec.memory_mib < kMinMemoryMib || spec.memory_mib > kMaxMemoryMib) {
    return Invalid("spec.memory_mib", absl::StrCat("must be between ", kMinMemoryMib, " and ", kMaxMemoryMib,
                                                   ", got ", spec.memory_mib));
  }
  if (!spec.arch.empty() && !OneOf(spec.arch, {"aarch64", "x86_64", "i686", "armv7l"})) {
    return Invalid("spec.arch", "must be one of aarch64, x86_64, i686, armv7l");
  }
  if (!spec.cpu_model.empty() && !IsSimpleName(spec.cpu_model, 64)) {
    return Invalid("spec.cpu_model", "must be 1-64 of [A-Za-z0-9._-]");
  }
  if (!spec.gic_version.empty() && !OneOf(spec.gic_version, {"2", "3", "host"})) {
    return Invalid("spec.gic_version", "must be 2, 3 or host");
  }
  if (auto s = ValidateCpuTune(spec); !s.ok()) return s;
  if (!spec.machine.empty() && !IsSimpleName(spec.machine, 64)) {
    return Invalid("spec.machine", "must be 1-64 of [A-Za-z0-9._-]");
  }
  if (auto s = ValidateDomainLabels(spec.labels); !s.ok()) return s;
  if (auto s = ValidateBoot(spec); !s.ok()) return s;
  if (auto s = ValidateDisks(spec); !s.ok()) return s;
  return ValidateNics(spec);
}

}  // namespace hvagent::hv
