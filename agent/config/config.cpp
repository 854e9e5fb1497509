#include "agent/config/config.h"

#include <arpa/inet.h>

#include <cctype>
#include <fstream>
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

// Only the keys we know; a typo in a config file must not be silently ignored.
const std::map<std::string, std::set<std::string>>& KnownKeys() {
  static const std::map<std::string, std::set<std::string>> keys = {
      {"hypervisor", {"uri"}},
      {"grpc", {"listen"}},
      {"rest", {"listen", "max_body_bytes", "require_client_cert"}},
      {"log", {"level", "format"}},
      {"domain", {"shutdown_timeout_seconds"}},
      {"storage", {"pools"}},
      {"capacity", {"cpu_allocation_ratio", "memory_allocation_ratio", "reserved_cpus", "reserved_memory_mib"}},
      {"metrics", {"max_age_ms"}},
      {"event_channels", {"alert_share", "default_max_port", "interval_seconds"}},
      {"tls", {"cert_file", "key_file", "client_ca_file", "reload_seconds"}},
      {"security", {"plaintext_loopback", "image_dirs", "kernel_dirs", "firmware_dirs"}},
      {"auth", {"identities", "tokens"}},
      {"limits", {"requests_per_second", "burst", "max_streams_per_caller", "max_operations_in_flight"}},
      {"reliability", {"state_dir", "idempotency_window_seconds", "idempotency_max_entries",
                       "reconcile_interval_seconds", "release_orphans"}},
  };
  return keys;
}

absl::Status CheckKeys(const toml::table& root) {
  for (const auto& [section, node] : root) {
    std::string s(section.str());
    auto known = KnownKeys().find(s);
    if (known == KnownKeys().end()) return Invalid(s, "unknown section");
    const toml::table* t = node.as_table();
    if (t == nullptr) return Invalid(s, "must be a table");
    for (const auto& [key, value] : *t) {
      if (!known->second.contains(std::string(key.str()))) {
        return Invalid(absl::StrCat(s, ".", std::string(key.str())), "unknown key");
      }
    }
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status Read(const toml::table& root, absl::string_view section, absl::string_view key, T& out) {
  const toml::node* n = root.at_path(absl::StrCat(section, ".", key)).node();
  if (n == nullptr) return absl::OkStatus();
  auto v = n->value<T>();
  if (!v) return Invalid(absl::StrCat(section, ".", key), "has the wrong type");
  out = *v;
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
  static const std::set<std::string> roles = {"monitor", "operator", "controller"};
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
      if (!roles.contains(role)) return Invalid(field + ".role", "must be monitor, operator or controller");
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
                                             "thin_pool", "disk", "wipe", "tool_timeout_seconds"};
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

// [security] image_dirs / kernel_dirs / firmware_dirs: absolute directories written canonically.
// Whether they are safe to trust (owner, mode, no symbolic links) is checked at start, on the
// directories themselves (HostPathPolicy::Open).
absl::Status ReadDirectories(const toml::table& root, const char* key, std::vector<std::string>& out) {
  const std::string field = absl::StrCat("security.", key);
  const toml::node* node = root.at_path(field).node();
  if (node == nullptr) return absl::OkStatus();
  const toml::array* list = node->as_array();
  if (list == nullptr) return Invalid(field, "must be an array of directories");
  out.clear();
  for (size_t i = 0; i < list->size(); ++i) {
    const std::string item = absl::StrCat(field, "[", i, "]");
    auto dir = (*list)[i].value<std::string>();
    if (!dir || !(*list)[i].is_string()) return Invalid(item, "must be a string");
    if (dir->size() < 2 || dir->size() > 1024 || (*dir)[0] != '/' || dir->back() == '/' ||
        dir->find("//") != std::string::npos || dir->find("/./") != std::string::npos ||
        dir->find("/../") != std::string::npos || dir->ends_with("/..") || dir->ends_with("/.") ||
        dir->find('\0') != std::string::npos) {
      return Invalid(item, "must be an absolute directory other than /, written canonically (no '//', '.', '..' "
                           "or trailing '/')");
    }
    out.push_back(*dir);
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
  if (auto s = CheckKeys(root); !s.ok()) return s;
  c.storage_pools.clear();
  if (auto s = ParsePools(root, c.storage_pools); !s.ok()) return s;
  c.auth_identities.clear();
  c.auth_tokens.clear();
  if (auto s = ParseAuth(root, c); !s.ok()) return s;
  if (auto s = Read(root, "tls", "cert_file", c.tls_cert_file); !s.ok()) return s;
  if (auto s = Read(root, "tls", "key_file", c.tls_key_file); !s.ok()) return s;
  if (auto s = Read(root, "tls", "client_ca_file", c.tls_client_ca_file); !s.ok()) return s;
  int64_t reload = c.tls_reload_seconds;
  if (auto s = Read(root, "tls", "reload_seconds", reload); !s.ok()) return s;
  if (reload < 1 || reload > 86400) return Invalid("tls.reload_seconds", "must be 1-86400");
  c.tls_reload_seconds = static_cast<int>(reload);
  if (auto s = Read(root, "rest", "require_client_cert", c.rest_require_client_cert); !s.ok()) return s;
  if (auto s = Read(root, "security", "plaintext_loopback", c.plaintext_loopback); !s.ok()) return s;
  if (auto s = ReadDirectories(root, "image_dirs", c.image_dirs); !s.ok()) return s;
  if (auto s = ReadDirectories(root, "kernel_dirs", c.kernel_dirs); !s.ok()) return s;
  if (auto s = ReadDirectories(root, "firmware_dirs", c.firmware_dirs); !s.ok()) return s;
  if (auto s = Read(root, "limits", "requests_per_second", c.requests_per_second); !s.ok()) return s;
  if (!(c.requests_per_second > 0 && c.requests_per_second <= 1e6)) {
    return Invalid("limits.requests_per_second", "must be greater than 0 and at most 1000000");
  }
  if (auto s = Read(root, "limits", "burst", c.request_burst); !s.ok()) return s;
  if (!(c.request_burst >= 1 && c.request_burst <= 1e6)) return Invalid("limits.burst", "must be 1-1000000");
  int64_t streams = c.max_streams_per_caller;
  if (auto s = Read(root, "limits", "max_streams_per_caller", streams); !s.ok()) return s;
  if (streams < 1 || streams > 100000) return Invalid("limits.max_streams_per_caller", "must be 1-100000");
  c.max_streams_per_caller = static_cast<int>(streams);
  int64_t in_flight = c.max_operations_in_flight;
  if (auto s = Read(root, "limits", "max_operations_in_flight", in_flight); !s.ok()) return s;
  if (in_flight < 1 || in_flight > 10000) return Invalid("limits.max_operations_in_flight", "must be 1-10000");
  c.max_operations_in_flight = static_cast<int>(in_flight);
  if (auto s = Read(root, "reliability", "state_dir", c.state_dir); !s.ok()) return s;
  if (!c.state_dir.empty() && c.state_dir[0] != '/') return Invalid("reliability.state_dir", "must be an absolute path");
  int64_t window = c.idempotency_window.count();
  if (auto s = Read(root, "reliability", "idempotency_window_seconds", window); !s.ok()) return s;
  if (window < 60 || window > 30 * 86400) {
    return Invalid("reliability.idempotency_window_seconds", "must be 60 to 2592000 (30 days)");
  }
  c.idempotency_window = std::chrono::seconds(window);
  int64_t entries = static_cast<int64_t>(c.idempotency_max_entries);
  if (auto s = Read(root, "reliability", "idempotency_max_entries", entries); !s.ok()) return s;
  if (entries < 1 || entries > 1000000) return Invalid("reliability.idempotency_max_entries", "must be 1-1000000");
  c.idempotency_max_entries = static_cast<size_t>(entries);
  int64_t reconcile = c.reconcile_interval.count();
  if (auto s = Read(root, "reliability", "reconcile_interval_seconds", reconcile); !s.ok()) return s;
  if (reconcile != 0 && (reconcile < 10 || reconcile > 86400)) {
    return Invalid("reliability.reconcile_interval_seconds", "must be 0 (only at start) or 10-86400");
  }
  c.reconcile_interval = std::chrono::seconds(reconcile);
  if (auto s = Read(root, "reliability", "release_orphans", c.release_orphans); !s.ok()) return s;
  if (auto s = Read(root, "hypervisor", "uri", c.hypervisor_uri); !s.ok()) return s;
  if (auto s = Read(root, "grpc", "listen", c.grpc_listen); !s.ok()) return s;
  if (auto s = Read(root, "rest", "listen", c.rest_listen); !s.ok()) return s;
  int64_t max_body = static_cast<int64_t>(c.rest_max_body_bytes);
  if (auto s = Read(root, "rest", "max_body_bytes", max_body); !s.ok()) return s;
  if (max_body < 1024 || max_body > (64 << 20)) return Invalid("rest.max_body_bytes", "must be 1 KiB to 64 MiB");
  c.rest_max_body_bytes = static_cast<size_t>(max_body);
  if (auto s = Read(root, "log", "level", c.log_level); !s.ok()) return s;
  std::string format = c.log_format == log::Format::kJson ? "json" : "text";
  if (auto s = Read(root, "log", "format", format); !s.ok()) return s;
  if (format != "text" && format != "json") return Invalid("log.format", "must be text or json");
  c.log_format = format == "json" ? log::Format::kJson : log::Format::kText;
  int64_t timeout = c.shutdown_timeout.count();
  if (auto s = Read(root, "domain", "shutdown_timeout_seconds", timeout); !s.ok()) return s;
  if (timeout < 1 || timeout > 3600) return Invalid("domain.shutdown_timeout_seconds", "must be 1-3600");
  c.shutdown_timeout = std::chrono::seconds(timeout);
  if (auto s = Read(root, "capacity", "cpu_allocation_ratio", c.cpu_allocation_ratio); !s.ok()) return s;
  if (!(c.cpu_allocation_ratio > 0 && c.cpu_allocation_ratio <= 64)) {
    return Invalid("capacity.cpu_allocation_ratio", "must be greater than 0 and at most 64");
  }
  if (auto s = Read(root, "capacity", "memory_allocation_ratio", c.memory_allocation_ratio); !s.ok()) return s;
  if (!(c.memory_allocation_ratio > 0 && c.memory_allocation_ratio <= 16)) {
    return Invalid("capacity.memory_allocation_ratio", "must be greater than 0 and at most 16");
  }
  int64_t reserved_cpus = c.reserved_cpus;
  if (auto s = Read(root, "capacity", "reserved_cpus", reserved_cpus); !s.ok()) return s;
  if (reserved_cpus < 0 || reserved_cpus > 4096) return Invalid("capacity.reserved_cpus", "must be 0-4096");
  c.reserved_cpus = static_cast<uint32_t>(reserved_cpus);
  int64_t reserved_mib = static_cast<int64_t>(c.reserved_memory_mib);
  if (auto s = Read(root, "capacity", "reserved_memory_mib", reserved_mib); !s.ok()) return s;
  if (reserved_mib < 0 || reserved_mib > (int64_t{1} << 32)) {
    return Invalid("capacity.reserved_memory_mib", "must be 0-4294967296");
  }
  c.reserved_memory_mib = static_cast<uint64_t>(reserved_mib);
  int64_t max_age = c.metrics_max_age.count();
  if (auto s = Read(root, "metrics", "max_age_ms", max_age); !s.ok()) return s;
  if (max_age < 100 || max_age > 60000) return Invalid("metrics.max_age_ms", "must be 100-60000");
  c.metrics_max_age = std::chrono::milliseconds(max_age);
  if (auto s = Read(root, "event_channels", "alert_share", c.evtchn_alert_share); !s.ok()) return s;
  if (!(c.evtchn_alert_share > 0 && c.evtchn_alert_share <= 1)) {
    return Invalid("event_channels.alert_share", "must be greater than 0 and at most 1");
  }
  int64_t max_port = c.evtchn_default_max_port;
  if (auto s = Read(root, "event_channels", "default_max_port", max_port); !s.ok()) return s;
  if (max_port < 1 || max_port > 131071) return Invalid("event_channels.default_max_port", "must be 1-131071");
  c.evtchn_default_max_port = static_cast<uint32_t>(max_port);
  int64_t interval = c.evtchn_interval.count();
  if (auto s = Read(root, "event_channels", "interval_seconds", interval); !s.ok()) return s;
  if (interval < 1 || interval > 3600) return Invalid("event_channels.interval_seconds", "must be 1-3600");
  c.evtchn_interval = std::chrono::seconds(interval);
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
