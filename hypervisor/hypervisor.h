#pragma once
// Hypervisor: the contract between the agent's service layer and a virtualization host.
// Called by agent/service only. Implementations validate every DomainSpec before it reaches
// the hypervisor and report errors as absl::Status with gRPC-compatible codes:
// NotFound (no such domain), AlreadyExists, InvalidArgument (naming the field),
// FailedPrecondition (wrong state), Unimplemented (driver lacks the operation),
// Unavailable (connection down). They never run a shell.

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hypervisor/model.h"

namespace hvagent::hv {

class Hypervisor {
 public:
  using EventSink = std::function<void(const DomainEvent&)>;

  virtual ~Hypervisor() = default;

  virtual absl::StatusOr<HostInfo> GetHostInfo() = 0;
  virtual absl::StatusOr<std::vector<DomainInfo>> ListDomains() = 0;
  virtual absl::StatusOr<DomainInfo> GetDomain(const std::string& name) = 0;
  virtual absl::StatusOr<DomainInfo> GetDomainByUuid(const std::string& uuid) = 0;

  // Defines (does not start) a persistent domain. AlreadyExists if the name or uuid is taken.
  virtual absl::Status DefineDomain(const DomainSpec& spec) = 0;
  virtual absl::Status UndefineDomain(const std::string& name) = 0;
  // Replaces the persistent definition of the shut-off domain spec.name by `spec`, whose uuid
  // must be the domain's (InvalidArgument naming spec.uuid otherwise). NotFound, and
  // FailedPrecondition when it runs. Firmware variables and managed-save state are kept.
  virtual absl::Status RedefineDomain(const DomainSpec& spec) = 0;

  virtual absl::Status StartDomain(const std::string& name) = 0;
  // Asks the guest to power off (ACPI / PV shutdown) and returns without waiting.
  virtual absl::Status RequestShutdown(const std::string& name) = 0;
  // Powers the guest off at once.
  virtual absl::Status DestroyDomain(const std::string& name) = 0;
  virtual absl::Status RebootDomain(const std::string& name) = 0;
  virtual absl::Status SuspendDomain(const std::string& name) = 0;
  virtual absl::Status ResumeDomain(const std::string& name) = 0;
  // Saves the running (or paused) guest's memory to the hypervisor's managed-save file and
  // stops it; the next StartDomain restores it (libvirt does this inside virDomainCreate).
  virtual absl::Status ManagedSaveDomain(const std::string& name) = 0;

  // The domain's persistent definition as the hypervisor keeps it (libvirt: its inactive XML,
  // secure parts included), opaque to callers: kept to be given back to
  // RestoreDomainDefinition, which is how a rescue puts the original domain back exactly.
  virtual absl::StatusOr<std::string> GetDomainDefinition(const std::string& name) = 0;
  // Defines `name` from a definition GetDomainDefinition returned, replacing a shut-off domain
  // of that name and uuid, or defining it anew when none exists. FailedPrecondition when the
  // domain runs; InvalidArgument when the text is no definition of `name`. Never given text a
  // caller sent: only what the agent read itself.
  virtual absl::Status RestoreDomainDefinition(const std::string& name, const std::string& definition) = 0;

  // The domain's persistent definition as a DomainSpec: every field the model expresses (boot,
  // CPU model and topology, VNC, serial console, labels, disks, NICs), read back from what the
  // hypervisor keeps. Fields the agent sets itself at define time (vnc_listen,
  // vnc_locked_password, console_log_path) are left empty. NotFound for no such domain.
  virtual absl::StatusOr<DomainSpec> GetDomainSpec(const std::string& name) {
    (void)name;
    return absl::UnimplementedError("this hypervisor cannot read a domain back as a spec");
  }
  // The devices of the domain's persistent definition that GetDomainSpec's model has no field
  // for (added behind the agent's back), described for a message: a domain defined from
  // GetDomainSpec would not have them. Empty when there are none. NotFound for no such domain.
  virtual absl::StatusOr<std::vector<std::string>> GetUnmodelledDevices(const std::string& name) {
    (void)name;
    return std::vector<std::string>{};
  }
  // Whether this hypervisor could define `spec` (its guest types, arch, CPU and display rules),
  // without defining anything: InvalidArgument naming the field it cannot honour.
  virtual absl::Status CheckDefinable(const DomainSpec& spec) {
    (void)spec;
    return absl::OkStatus();
  }

  // The domain's vCPUs and memory now, and the maximums a running domain may be raised to.
  virtual absl::StatusOr<DomainResources> GetDomainResources(const std::string& name) = 0;
  // Resizes the domain. Shut off: its persistent definition (maximums follow the new size).
  // Running: the guest and its definition together, within the running maximums, else
  // FailedPrecondition naming the field; the hypervisor's own refusal (a guest that cannot
  // hot-plug) comes back as it reported it. Callers validate ranges first.
  virtual absl::Status SetDomainResources(const std::string& name, const ResourceChange& change) = 0;

  // The disks of the domain's persistent definition (source, target, bus, type), followed by
  // any disk only the running guest still has (a detach the guest has not completed).
  virtual absl::StatusOr<std::vector<DiskSpec>> GetDomainDisks(const std::string& name) = 0;
  // Adds a disk to the persistent definition and, when the domain runs, hot-plugs it.
  // InvalidArgument for a bad disk, AlreadyExists if the target is taken.
  virtual absl::Status AttachDisk(const std::string& name, const DiskSpec& disk) = 0;
  // Removes the disk with this target and source from the definition and, when running, from
  // the guest. NotFound when neither has it (or no such domain). Aborted when the running guest
  // did not release it: the hot-unplug was refused, or did not finish within the hypervisor's
  // wait (the message carries the hypervisor's reason); the definition may already be without
  // the disk while the guest keeps it, and a later call retries the guest side only.
  virtual absl::Status DetachDisk(const std::string& name, const DiskSpec& disk) = 0;

  // The NICs of the domain's persistent definition, followed by any NIC only the running guest
  // has. Kinds the agent does not model (direct, user...) are listed with their MAC only.
  virtual absl::StatusOr<std::vector<NicSpec>> GetDomainNics(const std::string& name) = 0;
  // Adds a NIC (its MAC set by the caller) to the persistent definition and, when the domain
  // runs, hot-plugs it. InvalidArgument for a bad NIC, AlreadyExists if the MAC is taken.
  virtual absl::Status AttachNic(const std::string& name, const NicSpec& nic) = 0;
  // Removes the NIC with this MAC from the definition and, when running, from the guest.
  // NotFound when neither has it (or no such domain).
  virtual absl::Status DetachNic(const std::string& name, const std::string& mac) = 0;

  // Statistics of every domain from one bulk call (never a loop of per-domain calls).
  virtual absl::StatusOr<std::vector<DomainStats>> GetAllDomainStats() = 0;

  // Lifecycle events, including changes made behind the agent's back. The sink is called from
  // the hypervisor's event thread and must not block. Set once, before events matter.
  // Sets the password of the running domain's VNC display, valid until `valid_until` (UTC; the
  // display refuses it afterwards), replacing any earlier one; the definition is not changed.
  // Returns where the display listens. NotFound (no such domain), FailedPrecondition (not
  // running; no VNC display; a display without password authentication), Unimplemented (a
  // hypervisor without displays).
  virtual absl::StatusOr<VncDisplay> SetVncPassword(const std::string& name, const std::string& password,
                                                    std::chrono::system_clock::time_point valid_until) {
    (void)name, (void)password, (void)valid_until;
    return absl::UnimplementedError("this hypervisor has no VNC displays");
  }

  // Guest-consistent snapshots (agent/service/guest_quiescer.h). Whether the domain's definition
  // has a QEMU guest agent channel (virtio-serial, target name org.qemu.guest_agent.0); NotFound
  // for no such domain. A hypervisor without guest agents answers false.
  virtual absl::StatusOr<bool> HasGuestAgent(const std::string& name) {
    (void)name;
    return false;
  }
  // Flushes the running guest's mounted filesystems and blocks writes to them, through its guest
  // agent; returns how many were frozen. FailedPrecondition (not running, no agent configured),
  // Unavailable (the agent did not answer), Unimplemented (a hypervisor without guest agents).
  virtual absl::StatusOr<int> FreezeFilesystems(const std::string& name) {
    (void)name;
    return absl::UnimplementedError("this hypervisor has no guest agent");
  }
  // Undoes FreezeFilesystems; harmless on a guest that is not frozen.
  virtual absl::Status ThawFilesystems(const std::string& name) {
    (void)name;
    return absl::UnimplementedError("this hypervisor has no guest agent");
  }

  // Live migration (agent/service/migration_service.h): moves the running domain to another
  // host's hypervisor with its memory and its non-shared disks copied while it runs, and blocks
  // until the move has ended. On success the domain runs and is defined there and is gone here;
  // on failure it keeps running here. FailedPrecondition (not running; a hypervisor that cannot
  // migrate live, such as Xen on Arm), Unimplemented (a hypervisor without migration),
  // Cancelled (AbortMigrationJob), otherwise the hypervisor's error.
  virtual absl::Status MigrateLive(const std::string& name, const LiveMigration& migration) {
    (void)name, (void)migration;
    return absl::UnimplementedError("this hypervisor cannot migrate domains live");
  }
  // The progress of the migration MigrateLive runs for `name`; NotFound when none runs.
  virtual absl::StatusOr<MigrationJob> GetMigrationJob(const std::string& name) {
    (void)name;
    return absl::UnimplementedError("this hypervisor cannot migrate domains live");
  }
  // Stops the migration MigrateLive runs for `name` (it then answers Cancelled).
  virtual absl::Status AbortMigrationJob(const std::string& name) {
    (void)name;
    return absl::UnimplementedError("this hypervisor cannot migrate domains live");
  }

  virtual void SetEventSink(EventSink sink) = 0;

  // False while the connection is down and being re-opened.
  virtual bool Connected() const = 0;
  // Counts the connections opened so far: a caller holding state read from the hypervisor
  // (DomainView) sees from a changed value that a reconnect happened, even one too quick for
  // Connected() to be seen false.
  virtual uint64_t ConnectionGeneration() const = 0;
};

}  // namespace hvagent::hv
