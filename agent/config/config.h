#pragma once
// Agent configuration: defaults, then a TOML file (--config), then command-line overrides.
// With nothing given the agent serves plain text on loopback only, on libvirt's test driver.

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/log.h"
#include "storage/model.h"

namespace hvagent::config {

struct Config {
  std::string hypervisor_uri = "test:///default";
  std::string grpc_listen = "127.0.0.1:50051";
  std::string rest_listen = "127.0.0.1:8780";
  size_t rest_max_body_bytes = 1 << 20;
  std::string log_level = "info";  // trace, debug, info, warn, error
  log::Format log_format = log::Format::kText;
  std::chrono::seconds shutdown_timeout{60};
  // [capacity]: what the agent reports as schedulable (see service::CapacityPolicy).
  double cpu_allocation_ratio = 4.0;
  double memory_allocation_ratio = 1.0;
  uint32_t reserved_cpus = 0;
  uint64_t reserved_memory_mib = 512;
  // [metrics]: one sample serves every reader for this long.
  std::chrono::milliseconds metrics_max_age{1000};
  // [event_channels] (Xen): alert share, the toolstack's max_evtchn_port for domUs, and how
  // often the ports are walked (also in the background, so alerts fire with no reader).
  double evtchn_alert_share = 0.8;
  uint32_t evtchn_default_max_port = 1023;
  std::chrono::seconds evtchn_interval{10};
  // [[storage.pools]]: the only block storage the agent may touch.
  std::vector<storage::PoolConfig> storage_pools;
};

struct CommandLine {
  std::optional<std::string> config_path;
  std::optional<std::string> hypervisor_uri;
  std::optional<std::string> grpc_listen;
  std::optional<std::string> rest_listen;
  std::optional<std::string> log_level;
  bool version = false;
  bool help = false;
};

// InvalidArgument naming the flag for unknown flags or missing values.
absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args);
std::string Usage();

// Reads TOML text onto `base`. InvalidArgument naming the key ("grpc.listen") for unknown keys,
// wrong types or syntax errors (with line numbers).
absl::StatusOr<Config> ParseConfigToml(absl::string_view toml_text, Config base = {});
absl::StatusOr<Config> LoadConfigFile(const std::string& path, Config base = {});

// Defaults <- file <- flags, then validated.
absl::StatusOr<Config> Resolve(const CommandLine& cli);

// Listen addresses must be HOST:PORT on loopback (no TLS yet), levels and sizes sane.
absl::Status Validate(const Config& config);

}  // namespace hvagent::config
