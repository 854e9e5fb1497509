// DomainService's rescue: booting a domain from a rescue disk and/or kernel pair with its own
// root attached second, and putting it back exactly (docs/rescue.md). Each rescue and unrescue
// is journalled step by step; the original definition is kept in RescueRecords for as long as
// the domain is rescued. Recovery of both is at the end of this file.
#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/service/domain_service.h"
#include "agent/service/host_paths.h"
#include "common/failpoint.h"
#include "common/log.h"
#include "hypervisor/domain_spec_validator.h"

namespace hvagent::service {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("service");
  return logger;
}

// Stands in for the rescue volume's path while the rescue definition is validated.
constexpr char kPendingRescuePath[] = "/dev/hvagent-pending-rescue";

internal::JournalStep Step(const char* name) {
  internal::JournalStep s;
  s.set_name(name);
  return s;
}

bool HasStep(const Journal::Operation& op, absl::string_view name) {
  return std::any_of(op.steps.begin(), op.steps.end(), [&](const internal::JournalStep& s) { return s.name() == name; });
}

bool HasVolume(const internal::RescueRecord& rec) { return !rec.volume().pool().empty(); }
bool HasConfigDrive(const internal::RescueRecord& rec) { return !rec.config_volume().pool().empty(); }

// Stands in for the config drive volume's path while the rescue definition is validated.
constexpr char kPendingConfigPath[] = "/dev/hvagent-pending-config-drive";

}  // namespace

absl::Status DomainService::CheckRescueBoot(const std::string& name, const RescueBoot& boot) const {
  if (auto s = hv::ValidateDomainName("name", name); !s.ok()) return s;
  const bool image = !boot.pool.empty() || !boot.image.empty();
  if (!image && !boot.kernel.has_value()) {
    return absl::InvalidArgumentError("image, kernel: give a rescue image, a kernel, or both");
  }
  if (image) {
    if (boot.pool.empty()) return absl::InvalidArgumentError("image.pool: required");
    if (boot.image.empty()) return absl::InvalidArgumentError("image.image: required");
    if (storage_ == nullptr || !options_.volume_from_image) {
      return absl::FailedPreconditionError("image: this agent has no storage pools to make a rescue disk in");
    }
    // The names themselves are the pool's to judge (each backend has its rule): a bad one is
    // refused by the volume's creation, the first step that can fail after the record is kept.
  }
  if (boot.config_drive.has_value()) {
    if (boot.config_drive->pool.empty()) return absl::InvalidArgumentError("config_drive.pool: required");
    if (boot.config_drive->image.empty()) return absl::InvalidArgumentError("config_drive.image: required");
    if (boot.config_drive->volume.empty()) return absl::InvalidArgumentError("config_drive.volume: required");
    if (storage_ == nullptr || !options_.volume_from_image) {
      return absl::FailedPreconditionError("config_drive: this agent has no storage pools to make it in");
    }
    if (image && boot.config_drive->pool == boot.pool &&
        boot.config_drive->volume == (boot.volume.empty() ? absl::StrCat(name, "-rescue") : boot.volume)) {
      return absl::InvalidArgumentError("config_drive.volume: the rescue disk's volume has that name");
    }
  }
  if (boot.kernel.has_value()) {
    if (boot.kernel->kernel_path.empty()) return absl::InvalidArgumentError("kernel.kernel_path: required");
    hv::DomainSpec only_boot;
    only_boot.boot = *boot.kernel;
    if (auto s = CheckHostPaths(options_.host_paths, only_boot, {}); !s.ok()) {
      // The policy names the fields of a CreateDomain spec; here they are the request's own.
      std::string msg(s.message());
      if (absl::StartsWith(msg, "spec.")) msg = msg.substr(5);
      return absl::Status(s.code(), msg);
    }
  }
  return absl::OkStatus();
}

// A domain suspended to disk holds a memory image of its own definition: a rescue would either
// restore that guest (not the rescue) at its start, or have libvirt drop the image with the
// guest's unsaved state. The caller resumes (starts) the domain or discards the image first.
absl::Status DomainService::RefuseManagedSave(const std::string& name) {
  auto res = hv_.GetDomainResources(name);
  if (!res.ok()) return res.status();
  if (res->managed_save) {
    return absl::FailedPreconditionError(absl::StrCat(
        "domain '", name, "' is suspended to disk (managed save): a rescue would lose or restore that state; "
        "resume (start) it first"));
  }
  return absl::OkStatus();
}

absl::StatusOr<hv::DomainSpec> DomainService::RescueSpec(const hv::DomainInfo& info, const RescueBoot& boot) {
  auto host = hv_.GetHostInfo();
  if (!host.ok()) return host.status();
  const bool xen = absl::AsciiStrToLower(host->hypervisor_type) == "xen";
  auto disks = hv_.GetDomainDisks(info.name);
  if (!disks.ok()) return disks.status();
  if (disks->empty() || (*disks)[0].source_path.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", info.name, "' has no root disk to rescue"));
  }
  auto nics = hv_.GetDomainNics(info.name);
  if (!nics.ok()) return nics.status();
  hv::DomainSpec spec;
  spec.name = info.name;
  spec.uuid = info.uuid;
  spec.vcpus = info.vcpus;
  spec.memory_mib = info.memory_mib;
  spec.labels = info.labels;
  spec.serial_console = true;  // a rescue is worked on through its console
  if (!boot.pool.empty()) {
    hv::DiskSpec rescue;
    rescue.source_path = kPendingRescuePath;
    rescue.type = hv::DiskType::kBlock;
    rescue.format = "raw";
    rescue.target = xen ? "xvda" : "vda";
    spec.disks.push_back(rescue);
  }
  // The root keeps its source, type, format and read-only flag; only its place changes.
  hv::DiskSpec root = (*disks)[0];
  root.target = xen ? "xvdb" : "vdb";
  root.bus.clear();
  spec.disks.push_back(root);
  // NICs the agent models come along (a rescue often needs the network); others cannot be
  // expressed in a DomainSpec and stay only in the kept definition.
  for (const hv::NicSpec& n : *nics) {
    if (hv::ValidateNicSpec("nic", n).ok()) spec.nics.push_back(n);
  }
  if (boot.config_drive.has_value()) {
    // As a spawn's config drive (drivers/nova): Xen guests have no emulated CD-ROM.
    hv::DiskSpec cfg{.source_path = kPendingConfigPath, .type = hv::DiskType::kBlock, .readonly = true, .format = "raw"};
    cfg.cdrom = !xen;
    cfg.target = xen ? "xvdc" : absl::StartsWith(host->arch, "aarch64") ? "sda" : "hdd";
    spec.disks.push_back(cfg);
  }
  if (boot.kernel.has_value()) spec.boot = *boot.kernel;
  if (auto s = hv::ValidateDomainSpec(spec); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", info.name, "' cannot be rescued: ", s.message()));
  }
  return spec;
}

absl::StatusOr<hv::DomainInfo> DomainService::Rescue(const std::string& name, const RescueBoot& boot) {
  if (auto s = CheckRescueBoot(name, boot); !s.ok()) return s;
  std::lock_guard lock(define_mu_);
  if (rescues_->Find(name).has_value()) {
    return absl::FailedPreconditionError(absl::StrCat("domain '", name, "' is already rescued; unrescue it first"));
  }
  auto info = hv_.GetDomain(name);
  if (!info.ok()) return info.status();
  if (auto s = RefuseManagedSave(name); !s.ok()) return s;
  auto spec = RescueSpec(*info, boot);
  if (!spec.ok()) return spec.status();
  // A rescue of a shut-off domain starts it: admitted like a start (one that runs keeps its room).
  ComputeAdmission::Hold hold;
  if (admission_ != nullptr && !hv::IsActive(info->state)) {
    auto h = admission_->AdmitStart(name);
    if (!h.ok()) return h.status();
    hold = std::move(*h);
  }
  auto definition = hv_.GetDomainDefinition(name);
  if (!definition.ok()) return definition.status();
  internal::RescueRecord rec;
  rec.set_domain(name);
  rec.set_uuid(info->uuid);
  rec.set_definition(*definition);
  rec.set_was_active(hv::IsActive(info->state));
  if (!boot.pool.empty()) {
    rec.mutable_volume()->set_pool(boot.pool);
    rec.mutable_volume()->set_name(boot.volume.empty() ? absl::StrCat(name, "-rescue") : boot.volume);
    rec.mutable_volume()->set_created(true);
    rec.mutable_volume()->set_owned(true);
  }
  if (boot.config_drive.has_value()) {
    rec.mutable_config_volume()->set_pool(boot.config_drive->pool);
    rec.mutable_config_volume()->set_name(boot.config_drive->volume);
    rec.mutable_config_volume()->set_created(true);
    rec.mutable_config_volume()->set_owned(true);
  }
  // A volume of either name that exists already is refused before anything is journalled, so a
  // journalled create step names a volume this rescue made, or none (MadeByRescue).
  if (HasVolume(rec)) {
    if (auto s = RefuseExistingVolume(rec.volume(), "image.volume"); !s.ok()) return s;
  }
  if (HasConfigDrive(rec)) {
    if (auto s = RefuseExistingVolume(rec.config_volume(), "config_drive.volume"); !s.ok()) return s;
  }
  internal::JournalBegin begin;
  begin.set_type(v1::OPERATION_KIND_RESCUE_DOMAIN);
  begin.set_domain(name);
  begin.set_uuid(info->uuid);
  *begin.mutable_rescue() = rec;
  auto op = journal_->Begin(std::move(begin));
  if (!op.ok()) return op.status();  // nothing done yet
  bool settled = true;
  auto r = RescueJournalled(*op, rec, std::move(*spec), boot, &settled);
  // Unsettled: it failed and its undo could not be done; the operation stays open for Recover.
  if (settled) {
    EndOp(*op, r.ok() ? v1::OPERATION_STATE_SUCCEEDED : v1::OPERATION_STATE_FAILED, std::string(r.status().message()));
  }
  return r;
}

absl::StatusOr<hv::DomainInfo> DomainService::RescueJournalled(uint64_t op, const internal::RescueRecord& rec,
                                                               hv::DomainSpec spec, const RescueBoot& boot,
                                                               bool* settled) {
  const std::string& name = rec.domain();
  if (auto s = journal_->Step(op, Step("save-rescue")); !s.ok()) return s;
  if (auto s = rescues_->Put(rec); !s.ok()) return s;
  HVAGENT_FAILPOINT("rescue.after_save");
  bool made_volume = false, made_config = false, touched = false;
  auto fail = [&](absl::Status s) -> absl::Status {
    if (auto u = UndoRescue(rec, touched, made_volume, made_config); !u.ok()) {
      Log()->error("rescue of {} failed and could not be undone now ({}); left to recovery", name, u.message());
      *settled = false;
    }
    return s;
  };
  if (HasVolume(rec)) {
    internal::JournalStep step = Step("create-volume");
    *step.mutable_volume() = rec.volume();
    if (auto s = journal_->Step(op, step); !s.ok()) return fail(s);
    auto path = MakeRescueVolume(rec.volume(), boot.image, name, "image", &made_volume);
    if (!path.ok()) return fail(path.status());
    spec.disks[0].source_path = *path;
    HVAGENT_FAILPOINT("rescue.after_volume");
  }
  if (HasConfigDrive(rec)) {
    internal::JournalStep step = Step("create-config-volume");
    *step.mutable_volume() = rec.config_volume();
    if (auto s = journal_->Step(op, step); !s.ok()) return fail(s);
    auto path = MakeRescueVolume(rec.config_volume(), boot.config_drive->image, name, "config_drive", &made_config);
    if (!path.ok()) return fail(path.status());
    spec.disks.back().source_path = *path;
  }
  if (rec.was_active()) {
    if (auto s = journal_->Step(op, Step("destroy")); !s.ok()) return fail(s);
    touched = true;
    if (auto s = hv_.DestroyDomain(name); !s.ok()) return fail(s);
  }
  if (auto s = journal_->Step(op, Step("define-rescue")); !s.ok()) return fail(s);
  touched = true;
  if (auto s = hv_.RedefineDomain(spec); !s.ok()) return fail(s);
  HVAGENT_FAILPOINT("rescue.after_define");
  if (auto s = journal_->Step(op, Step("start")); !s.ok()) return fail(s);
  if (auto s = hv_.StartDomain(name); !s.ok()) return fail(s);
  Log()->info("domain {} rescued ({}{})", name, HasVolume(rec) ? "rescue disk " + rec.volume().name() : "",
              boot.kernel.has_value() ? " kernel " + boot.kernel->kernel_path : "");
  return hv_.GetDomain(name);
}

absl::StatusOr<std::string> DomainService::MakeRescueVolume(const internal::JournalVolume& v, const std::string& image,
                                                             const std::string& domain, const char* field, bool* made) {
  *made = true;
  // Owned by the domain from its creation on: the mark recovery goes by (MadeByRescue).
  auto path = options_.volume_from_image(v.pool(), v.name(), image, domain);
  if (!path.ok()) {
    *made = !absl::IsAlreadyExists(path.status());  // never delete a volume someone else made
    return absl::Status(path.status().code(), absl::StrCat(field, ": ", path.status().message()));
  }
  return *path;
}

absl::Status DomainService::RefuseExistingVolume(const internal::JournalVolume& v, absl::string_view field) {
  if (storage_ == nullptr) return absl::OkStatus();  // CheckRescueBoot refused such a rescue already
  auto st = storage_->GetVolume(v.pool(), v.name());
  if (absl::IsNotFound(st.status())) return absl::OkStatus();
  if (!st.ok()) return absl::Status(st.status().code(), absl::StrCat(field, ": ", st.status().message()));
  return absl::AlreadyExistsError(
      absl::StrCat(field, ": volume '", v.name(), "' already exists in pool '", v.pool(), "'; name another"));
}

absl::StatusOr<bool> DomainService::MadeByRescue(const internal::JournalVolume& v, const std::string& domain) {
  if (storage_ == nullptr) return false;
  auto st = storage_->GetVolume(v.pool(), v.name());
  if (absl::IsNotFound(st.status())) return false;  // never made, or already deleted
  if (!st.ok()) return st.status();
  if (st->volume.attached_to == domain) return true;
  Log()->warn("recovery: volume {}/{} is not {}'s (recorded owner '{}'): made by someone else, left alone", v.pool(),
              v.name(), domain, st->volume.attached_to);
  return false;
}

absl::Status DomainService::DeleteRescueVolume(const internal::RescueRecord& rec, bool rescue_disk, bool config_drive) {
  if (storage_ == nullptr) return absl::OkStatus();
  std::vector<const internal::JournalVolume*> volumes;
  if (rescue_disk && HasVolume(rec)) volumes.push_back(&rec.volume());
  if (config_drive && HasConfigDrive(rec)) volumes.push_back(&rec.config_volume());
  for (const internal::JournalVolume* v : volumes) {
    // Released first (it is recorded as attached to the domain), then deleted: it is the rescue's.
    if (auto s = storage_->ReleaseVolume(v->pool(), v->name(), rec.domain(), /*delete_if_owned=*/false);
        !s.ok() && !absl::IsNotFound(s)) {
      return s;
    }
    if (auto d = storage_->DeleteVolume(v->pool(), v->name()); !d.ok() && !absl::IsNotFound(d.status())) {
      return d.status();
    }
  }
  return absl::OkStatus();
}

absl::Status DomainService::UndoRescue(const internal::RescueRecord& rec, bool touched_domain, bool made_volume,
                                       bool made_config) {
  const std::string& name = rec.domain();
  if (touched_domain) {
    if (auto d = hv_.GetDomain(name); d.ok() && hv::IsActive(d->state)) {
      if (auto s = hv_.DestroyDomain(name); !s.ok()) return s;
    }
    if (auto s = hv_.RestoreDomainDefinition(name, rec.definition()); !s.ok()) return s;
  }
  if (made_volume || made_config) {
    if (auto s = DeleteRescueVolume(rec, made_volume, made_config); !s.ok()) return s;
  }
  if (auto s = rescues_->Erase(name); !s.ok()) return s;
  if (touched_domain && rec.was_active()) {
    if (auto s = hv_.StartDomain(name); !s.ok()) {
      // The definition is back; only the restart failed, which the caller can retry.
      Log()->error("rescue of {} undone, but it could not be started again: {}", name, s.message());
    }
  }
  return absl::OkStatus();
}

absl::Status DomainService::ForgetRescue(const internal::RescueRecord& rec) {
  if (auto s = DeleteRescueVolume(rec); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("domain '", rec.domain(), "' deleted, but its rescue volume ",
                                               rec.volume().pool(), "/", rec.volume().name(), " was not: ", s.message()));
  }
  return rescues_->Erase(rec.domain());
}

absl::StatusOr<hv::DomainInfo> DomainService::Unrescue(const std::string& name) {
  if (auto s = hv::ValidateDomainName("name", name); !s.ok()) return s;
  std::lock_guard lock(define_mu_);
  auto info = hv_.GetDomain(name);  // no such domain: NotFound before "not rescued"
  if (!info.ok()) return info.status();
  auto rec = rescues_->Find(name);
  if (!rec.has_value()) return absl::FailedPreconditionError(absl::StrCat("domain '", name, "' is not rescued"));
  ComputeAdmission::Hold hold;
  if (admission_ != nullptr && !hv::IsActive(info->state)) {
    auto h = admission_->AdmitStart(name);
    if (!h.ok()) return h.status();
    hold = std::move(*h);
  }
  internal::JournalBegin begin;
  begin.set_type(v1::OPERATION_KIND_UNRESCUE_DOMAIN);
  begin.set_domain(name);
  begin.set_uuid(rec->uuid());
  *begin.mutable_rescue() = *rec;
  auto op = journal_->Begin(std::move(begin));
  if (!op.ok()) return op.status();
  absl::Status s = UnrescueJournalled(*op, *rec);
  EndOp(*op, s.ok() ? v1::OPERATION_STATE_SUCCEEDED : v1::OPERATION_STATE_FAILED, std::string(s.message()));
  if (!s.ok()) return s;
  return hv_.GetDomain(name);
}

// Every step can be run again: a failed unrescue is retried by calling it again (the record
// stays until the definition is back and the volume gone), and recovery does just that.
absl::Status DomainService::UnrescueJournalled(uint64_t op, const internal::RescueRecord& rec) {
  const std::string& name = rec.domain();
  auto info = hv_.GetDomain(name);
  if (!info.ok()) return info.status();
  if (hv::IsActive(info->state)) {
    if (auto s = journal_->Step(op, Step("destroy")); !s.ok()) return s;
    if (auto s = hv_.DestroyDomain(name); !s.ok()) return s;
  }
  if (auto s = journal_->Step(op, Step("restore-definition")); !s.ok()) return s;
  if (auto s = hv_.RestoreDomainDefinition(name, rec.definition()); !s.ok()) return s;
  HVAGENT_FAILPOINT("unrescue.after_restore");
  if (HasVolume(rec) || HasConfigDrive(rec)) {
    internal::JournalStep step = Step("delete-volume");
    *step.mutable_volume() = HasVolume(rec) ? rec.volume() : rec.config_volume();
    if (auto s = journal_->Step(op, step); !s.ok()) return s;
    if (auto s = DeleteRescueVolume(rec); !s.ok()) return s;
  }
  if (auto s = journal_->Step(op, Step("forget")); !s.ok()) return s;
  if (auto s = rescues_->Erase(name); !s.ok()) return s;
  if (auto s = journal_->Step(op, Step("start")); !s.ok()) return s;
  if (auto s = hv_.StartDomain(name); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("domain '", name, "' is unrescued but did not start: ", s.message()));
  }
  Log()->info("domain {} unrescued", name);
  return absl::OkStatus();
}

// An interrupted rescue is undone (a rescue that got as far as its start is kept: it is
// complete); an interrupted unrescue is carried through.
DomainService::Recovery DomainService::RecoverRescue(const Journal::Operation& op) {
  const internal::RescueRecord& rec = op.begin.rescue();
  Recovery r{rec.domain(), "rescue"};
  auto dom = Ours(rec.domain(), rec.uuid());
  if (!dom.ok()) {
    r.state = v1::OPERATION_STATE_FAILED;
    r.outcome = absl::StrCat("failed: ", dom.status().message());
    return r;
  }
  if (dom->has_value() && HasStep(op, "start") && hv::IsActive((*dom)->state) && rescues_->Find(rec.domain())) {
    r.state = v1::OPERATION_STATE_RECOVERED;
    r.outcome = "completed";
    return r;
  }
  const bool touched = dom->has_value() && (HasStep(op, "destroy") || HasStep(op, "define-rescue"));
  // A journalled create step says the volume may exist, not that this rescue made it.
  absl::StatusOr<bool> made_volume = false, made_config = false;
  if (HasStep(op, "create-volume")) made_volume = MadeByRescue(rec.volume(), rec.domain());
  if (HasStep(op, "create-config-volume")) made_config = MadeByRescue(rec.config_volume(), rec.domain());
  absl::Status s = made_volume.ok() ? made_config.status() : made_volume.status();
  if (s.ok()) s = UndoRescue(rec, touched, *made_volume, *made_config);
  if (!s.ok()) {
    r.state = v1::OPERATION_STATE_FAILED;
    r.outcome = absl::StrCat("failed: ", s.message());
    return r;
  }
  r.state = v1::OPERATION_STATE_ROLLED_BACK;
  r.outcome = "rolled back (original definition restored)";
  return r;
}

DomainService::Recovery DomainService::RecoverUnrescue(const Journal::Operation& op) {
  const internal::RescueRecord& rec = op.begin.rescue();
  Recovery r{rec.domain(), "unrescue"};
  auto dom = Ours(rec.domain(), rec.uuid());
  absl::Status s = dom.status();
  if (s.ok() && !dom->has_value()) {
    // Deleted meanwhile (or never ours): nothing to restore, only the rescue's own leftovers.
    s = ForgetRescue(rec);
    r.state = s.ok() ? v1::OPERATION_STATE_RECOVERED : v1::OPERATION_STATE_FAILED;
    r.outcome = s.ok() ? "domain gone; rescue volume deleted" : absl::StrCat("failed: ", s.message());
    return r;
  }
  if (s.ok() && HasStep(op, "start") && hv::IsActive((**dom).state)) {
    r.state = v1::OPERATION_STATE_RECOVERED;
    r.outcome = "completed";
    return r;
  }
  if (s.ok()) s = UnrescueJournalled(op.id, rec);
  if (!s.ok()) {
    r.state = v1::OPERATION_STATE_FAILED;
    r.outcome = absl::StrCat("failed: ", s.message());
    return r;
  }
  r.state = v1::OPERATION_STATE_RECOVERED;
  r.outcome = "completed (original definition restored, started)";
  return r;
}

}  // namespace hvagent::service
