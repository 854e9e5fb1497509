#pragma once
// LibvirtHypervisor: the Hypervisor over any libvirt URI (test:///default, qemu:///system,
// xen:///system). Owns one connection, re-opened with backoff when libvirt reports it closed;
// meanwhile Connected() is false and calls return Unavailable. Lifecycle events arrive on the
// shared libvirt event loop thread and are passed to the sink.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "hypervisor/console.h"
#include "hypervisor/hypervisor.h"
#include "hypervisor/libvirt/domain_xml_reader.h"
#include "hypervisor/libvirt/capabilities.h"

typedef struct _virConnect* virConnectPtr;
typedef struct _virDomain* virDomainPtr;

namespace hvagent::hv {

class LibvirtEventLoop;

class LibvirtHypervisor final : public Hypervisor, public ConsoleOpener {
 public:
  struct Options {
    std::string uri = "test:///default";
    std::chrono::milliseconds min_backoff{500};
    std::chrono::milliseconds max_backoff{30000};
    // The deadline on every call into libvirtd: keepalive probes every `keepalive_interval`,
    // and after `keepalive_count` unanswered ones the connection is closed, so a call to a
    // libvirtd that stopped answering fails within about interval * (count + 1) (20 s) and the
    // agent reconnects. (In-process drivers such as test:/// need none.)
    int keepalive_interval_seconds = 5;
    unsigned int keepalive_count = 3;
    // Statistics and listings through per-domain calls even where the driver has the bulk
    // call. Off in production; tests turn it on to compare the two paths on one driver.
    bool force_per_domain_stats = false;
    // The only libvirt domain type guests are defined with ("kvm", "qemu", "xen"); empty: the
    // best the hypervisor offers (SelectGuestTarget).
    std::string domain_type;
    // QEMU/KVM: each serial console logged to ConsoleLogPath(console_log_dir, name). Empty: none.
    std::string console_log_dir;
    // QEMU/KVM: where a domain's VNC display listens (DomainSpec.vnc).
    std::string vnc_listen = "127.0.0.1";
  };

  // Tries to connect once; if that fails the agent still starts and keeps retrying.
  explicit LibvirtHypervisor(Options options);
  ~LibvirtHypervisor() override;

  absl::StatusOr<HostInfo> GetHostInfo() override;
  absl::StatusOr<std::vector<DomainInfo>> ListDomains() override;
  absl::StatusOr<DomainInfo> GetDomain(const std::string& name) override;
  absl::StatusOr<DomainInfo> GetDomainByUuid(const std::string& uuid) override;
  absl::Status DefineDomain(const DomainSpec& spec) override;
  absl::Status RedefineDomain(const DomainSpec& spec) override;
  absl::Status UndefineDomain(const std::string& name) override;
  absl::Status StartDomain(const std::string& name) override;
  absl::Status RequestShutdown(const std::string& name) override;
  absl::Status DestroyDomain(const std::string& name) override;
  absl::Status RebootDomain(const std::string& name) override;
  absl::Status SuspendDomain(const std::string& name) override;
  absl::Status ResumeDomain(const std::string& name) override;
  absl::Status ManagedSaveDomain(const std::string& name) override;
  absl::StatusOr<std::string> GetDomainDefinition(const std::string& name) override;
  absl::StatusOr<DomainSpec> GetDomainSpec(const std::string& name) override;
  absl::StatusOr<std::vector<std::string>> GetUnmodelledDevices(const std::string& name) override;
  absl::Status CheckDefinable(const DomainSpec& spec) override;
  absl::Status RestoreDomainDefinition(const std::string& name, const std::string& definition) override;
  absl::StatusOr<std::vector<DiskSpec>> GetDomainDisks(const std::string& name) override;
  absl::StatusOr<DomainResources> GetDomainResources(const std::string& name) override;
  absl::Status SetDomainResources(const std::string& name, const ResourceChange& change) override;
  // One virConnectGetAllDomainStats over all domains (kDomainStatsGroups). Drivers without it
  // (libvirt 9.0's libxl) get the per-domain fallback, PerDomainStats; which path served the
  // last call is per_domain_stats().
  absl::StatusOr<std::vector<DomainStats>> GetAllDomainStats() override;
  absl::Status AttachDisk(const std::string& name, const DiskSpec& disk) override;
  // The definition first, then the guest (as Nova's libvirt driver does it): libvirt asks the
  // guest to let go and waits for it (QEMU: 5 s for DEVICE_DELETED, then it answers success with
  // the request still pending; libxl: an error). Whether the guest still has the disk is read
  // back from the live XML, never taken from the call's answer.
  absl::Status DetachDisk(const std::string& name, const DiskSpec& disk) override;
  absl::StatusOr<std::vector<NicSpec>> GetDomainNics(const std::string& name) override;
  // Live and persistent at once when the domain runs (libvirt plugs the tap into the bridge or
  // the OVS port before the guest sees the device).
  absl::Status AttachNic(const std::string& name, const NicSpec& nic) override;
  // The definition first, then the running guest; the guest's side is read back from its XML.
  absl::Status DetachNic(const std::string& name, const std::string& mac) override;
  void SetEventSink(EventSink sink) override;
  bool Connected() const override;
  uint64_t ConnectionGeneration() const override { return connection_generation(); }
  absl::StatusOr<VncDisplay> SetVncPassword(const std::string& name, const std::string& password,
                                            std::chrono::system_clock::time_point valid_until) override;
  // From the persistent definition's <channel> elements.
  absl::StatusOr<bool> HasGuestAgent(const std::string& name) override;
  // virDomainFSFreeze / virDomainFSThaw (all mounted filesystems). libvirt's own guest agent
  // timeout bounds a guest whose agent does not answer.
  absl::StatusOr<int> FreezeFilesystems(const std::string& name) override;
  absl::Status ThawFilesystems(const std::string& name) override;
  // virDomainMigrateToURI3, peer to peer (see the .cpp); refused on Xen (no live migration on Arm
  // in Xen 4.17). Progress from virDomainGetJobStats; abort with virDomainAbortJob.
  absl::Status MigrateLive(const std::string& name, const LiveMigration& migration) override;
  absl::StatusOr<MigrationJob> GetMigrationJob(const std::string& name) override;
  absl::Status AbortMigrationJob(const std::string& name) override;
  // The domain's first console (libvirt_console.h); FailedPrecondition unless it is running or
  // paused.
  absl::StatusOr<std::unique_ptr<ConsoleChannel>> OpenConsole(const std::string& name,
                                                              ConsoleCallbacks callbacks) override;

  // Test hook: behaves as if libvirt reported the connection closed.
  void SimulateConnectionLoss();
  // How many times a connection was opened (1 after a clean start).
  uint64_t connection_generation() const;
  // True once the driver has answered the bulk call with VIR_ERR_NO_SUPPORT (until reconnect).
  bool per_domain_stats() const { return bulk_stats_unsupported_.load(); }

 private:
  class ConnRef;
  class DomRef;

  absl::StatusOr<ConnRef> Connection() const;
  absl::StatusOr<DomRef> Lookup(const std::string& name);
  // Builds the XML of a validated spec and defines it (a new domain, or over one by its name+uuid).
  absl::Status DefineXml(virConnectPtr conn, const DomainSpec& spec);
  absl::StatusOr<GuestTarget> TargetFor(virDomainPtr dom);
  // Adds a device to the definition and, when the domain is active, to the guest.
  absl::Status AttachDevice(const std::string& name, const std::string& xml, const char* what = "disk");
  // The <interface> elements of `dom`: its persistent definition (live false) or the running guest's.
  absl::StatusOr<std::vector<DomainNic>> NicsOf(virDomainPtr dom, bool live, const std::string& name);
  // The disks of `dom`: its persistent definition (live false) or the running guest's.
  absl::StatusOr<std::vector<DiskSpec>> DisksOf(virDomainPtr dom, bool live, const std::string& name);
  // One virDomainDetachDeviceFlags of `disk` with `flags` (AFFECT_CONFIG or AFFECT_LIVE).
  // NotFound when libvirt says the device is missing; otherwise libvirt's error, its number in
  // `*vir_code`.
  absl::Status DetachDevice(virDomainPtr dom, const std::string& name, const DiskSpec& disk, unsigned flags,
                            int* vir_code);
  absl::Status Transition(const std::string& name, const char* verb, std::initializer_list<DomainState> allowed,
                          int (*op)(virDomainPtr));
  DomainInfo Describe(virDomainPtr dom);
  void FillUptime(DomainInfo& info);
  std::optional<std::vector<DomainInfo>> ListDomainsBulk(virConnectPtr conn);
  // Every domain virConnectListAllDomains returns with `flags`, owned; `what` names the call in
  // the error.
  static absl::StatusOr<std::vector<DomRef>> AllDomains(virConnectPtr conn, unsigned int flags, const char* what);
  // After a failed virConnectGetAllDomainStats: true when the driver has no such call (libxl),
  // remembered (and logged once) until the next reconnect; the error is then cleared.
  bool BulkCallUnsupported();
  absl::StatusOr<std::vector<DomainStats>> PerDomainStats(virConnectPtr conn);
  absl::Status OpenConnection();  // called with mu_ not held
  std::vector<int> RegisterDomainEvents(virConnectPtr c);
  void DropConnection();          // called with mu_ not held
  void ReconnectLoop();
  void AnnounceResync();
  void OnLifecycleEvent(virDomainPtr dom, int event, int detail);
  void OnDeviceEvent(virDomainPtr dom, DomainEventType type, const char* alias);
  void OnConnectionClosed(int reason);

  // libvirt runs callbacks on the event-loop thread and does not wait for one in flight when it
  // is deregistered. So a callback's opaque is this object's `callback_key_`, never a pointer to
  // it: the callback looks the key up in a process-wide registry and runs with the registry's
  // lock held, and the destructor removes the key under that lock, which waits for a callback
  // already running. Keys are never reused, so a late callback finds nothing.
  static int LifecycleCallback(virConnectPtr, virDomainPtr dom, int event, int detail, void* opaque);
  static void DeviceAddedCallback(virConnectPtr, virDomainPtr dom, const char* alias, void* opaque);
  static void DeviceRemovedCallback(virConnectPtr, virDomainPtr dom, const char* alias, void* opaque);
  static void CloseCallback(virConnectPtr, int reason, void* opaque);
  void* callback_key_ = nullptr;

  const Options options_;
  std::shared_ptr<LibvirtEventLoop> loop_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  virConnectPtr conn_ = nullptr;
  // Lifecycle, device added, device removed; -1: not registered.
  std::vector<int> event_callback_ids_;
  Capabilities caps_;
  uint64_t connection_generation_ = 0;
  std::atomic<bool> bulk_stats_unsupported_{false};
  bool need_reconnect_ = false;
  bool stopping_ = false;
  std::thread reconnect_thread_;

  std::mutex events_mu_;
  EventSink sink_;
  std::map<std::string, std::chrono::steady_clock::time_point> started_at_;  // by uuid
};

}  // namespace hvagent::hv
