#pragma once
// MigrationService: the source side of a cold migration. Migrate checks the request and the
// domain, journals an operation (OPERATION_KIND_MIGRATE_DOMAIN) and answers its id; a thread of
// its own then runs the steps, each journalled before it is tried:
//
//   shutdown (only when the guest runs and the policy allows it; graceful, forced past the timeout)
//   prepare            the destination checks and opens a transfer (MigrationPeer::Prepare)
//   send-volume p/v    each owned volume streamed (zero runs not sent), sha256 compared both ends
//   finish             the destination defines the domain (and starts it when it ran here)
//   remove-source      the domain is deleted here with the volumes it owns
//
// Live (request.live, QEMU/KVM only; refused on Xen: no live migration on Arm in Xen 4.17):
//
//   prepare            the destination makes every volume now, empty (MigrationPeer::PrepareLive)
//   migrate-live       Hypervisor::MigrateLive: libvirt peer to peer, memory and disks (NBD)
//                      copied while the guest runs; progress from the hypervisor's job; the
//                      destination agent's heartbeat (KeepIncoming): lost, the job is aborted
//   finish             the destination checks that the guest arrived running
//   remove-source      the volumes it owned here are deleted (libvirt undefined it here)
//
// Until `finish` has answered, the source is the domain's home: any failure or a cancel aborts
// the transfer on the destination (which removes all it received) and starts the guest again
// when the migration shut it down. A crash is undone the same way by Recover (the destination's
// own recovery or its idle expiry removes its half). Disks that are host files, and borrowed
// volumes, do not move: such a domain is refused before anything starts.

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/service/domain_service.h"
#include "agent/service/image_service.h"
#include "agent/service/journal.h"
#include "agent/service/migration_peer.h"
#include "agent/service/storage_service.h"

namespace hvagent::service {

enum class RunningPolicy { kRefuse, kShutdown };

struct MigrateRequest {
  std::string name;
  std::string destination;  // "host:port"
  RunningPolicy running = RunningPolicy::kRefuse;
  std::chrono::seconds shutdown_timeout{0};  // 0: DomainService's default
  std::string destination_pool;              // empty: the source volume's pool name
  bool live = false;                         // QEMU/KVM: the guest moves running (below)
  uint32_t max_downtime_ms = 0;              // live: the switch-over's pause bound; 0: QEMU's default
  uint32_t max_bandwidth_mib_s = 0;          // live: memory and disk copy, MiB/s; 0: unlimited
};

class MigrationService {
 public:
  struct Options {
    bool live_tls = false;  // ask the hypervisor for TLS on a live migration's data channel
    std::chrono::milliseconds live_poll{250};  // how often a live migration's progress is read
    // While libvirt copies: the destination agent asked this often whether it still holds the
    // transfer (each call with this deadline), and given up after this many failures in a row
    // (PeerHeartbeat): the hypervisor's job is then aborted and the guest stays here.
    std::chrono::milliseconds peer_heartbeat{1000};
    int peer_heartbeat_misses = 3;
    OperationEvents* events = nullptr;  // told bytes moved, for the event stream; null: nobody
  };
  MigrationService(DomainService& domains, StorageService& storage, hv::Hypervisor& hypervisor, Journal& journal,
                   MigrationPeerFactory connect, Options options);
  MigrationService(DomainService& domains, StorageService& storage, hv::Hypervisor& hypervisor, Journal& journal,
                   MigrationPeerFactory connect)
      : MigrationService(domains, storage, hypervisor, journal, std::move(connect), Options{}) {}
  ~MigrationService();  // cancels migrations under way and waits for them

  // The operation's id, or a refusal with nothing started (see migration.proto).
  absl::StatusOr<uint64_t> Migrate(const MigrateRequest& request);
  // NotFound when no migration `id` runs; FailedPrecondition once the destination has the domain.
  absl::Status Cancel(uint64_t id);
  // Bytes sent of all volumes' bytes, while it runs or after.
  std::optional<Transfer> TransferOf(uint64_t id) const;
  // At start: migrations a crash cut short. Before `remove-source` the source is kept (and a
  // guest the migration shut down started again); at or after it, the removal is completed.
  std::vector<std::string> Recover();
  void WaitForMigrations();  // tests

 private:
  struct Job {
    uint64_t id = 0;
    MigrateRequest request;
    IncomingPlan plan;
    std::vector<storage::VolumeInfo> volumes;  // by plan.volumes' order
    bool was_running = false;
    std::atomic<bool> cancel{false};
    std::atomic<bool> committed{false};  // the destination has the domain: no cancel any more
    // The heartbeat gave the destination agent up (it stopped answering, or no longer holds the
    // transfer): the undo does not spend a connect timeout on asking it to abort.
    std::atomic<bool> peer_lost{false};
    std::atomic<bool> ended{false};
    std::atomic<uint64_t> done{0};
    std::atomic<uint64_t> total{0};
  };
  // Tells options_.events how far `job` is.
  void Report(const Job& job);
  // The plan the destination gets: the domain's spec with every disk a volume it owns.
  absl::StatusOr<std::shared_ptr<Job>> Plan(const MigrateRequest& request);
  void Run(std::shared_ptr<Job> job);
  // Keeps the progress of the last Journal::kHistory ended migrations (mu_ held).
  void ForgetOldJobs();
  std::string RecoverLive(const Journal::Operation& op);
  absl::Status Steps(Job& job, std::string& transfer, bool& shut_down);
  absl::Status SendVolumes(Job& job, MigrationPeer& peer, const std::string& transfer);
  // The live path: prepare, migrate-live, finish, remove-source.
  absl::Status LiveSteps(Job& job, MigrationPeer& peer, std::string& transfer);
  // Hypervisor::MigrateLive on a thread of its own while this one reads progress, keeps the
  // destination's transfer (MigrationPeer::Keep) and aborts the job on cancel or when the
  // destination agent is lost.
  absl::Status RunLive(Job& job, MigrationPeer& peer, const std::string& transfer, const hv::LiveMigration& m);
  // RunLive's heartbeat (PeerHeartbeat over MigrationPeer::Keep) until the job is done or
  // aborted; why the destination agent is lost, or empty.
  std::string WatchPeer(MigrationPeer& peer, const std::string& transfer, const std::atomic<bool>& done,
                        const std::atomic<bool>& aborted);
  absl::Status Step(Job& job, const std::string& name, const storage::VolumeInfo* volume = nullptr);
  // After a failure before `finish` answered: the destination's half removed, the guest back.
  std::string Undo(Job& job, MigrationPeer* peer, const std::string& transfer, bool shut_down);

  DomainService& domains_;
  StorageService& storage_;
  hv::Hypervisor& hv_;
  Journal& journal_;
  const MigrationPeerFactory connect_;
  const Options options_;

  mutable std::mutex mu_;
  std::map<uint64_t, std::shared_ptr<Job>> jobs_;  // running and the last ended ones, by id
  std::vector<std::thread> threads_;
};

}  // namespace hvagent::service
