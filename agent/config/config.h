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
  // The libvirt domain type every guest is defined with: "kvm", "qemu" (TCG emulation, e.g. on a
  // host whose /dev/kvm does not run guests) or "xen"; empty: the best offered (kvm > xen > qemu).
  std::string hypervisor_domain_type;
  std::string grpc_listen = "127.0.0.1:50051";
  // Threads that run unary gRPC calls (agent/api/grpc/grpc_services.h), started as calls need
  // them: the most calls that wait on libvirt or a tool at once; more queue.
  int grpc_workers = 64;
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
  uint64_t pool_free_floor_mib = 0;  // every pool keeps this much free (admission.h)
  // [metrics]: one sample serves every reader for this long.
  std::chrono::milliseconds metrics_max_age{1000};
  // [event_channels] (Xen): alert share, the toolstack's max_evtchn_port for domUs, and how
  // often the ports are walked (also in the background, so alerts fire with no reader).
  double evtchn_alert_share = 0.8;
  uint32_t evtchn_default_max_port = 1023;
  std::chrono::seconds evtchn_interval{10};
  // [tls]: both servers use it. Without it the agent starts only with plaintext_loopback.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;  // required with TLS: gRPC callers are their certificates
  int tls_reload_seconds = 60;     // gRPC re-reads the files this often (REST: on SIGHUP too)
  bool rest_require_client_cert = false;  // REST also demands a client certificate (same CA)
  // [security] plaintext_loopback / --plaintext-loopback: development only; no TLS, loopback
  // listeners only, every caller is the controller "local".
  bool plaintext_loopback = false;
  // [security] image_dirs, kernel_dirs, firmware_dirs: the only host directories whose files a
  // guest may be given by path (disk images; kernels and initrds; firmware), each owned and
  // writable by root alone (common/host_path_policy.h). Block devices only as pool volumes.
  std::vector<std::string> image_dirs;
  std::vector<std::string> kernel_dirs;
  std::vector<std::string> firmware_dirs = {"/usr/share/OVMF", "/usr/share/AAVMF", "/usr/share/qemu-efi-aarch64"};
  // [[auth.identities]] and [[auth.tokens]]: roles (docs/security.md).
  struct Identity {
    std::string name;  // a client certificate's SAN DNS/URI name or CN
    std::string role;  // monitor, operator, controller
  };
  struct Token {
    std::string name;
    std::string sha256;  // lowercase hex SHA-256 of the bearer token
    std::string role;
  };
  std::vector<Identity> auth_identities;
  // [limits]: per caller.
  double requests_per_second = 50;
  double request_burst = 100;
  int max_streams_per_caller = 8;
  int max_operations_in_flight = 64;  // changing operations at once; past it UNAVAILABLE / 503
  std::vector<Token> auth_tokens;
  // [images] (agent/service/image_service.h): URL prefixes an image may be fetched from
  // (nothing by default), directories whose files may be imported (host path policy rules),
  // where a qcow2 lands before conversion, and the largest virtual size accepted.
  std::vector<std::string> image_allowed_sources;
  std::vector<std::string> image_import_dirs;
  std::string image_scratch_dir = "/var/lib/hvagent/image-scratch";
  uint64_t image_max_virtual_size_mib = 64 << 10;
  // [migration] (docs/migration.md): the client certificate and key this agent presents to a
  // destination agent (which gives its name the `peer` role), the CA the destination's server
  // certificate must chain to (empty: tls.client_ca_file), and how long an incoming transfer may
  // sit idle before it is undone.
  std::string migration_cert_file;
  std::string migration_key_file;
  std::string migration_ca_file;
  int migration_incoming_idle_seconds = 600;
  // The volume channel (docs/migration.md): the port on grpc.listen's address where sources
  // send a cold transfer's volumes, under the same TLS as gRPC; 0: any free port (told to each
  // source in PrepareIncoming's answer); -1: none, volumes come over gRPC's ReceiveVolume.
  int migration_data_port = 0;
  // Live migration (docs/migration.md): where other hosts' libvirtd reach this host's
  // (qemu+tls://HOST/system, or qemu+tcp://HOST/system on a closed network; empty: this host
  // takes no live migrations), the data channel QEMU listens on (tcp://HOST[:PORT]; empty:
  // libvirt's migration_host), and whether the source asks libvirt for TLS on that channel
  // (VIR_MIGRATE_TLS: qemu.conf's migrate_tls_x509_cert_dir must hold the agent's material).
  std::string migration_libvirt_uri;
  std::string migration_migrate_uri;
  bool migration_libvirt_tls = false;
  // Live migration out: how often the destination agent is asked whether it still holds the
  // transfer while libvirt copies (each call with that deadline), and after how many failures in
  // a row the move is aborted (the guest stays here).
  int migration_peer_heartbeat_ms = 1000;
  int migration_peer_heartbeat_misses = 3;
  // [[storage.pools]]: the only block storage the agent may touch.
  std::vector<storage::PoolConfig> storage_pools;

  // [reliability] (docs/reliability.md). state_dir empty: the journal and the idempotency
  // store live in memory only (no crash recovery, no replay across restarts).
  std::string state_dir;
  std::chrono::seconds idempotency_window{24 * 3600};
  size_t idempotency_max_entries = 10000;
  // Reconciliation of volume owners against the hypervisor's domains: at start, then this often
  // (0: only at start). release_orphans clears a stale owner record (never deletes data).
  std::chrono::seconds reconcile_interval{300};
  bool release_orphans = false;

  // [console] (docs/consoles.md): one-time tickets live this long; serial-tcp tickets listen on
  // tcp_listen (the address console proxies reach) at a port of [tcp_port_min, tcp_port_max];
  // log_dir: where QEMU keeps each guest's serial console log (empty: none).
  std::chrono::seconds console_ticket_ttl{60};
  std::string console_tcp_listen = "127.0.0.1";
  int console_tcp_port_min = 10000;
  int console_tcp_port_max = 10099;
  std::string console_log_dir;
  // Xen: where xenconsoled keeps each guest's console log (guest-NAME.log; it runs with
  // --log=guest); empty: Xen console logs are not served.
  std::string console_xen_log_dir = "/var/log/xen/console";
  // Where QEMU/KVM domains defined with a VNC display (DomainSpec.vnc) listen: the address the
  // console proxy reaches (CloudStack's console proxy VM, nova-novncproxy).
  std::string console_vnc_listen = "127.0.0.1";

  // [network] (docs/networking.md): the Linux bridges NICs may join (unset: any, as before the
  // key existed) and the Open vSwitch bridges (none unless listed).
  std::optional<std::vector<std::string>> network_bridges;
  std::vector<std::string> network_ovs_bridges;
  // The interfaces vlan/vxlan NICs may make networks on (none unless listed), the agent's
  // bridges' name prefixes (the id follows) and the MTU it sets on them (0: the kernel's).
  std::vector<std::string> network_physical_interfaces;
  std::string network_vlan_bridge_prefix = "brvlan";
  std::string network_vxlan_bridge_prefix = "brvx";
  uint32_t network_mtu = 0;
  // serial-ws: the browser console listener ("HOST:PORT"; empty: none), TLS as the REST
  // listener; ws_public_host: the host its URLs name (what browsers and console proxies reach).
  std::string console_ws_listen;
  std::string console_ws_public_host;
};

struct CommandLine {
  std::optional<std::string> config_path;
  std::optional<std::string> hypervisor_uri;
  std::optional<std::string> grpc_listen;
  std::optional<std::string> rest_listen;
  std::optional<std::string> log_level;
  std::optional<std::string> state_dir;
  bool plaintext_loopback = false;
  bool version = false;
  bool help = false;
};

// InvalidArgument naming the flag for unknown flags or missing values.
absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args);
std::string Usage();

// Reads TOML text onto `base`. InvalidArgument naming the key ("grpc.listen") for unknown keys,
// wrong types or syntax errors (with line numbers).
// Every key the file may hold, "section.key" (arrays of tables included), in the table's order.
std::vector<std::string> ConfigKeys();
absl::StatusOr<Config> ParseConfigToml(absl::string_view toml_text, Config base = {});
absl::StatusOr<Config> LoadConfigFile(const std::string& path, Config base = {});

// Defaults <- file <- flags, then validated.
absl::StatusOr<Config> Resolve(const CommandLine& cli);

// Listen addresses must be HOST:PORT; without TLS, only with plaintext_loopback and on loopback.
absl::Status Validate(const Config& config);

}  // namespace hvagent::config
