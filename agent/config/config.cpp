#include "agent/config/config.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include <toml++/toml.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace hvagent::config {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

// ---- the key table ------------------------------------------------------------------------
// Every key of the file is one row: where it lives, how it is read and range-checked into which
// member. Rows drive parsing and the unknown-key errors (a typo must not be silently ignored),
// and ConfigKeys() hands them to the test that holds docs/configuration.md to them.

using KeyReader = std::function<absl::Status(const toml::node& value, const std::string& field, Config& c)>;

struct Key {
  const char* section;
  const char* name;
  KeyReader read;  // null: an array of tables, read by its own function (ParsePools, ParseAuth)
};

absl::Status WrongType(const std::string& field) { return Invalid(field, "has the wrong type"); }

template <typename T>
Key Plain(const char* section, const char* name, T Config::*member) {
  return {section, name, [member](const toml::node& n, const std::string& field, Config& c) {
            auto v = n.value<T>();
            if (!v) return WrongType(field);
            c.*member = *v;
            return absl::OkStatus();
          }};
}

// [migration] NAME: a URI with one of `schemes` and nothing but host-name characters, ':' and
// '/' after it (no query, no user), as MigrationService checks it again on the source; or empty.
Key MigrationUri(const char* name, std::string Config::*member, std::vector<std::string> schemes) {
  return {"migration", name, [member, schemes](const toml::node& n, const std::string& field, Config& c) {
            auto v = n.value<std::string>();
            if (!v) return WrongType(field);
            bool ok = v->empty();
            for (const std::string& scheme : schemes) {
              if (v->rfind(scheme, 0) != 0 || v->size() == scheme.size()) continue;
              ok = std::all_of(v->begin() + scheme.size(), v->end(), [](char ch) {
                return std::isalnum(static_cast<unsigned char>(ch)) || std::strchr(".-:[]/", ch) != nullptr;
              });
            }
            if (!ok) return Invalid(field, absl::StrCat("must be ", absl::StrJoin(schemes, " or "), "HOST..."));
            c.*member = *v;
            return absl::OkStatus();
          }};
}

// [console] NAME: an absolute directory path without '..', or empty (none).
Key LogDirectory(const char* name, std::string Config::*member) {
  return {"console", name, [member](const toml::node& n, const std::string& field, Config& c) {
            auto v = n.value<std::string>();
            if (!v) return WrongType(field);
            if (!v->empty() && ((*v)[0] != '/' || v->find("..") != std::string::npos)) {
              return Invalid(field, "must be an absolute path without '..'");
            }
            c.*member = *v;
            return absl::OkStatus();
          }};
}

// An integer in [lo, hi] (or 0 when `zero_too`), into an integer or std::chrono member.
template <typename M>
Key Integer(const char* section, const char* name, M Config::*member, int64_t lo, int64_t hi,
            const char* rule = nullptr, bool zero_too = false) {
  std::string why = rule != nullptr ? rule : absl::StrCat("must be ", lo, "-", hi);
  return {section, name, [=](const toml::node& n, const std::string& field, Config& c) {
            auto v = n.value<int64_t>();
            if (!v) return WrongType(field);
            if ((*v < lo || *v > hi) && !(zero_too && *v == 0)) return Invalid(field, why);
            c.*member = static_cast<M>(*v);
            return absl::OkStatus();
          }};
}

// A number greater than 0 (or at least `lo` when `lo` > 0) and at most `hi`.
Key Real(const char* section, const char* name, double Config::*member, double lo, double hi, const char* rule) {
  return {section, name, [=](const toml::node& n, const std::string& field, Config& c) {
            auto v = n.value<double>();
            if (!v) return WrongType(field);
            if (!(lo > 0 ? *v >= lo : *v > 0) || !(*v <= hi)) return Invalid(field, rule);
            c.*member = *v;
            return absl::OkStatus();
          }};
}

Key Array(const char* section, const char* name) { return {section, name, nullptr}; }

// [security] image_dirs / kernel_dirs / firmware_dirs: absolute directories written canonically.
// Whether they are safe to trust (owner, mode, no symbolic links) is checked at start, on the
// directories themselves (HostPathPolicy::Open).
Key Directories(const char* section, const char* name, std::vector<std::string> Config::*member) {
  return {section, name, [member](const toml::node& n, const std::string& field, Config& c) {
            const toml::array* list = n.as_array();
            if (list == nullptr) return Invalid(field, "must be an array of directories");
            std::vector<std::string> dirs;
            for (size_t i = 0; i < list->size(); ++i) {
              const std::string item = absl::StrCat(field, "[", i, "]");
              auto dir = (*list)[i].value<std::string>();
              if (!dir || !(*list)[i].is_string()) return Invalid(item, "must be a string");
              if (dir->size() < 2 || dir->size() > 1024 || (*dir)[0] != '/' || dir->back() == '/' ||
                  dir->find("//") != std::string::npos || dir->find("/./") != std::string::npos ||
                  dir->find("/../") != std::string::npos || dir->ends_with("/..") || dir->ends_with("/.") ||
                  dir->find('\0') != std::string::npos) {
                return Invalid(item, "must be an absolute directory other than /, written canonically (no '//', "
                                     "'.', '..' or trailing '/')");
              }
              dirs.push_back(*dir);
            }
            c.*member = std::move(dirs);
            return absl::OkStatus();
          }};
}

// [network] bridges / ovs_bridges: interface names (1-15 of [A-Za-z0-9._-], as NICs name them).
template <typename M>
Key InterfaceNames(const char* section, const char* name, M Config::*member) {
  return {section, name, [member](const toml::node& n, const std::string& field, Config& c) {
            const toml::array* list = n.as_array();
            if (list == nullptr) return Invalid(field, "must be an array of interface names");
            std::vector<std::string> names;
            for (size_t i = 0; i < list->size(); ++i) {
              const std::string item = absl::StrCat(field, "[", i, "]");
              auto v = (*list)[i].value<std::string>();
              if (!v || !(*list)[i].is_string()) return Invalid(item, "must be a string");
              if (v->empty() || v->size() > 15 || !std::isalnum(static_cast<unsigned char>((*v)[0])) ||
                  v->find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") !=
                      std::string::npos) {
                return Invalid(item, "must be 1-15 of [A-Za-z0-9._-], starting with a letter or digit");
              }
              names.push_back(*v);
            }
            c.*member = std::move(names);
            return absl::OkStatus();
          }};
}

// A bridge name prefix: letters and digits, short enough that the prefix and the largest id
// (`digits` of them) fit the kernel's 15-byte interface names.
Key BridgePrefix(const char* name, std::string Config::*member, size_t digits) {
  return {"network", name, [=](const toml::node& n, const std::string& field, Config& c) {
            auto v = n.value<std::string>();
            if (!v || !n.is_string()) return WrongType(field);
            const size_t max = 15 - digits;
            if (v->empty() || v->size() > max || !std::isalpha(static_cast<unsigned char>((*v)[0])) ||
                v->find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-") !=
                    std::string::npos) {
              return Invalid(field, absl::StrCat("must be 1-", max, " of [A-Za-z0-9-], starting with a letter"));
            }
            c.*member = *v;
            return absl::OkStatus();
          }};
}

const std::vector<Key>& Keys() {
  using std::chrono::milliseconds;
  using std::chrono::seconds;
  static const std::vector<Key> keys = {
      Plain("hypervisor", "uri", &Config::hypervisor_uri),
      {"hypervisor", "domain_type",
       [](const toml::node& n, const std::string& field, Config& c) {
         auto v = n.value<std::string>();
         if (!v) return WrongType(field);
         if (!v->empty() && *v != "kvm" && *v != "qemu" && *v != "xen") {
           return Invalid(field, "must be kvm, qemu, xen or empty (the best the hypervisor offers)");
         }
         c.hypervisor_domain_type = *v;
         return absl::OkStatus();
       }},
      Plain("grpc", "listen", &Config::grpc_listen),
      Integer("grpc", "workers", &Config::grpc_workers, 1, 1024),
      Plain("rest", "listen", &Config::rest_listen),
      Integer("rest", "max_body_bytes", &Config::rest_max_body_bytes, 1024, 64 << 20, "must be 1 KiB to 64 MiB"),
      Plain("rest", "require_client_cert", &Config::rest_require_client_cert),
      Plain("log", "level", &Config::log_level),
      {"log", "format",
       [](const toml::node& n, const std::string& field, Config& c) {
         auto v = n.value<std::string>();
         if (!v) return WrongType(field);
         if (*v != "text" && *v != "json") return Invalid(field, "must be text or json");
         c.log_format = *v == "json" ? log::Format::kJson : log::Format::kText;
         return absl::OkStatus();
       }},
      Integer("domain", "shutdown_timeout_seconds", &Config::shutdown_timeout, 1, 3600),
      Array("storage", "pools"),
      Real("capacity", "cpu_allocation_ratio", &Config::cpu_allocation_ratio, 0, 64,
           "must be greater than 0 and at most 64"),
      Real("capacity", "memory_allocation_ratio", &Config::memory_allocation_ratio, 0, 16,
           "must be greater than 0 and at most 16"),
      Integer("capacity", "reserved_cpus", &Config::reserved_cpus, 0, 4096),
      Integer("capacity", "reserved_memory_mib", &Config::reserved_memory_mib, 0, int64_t{1} << 32),
      Integer("capacity", "pool_free_floor_mib", &Config::pool_free_floor_mib, 0, int64_t{1} << 40),
      Integer("metrics", "max_age_ms", &Config::metrics_max_age, 100, 60000),
      Real("event_channels", "alert_share", &Config::evtchn_alert_share, 0, 1, "must be greater than 0 and at most 1"),
      Integer("event_channels", "default_max_port", &Config::evtchn_default_max_port, 1, 131071),
      Integer("event_channels", "interval_seconds", &Config::evtchn_interval, 1, 3600),
      Plain("tls", "cert_file", &Config::tls_cert_file),
      Plain("tls", "key_file", &Config::tls_key_file),
      Plain("tls", "client_ca_file", &Config::tls_client_ca_file),
      Integer("tls", "reload_seconds", &Config::tls_reload_seconds, 1, 86400),
      Plain("security", "plaintext_loopback", &Config::plaintext_loopback),
      Directories("security", "image_dirs", &Config::image_dirs),
      Directories("security", "kernel_dirs", &Config::kernel_dirs),
      Directories("security", "firmware_dirs", &Config::firmware_dirs),
      {"images", "allowed_sources",
       [](const toml::node& n, const std::string& field, Config& c) {
         const toml::array* list = n.as_array();
         if (list == nullptr) return Invalid(field, "must be an array of URL prefixes");
         std::vector<std::string> prefixes;
         for (size_t i = 0; i < list->size(); ++i) {
           auto v = (*list)[i].value<std::string>();
           const std::string item = absl::StrCat(field, "[", i, "]");
           if (!v || !(*list)[i].is_string()) return Invalid(item, "must be a string");
           // A prefix ends in '/' past the host, so "http://mirror" cannot also allow "http://mirror.evil".
           const size_t scheme = v->starts_with("https://") ? 8 : v->starts_with("http://") ? 7 : 0;
           if (scheme == 0 || v->find('/', scheme) == std::string::npos || v->find('/', scheme) == scheme ||
               v->back() != '/' || v->find_first_of(" @#\\") != std::string::npos) {
             return Invalid(item, "must be an http:// or https:// URL with a host, ending in '/'");
           }
           prefixes.push_back(*v);
         }
         c.image_allowed_sources = std::move(prefixes);
         return absl::OkStatus();
       }},
      Directories("images", "import_dirs", &Config::image_import_dirs),
      {"images", "scratch_dir",
       [](const toml::node& n, const std::string& field, Config& c) {
         auto v = n.value<std::string>();
         if (!v) return WrongType(field);
         if (v->empty() || (*v)[0] != '/') return Invalid(field, "must be an absolute path");
         c.image_scratch_dir = *v;
         return absl::OkStatus();
       }},
      Integer("images", "max_virtual_size_mib", &Config::image_max_virtual_size_mib, 1, int64_t{1} << 24),
      Plain("migration", "cert_file", &Config::migration_cert_file),
      Plain("migration", "key_file", &Config::migration_key_file),
      Plain("migration", "ca_file", &Config::migration_ca_file),
      Integer("migration", "incoming_idle_seconds", &Config::migration_incoming_idle_seconds, 10, 86400),
      Integer("migration", "data_port", &Config::migration_data_port, -1, 65535),
      MigrationUri("libvirt_uri", &Config::migration_libvirt_uri, {"qemu+tls://", "qemu+tcp://"}),
      MigrationUri("migrate_uri", &Config::migration_migrate_uri, {"tcp://"}),
      Plain("migration", "libvirt_tls", &Config::migration_libvirt_tls),
      Integer("migration", "peer_heartbeat_ms", &Config::migration_peer_heartbeat_ms, 100, 60000),
      Integer("migration", "peer_heartbeat_misses", &Config::migration_peer_heartbeat_misses, 1, 100),
      Array("auth", "identities"),
      Array("auth", "tokens"),
      Real("limits", "requests_per_second", &Config::requests_per_second, 0, 1e6,
           "must be greater than 0 and at most 1000000"),
      Real("limits", "burst", &Config::request_burst, 1, 1e6, "must be 1-1000000"),
      Integer("limits", "max_streams_per_caller", &Config::max_streams_per_caller, 1, 100000),
      Integer("limits", "max_operations_in_flight", &Config::max_operations_in_flight, 1, 10000),
      {"reliability", "state_dir",
       [](const toml::node& n, const std::string& field, Config& c) {
         auto v = n.value<std::string>();
         if (!v) return WrongType(field);
         if (!v->empty() && (*v)[0] != '/') return Invalid(field, "must be an absolute path");
         c.state_dir = *v;
         return absl::OkStatus();
       }},
      Integer("reliability", "idempotency_window_seconds", &Config::idempotency_window, 60, 30 * 86400,
              "must be 60 to 2592000 (30 days)"),
      Integer("reliability", "idempotency_max_entries", &Config::idempotency_max_entries, 1, 1000000),
      Integer("reliability", "reconcile_interval_seconds", &Config::reconcile_interval, 10, 86400,
              "must be 0 (only at start) or 10-86400", /*zero_too=*/true),
      Plain("reliability", "release_orphans", &Config::release_orphans),
      Integer("console", "ticket_ttl_seconds", &Config::console_ticket_ttl, 1, 3600),
      Plain("console", "tcp_listen", &Config::console_tcp_listen),
      Integer("console", "tcp_port_min", &Config::console_tcp_port_min, 1024, 65535),
      Integer("console", "tcp_port_max", &Config::console_tcp_port_max, 1024, 65535),
      Plain("console", "ws_listen", &Config::console_ws_listen),
      Plain("console", "ws_public_host", &Config::console_ws_public_host),
      {"console", "vnc_listen",
       [](const toml::node& n, const std::string& field, Config& c) {
         // An address only: libvirt writes it into QEMU's -vnc option and the ticket hands it
         // to the console proxy, so a name or a port here would be wrong in both.
         auto v = n.value<std::string>();
         if (!v) return WrongType(field);
         unsigned char buf[16];
         if (inet_pton(AF_INET, v->c_str(), buf) != 1 && inet_pton(AF_INET6, v->c_str(), buf) != 1) {
           return Invalid(field, "must be an IP address (no port, no name)");
         }
         c.console_vnc_listen = *v;
         return absl::OkStatus();
       }},
      LogDirectory("log_dir", &Config::console_log_dir),
      LogDirectory("xen_log_dir", &Config::console_xen_log_dir),
      InterfaceNames("network", "bridges", &Config::network_bridges),
      InterfaceNames("network", "ovs_bridges", &Config::network_ovs_bridges),
      InterfaceNames("network", "physical_interfaces", &Config::network_physical_interfaces),
      BridgePrefix("vlan_bridge_prefix", &Config::network_vlan_bridge_prefix, 4),
      BridgePrefix("vxlan_bridge_prefix", &Config::network_vxlan_bridge_prefix, 8),
      Integer("network", "mtu", &Config::network_mtu, 576, 65535, "must be 576-65535 (or 0: the kernel's)", true),
  };
  return keys;
}

const Key* FindKey(const std::string& section, const std::string& name) {
  for (const Key& k : Keys()) {
    if (section == k.section && name == k.name) return &k;
  }
  return nullptr;
}

// Every key present is known, and read by its row.
absl::Status ReadKeys(const toml::table& root, Config& c) {
  for (const auto& [section_key, node] : root) {
    const std::string section(section_key.str());
    const bool known_section = std::any_of(Keys().begin(), Keys().end(),
                                           [&](const Key& k) { return section == k.section; });
    if (!known_section) return Invalid(section, "unknown section");
    const toml::table* t = node.as_table();
    if (t == nullptr) return Invalid(section, "must be a table");
    for (const auto& [name_key, value] : *t) {
      const std::string field = absl::StrCat(section, ".", std::string(name_key.str()));
      const Key* key = FindKey(section, std::string(name_key.str()));
      if (key == nullptr) return Invalid(field, "unknown key");
      if (key->read) {
        if (auto s = key->read(value, field, c); !s.ok()) return s;
      }
    }
  }
  return absl::OkStatus();
}

bool IsPoolName(const std::string& s) {
  if (s.empty() || s.size() > 64 || !std::isalnum(static_cast<unsigned char>(s[0]))) return false;
  return s.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") ==
         std::string::npos;
}

// A device the operator names: absolute, under /dev/, no ".." anywhere and no "//" (no
// traversal and nothing that merely looks like it), nothing odd.
bool IsDevicePath(const std::string& p) {
  if (p.rfind("/dev/", 0) != 0 || p.size() > 255 || p.find("..") != std::string::npos ||
      p.find("//") != std::string::npos) {
    return false;
  }
  return p.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-+/:") ==
         std::string::npos;
}

bool IsSha256Hex(const std::string& s) {
  return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

std::string GetString(const toml::table& t, const char* key) {
  auto* v = t.get_as<std::string>(key);
  return v != nullptr ? v->get() : "";
}

// [[auth.identities]] {name, role} and [[auth.tokens]] {name, sha256, role}.
absl::Status ParseAuth(const toml::table& root, Config& c) {
  static const std::set<std::string> roles = {"monitor", "operator", "controller", "peer"};
  struct Kind {
    const char* path;
    std::set<std::string> keys;
  };
  for (const Kind& kind : {Kind{"auth.identities", {"name", "role"}}, Kind{"auth.tokens", {"name", "sha256", "role"}}}) {
    const toml::node* node = root.at_path(kind.path).node();
    if (node == nullptr) continue;
    const toml::array* list = node->as_array();
    if (list == nullptr) return Invalid(kind.path, absl::StrCat("must be an array of tables ([[", kind.path, "]])"));
    std::set<std::string> seen;
    for (size_t i = 0; i < list->size(); ++i) {
      std::string field = absl::StrCat(kind.path, "[", i, "]");
      const toml::table* t = (*list)[i].as_table();
      if (t == nullptr) return Invalid(field, "must be a table");
      for (const auto& [key, value] : *t) {
        if (!kind.keys.contains(std::string(key.str()))) {
          return Invalid(absl::StrCat(field, ".", std::string(key.str())), "unknown key");
        }
      }
      std::string name = GetString(*t, "name"), role = GetString(*t, "role");
      if (name.empty() || name.size() > 255) return Invalid(field + ".name", "must be 1-255 characters");
      if (!seen.insert(name).second) return Invalid(field + ".name", "is used twice");
      if (!roles.contains(role)) return Invalid(field + ".role", "must be monitor, operator, controller or peer");
      if (std::string(kind.path) == "auth.identities") {
        c.auth_identities.push_back({name, role});
      } else {
        std::string hash = GetString(*t, "sha256");
        if (!IsSha256Hex(hash)) {
          return Invalid(field + ".sha256", "must be the 64 lowercase hex digits of the token's SHA-256 (never the token)");
        }
        c.auth_tokens.push_back({name, hash, role});
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ParsePools(const toml::table& root, std::vector<storage::PoolConfig>& out) {
  const toml::node* node = root.at_path("storage.pools").node();
  if (node == nullptr) return absl::OkStatus();
  const toml::array* pools = node->as_array();
  if (pools == nullptr) return Invalid("storage.pools", "must be an array of tables ([[storage.pools]])");
  static const std::set<std::string> keys = {"name", "type", "volume_group", "physical_volumes",
                                             "thin_pool", "disk", "wipe", "tool_timeout_seconds",
                                             "snapshot_reserve_percent"};
  std::set<std::string> names, devices;
  for (size_t i = 0; i < pools->size(); ++i) {
    std::string field = absl::StrCat("storage.pools[", i, "]");
    const toml::table* t = (*pools)[i].as_table();
    if (t == nullptr) return Invalid(field, "must be a table");
    for (const auto& [key, value] : *t) {
      if (!keys.contains(std::string(key.str()))) return Invalid(absl::StrCat(field, ".", std::string(key.str())), "unknown key");
    }
    storage::PoolConfig pool;
    pool.name = t->get_as<std::string>("name") ? t->get_as<std::string>("name")->get() : "";
    if (!IsPoolName(pool.name)) return Invalid(field + ".name", "must be 1-64 of [A-Za-z0-9._-], starting with a letter or digit");
    if (!names.insert(pool.name).second) return Invalid(field + ".name", "is used twice");
    std::string type = t->get_as<std::string>("type") ? t->get_as<std::string>("type")->get() : "";
    std::string wipe = t->get_as<std::string>("wipe") ? t->get_as<std::string>("wipe")->get() : "zero";
    if (wipe == "zero") pool.wipe = storage::WipeMode::kZero;
    else if (wipe == "discard") pool.wipe = storage::WipeMode::kDiscard;
    else if (wipe == "none") pool.wipe = storage::WipeMode::kNone;
    else return Invalid(field + ".wipe", "must be zero, discard or none");
    if (const toml::node* tt = t->get("tool_timeout_seconds")) {
      auto v = tt->value<int64_t>();
      if (!v || !tt->is_integer() || *v < 1 || *v > 3600) return Invalid(field + ".tool_timeout_seconds", "must be 1-3600");
      pool.tool_timeout = std::chrono::seconds(*v);
    }
    if (const toml::node* sr = t->get("snapshot_reserve_percent")) {
      auto v = sr->value<int64_t>();
      if (!v || !sr->is_integer() || *v < 1 || *v > 100) {
        return Invalid(field + ".snapshot_reserve_percent", "must be 1-100");
      }
      pool.snapshot_reserve_percent = static_cast<uint32_t>(*v);
    }
    if (type == "lvm") {
      pool.type = storage::PoolType::kLvm;
      pool.volume_group = t->get_as<std::string>("volume_group") ? t->get_as<std::string>("volume_group")->get() : "";
      if (pool.volume_group.empty() || pool.volume_group.size() > 127 || pool.volume_group[0] == '-' ||
          pool.volume_group.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-") !=
              std::string::npos) {
        return Invalid(field + ".volume_group", "must be an LVM name ([A-Za-z0-9+_.-], not starting with '-')");
      }
      if (!devices.insert("vg:" + pool.volume_group).second) return Invalid(field + ".volume_group", "is used twice");
      if (auto* tp = t->get_as<std::string>("thin_pool")) pool.thin_pool = tp->get();
      if (const toml::array* pvs = t->get_as<toml::array>("physical_volumes")) {
        for (const auto& pv : *pvs) {
          auto v = pv.value<std::string>();
          if (!v || !IsDevicePath(*v)) return Invalid(field + ".physical_volumes", "entries must be device paths under /dev/");
          if (!devices.insert(*v).second) return Invalid(field + ".physical_volumes", absl::StrCat(*v, " is used twice"));
          pool.physical_volumes.push_back(*v);
        }
      }
    } else if (type == "partition") {
      pool.type = storage::PoolType::kPartition;
      pool.disk = t->get_as<std::string>("disk") ? t->get_as<std::string>("disk")->get() : "";
      if (!IsDevicePath(pool.disk)) return Invalid(field + ".disk", "must be a device path under /dev/");
      if (!devices.insert(pool.disk).second) return Invalid(field + ".disk", "is used twice");
    } else {
      return Invalid(field + ".type", "must be lvm or partition");
    }
    out.push_back(std::move(pool));
  }
  return absl::OkStatus();
}

absl::Status ValidateListen(absl::string_view field, const std::string& listen, bool loopback_only) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return Invalid(field, "must be HOST:PORT");
  std::string host = listen.substr(0, colon);
  std::string port_text = listen.substr(colon + 1);
  int port = 0;
  if (port_text.empty() || port_text.size() > 5 ||
      port_text.find_first_not_of("0123456789") != std::string::npos || !absl::SimpleAtoi(port_text, &port) ||
      port < 1 || port > 65535) {
    return Invalid(field, "port must be 1-65535");
  }
  // An IPv4 literal in 127.0.0.0/8, or the two loopback names; never a resolvable name.
  in_addr v4{};
  bool loopback = host == "localhost" || host == "[::1]" ||
                  (inet_pton(AF_INET, host.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127);
  if (loopback_only && !loopback) {
    return Invalid(field, absl::StrCat("'", host, "' is not a loopback address: plain text (plaintext_loopback) is "
                                       "served only on 127.0.0.0/8, localhost or [::1]; configure [tls] to listen "
                                       "elsewhere"));
  }
  if (!loopback && host != "0.0.0.0" && host != "[::]" && inet_pton(AF_INET, host.c_str(), &v4) != 1) {
    in6_addr v6{};
    std::string bare = host.size() > 2 && host.front() == '[' && host.back() == ']' ? host.substr(1, host.size() - 2) : "";
    if (bare.empty() || inet_pton(AF_INET6, bare.c_str(), &v6) != 1) {
      return Invalid(field, absl::StrCat("'", host, "' must be an IP address literal (v6 in brackets) or localhost"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<std::string> ConfigKeys() {
  std::vector<std::string> out;
  for (const Key& k : Keys()) out.push_back(absl::StrCat(k.section, ".", k.name));
  return out;
}

std::string Usage() {
  return "usage: hvagentd [--config FILE] [--hypervisor-uri URI] [--grpc-listen HOST:PORT]\n"
         "                [--rest-listen HOST:PORT] [--log-level LEVEL] [--state-dir DIR]\n"
         "                [--plaintext-loopback]\n"
         "                [--version] [--help]\n"
         "Defaults: test:///default, gRPC 127.0.0.1:50051, REST 127.0.0.1:8780.\n";
}

absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args) {
  CommandLine cli;
  const std::map<std::string, std::optional<std::string> CommandLine::*> with_value = {
      {"--config", &CommandLine::config_path},     {"--hypervisor-uri", &CommandLine::hypervisor_uri},
      {"--grpc-listen", &CommandLine::grpc_listen}, {"--rest-listen", &CommandLine::rest_listen},
      {"--log-level", &CommandLine::log_level},     {"--state-dir", &CommandLine::state_dir},
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--version") {
      cli.version = true;
      continue;
    }
    if (arg == "--help" || arg == "-h") {
      cli.help = true;
      continue;
    }
    if (arg == "--plaintext-loopback") {
      cli.plaintext_loopback = true;
      continue;
    }
    std::string name = arg, value;
    bool inline_value = false;
    if (size_t eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      inline_value = true;
    }
    auto it = with_value.find(name);
    if (it == with_value.end()) return Invalid(arg, "unknown option");
    if (!inline_value) {
      if (i + 1 >= args.size()) return Invalid(name, "needs a value");
      value = args[++i];
    }
    cli.*(it->second) = value;
  }
  return cli;
}

absl::StatusOr<Config> ParseConfigToml(absl::string_view text, Config c) {
  toml::table root;
  try {
    root = toml::parse(std::string_view(text.data(), text.size()));
  } catch (const toml::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat("config: line ", static_cast<uint64_t>(e.source().begin.line), ": ", std::string(e.description())));
  }
  if (auto s = ReadKeys(root, c); !s.ok()) return s;
  c.storage_pools.clear();
  if (auto s = ParsePools(root, c.storage_pools); !s.ok()) return s;
  c.auth_identities.clear();
  c.auth_tokens.clear();
  if (auto s = ParseAuth(root, c); !s.ok()) return s;
  return c;
}

absl::StatusOr<Config> LoadConfigFile(const std::string& path, Config base) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("config: cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  auto c = ParseConfigToml(ss.str(), std::move(base));
  if (!c.ok()) return absl::Status(c.status().code(), absl::StrCat(path, ": ", c.status().message()));
  return c;
}

absl::Status Validate(const Config& c) {
  if (c.hypervisor_uri.empty()) return Invalid("hypervisor.uri", "is required");
  const bool tls = !c.tls_cert_file.empty() || !c.tls_key_file.empty() || !c.tls_client_ca_file.empty();
  if (tls && c.plaintext_loopback) {
    return Invalid("security.plaintext_loopback", "cannot be combined with [tls]; choose one");
  }
  if (tls) {
    if (c.tls_cert_file.empty()) return Invalid("tls.cert_file", "is required with [tls]");
    if (c.tls_key_file.empty()) return Invalid("tls.key_file", "is required with [tls]");
    if (c.tls_client_ca_file.empty()) {
      return Invalid("tls.client_ca_file", "is required with [tls]: gRPC callers are identified by client certificates");
    }
  } else if (!c.plaintext_loopback) {
    return Invalid("tls", "no TLS is configured: set [tls] cert_file, key_file and client_ca_file (see "
                          "docs/security.md), or, for development on this machine only, --plaintext-loopback");
  }
  if (c.rest_require_client_cert && !tls) return Invalid("rest.require_client_cert", "needs [tls]");
  if (auto s = ValidateListen("grpc.listen", c.grpc_listen, !tls); !s.ok()) return s;
  if (auto s = ValidateListen("rest.listen", c.rest_listen, !tls); !s.ok()) return s;
  if (c.grpc_listen == c.rest_listen) return Invalid("rest.listen", "must differ from grpc.listen");
  if (c.console_tcp_port_min > c.console_tcp_port_max) {
    return Invalid("console.tcp_port_max", "must not be below console.tcp_port_min");
  }
  if (c.console_tcp_listen.empty()) return Invalid("console.tcp_listen", "is required (an IP address)");
  if (!c.console_ws_listen.empty()) {
    if (auto s = ValidateListen("console.ws_listen", c.console_ws_listen, !tls); !s.ok()) return s;
    if (c.console_ws_listen == c.grpc_listen || c.console_ws_listen == c.rest_listen) {
      return Invalid("console.ws_listen", "must differ from grpc.listen and rest.listen");
    }
    const std::string host = c.console_ws_listen.substr(0, c.console_ws_listen.rfind(':'));
    if (c.console_ws_public_host.empty() && (host == "0.0.0.0" || host == "[::]")) {
      return Invalid("console.ws_public_host",
                     "is required when console.ws_listen is a wildcard address: console URLs must name a host "
                     "browsers reach");
    }
    // It goes into URLs as the host: a name or an address, nothing that could end the host part.
    if (c.console_ws_public_host.find_first_of("/?#@ \t\\") != std::string::npos) {
      return Invalid("console.ws_public_host", "must be a host name or IP address (v6 in brackets)");
    }
  } else if (!c.console_ws_public_host.empty()) {
    return Invalid("console.ws_public_host", "needs console.ws_listen");
  }
  static const std::set<std::string> levels = {"trace", "debug", "info", "warn", "error"};
  if (!levels.contains(c.log_level)) {
    return Invalid("log.level", absl::StrCat("must be one of ", absl::StrJoin(levels, ", ")));
  }
  return absl::OkStatus();
}

absl::StatusOr<Config> Resolve(const CommandLine& cli) {
  Config c;
  if (cli.config_path) {
    auto loaded = LoadConfigFile(*cli.config_path, c);
    if (!loaded.ok()) return loaded.status();
    c = *loaded;
  }
  if (cli.hypervisor_uri) c.hypervisor_uri = *cli.hypervisor_uri;
  if (cli.grpc_listen) c.grpc_listen = *cli.grpc_listen;
  if (cli.rest_listen) c.rest_listen = *cli.rest_listen;
  if (cli.log_level) c.log_level = *cli.log_level;
  if (cli.state_dir) {
    if (cli.state_dir->empty() || (*cli.state_dir)[0] != '/') return Invalid("--state-dir", "must be an absolute path");
    c.state_dir = *cli.state_dir;
  }
  if (cli.plaintext_loopback) c.plaintext_loopback = true;
  if (auto s = Validate(c); !s.ok()) return s;
  return c;
}

}  // namespace hvagent::config
