// DomainService's recovery and reconciliation: finishing, after a crash, the operations the
// journal shows open (Recover), and matching the volumes' owner records against the domains the
// hypervisor has (Reconcile). The request paths are in domain_service.cpp.
#include <algorithm>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "agent/service/domain_service.h"
#include "common/log.h"

namespace hvagent::service {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("service");
  return logger;
}


// Whether the operation journalled a release of this volume (so it was ours to release).
bool Released(const Journal::Operation& op, const internal::JournalVolume& v) {
  return std::any_of(op.steps.begin(), op.steps.end(), [&](const internal::JournalStep& s) {
    return s.name() == "release-volume" && s.volume().pool() == v.pool() && s.volume().name() == v.name();
  });
}

}  // namespace

absl::StatusOr<std::optional<hv::DomainInfo>> DomainService::Ours(const std::string& name, const std::string& uuid) {
  auto d = hv_.GetDomain(name);
  if (absl::IsNotFound(d.status())) return std::nullopt;
  if (!d.ok()) return d.status();
  if (absl::AsciiStrToLower(d->uuid) != absl::AsciiStrToLower(uuid)) {
    Log()->warn("recovery: domain {} has uuid {}, not the journalled {}; leaving it alone", name, d->uuid, uuid);
    return std::nullopt;
  }
  return *d;
}

absl::StatusOr<std::vector<Orphan>> DomainService::Reconcile(bool release_orphans) {
  if (storage_ == nullptr) return std::vector<Orphan>{};
  std::lock_guard lock(define_mu_);
  auto domains = hv_.ListDomains();
  if (!domains.ok()) return domains.status();  // never judge volumes without the domain list
  std::set<std::string> names;
  for (const auto& d : *domains) names.insert(d.name);
  // A create making its volumes has not defined its domain yet, and a migration's domain is
  // arriving or leaving: their volumes are no orphans.
  names.insert(creating_names_.begin(), creating_names_.end());
  names.insert(held_names_.begin(), held_names_.end());
  auto orphans = storage_->FindOrphans(names);
  if (!orphans.ok()) return orphans.status();
  std::vector<Orphan> still;
  for (const Orphan& o : *orphans) {
    if (release_orphans) {
      if (auto s = storage_->ReleaseVolume(o.pool, o.volume, o.domain, /*delete_if_owned=*/false); s.ok()) {
        Log()->warn("reconcile: volume {}/{} was recorded as attached to domain {}, which does not exist; released",
                    o.pool, o.volume, o.domain);
        continue;
      } else {
        Log()->error("reconcile: releasing orphaned volume {}/{}: {}", o.pool, o.volume, s.message());
      }
    } else {
      Log()->warn("reconcile: volume {}/{} is recorded as attached to domain {}, which does not exist (orphaned)",
                  o.pool, o.volume, o.domain);
    }
    still.push_back(o);
  }
  storage_->SetOrphans(still);
  return *orphans;
}

DomainService::NameHold::NameHold(DomainService& domains, std::string name)
    : domains_(domains), name_(std::move(name)) {
  std::lock_guard lock(domains_.define_mu_);
  domains_.held_names_.insert(name_);
}

DomainService::NameHold::~NameHold() {
  std::lock_guard lock(domains_.define_mu_);
  domains_.held_names_.erase(domains_.held_names_.find(name_));
}

namespace {
// A recovery that could not be done now: it stays open in the journal and is tried again.
DomainService::Recovery Failed(DomainService::Recovery r, std::string why) {
  r.state = v1::OPERATION_STATE_FAILED;
  r.outcome = absl::StrCat("failed: ", why);
  return r;
}
}  // namespace

std::vector<DomainService::Recovery> DomainService::Recover() {
  std::lock_guard lock(define_mu_);
  std::vector<Recovery> out;
  for (const Journal::Operation& op : journal_->Unfinished()) {
    if (creating_ops_.count(op.id) != 0) continue;  // a create making its volumes: not abandoned
    Recovery r;
    switch (op.begin.type()) {
      // UNSPECIFIED: an entry naming no kind at all (the journal maps the old `kind` strings).
      case v1::OPERATION_KIND_UNSPECIFIED:
      case v1::OPERATION_KIND_CREATE_DOMAIN: r = RecoverCreate(op); break;
      case v1::OPERATION_KIND_DELETE_DOMAIN: r = RecoverDelete(op); break;
      case v1::OPERATION_KIND_RESCUE_DOMAIN: r = RecoverRescue(op); break;
      case v1::OPERATION_KIND_UNRESCUE_DOMAIN: r = RecoverUnrescue(op); break;
      default: continue;  // no domain operation (images, volumes): its own service recovers it
    }
    Log()->warn("recovery: interrupted {} of domain {} (operation {}): {}", r.kind, r.domain, op.id, r.outcome);
    // A failed recovery stays open in the journal: the next start tries again.
    if (r.state != v1::OPERATION_STATE_FAILED) EndOp(op.id, r.state, absl::StrCat("recovery: ", r.outcome));
    out.push_back(std::move(r));
  }
  // Networks the agent made that no domain uses any more: left by a crash between making one
  // and defining its domain, or by an undo that could not finish. Same rules as a delete.
  if (options_.host_networks != nullptr) {
    if (auto owned = options_.host_networks->OwnedBridges(); owned.ok()) {
      ReleaseHostNetworks(*owned);
    } else {
      Log()->error("recovery: the agent's networks cannot be listed: {}", owned.status().message());
    }
  }
  return out;
}

DomainService::Recovery DomainService::RecoverCreate(const Journal::Operation& op) {
  const internal::JournalBegin& b = op.begin;
  Recovery r{b.domain(), "create"};
  auto dom = Ours(b.domain(), b.uuid());
  if (!dom.ok()) {
    return Failed(std::move(r), std::string(dom.status().message()));
  }
  if (dom->has_value() && (!b.start() || hv::IsActive((*dom)->state))) {
    r.state = v1::OPERATION_STATE_RECOVERED;
    r.outcome = "completed";  // every step ran; only the journal's end was missing
    return r;
  }
  if (dom->has_value()) {
    if (hv::IsActive((*dom)->state)) (void)hv_.DestroyDomain(b.domain());
    if (auto s = hv_.UndefineDomain(b.domain()); !s.ok()) {
      return Failed(std::move(r), absl::StrCat("undefine: ", s.message()));
    }
  }
  // Another domain by this name (another uuid) owns whatever is attached to the name.
  const bool name_is_another_domains = !dom->has_value() && hv_.GetDomain(b.domain()).ok();
  for (auto it = op.steps.rbegin(); it != op.steps.rend(); ++it) {
    if (it->name() != "claim-volume") continue;
    const internal::JournalVolume& v = it->volume();
    if (storage_ == nullptr) {
      return Failed(std::move(r), absl::StrCat("volume ", v.pool(), "/", v.name(), " but no storage pools are configured"));
    }
    auto st = storage_->GetVolume(v.pool(), v.name());
    if (absl::IsNotFound(st.status())) continue;  // never created
    if (!st.ok()) {
      return Failed(std::move(r), absl::StrCat("volume ", v.pool(), "/", v.name(), ": ", st.status().message()));
    }
    const std::string& owner = st->volume.attached_to;
    // Only what this operation did is undone: its own claim (a volume it created and so owns is
    // deleted, one it was given released), or a volume it created before recording the claim.
    const bool claimed_by_us = owner == b.domain() && !name_is_another_domains;
    absl::Status s;
    if (claimed_by_us) {
      s = storage_->ReleaseVolume(v.pool(), v.name(), b.domain(), /*delete_if_owned=*/v.created());
    } else if (owner.empty() && v.created() && st->state != VolumeState::kDeleting) {
      s = storage_->DeleteVolume(v.pool(), v.name()).status();
    } else {
      continue;
    }
    if (!s.ok()) {
      return Failed(std::move(r), absl::StrCat("release ", v.pool(), "/", v.name(), ": ", s.message()));
    }
  }
  r.state = v1::OPERATION_STATE_ROLLED_BACK;
  r.outcome = "rolled back";
  return r;
}

DomainService::Recovery DomainService::RecoverDelete(const Journal::Operation& op) {
  const internal::JournalBegin& b = op.begin;
  Recovery r{b.domain(), "delete"};
  auto dom = Ours(b.domain(), b.uuid());
  if (!dom.ok()) {
    return Failed(std::move(r), std::string(dom.status().message()));
  }
  if (dom->has_value()) {
    if (hv::IsActive((*dom)->state)) {
      if (auto s = hv_.DestroyDomain(b.domain()); !s.ok()) {
        return Failed(std::move(r), absl::StrCat("destroy: ", s.message()));
      }
    }
    if (auto s = hv_.UndefineDomain(b.domain()); !s.ok()) {
      return Failed(std::move(r), absl::StrCat("undefine: ", s.message()));
    }
  }
  // Another domain by this name (another uuid) has whatever is attached to the name now.
  const bool name_is_another_domains = !dom->has_value() && hv_.GetDomain(b.domain()).ok();
  for (const internal::JournalVolume& v : b.volumes()) {
    if (storage_ == nullptr) break;
    // The rescue's disk is deleted below (ForgetRescue) whatever delete_volumes says, as the
    // uninterrupted delete does: never merely released.
    if (b.has_rescue() && ((b.rescue().volume().pool() == v.pool() && b.rescue().volume().name() == v.name()) ||
                           (b.rescue().config_volume().pool() == v.pool() &&
                            b.rescue().config_volume().name() == v.name()))) {
      continue;
    }
    auto st = storage_->GetVolume(v.pool(), v.name());
    if (absl::IsNotFound(st.status())) continue;  // already deleted
    if (!st.ok()) {
      return Failed(std::move(r), absl::StrCat("volume ", v.pool(), "/", v.name(), ": ", st.status().message()));
    }
    // Deleted only when the journal recorded it as owned when the delete began (a journal from an
    // agent that predates ownership never says so: its volumes are kept) and, while still
    // attached, its own record agrees (ReleaseVolume checks).
    const bool delete_it = b.delete_volumes() && v.owned();
    const std::string& owner = st->volume.attached_to;
    absl::Status s;
    if (owner == b.domain() && !name_is_another_domains) {
      s = storage_->ReleaseVolume(v.pool(), v.name(), b.domain(), delete_it);
    } else if (owner.empty() && delete_it && Released(op, v) && st->state != VolumeState::kDeleting) {
      s = storage_->DeleteVolume(v.pool(), v.name()).status();  // released, then the crash came
    } else {
      continue;
    }
    if (!s.ok()) {
      return Failed(std::move(r), absl::StrCat("release ", v.pool(), "/", v.name(), ": ", s.message()));
    }
  }
  if (b.has_rescue() && !name_is_another_domains) {
    if (auto s = ForgetRescue(b.rescue()); !s.ok()) return Failed(std::move(r), std::string(s.message()));
  }
  r.state = v1::OPERATION_STATE_RECOVERED;
  r.outcome = "completed";
  return r;
}

}  // namespace hvagent::service
