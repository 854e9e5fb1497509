#pragma once
// DomainService: the domain lifecycle as the APIs offer it, on top of a Hypervisor.
// Adds what a single hypervisor call does not give: validation before anything is touched,
// a create that either fully happens or leaves nothing behind, shutdown with a deadline that
// falls back to a forced power-off, and refusing to delete a running domain unless forced.
// Create and Delete are journalled step by step (journal.h); after a crash, Recover() leaves
// each interrupted one either complete or fully undone (docs/reliability.md).

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/service/admission.h"
#include "agent/service/host_networks.h"
#include "agent/service/image_service.h"
#include "agent/service/journal.h"
#include "agent/service/network_policy.h"
#include "agent/service/rescue_records.h"
#include "agent/service/storage_service.h"
#include "common/clock.h"
#include "common/host_path_policy.h"
#include "hypervisor/hypervisor.h"

namespace hvagent::service {

// Disk `disk` of a DomainSpec is backed by a pool volume (its source_path is left empty).
struct DiskVolume {
  size_t disk = 0;
  VolumeClaim claim;
};

// What a rescue boots: a rescue disk made from a READY image (pool + image) and/or a kernel pair.
struct RescueBoot {
  std::string pool;
  std::string image;
  std::string volume;  // the rescue volume's name; empty: <domain>-rescue
  std::optional<hv::DirectKernelBoot> kernel;
  // A config drive for the rescue: a volume made from a READY image, attached read-only last.
  struct ConfigDrive {
    std::string pool;
    std::string image;
    std::string volume;  // required
  };
  std::optional<ConfigDrive> config_drive;
};

struct ShutdownResult {
  hv::DomainInfo domain;
  bool forced = false;
};

class DomainService {
 public:
  struct Options {
    std::chrono::seconds default_shutdown_timeout{60};
    std::chrono::seconds max_shutdown_timeout{3600};
    std::chrono::milliseconds shutdown_poll_interval{250};
    // Where host files given by path may come from (agent/service/host_paths.h). Null: nowhere,
    // only pool volumes.
    const HostPathPolicy* host_paths = nullptr;
    // The capacity policy creates and starts are admitted by (admission.h). The agent always
    // sets it; unset only in unit tests of other behaviour.
    std::optional<CapacityPolicy> admission;
    // Which bridges NICs may join ([network]); the default allows any Linux bridge, no OVS.
    NetworkPolicy networks;
    // Makes the VLAN/VXLAN networks vlan and vxlan NICs ask for (host_networks.h). Null: such
    // NICs are refused (PERMISSION_DENIED).
    HostNetworks* host_networks = nullptr;
    // Makes the volumes of disks that name an image (DiskVolume.image). Null: such disks are
    // refused (FAILED_PRECONDITION).
    ImageService* images = nullptr;
    // Makes the free volume `volume` in `pool` holding the READY image `image` of that pool,
    // recorded as owned by domain `owner` from its creation on (before the copy), and returns its
    // device path (ImageService::CreateVolumeFromImage). AlreadyExists for a volume of that name,
    // which it leaves alone. Null: rescue from an image is refused (FAILED_PRECONDITION).
    std::function<absl::StatusOr<std::string>(const std::string& pool, const std::string& volume,
                                              const std::string& image, const std::string& owner)>
        volume_from_image;
    // Where rescued domains' original definitions are kept. Null: in memory.
    RescueRecords* rescues = nullptr;
  };

  // `storage` may be null (no pools): then disks cannot name volumes. `journal` may be null:
  // then an in-memory one is used (no crash recovery).
  DomainService(hv::Hypervisor& hypervisor, Clock& clock, Options options, StorageService* storage = nullptr,
                Journal* journal = nullptr);

  struct Recovery {
    std::string domain;
    std::string kind;     // "create" / "delete"
    std::string outcome;  // "completed", "rolled back", "failed: ..." (for people)
    // RECOVERED (completed), ROLLED_BACK, or FAILED (left in the journal to try again).
    v1::OperationState state = v1::OPERATION_STATE_UNSPECIFIED;
  };
  // Finishes or undoes every operation a crash left in the journal: an interrupted create is
  // kept only when it got through its last step (the domain exists with the journalled uuid,
  // running if it was to start), otherwise it is undone (domain removed, volumes it created
  // deleted, volumes it claimed released); an interrupted delete is carried through, deleting
  // (with delete_volumes) only the volumes the journal recorded as owned by the domain. Run at
  // start, before the APIs serve, and with every reconciliation (deletes hold the same lock and
  // creates in flight are skipped, so only abandoned operations are seen: a create whose undo
  // failed because the hypervisor went away, or one that failed to recover before).
  std::vector<Recovery> Recover();

  // Reconciliation: volumes recorded as attached to a domain the hypervisor does not have
  // (left by a crash before the journal existed, an `virsh undefine` behind the agent's back,
  // a restored backup). They are shown as orphaned in the API and metrics; with
  // `release_orphans` their stale owner record is cleared (the data is never deleted here).
  // Holds off creates and deletes while it looks, and counts the names of creates still making
  // their volumes as domains, so a volume claimed by a create in flight is never an orphan.
  absl::StatusOr<std::vector<Orphan>> Reconcile(bool release_orphans);

  // A name a migration is bringing in or taking away. While held, Reconcile counts it as a
  // domain, because its volumes are recorded for a domain this hypervisor does not have yet (a
  // destination before its define, a live move's prepared disks) or not any more (a source whose
  // domain libvirt undefined at the end of a live move, before the agent removes its volumes).
  // Without it those volumes would show as orphans, and `release_orphans` would clear their
  // owner: a running guest's disk free for another domain to claim. Let go on destruction.
  class NameHold {
   public:
    NameHold(DomainService& domains, std::string name);
    ~NameHold();
    NameHold(const NameHold&) = delete;
    NameHold& operator=(const NameHold&) = delete;

   private:
    DomainService& domains_;
    const std::string name_;
  };
  std::unique_ptr<NameHold> HoldName(const std::string& name) { return std::make_unique<NameHold>(*this, name); }

  // Refused with RESOURCE_EXHAUSTED (CapacityKindOf: compute) when the domain does not fit the
  // capacity policy, before anything is touched (no volume is created or claimed).
  // AlreadyExists while another create of the same name is under way. The volumes are made
  // outside the lock creates and deletes share, so a long image copy holds up no other create.
  // With `volumes`, the named disks get pool volumes recorded as attached to the new domain:
  // created when the claim asks so (owned by the domain), or existing free ones (borrowed). When
  // any step fails, every step before it is undone (volumes created here are deleted, claimed
  // ones released, the domain undefined).
  absl::StatusOr<hv::DomainInfo> Create(const hv::DomainSpec& spec, bool start,
                                        const std::vector<DiskVolume>& volumes = {});
  absl::StatusOr<hv::DomainInfo> Get(const std::string& name);
  // What Create would refuse about this host rather than the spec, checked with nothing made:
  // host paths outside the allowed directories (a kernel, initrd or firmware), NICs on networks
  // or bridges the agent may not use, and what the hypervisor cannot define here (its guest
  // type, CPU models, displays). The spec itself is assumed valid (ValidateDomainSpec). A
  // destination asks this before a migration moves any byte (IncomingMigrations).
  absl::Status CheckHostFit(const hv::DomainSpec& spec, const std::vector<DiskVolume>& volumes);
  absl::StatusOr<std::vector<hv::DomainInfo>> List();
  // Refused with RESOURCE_EXHAUSTED (compute) when the running domains leave no room for it.
  absl::StatusOr<hv::DomainInfo> Start(const std::string& name);
  // timeout 0: the configured default.
  absl::StatusOr<ShutdownResult> Shutdown(const std::string& name, std::chrono::seconds timeout);
  absl::StatusOr<hv::DomainInfo> Destroy(const std::string& name);
  absl::StatusOr<hv::DomainInfo> Reboot(const std::string& name);
  absl::StatusOr<hv::DomainInfo> Suspend(const std::string& name);
  absl::StatusOr<hv::DomainInfo> Resume(const std::string& name);
  // Suspend to disk: the guest's memory goes to the hypervisor's managed-save file and the
  // domain stops; Start restores it. Unimplemented on Xen on Arm, which cannot save a guest.
  absl::StatusOr<hv::DomainInfo> ManagedSave(const std::string& name);
  // Resize in place (UpdateDomain). Unset fields stay. Ranges are checked first (INVALID_ARGUMENT
  // naming `vcpus` / `memory_mib`), then growth is admitted (RESOURCE_EXHAUSTED, compute); the
  // hypervisor applies it (a running domain within its maximums, else FAILED_PRECONDITION).
  // Nothing changes when any check fails.
  absl::StatusOr<hv::DomainInfo> Update(const std::string& name, const hv::ResourceChange& change);
  // Volumes attached to the domain are released afterwards; with `delete_volumes`, the ones it
  // owns (created with it) are deleted instead. A borrowed volume is never deleted here. A
  // rescued domain's rescue volume is deleted whatever `delete_volumes` says, and its kept
  // original definition forgotten.
  absl::Status Delete(const std::string& name, bool force, bool delete_volumes = false);

  // Rescue (domain_rescue.cpp): keeps the domain's definition (RescueRecords, journalled as
  // OPERATION_KIND_RESCUE_DOMAIN), powers the guest off and boots it from the rescue disk (the
  // volume `<name>-rescue` made from the image, owned by the rescue) and/or the kernel pair, with
  // the domain's first disk attached second (vdb, xvdb on Xen). Everything is checked first
  // (INVALID_ARGUMENT naming the field, PERMISSION_DENIED for a kernel outside the allowed
  // directories, FAILED_PRECONDITION when rescued already or without a disk); a failing step
  // puts the original back (definition, and running if it ran).
  absl::StatusOr<hv::DomainInfo> Rescue(const std::string& name, const RescueBoot& boot);
  // Destroys the rescue boot, restores the original definition exactly, deletes the rescue
  // volume, forgets the rescue and starts the domain. FAILED_PRECONDITION when not rescued.
  absl::StatusOr<hv::DomainInfo> Unrescue(const std::string& name);
  bool Rescued(const std::string& name) const { return rescues_->Find(name).has_value(); }

  // Adds a NIC to the definition and, when the domain runs, to the guest. Without a MAC one is
  // generated: locally administered (52:54:00:xx:xx:xx), unused by the domain. The answer is the
  // NIC as attached. InvalidArgument (field "nic..."), PermissionDenied for a bridge the policy
  // does not allow, AlreadyExists for a MAC the domain has, NotFound for no such domain.
  absl::StatusOr<hv::NicSpec> AttachNic(const std::string& domain, hv::NicSpec nic);
  // NotFound (field "mac") when the domain has no NIC with this MAC.
  absl::Status DetachNic(const std::string& domain, const std::string& mac);

 private:
  using Op = absl::Status (hv::Hypervisor::*)(const std::string&);
  absl::StatusOr<hv::DomainInfo> Apply(const std::string& name, Op op);
  // Checks the claims against the spec and fills their disks with a placeholder block path so
  // that the spec can be validated before any volume exists.
  absl::Status CheckVolumes(hv::DomainSpec& spec, const std::vector<DiskVolume>& volumes) const;
  // Disks made from images: the image is a ready one of the volume's pool and fits the size
  // asked. Checked before anything is made; the copy checks again (the image may go meanwhile).
  absl::Status CheckImages(const std::vector<DiskVolume>& volumes);
  // Makes (from an image, or empty) or claims the volume of one disk, owned by `domain` when made.
  absl::StatusOr<storage::VolumeInfo> ClaimOne(const DiskVolume& v, const std::string& domain);
  // Undoes claimed volumes of `domain` in reverse order (best effort, logged): the ones the
  // create made are deleted, the ones it was given released.
  void ReleaseClaims(const std::vector<DiskVolume>& claimed, const std::string& domain);
  // Under define_mu_: refuses a name that exists or is being created, checks the images, admits
  // the domain (`hold`), journals the create and reserves its name. Returns the operation.
  absl::StatusOr<uint64_t> BeginCreate(hv::DomainSpec& spec, bool start, const std::vector<DiskVolume>& volumes,
                                       ComputeAdmission::Hold* hold);
  // Makes or claims the volumes, in order, journalling each claim first (called without
  // define_mu_: the name is reserved). On failure the ones done are undone.
  absl::Status ClaimVolumes(uint64_t op, hv::DomainSpec& spec, const std::vector<DiskVolume>& volumes,
                            std::vector<DiskVolume>* claimed);
  // `settled` false: it failed and its undo could not be done (the hypervisor went away); the
  // operation is left open in the journal for Recover.
  absl::StatusOr<hv::DomainInfo> CreateJournalled(uint64_t op, hv::DomainSpec spec, bool start,
                                                  const std::vector<DiskVolume>& volumes, bool* settled);
  absl::Status DeleteJournalled(uint64_t op, const hv::DomainInfo& info, bool force, bool delete_volumes,
                                const std::vector<storage::VolumeInfo>& volumes);
  // Fills in the agent's bridge of every vlan/vxlan NIC (PermissionDenied naming the field for
  // a physical interface the configuration does not list).
  absl::Status ResolveHostNetworks(const std::string& field_prefix, std::vector<hv::NicSpec>& nics) const;
  // Makes the networks of `nics` (Ensure); `made` gets the bridges this call made. All or
  // nothing: on failure, what it made is removed again.
  absl::Status EnsureHostNetworks(const std::string& field_prefix, const std::vector<hv::NicSpec>& nics,
                                  std::vector<std::string>* made);
  // Removes each of `bridges` the agent made when no domain's definition names it any more
  // (the domains' definitions are the reference count, so it holds across restarts). When the
  // domains cannot be listed nothing is removed. Best effort, logged.
  void ReleaseHostNetworks(const std::vector<std::string>& bridges);
  absl::Status CheckRescueBoot(const std::string& name, const RescueBoot& boot) const;
  // The rescue definition: the domain's name, uuid, size, labels and NICs; the rescue disk (its
  // path a placeholder) and the root as the second disk; the kernel pair. Validated.
  absl::StatusOr<hv::DomainSpec> RescueSpec(const hv::DomainInfo& info, const RescueBoot& boot);
  absl::StatusOr<hv::DomainInfo> RescueJournalled(uint64_t op, const internal::RescueRecord& rec, hv::DomainSpec spec,
                                                  const RescueBoot& boot, bool* settled);
  // Puts the domain back as `rec` recorded it: the original definition (when `touched_domain`;
  // started again if it ran), the rescue volume deleted (when `made_volume`), the record erased.
  absl::Status UndoRescue(const internal::RescueRecord& rec, bool touched_domain, bool made_volume,
                          bool made_config = false);
  // Deletes the rescue's volume and config drive volume (released from the domain first), each
  // only when `rescue_disk` / `config_drive` (a rescue that failed deletes only what it made).
  // NotFound counts as done.
  absl::Status DeleteRescueVolume(const internal::RescueRecord& rec, bool rescue_disk = true, bool config_drive = true);
  // AlreadyExists naming `field` when the rescue's volume `v` exists before the rescue began.
  absl::Status RefuseExistingVolume(const internal::JournalVolume& v, absl::string_view field);
  // Whether the rescue of `domain` made volume `v`: it exists and is recorded as that domain's
  // (it is from its creation on; a volume that was there before was refused before the journal
  // entry began). For recovery, which sees only that the step was journalled.
  absl::StatusOr<bool> MadeByRescue(const internal::JournalVolume& v, const std::string& domain);
  // Makes the volume `v` from `image` and claims it for the rescued domain; its path.
  absl::StatusOr<std::string> MakeRescueVolume(const internal::JournalVolume& v, const std::string& image,
                                               const std::string& domain, const char* field, bool* made);
  // For a deleted domain: deletes its rescue volume and erases the record.
  absl::Status ForgetRescue(const internal::RescueRecord& rec);
  // FAILED_PRECONDITION when the domain has a managed-save image (Rescue refuses it).
  absl::Status RefuseManagedSave(const std::string& name);
  absl::Status UnrescueJournalled(uint64_t op, const internal::RescueRecord& rec);
  Recovery RecoverRescue(const Journal::Operation& op);
  Recovery RecoverUnrescue(const Journal::Operation& op);
  Recovery RecoverCreate(const Journal::Operation& op);
  Recovery RecoverDelete(const Journal::Operation& op);
  // The domain `name` if it exists and carries `uuid`; nullopt when it does not exist or is
  // another domain by that name.
  absl::StatusOr<std::optional<hv::DomainInfo>> Ours(const std::string& name, const std::string& uuid);
  void EndOp(uint64_t op, v1::OperationState state, const std::string& message);

  hv::Hypervisor& hv_;
  Clock& clock_;
  const Options options_;
  StorageService* storage_;
  std::unique_ptr<Journal> own_journal_;
  Journal* journal_;
  std::unique_ptr<RescueRecords> own_rescues_;
  RescueRecords* rescues_;
  std::unique_ptr<ComputeAdmission> admission_;  // null: not admitted (unit tests only)
  // Serializes create/delete so "exists?" and "define" cannot interleave between requests.
  // A create holds it to check and reserve its name, lets it go while its volumes are made (an
  // image copy takes minutes) and takes it again for networks, define and start.
  std::mutex define_mu_;
  // Creates between their name check and their end, guarded by define_mu_: a second create of
  // the name is refused, and Recover and Reconcile leave their journal entry and volumes alone.
  std::set<std::string> creating_names_;
  std::set<uint64_t> creating_ops_;
  std::multiset<std::string> held_names_;  // NameHold's, guarded by define_mu_
};

}  // namespace hvagent::service
