// hvagentd: wires configuration, the libvirt hypervisor, the service layer and the gRPC and
// REST front ends together, then waits for SIGINT/SIGTERM.

#include <signal.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <thread>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/server_builder.h>

#include "absl/synchronization/mutex.h"
#include "agent/api/auth/authorizer.h"
#include "agent/api/auth/audit.h"
#include "agent/api/console_ws/console_ws_server.h"
#include "agent/api/grpc/console_grpc.h"
#include "agent/api/grpc/grpc_services.h"
#include "agent/api/grpc/migration_peer_client.h"
#include "agent/api/volume_channel/volume_channel_server.h"
#include "agent/api/rest/rest_server.h"
#include "agent/config/config.h"
#include "agent/service/idempotency.h"
#include "agent/service/image_service.h"
#include "agent/service/incoming_migrations.h"
#include "agent/service/journal.h"
#include "agent/service/migration_service.h"
#include "agent/version.h"
#include "common/clock.h"
#include "common/failpoint.h"
#include "common/host_path_policy.h"
#include "common/host_port.h"
#include "common/periodic_thread.h"
#include "common/log.h"
#include "hypervisor/domain_view.h"
#include "hypervisor/libvirt/libvirt_hypervisor.h"
#include "hypervisor/xen/xenctrl_probe.h"
#include "storage/exec/subprocess_runner.h"
#include "storage/lvm/lvm_backend.h"
#include "storage/device_wiper.h"
#include "storage/partition/partition_backend.h"

namespace {

using namespace hvagent;

// How long SIGTERM waits for changing operations in flight: inside the systemd unit's
// TimeoutStopSec (30 s), after which systemd would SIGKILL.
constexpr std::chrono::seconds kShutdownGrace{20};

// Keeps the standard gRPC health service in step with the hypervisor connection, every second.
std::unique_ptr<PeriodicThread> ReportHealth(grpc::HealthCheckServiceInterface* health, const hv::Hypervisor& hv) {
  auto report = [health, &hv] {
    bool serving = hv.Connected();
    for (const char* service : {"", "hvagent.v1.HostService", "hvagent.v1.DomainService", "hvagent.v1.EventService",
                                "hvagent.v1.StorageService", "hvagent.v1.MetricsService",
                                "hvagent.v1.OperationService", "hvagent.v1.ImageService",
                                "hvagent.v1.MigrationService"}) {
      health->SetServingStatus(service, serving);
    }
  };
  report();
  return std::make_unique<PeriodicThread>(std::chrono::seconds(1), report);
}

// One backend per configured pool, prepared (VG or GPT created when missing). A pool that
// cannot be prepared is still served: its calls answer with the reason (FailedPrecondition),
// and the error is logged here, once, at start.
std::vector<std::unique_ptr<storage::StorageBackend>> MakeBackends(const config::Config& cfg,
                                                                   storage::CommandRunner& runner,
                                                                   storage::BlockWiper& wiper) {
  auto logger = log::ComponentLogger("main");
  std::vector<std::unique_ptr<storage::StorageBackend>> backends;
  for (const storage::PoolConfig& pool : cfg.storage_pools) {
    std::unique_ptr<storage::StorageBackend> b;
    if (pool.type == storage::PoolType::kLvm) {
      storage::LvmBackend::Options o;
      if (pool.tool_timeout.count() > 0) o.timeout = pool.tool_timeout;
      b = std::make_unique<storage::LvmBackend>(pool, runner, wiper, std::move(o));
    } else {
      storage::PartitionBackend::Options o;
      if (pool.tool_timeout.count() > 0) o.timeout = pool.tool_timeout;
      b = std::make_unique<storage::PartitionBackend>(pool, runner, wiper, std::move(o));
    }
    if (auto s = b->Prepare(); !s.ok()) {
      logger->error("storage pool '{}' could not be prepared: {}", pool.name, s.message());
    } else {
      logger->info("storage pool '{}' ready", pool.name);
    }
    backends.push_back(std::move(b));
  }
  return backends;
}

// libxenctrl on Xen URIs; everywhere else the explicit "unsupported" probe.
// How this agent reaches a destination agent: its [migration] client certificate (plain text
// only in the development mode, where both agents are on loopback). Without a certificate every
// migration fails at its first step, saying so; the agent still serves (and receives).
service::MigrationPeerFactory MakePeerFactory(const config::Config& cfg) {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  if (cfg.plaintext_loopback) return api::GrpcPeerFactory({.plaintext = true}, host);
  if (cfg.migration_cert_file.empty()) return api::GrpcPeerFactory({}, host);
  auto tls = api::LoadPeerTls(cfg.migration_cert_file, cfg.migration_key_file,
                              cfg.migration_ca_file.empty() ? cfg.tls_client_ca_file : cfg.migration_ca_file);
  if (!tls.ok()) {
    return [why = tls.status()](const std::string&) -> absl::StatusOr<std::unique_ptr<service::MigrationPeer>> {
      return why;
    };
  }
  return api::GrpcPeerFactory(std::move(*tls), host);
}

std::unique_ptr<hv::EventChannelProbe> MakeEventChannelProbe(const config::Config& cfg) {
  const std::string& uri = cfg.hypervisor_uri;
  std::string scheme = uri.substr(0, uri.find(':'));
  if (scheme != "xen" && scheme.rfind("xen+", 0) != 0) return std::make_unique<hv::UnsupportedEventChannelProbe>(scheme);
  auto calls = hv::OpenRealXenCtrlCalls();
  if (!calls.ok()) {
    log::ComponentLogger("main")->error("event channels cannot be read: {}", calls.status().message());
    return std::make_unique<hv::FailedEventChannelProbe>(calls.status());
  }
  return std::make_unique<hv::XenEventChannelProbe>(
      std::move(*calls), hv::XenEventChannelProbe::Options{.default_max_evtchn_port = cfg.evtchn_default_max_port});
}

api::auth::Authorizer MakeAuthorizer(const config::Config& cfg, const api::auth::CertVerifier* verifier,
                                     api::auth::RateLimiter* limiter) {
  api::auth::Authorizer::Options o{
      .everyone_is_controller = cfg.plaintext_loopback, .verifier = verifier, .limiter = limiter};
  for (const auto& i : cfg.auth_identities) o.identities[i.name] = *api::auth::ParseRole(i.role);
  for (const auto& t : cfg.auth_tokens) o.tokens.push_back({t.name, t.sha256, *api::auth::ParseRole(t.role)});
  return api::auth::Authorizer(std::move(o));
}

// mTLS with the files re-read every tls.reload_seconds (rotation without a restart), or, in
// the development mode, plain text (the config allows that on loopback only).
std::shared_ptr<grpc::ServerCredentials> GrpcCredentials(const config::Config& cfg) {
  if (cfg.plaintext_loopback) return grpc::InsecureServerCredentials();
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      cfg.tls_key_file, cfg.tls_cert_file, cfg.tls_client_ca_file, cfg.tls_reload_seconds);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  // The handshake asks for a certificate and checks the key behind it; the chain is verified by
  // the agent (CertVerifier), so refusals are UNAUTHENTICATED with a reason, not a dead socket.
  options.set_cert_request_type(GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_BUT_DONT_VERIFY);
  return grpc::experimental::TlsServerCredentials(options);
}

// What a crash left half-done is finished or undone before anything is served. Recovery needs
// the hypervisor; a libvirtd that is still starting gets up to 30 s (the agent's own reconnect
// loop brings the connection up; there is no event for it to wait on).
void RecoverBeforeServing(service::DomainService& domains, const service::Journal& journal,
                          const hv::Hypervisor& hypervisor) {
  auto logger = log::ComponentLogger("main");
  if (journal.Unfinished().empty()) return;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  if (!hypervisor.Connected()) logger->warn("recovery waits for the hypervisor connection (up to 30 s)");
  while (!hypervisor.Connected() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (const auto& r : domains.Recover()) {
    logger->warn("recovered interrupted {} of domain {}: {}", r.kind, r.domain, r.outcome);
  }
}

// Reconciliation, now and then every [reliability] reconcile_interval_seconds: volume owners
// against the hypervisor's domains, and any operation recovery could not finish before (its
// undo needed a hypervisor that had gone away).
std::unique_ptr<PeriodicThread> Reconcile(service::DomainService& domains, std::chrono::seconds interval,
                                          bool release_orphans) {
  auto orphans = [&domains, release_orphans] {
    auto found = domains.Reconcile(release_orphans);
    if (!found.ok()) log::ComponentLogger("main")->warn("reconcile skipped: {}", found.status().message());
  };
  orphans();  // at start; recovery has just run (RecoverBeforeServing)
  return std::make_unique<PeriodicThread>(interval, [&domains, orphans] {
    for (const auto& r : domains.Recover()) {
      log::ComponentLogger("main")->warn("recovered {} of domain {}: {}", r.kind, r.domain, r.outcome);
    }
    orphans();
  });
}

// The journal and the idempotency store, in [reliability] state_dir (made 0700 if missing),
// or in memory without one.
struct State {
  std::unique_ptr<service::Journal> journal;
  std::unique_ptr<service::IdempotencyStore> requests;
  std::unique_ptr<service::RescueRecords> rescues;
};
absl::StatusOr<State> OpenState(const config::Config& cfg) {
  auto logger = log::ComponentLogger("main");
  std::string journal_path, requests_path, rescues_path;
  if (cfg.state_dir.empty()) {
    logger->warn("no [reliability] state_dir: no crash recovery, idempotency keys kept in memory only");
  } else {
    std::error_code ec;
    std::filesystem::create_directories(cfg.state_dir, ec);
    if (ec) return absl::FailedPreconditionError(absl::StrCat("reliability.state_dir ", cfg.state_dir, ": ", ec.message()));
    std::filesystem::permissions(cfg.state_dir, std::filesystem::perms::owner_all, ec);
    journal_path = cfg.state_dir + "/journal";
    requests_path = cfg.state_dir + "/requests";
    rescues_path = cfg.state_dir + "/rescues";
  }
  State st;
  auto journal = service::Journal::Open(journal_path);
  if (!journal.ok()) return absl::FailedPreconditionError(absl::StrCat("reliability.state_dir: ", journal.status().message()));
  st.journal = std::move(*journal);
  if (st.journal->skipped_on_open() > 0) {
    logger->warn("journal: {} unreadable line(s) skipped (a write cut short by a crash)", st.journal->skipped_on_open());
  }
  auto requests = service::IdempotencyStore::Open(
      requests_path, {.window = cfg.idempotency_window, .max_entries = cfg.idempotency_max_entries});
  if (!requests.ok()) return absl::FailedPreconditionError(absl::StrCat("reliability.state_dir: ", requests.status().message()));
  st.requests = std::move(*requests);
  auto rescues = service::RescueRecords::Open(rescues_path);
  if (!rescues.ok()) return absl::FailedPreconditionError(absl::StrCat("reliability.state_dir: ", rescues.status().message()));
  st.rescues = std::move(*rescues);
  return st;
}

// Signals are taken synchronously by sigwait (WaitForStop); no thread may receive them.
sigset_t BlockStopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

// The gRPC server: one thin service per proto service, all over the same pipeline.
// Unary calls run on `workers` (grpc_services.h); it is declared first so that it outlives the
// services and the server, whose shutdown waits for the calls the pool is running.
struct GrpcFront {
  GrpcFront(const api::ops::Pipeline& pipeline, service::EventHub& events, std::size_t worker_threads)
      : workers(worker_threads), host(pipeline, workers), domains(pipeline, workers), events(events, pipeline),
        storage(pipeline, workers), metrics(pipeline, workers), operations(pipeline, workers),
        images(pipeline, workers), consoles(pipeline, workers), migrations(pipeline, workers) {}
  WorkerPool workers;
  api::HostGrpcService host;
  api::DomainGrpcService domains;
  api::EventGrpcService events;
  api::StorageGrpcService storage;
  api::MetricsGrpcService metrics;
  api::OperationGrpcService operations;
  api::ImageGrpcService images;
  api::ConsoleGrpcService consoles;
  api::MigrationGrpcService migrations;
  std::unique_ptr<grpc::Server> server;
};

absl::StatusOr<std::unique_ptr<GrpcFront>> StartGrpc(const config::Config& cfg, const api::ops::Pipeline& pipeline,
                                                     service::EventHub& events) {
  auto front = std::make_unique<GrpcFront>(pipeline, events, static_cast<std::size_t>(cfg.grpc_workers));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(cfg.grpc_listen, GrpcCredentials(cfg), &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(cfg.rest_max_body_bytes));
  builder.RegisterService(&front->host).RegisterService(&front->domains).RegisterService(&front->events);
  builder.RegisterService(&front->storage).RegisterService(&front->metrics).RegisterService(&front->operations);
  builder.RegisterService(&front->images);
  builder.RegisterService(&front->consoles);
  builder.RegisterService(&front->migrations);
  front->server = builder.BuildAndStart();
  if (!front->server || port == 0) {
    return absl::UnavailableError(absl::StrCat("grpc.listen ", cfg.grpc_listen, ": cannot listen (address in use?)"));
  }
  return front;
}

// Serves until SIGINT or SIGTERM (returned); SIGHUP reloads the TLS files without dropping a
// listener: REST at once, gRPC within tls.reload_seconds.
int WaitForStop(const sigset_t& signals, api::RestServer& rest, api::ConsoleWsServer* console_ws,
                api::auth::CertVerifier* verifier) {
  auto logger = log::ComponentLogger("main");
  int sig = 0;
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) {
    sd_notify(0, "RELOADING=1");
    if (auto s = rest.ReloadTls(); !s.ok()) logger->error("SIGHUP: TLS files not reloaded: {}", s.message());
    if (console_ws) {
      if (auto s = console_ws->ReloadTls(); !s.ok()) {
        logger->error("SIGHUP: console listener's TLS files not reloaded: {}", s.message());
      }
    }
    if (verifier) {
      if (auto s = verifier->Reload(); !s.ok()) logger->error("SIGHUP: client CA not reloaded: {}", s.message());
    }
    sd_notify(0, "READY=1");
  }
  return sig;
}

// Longer than most functions on purpose: every object of the running agent lives in this one
// scope, constructed in dependency order, so that the shutdown below (and C++'s reverse
// destruction) tears them down in exactly the opposite order. The steps it calls are named.
int Run(const config::Config& cfg) {
  auto logger = log::ComponentLogger("main");
  const sigset_t signals = BlockStopSignals();
  // Before anything else: the directories host files may come from must be root's alone.
  auto host_paths = HostPathPolicy::Open(
      {.image_dirs = cfg.image_dirs, .kernel_dirs = cfg.kernel_dirs, .firmware_dirs = cfg.firmware_dirs});
  if (!host_paths.ok()) {
    logger->critical("{}", host_paths.status().message());
    return 1;
  }

  // The service layer.
  if (!cfg.console_log_dir.empty()) {
    // QEMU (or virtlogd) writes the logs; only root reads them, through the agent.
    std::error_code ec;
    std::filesystem::create_directories(cfg.console_log_dir, ec);
    if (ec) {
      logger->critical("console.log_dir {}: {}", cfg.console_log_dir, ec.message());
      return 1;
    }
    std::filesystem::permissions(cfg.console_log_dir, std::filesystem::perms::owner_all, ec);
  }
  hv::LibvirtHypervisor libvirt(
      {.uri = cfg.hypervisor_uri,
       .domain_type = cfg.hypervisor_domain_type,
       .console_log_dir = cfg.console_log_dir,
       .vnc_listen = cfg.console_vnc_listen});
  // Every service reads domains through the event-fed view (hypervisor/domain_view.h): state,
  // listings and capacity from memory, everything else passed to libvirt. Consoles open on the
  // libvirt connection itself.
  hv::DomainView hypervisor(libvirt);
  SystemClock clock;
  service::EventHub events;
  hypervisor.SetEventSink([&events](const hv::DomainEvent& e) { events.Publish(e); });
  // Operations on the same stream (opt-in per Watch): begin and end at once, progress at most
  // every 500 ms per operation.
  service::OperationEvents operation_events(clock, [&events](const service::OperationEvent& e) { events.Publish(e); });
  storage::SubprocessRunner runner;
  storage::DeviceWiper wiper;
  service::StorageService storage(hypervisor, MakeBackends(cfg, runner, wiper), cfg.pool_free_floor_mib << 20);
  auto state = OpenState(cfg);
  if (!state.ok()) {
    logger->critical("{}", state.status().message());
    return 1;
  }
  state->journal->SetObserver(&operation_events);
  // One policy, reported by HostService and enforced by DomainService's admission, whatever
  // the hypervisor URI (test:///default included).
  const service::CapacityPolicy policy{.cpu_allocation_ratio = cfg.cpu_allocation_ratio,
                                       .memory_allocation_ratio = cfg.memory_allocation_ratio,
                                       .reserved_cpus = cfg.reserved_cpus,
                                       .reserved_memory_bytes = cfg.reserved_memory_mib << 20};
  service::HostNetworks host_networks(runner, {.physical_interfaces = cfg.network_physical_interfaces,
                                               .vlan_bridge_prefix = cfg.network_vlan_bridge_prefix,
                                               .vxlan_bridge_prefix = cfg.network_vxlan_bridge_prefix,
                                               .mtu = cfg.network_mtu});
  // Imports: files only from [images] import_dirs, under the same rules as [security] image_dirs.
  auto import_dirs = HostPathPolicy::Open({.image_dirs = cfg.image_import_dirs});
  if (!import_dirs.ok()) {
    logger->critical("images.import_dirs: {}", import_dirs.status().message());
    return 1;
  }
  service::ImageService images(storage, *state->journal, runner,
                               {.allowed_sources = cfg.image_allowed_sources,
                                .import_dirs = import_dirs->get(),
                                .scratch_dir = cfg.image_scratch_dir,
                                .max_virtual_size = cfg.image_max_virtual_size_mib << 20,
                                .hypervisor = &hypervisor,
                                .events = &operation_events});
  // A rescue disk is a volume made from a ready image, like any other volume from an image.
  auto volume_from_image = [&images](const std::string& pool, const std::string& volume, const std::string& image,
                                     const std::string& owner) -> absl::StatusOr<std::string> {
    auto v = images.CreateVolumeFromImage(pool, volume, 0, image, owner);
    if (!v.ok()) return v.status();
    return v->volume.path;
  };
  service::DomainService domains(
      hypervisor, clock,
      {.default_shutdown_timeout = cfg.shutdown_timeout,
       .host_paths = host_paths->get(),
       .admission = policy,
       .networks = {.bridges = cfg.network_bridges, .ovs_bridges = cfg.network_ovs_bridges},
       .host_networks = &host_networks,
       .images = &images,
       .volume_from_image = volume_from_image,
       .rescues = state->rescues.get()},
      &storage, state->journal.get());
  for (const std::string& line : images.Recover()) logger->warn("recovery: {}", line);
  storage.SetJournal(state->journal.get());
  RecoverBeforeServing(domains, *state->journal, hypervisor);  // waits for the hypervisor
  for (const std::string& line : storage.RecoverSnapshots()) logger->warn("recovery: {}", line);
  // Migrations after domains: a define an incoming transfer began is a create recovery undid.
  service::MigrationService migrations(domains, storage, hypervisor, *state->journal, MakePeerFactory(cfg),
                                      {.live_tls = cfg.migration_libvirt_tls,
                                       .peer_heartbeat = std::chrono::milliseconds(cfg.migration_peer_heartbeat_ms),
                                       .peer_heartbeat_misses = cfg.migration_peer_heartbeat_misses,
                                       .events = &operation_events});
  service::IncomingMigrations incoming(domains, storage, hypervisor, *state->journal, clock,
                                       {.idle_timeout = std::chrono::seconds(cfg.migration_incoming_idle_seconds),
                                        .libvirt_uri = cfg.migration_libvirt_uri,
                                        .migrate_uri = cfg.migration_migrate_uri});
  for (const std::string& line : migrations.Recover()) logger->warn("recovery: {}", line);
  for (const std::string& line : incoming.Recover()) logger->warn("recovery: {}", line);
  // An incoming transfer whose source went silent (crashed, cut off) is undone after its idle time.
  PeriodicThread incoming_expiry(std::chrono::seconds(30), [&incoming] { incoming.ExpireIdle(); });
  auto reconciler = Reconcile(domains, cfg.reconcile_interval, cfg.release_orphans);
  service::HostService host(hypervisor, policy, &storage);
  auto evtchn = MakeEventChannelProbe(cfg);
  service::MetricsCollector metrics(hypervisor, host, clock,
                                    {.max_age = cfg.metrics_max_age,
                                     .evtchn_alert = {.share = cfg.evtchn_alert_share},
                                     .evtchn_max_age = cfg.evtchn_interval},
                                    evtchn.get(), [&events](const hv::DomainEvent& e) { events.Publish(e); });
  if (evtchn->Supported()) metrics.StartBackground(cfg.evtchn_interval);

  // Who may call what, how often.
  std::unique_ptr<api::auth::CertVerifier> verifier;
  if (!cfg.plaintext_loopback) {
    auto v = api::auth::CertVerifier::Load(cfg.tls_client_ca_file);
    if (!v.ok()) {
      logger->critical("{}", v.status().message());
      return 1;
    }
    verifier = std::move(*v);
  }
  api::auth::RateLimiter limiter({.requests_per_second = cfg.requests_per_second,
                                  .burst = cfg.request_burst,
                                  .max_streams_per_caller = cfg.max_streams_per_caller},
                                 clock);
  // The development mode has one caller ("local") and no limits.
  const api::auth::Authorizer authz = MakeAuthorizer(cfg, verifier.get(), cfg.plaintext_loopback ? nullptr : &limiter);
  if (cfg.plaintext_loopback) {
    logger->warn("DEVELOPMENT MODE: plain text on loopback, no authentication, every caller is a controller");
  }
  service::OperationGate gate(cfg.max_operations_in_flight);
  // Guests' consoles, shared among the callers attached to each (closed with the last one).
  service::ConsoleSessions consoles(libvirt, {});
  service::ConsoleTickets console_tickets(clock, cfg.console_ticket_ttl);
  service::ConsoleTcpEndpoints console_tcp(
      consoles, console_tickets,
      {.address = cfg.console_tcp_listen, .port_min = cfg.console_tcp_port_min, .port_max = cfg.console_tcp_port_max},
      [](const std::string& domain, const absl::Status& why) {
        api::auth::Audit(api::auth::Caller{"serial-tcp-client", std::nullopt}, "serial-tcp connect",
                         absl::StrCat("{\"domain_name\":\"", domain, "\"}"), why, {});
      });
  // The browser's way in ([console] ws_listen): TLS with the agent's own certificate, plain
  // only in the development mode (loopback, as REST).
  std::unique_ptr<api::ConsoleWsServer> console_ws;
  service::ConsoleAccess::Options access_options{.log_dir = cfg.console_log_dir,
                                                .xen_log_dir = cfg.console_xen_log_dir};
  access_options.vnc_ttl = cfg.console_ticket_ttl;
  if (!cfg.console_ws_listen.empty()) {
    std::optional<api::ConsoleWsTls> ws_tls;
    if (!cfg.plaintext_loopback) ws_tls = api::ConsoleWsTls{cfg.tls_cert_file, cfg.tls_key_file};
    console_ws = std::make_unique<api::ConsoleWsServer>(
        consoles, console_tickets,
        api::ConsoleWsServer::Options{.listen = cfg.console_ws_listen,
                                      .tls = ws_tls,
                                      // REST's limiter and limits, the peer's address as the caller.
                                      .limiter = cfg.plaintext_loopback ? nullptr : &limiter},
        [](const std::string& domain, const std::string& peer, const absl::Status& why) {
          api::auth::Audit(api::auth::Caller{absl::StrCat("serial-ws-client ", peer), std::nullopt},
                           "serial-ws connect", absl::StrCat("{\"domain_name\":\"", domain, "\"}"), why, {});
        });
    if (auto s = console_ws->Start(); !s.ok()) {
      logger->critical("{}", s.message());
      return 1;
    }
    const size_t colon = cfg.console_ws_listen.rfind(':');
    access_options.ws_host =
        cfg.console_ws_public_host.empty() ? cfg.console_ws_listen.substr(0, colon) : cfg.console_ws_public_host;
    access_options.ws_port = console_ws->port();
    access_options.ws_base_url = absl::StrCat(cfg.plaintext_loopback ? "http://" : "https://", access_options.ws_host,
                                              ":", access_options.ws_port);
  }
  service::ConsoleAccess console_access(hypervisor, console_tickets, &console_tcp, access_options);
  // One pipeline for both APIs: the same checks, limits, idempotency and audit (operations/).
  const api::ops::Pipeline pipeline(
      {.host = &host, .domains = &domains, .storage = &storage, .metrics = &metrics, .journal = state->journal.get(),
       .images = &images, .consoles = &consoles, .console_access = &console_access, .migrations = &migrations,
       .incoming = &incoming},
      {.authz = &authz, .idem = state->requests.get(), .gate = &gate});

  // The two fronts. REST first: it loads (and so checks) the TLS files that both servers use.
  api::RestRouter router(pipeline);
  std::optional<api::RestTls> rest_tls;
  if (!cfg.plaintext_loopback) {
    rest_tls = api::RestTls{cfg.tls_cert_file, cfg.tls_key_file,
                            cfg.rest_require_client_cert ? cfg.tls_client_ca_file : std::string()};
  }
  router.SetStarting(true);  // /healthz: 503 until gRPC listens as well
  api::RestServer rest(cfg.rest_listen, router, cfg.rest_max_body_bytes, rest_tls);
  if (auto s = rest.Start(); !s.ok()) {
    logger->critical("{}", s.message());
    return 1;
  }
  auto grpc_front = StartGrpc(cfg, pipeline, events);
  if (!grpc_front.ok()) {
    logger->critical("{}", grpc_front.status().message());
    return 1;
  }
  // Cold migrations' volumes come in on a channel of their own: the same TLS and checks as
  // ReceiveVolume over gRPC, fewer copies (docs/migration.md, "The volume channel").
  std::unique_ptr<api::VolumeChannelServer> volume_channel;
  if (cfg.migration_data_port >= 0) {
    std::optional<api::VolumeChannelServer::Tls> channel_tls;
    if (!cfg.plaintext_loopback) channel_tls = api::VolumeChannelServer::Tls{cfg.tls_cert_file, cfg.tls_key_file};
    volume_channel = std::make_unique<api::VolumeChannelServer>(
        pipeline, api::VolumeChannelServer::Options{.host = HostOf(cfg.grpc_listen),
                                                    .port = cfg.migration_data_port,
                                                    .tls = channel_tls});
    if (auto s = volume_channel->Start(); !s.ok()) {
      logger->critical("{}", s.message());
      return 1;
    }
    incoming.SetDataPort(volume_channel->port());
    logger->info("volume channel for incoming migrations on port {}", volume_channel->port());
  }
  auto health = ReportHealth((*grpc_front)->server->GetHealthCheckService(), hypervisor);
  router.SetStarting(false);
  logger->info("hvagentd {} serving: gRPC {} ({}) | REST {}://{} | hypervisor {}", kAgentVersion, cfg.grpc_listen,
               cfg.plaintext_loopback ? "plain text" : "mTLS", cfg.plaintext_loopback ? "http" : "https",
               cfg.rest_listen, cfg.hypervisor_uri);
  // systemd (Type=notify): ready once both servers listen. Without NOTIFY_SOCKET this does nothing.
  sd_notifyf(0, "READY=1\nSTATUS=serving gRPC %s, REST %s, hypervisor %s\nMAINPID=%d", cfg.grpc_listen.c_str(),
             cfg.rest_listen.c_str(), cfg.hypervisor_uri.c_str(), static_cast<int>(getpid()));

  const int sig = WaitForStop(signals, rest, console_ws.get(), verifier.get());
  logger->info("signal {} received, shutting down", sig);
  sd_notify(0, "STOPPING=1");
  // Take no new work on either API, let the changing operations in flight finish (a create or
  // delete runs to its end, journalled throughout), then exit (docs/reliability.md, "Stopping is
  // graceful").
  gate.Close();       // new creates, deletes, actions: UNAVAILABLE / 503 with Retry-After
  rest.BeginDrain();  // every new REST request: 503 with Retry-After
  events.Close();     // ends Watch streams so the gRPC server can drain
  (*grpc_front)->metrics.Close();
  health.reset();
  if (!gate.WaitIdle(kShutdownGrace)) {
    // Cut off like a crash, which recovery handles (every step is journalled before it runs);
    // returning would destroy the services under the handlers still running.
    logger->warn("{} changing operation(s) still running after {} s; exiting now, the journal keeps them for "
                 "recovery at the next start", gate.in_flight(), kShutdownGrace.count());
    spdlog::shutdown();
    std::_Exit(1);
  }
  (*grpc_front)->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  rest.Stop();  // waits for the REST reads still being answered
  if (console_ws) console_ws->Stop();  // browsers' consoles detach
  if (volume_channel) volume_channel->Stop();  // a transfer cut off here is undone as its source gone
  metrics.Stop();
  logger->info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Debian builds abseil without NDEBUG, so every absl::Mutex that gRPC takes also updated a
  // lock-order graph for deadlock detection (about 1% of the agent's CPU under read load,
  // perf, docs/performance.md). A release build of abseil has it off; so does the agent.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  auto cli = config::ParseCommandLine(std::vector<std::string>(argv + 1, argv + argc));
  if (!cli.ok()) {
    std::cerr << "hvagentd: " << cli.status().message() << "\n" << config::Usage();
    return 2;
  }
  if (cli->help) {
    std::cout << config::Usage();
    return 0;
  }
  if (cli->version) {
    std::cout << "hvagentd " << kAgentVersion << (failpoint::CompiledIn() ? " (test build: failpoints compiled in)" : "")
              << "\n";
    return 0;
  }
  auto cfg = config::Resolve(*cli);
  if (!cfg.ok()) {
    std::cerr << "hvagentd: " << cfg.status().message() << "\n";
    return 2;
  }
  log::Configure(spdlog::level::from_str(cfg->log_level), cfg->log_format);
  return Run(*cfg);
}
