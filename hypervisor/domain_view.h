#pragma once
// DomainView: a Hypervisor decorator that answers GetDomain, GetDomainByUuid and ListDomains from
// memory, kept current by the inner hypervisor's lifecycle events and by the agent's own writes.
// Every other call goes to the inner hypervisor unchanged.
//
// Why a decorator and not a change inside LibvirtHypervisor: the view's rules (what an event
// invalidates, when an answer may be given) do not depend on libvirt, so they are tested with the
// fake hypervisor, and every caller of hv::Hypervisor (DomainService, HostService, admission)
// gets them without knowing.
//
// Contract:
// - Filled by one ListDomains of the inner hypervisor (libvirt: bulk listing) when created and
//   after every reconnect (the inner's kResync event, or a changed ConnectionGeneration()).
// - Each lifecycle event re-reads that one domain from the inner hypervisor (one GetDomain) on
//   the view's own thread, then passes the event on to the sink: a subscriber that reads after an
//   event sees at least that event's effect.
// - After a write (define, start, destroy...) returns, the domain has been re-read, so the
//   caller's next read sees the write even before libvirt's event arrives.
// - While the inner connection is down: Unavailable at once. Connected but not yet rebuilt:
//   readers wait up to Options::rebuild_wait, then Unavailable. Never an answer from before a
//   reconnect.
// - NICs (DomainInfo::nics) are read from the domain's current XML with the rest; besides the
//   events above, libvirt's DEVICE_ADDED / DEVICE_REMOVED (a hot-plug by virsh, a guest letting
//   go of a NIC late) and the agent's own AttachNic / DetachNic re-read the domain. Why here
//   rather than a libvirt call per GetDomain: a read stays a memory read (issue 25), and a NIC
//   changes only by those events and writes. Where the driver sends no device events (libxl), a
//   hot-plug made behind the agent's back shows at the domain's next event.
// - Memory is the domain's maximum (as virDomainGetInfo's maxMem). A balloon change (`virsh
//   setmem`) does not change it; a change of the maximum is a definition change (DEFINED event)
//   or needs a restart (STARTED), both re-read here.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "hypervisor/hypervisor.h"

namespace hvagent::hv {

class DomainView final : public Hypervisor {
 public:
  struct Options {
    // How long a reader waits for the view to be rebuilt after a reconnect.
    std::chrono::milliseconds rebuild_wait{2000};
    // Between attempts when the rebuild's listing fails on a live connection.
    std::chrono::milliseconds retry_delay{250};
  };

  // Takes over the inner hypervisor's event sink. `inner` must outlive the view.
  explicit DomainView(Hypervisor& inner, Options options);
  explicit DomainView(Hypervisor& inner) : DomainView(inner, Options{}) {}
  ~DomainView() override;

  absl::StatusOr<HostInfo> GetHostInfo() override { return inner_.GetHostInfo(); }
  absl::StatusOr<std::vector<DomainInfo>> ListDomains() override;
  absl::StatusOr<DomainInfo> GetDomain(const std::string& name) override;
  absl::StatusOr<DomainInfo> GetDomainByUuid(const std::string& uuid) override;

  absl::Status DefineDomain(const DomainSpec& spec) override;
  absl::Status UndefineDomain(const std::string& name) override;
  absl::Status RedefineDomain(const DomainSpec& spec) override;
  absl::Status StartDomain(const std::string& name) override;
  absl::Status RequestShutdown(const std::string& name) override;
  absl::Status DestroyDomain(const std::string& name) override;
  absl::Status RebootDomain(const std::string& name) override;
  absl::Status SuspendDomain(const std::string& name) override;
  absl::Status ResumeDomain(const std::string& name) override;
  absl::Status ManagedSaveDomain(const std::string& name) override;
  absl::StatusOr<std::string> GetDomainDefinition(const std::string& name) override {
    return inner_.GetDomainDefinition(name);
  }
  absl::Status RestoreDomainDefinition(const std::string& name, const std::string& definition) override;
  // Definitions and dry-run checks are not in the view: straight through.
  absl::StatusOr<DomainSpec> GetDomainSpec(const std::string& name) override { return inner_.GetDomainSpec(name); }
  absl::StatusOr<std::vector<std::string>> GetUnmodelledDevices(const std::string& name) override {
    return inner_.GetUnmodelledDevices(name);
  }
  absl::Status CheckDefinable(const DomainSpec& spec) override { return inner_.CheckDefinable(spec); }

  absl::StatusOr<std::vector<DiskSpec>> GetDomainDisks(const std::string& name) override {
    return inner_.GetDomainDisks(name);
  }
  absl::Status AttachDisk(const std::string& name, const DiskSpec& disk) override {
    return inner_.AttachDisk(name, disk);
  }
  absl::Status DetachDisk(const std::string& name, const DiskSpec& disk) override {
    return inner_.DetachDisk(name, disk);
  }
  absl::StatusOr<std::vector<DomainStats>> GetAllDomainStats() override { return inner_.GetAllDomainStats(); }
  absl::StatusOr<DomainResources> GetDomainResources(const std::string& name) override {
    return inner_.GetDomainResources(name);
  }
  // A resize changes vCPUs and memory, which the view holds: re-read like every other write.
  absl::Status SetDomainResources(const std::string& name, const ResourceChange& change) override;
  // The union of definition and running guest, for the services: straight through.
  absl::StatusOr<std::vector<NicSpec>> GetDomainNics(const std::string& name) override {
    return inner_.GetDomainNics(name);
  }
  // DomainInfo carries the NICs: a hot-plug or unplug is re-read like every other write.
  absl::Status AttachNic(const std::string& name, const NicSpec& nic) override;
  absl::Status DetachNic(const std::string& name, const std::string& mac) override;

  // A live password changes nothing the view holds: straight through.
  absl::StatusOr<VncDisplay> SetVncPassword(const std::string& name, const std::string& password,
                                            std::chrono::system_clock::time_point valid_until) override {
    return inner_.SetVncPassword(name, password, valid_until);
  }

  // A guest agent's freeze changes nothing the view holds: straight through.
  absl::StatusOr<bool> HasGuestAgent(const std::string& name) override { return inner_.HasGuestAgent(name); }
  absl::StatusOr<int> FreezeFilesystems(const std::string& name) override { return inner_.FreezeFilesystems(name); }
  absl::Status ThawFilesystems(const std::string& name) override { return inner_.ThawFilesystems(name); }
  // A write like any other (AfterWrite): libvirt may report the source's undefine before or
  // without an event the view would re-read on, so the view re-reads the domain itself.
  absl::Status MigrateLive(const std::string& name, const LiveMigration& m) override {
    return AfterWrite(name, inner_.MigrateLive(name, m));
  }
  absl::StatusOr<MigrationJob> GetMigrationJob(const std::string& name) override {
    return inner_.GetMigrationJob(name);
  }
  absl::Status AbortMigrationJob(const std::string& name) override { return inner_.AbortMigrationJob(name); }

  void SetEventSink(EventSink sink) override;
  // The inner connection is up and the view was built on it.
  bool Connected() const override;
  uint64_t ConnectionGeneration() const override { return inner_.ConnectionGeneration(); }

  // How many times the view was filled from a full listing (1 after a clean start).
  uint64_t rebuilds() const;
  // How many single-domain re-reads it made (events and writes).
  uint64_t refreshes() const;

 private:
  struct Entry {
    DomainInfo info;  // uptime unset: computed from `started` at read time
    std::optional<std::chrono::steady_clock::time_point> started;
    uint64_t stamp = 0;  // seq_ when the read that produced it began
    bool gone = false;   // re-read found no such domain (kept so an older read cannot revive it)
  };

  // OK when the view may answer; waits for a rebuild up to rebuild_wait. Called with mu_ held.
  absl::Status AwaitCurrent(std::unique_lock<std::mutex>& lock);
  bool CurrentLocked() const;
  DomainInfo Render(const Entry& e, std::chrono::steady_clock::time_point now) const;
  // Re-reads one domain from the inner hypervisor and stores it unless a newer read did.
  void Refresh(const std::string& name);
  absl::Status AfterWrite(const std::string& name, absl::Status s);
  // One full listing; false when it failed.
  bool Rebuild();
  void OnEvent(const DomainEvent& e);
  void WorkerLoop();

  Hypervisor& inner_;
  const Options options_;

  mutable std::mutex mu_;
  std::condition_variable rebuilt_cv_;  // readers waiting for a rebuild
  std::condition_variable work_cv_;     // the worker
  std::map<std::string, Entry> domains_;  // by name
  bool valid_ = false;
  bool rebuild_requested_ = true;
  uint64_t built_generation_ = 0;
  uint64_t seq_ = 0;
  uint64_t rebuilds_ = 0;
  uint64_t refreshes_ = 0;
  std::deque<DomainEvent> pending_;
  bool stopping_ = false;

  std::mutex sink_mu_;
  EventSink sink_;

  // What the inner hypervisor's sink holds: it may be mid-call on another thread when the view
  // goes, so the destructor detaches under this lock and waits for such a call to finish.
  struct Relay {
    std::mutex mu;
    DomainView* view = nullptr;
  };
  std::shared_ptr<Relay> relay_ = std::make_shared<Relay>();

  std::thread worker_;
};

}  // namespace hvagent::hv
