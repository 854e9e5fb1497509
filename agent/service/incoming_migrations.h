#pragma once
// IncomingMigrations: the destination side of a cold migration (MigrationService's peer).
// Prepare checks everything the domain will need and journals the transfer
// (OPERATION_KIND_MIGRATE_IN); Receive creates one volume owned by the incoming domain and
// writes the sender's stream onto it (StorageService::CreateVolumeFilled: fenced while written,
// deleted again when the stream fails or its sha256 differs); Finish defines the domain through
// DomainService::Create on those volumes (the same validation and admission as any create);
// Abort undoes all of it. A transfer idle for longer than `idle_timeout` (its source went away)
// is aborted by the next call that looks, and Recover() undoes what a crash cut short, so a
// destination is never left holding half a domain.

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/service/domain_service.h"
#include "agent/service/journal.h"
#include "agent/service/migration_peer.h"
#include "agent/service/storage_service.h"
#include "common/clock.h"

namespace hvagent::service {

class IncomingMigrations {
 public:
  struct Options {
    std::chrono::seconds idle_timeout{600};
    // Live migrations ([migration] libvirt_uri / migrate_uri): where a source's libvirtd reaches
    // this host's. Empty libvirt_uri: this host takes none.
    std::string libvirt_uri;
    std::string migrate_uri;
  };
  IncomingMigrations(DomainService& domains, StorageService& storage, hv::Hypervisor& hypervisor, Journal& journal,
                     Clock& clock, Options options);

  // InvalidArgument naming the field (the spec as CreateDomain checks it; every volume disk must
  // have create_size_bytes), AlreadyExists for a domain of that name or uuid here or arriving,
  // NotFound for a pool this host lacks, ResourceExhausted when the volumes do not fit.
  absl::StatusOr<std::string> Prepare(const IncomingPlan& plan);
  // NotFound for an unknown transfer or disk; InvalidArgument when `size` is not the planned
  // one; FailedPrecondition for a disk received already; DataLoss for a short stream or a
  // sha256 that differs from the sender's (the volume is deleted again).
  absl::StatusOr<ReceivedVolume> Receive(const std::string& transfer, size_t disk, uint64_t size,
                                         VolumeStream& stream);
  // A live migration's transfer: Prepare's checks, then every volume made at once, of its size
  // and empty (the source's hypervisor copies into it), owned by the incoming domain.
  // FailedPrecondition when this host takes no live migrations; a volume that cannot be made
  // undoes the transfer.
  absl::StatusOr<LiveTarget> PrepareLive(const IncomingPlan& plan);
  // Cold: defines the domain on the received volumes. Live: checks that the domain arrived (it
  // runs here with the transfer's uuid; FailedPrecondition otherwise) and closes the transfer.
  absl::StatusOr<hv::DomainInfo> Finish(const std::string& transfer);
  absl::Status Abort(const std::string& transfer);
  // The source's heartbeat during a live copy: OK while the transfer is open here (and marks it
  // used); NotFound once it was aborted, expired, finished, or is unknown (a restart rolled it
  // back), which tells the source to abort its hypervisor's job.
  absl::Status Keep(const std::string& transfer);
  // At start: transfers a crash cut short are undone (their domain, if defined and not
  // finished, and every volume received). A live transfer whose domain runs here with its uuid
  // (the hypervisors finished the move while this agent was down) is kept whole instead. One
  // line per thing done, for the log.
  std::vector<std::string> Recover();
  // Aborts every transfer idle for longer than idle_timeout (also done by each Prepare).
  void ExpireIdle();
  // The port of this agent's volume channel, told to each cold transfer's source (0: none,
  // volumes come over gRPC). Set once the channel listens.
  void SetDataPort(int port) { data_port_ = port; }
  int data_port() const { return data_port_; }

 private:
  struct Transfer {
    uint64_t op = 0;
    IncomingPlan plan;
    std::vector<bool> received;  // by index of plan.volumes
    bool finished = false;
    bool busy = false;           // a Receive runs: not expired meanwhile
    Clock::TimePoint last_used;
    // Until finished: the name's volumes are this transfer's, no orphans (DomainService::NameHold).
    std::unique_ptr<DomainService::NameHold> hold;
  };
  absl::Status CheckPlan(const IncomingPlan& plan);
  // Makes volume `i` of a live transfer, empty; its device path.
  absl::StatusOr<std::string> MakeEmptyVolume(Transfer& t, size_t i);
  absl::StatusOr<hv::DomainInfo> FinishLive(Transfer& t);
  absl::StatusOr<std::shared_ptr<Transfer>> Find(const std::string& transfer);
  // Writes the stream onto `device` (size bytes) and hashes it; the sender's sha256 must match.
  absl::StatusOr<ReceivedVolume> WriteStream(const std::string& device, uint64_t size, VolumeStream& stream);
  // Removes what `t` made: the domain (when `t` defined it) and the received volumes.
  absl::Status Undo(const Transfer& t);
  absl::Status DeleteVolume(const VolumeClaim& c, const std::string& domain);
  // Recover's answer for one journalled transfer.
  std::string RecoverOne(const Journal::Operation& op);

  DomainService& domains_;
  StorageService& storage_;
  hv::Hypervisor& hv_;
  Journal& journal_;
  Clock& clock_;
  const Options options_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Transfer>> transfers_;  // by transfer id
  std::atomic<int> data_port_{0};
};

}  // namespace hvagent::service
