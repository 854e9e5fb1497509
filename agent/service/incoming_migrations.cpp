#include "agent/service/incoming_migrations.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/random_text.h"
#include "hypervisor/domain_spec_validator.h"

namespace hvagent::service {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("migration");
  return logger;
}

// Where a volume disk points while the spec is validated before its volume exists.
constexpr char kPendingVolumePath[] = "/dev/hvagent-incoming";

std::string DiskField(size_t disk) { return absl::StrCat("spec.disks[", disk, "].volume"); }

internal::JournalVolume JournalVolumeOf(const VolumeClaim& c) {
  internal::JournalVolume v;
  v.set_pool(c.pool);
  v.set_name(c.name);
  v.set_created(true);
  v.set_owned(true);
  return v;
}

}  // namespace

IncomingMigrations::IncomingMigrations(DomainService& domains, StorageService& storage, hv::Hypervisor& hypervisor,
                                       Journal& journal, Clock& clock, Options options)
    : domains_(domains), storage_(storage), hv_(hypervisor), journal_(journal), clock_(clock), options_(options) {}

absl::Status IncomingMigrations::CheckPlan(const IncomingPlan& plan) {
  if (plan.spec.uuid.empty()) return absl::InvalidArgumentError("spec.uuid: required (a domain keeps its uuid)");
  hv::DomainSpec spec = plan.spec;
  std::map<std::string, uint64_t> per_pool;
  for (const DiskVolume& v : plan.volumes) {
    if (v.disk >= spec.disks.size()) return absl::InvalidArgumentError(absl::StrCat(DiskField(v.disk), ": no such disk"));
    if (v.claim.create_size_bytes == 0 || !v.claim.image.empty() || v.claim.adopt) {
      return absl::InvalidArgumentError(
          absl::StrCat(DiskField(v.disk), ".create_size_bytes: the size of the volume to receive is required"));
    }
    spec.disks[v.disk].source_path = kPendingVolumePath;
    spec.disks[v.disk].type = hv::DiskType::kBlock;
    if (auto pool = storage_.GetPool(v.claim.pool); !pool.ok()) {
      return absl::Status(pool.status().code(), absl::StrCat(DiskField(v.disk), ".pool: ", pool.status().message()));
    }
    if (storage_.GetVolume(v.claim.pool, v.claim.name).ok()) {
      return absl::AlreadyExistsError(absl::StrCat(DiskField(v.disk), ".name: volume '", v.claim.name,
                                                   "' already exists in pool '", v.claim.pool, "'"));
    }
    per_pool[v.claim.pool] += v.claim.create_size_bytes;
  }
  for (size_t i = 0; i < spec.disks.size(); ++i) {
    if (spec.disks[i].source_path != kPendingVolumePath) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.disks[", i, "]: only pool volumes arrive with a domain, not host files"));
    }
  }
  if (auto s = hv::ValidateDomainSpec(spec); !s.ok()) return s;
  // The spec is valid; whether this host can honour it (its kernel directories, networks, guest
  // type) is a property of the host: refused as a precondition, before any byte moves.
  if (auto s = domains_.CheckHostFit(spec, plan.volumes); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("this host cannot take the domain as defined: ", s.message()));
  }
  for (const auto& [pool, bytes] : per_pool) {
    auto info = storage_.GetPool(pool);
    if (info.ok() && info->free_bytes < bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("spec.disks: pool '", pool, "' has ", info->free_bytes,
                                                       " bytes free, the incoming volumes need ", bytes));
    }
  }
  if (hv_.GetDomain(spec.name).ok() || hv_.GetDomainByUuid(spec.uuid).ok()) {
    return absl::AlreadyExistsError(
        absl::StrCat("spec.name: a domain named '", spec.name, "' or with uuid ", spec.uuid, " exists here"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> IncomingMigrations::Prepare(const IncomingPlan& plan) {
  ExpireIdle();
  if (auto s = CheckPlan(plan); !s.ok()) return s;
  auto id = RandomAlphanumeric(24);
  if (!id.ok()) return id.status();
  std::lock_guard lock(mu_);
  for (const auto& [other, t] : transfers_) {
    if (!t->finished && (t->plan.spec.name == plan.spec.name || t->plan.spec.uuid == plan.spec.uuid)) {
      return absl::AlreadyExistsError(absl::StrCat("spec.name: domain '", plan.spec.name, "' is arriving already"));
    }
  }
  internal::JournalBegin begin;
  begin.set_type(v1::OPERATION_KIND_MIGRATE_IN);
  begin.set_domain(plan.spec.name);
  begin.set_uuid(plan.spec.uuid);
  begin.set_start(plan.start);
  begin.set_peer(plan.source_host);
  begin.set_transfer_id(*id);
  begin.set_live(plan.live);
  for (const DiskVolume& v : plan.volumes) *begin.add_volumes() = JournalVolumeOf(v.claim);
  auto op = journal_.Begin(begin);
  if (!op.ok()) return op.status();
  auto t = std::make_shared<Transfer>();
  t->op = *op;
  t->plan = plan;
  t->received.assign(plan.volumes.size(), false);
  t->last_used = clock_.Now();
  t->hold = domains_.HoldName(plan.spec.name);
  transfers_[*id] = t;
  Log()->info("incoming domain {} from {}: transfer opened (operation {}, {} volume(s))", plan.spec.name,
              plan.source_host, *op, plan.volumes.size());
  return *id;
}

absl::StatusOr<std::string> IncomingMigrations::MakeEmptyVolume(Transfer& t, size_t i) {
  const VolumeClaim& c = t.plan.volumes[i].claim;
  internal::JournalStep step;
  step.set_name("make-volume");
  *step.mutable_volume() = JournalVolumeOf(c);
  if (auto s = journal_.Step(t.op, step); !s.ok()) return s;
  std::string path;
  auto v = storage_.CreateVolumeFilled(
      c.pool, {c.name, c.create_size_bytes}, absl::StrCat("live migration from ", t.plan.source_host),
      [&](const storage::VolumeInfo& vol) {
        path = vol.path;  // the source's hypervisor writes every block: nothing to fill here
        return absl::OkStatus();
      },
      t.plan.spec.name);
  if (!v.ok()) return absl::Status(v.status().code(), absl::StrCat(DiskField(t.plan.volumes[i].disk), ": ",
                                                                   v.status().message()));
  t.received[i] = true;
  return path;
}

absl::StatusOr<LiveTarget> IncomingMigrations::PrepareLive(const IncomingPlan& plan) {
  if (options_.libvirt_uri.empty()) {
    return absl::FailedPreconditionError(
        "live: this host takes no live migrations ([migration] libvirt_uri is not set)");
  }
  IncomingPlan live = plan;
  live.live = true;
  live.start = true;
  auto id = Prepare(live);
  if (!id.ok()) return id.status();
  auto t = Find(*id);
  if (!t.ok()) return t.status();
  LiveTarget target{.transfer = *id, .libvirt_uri = options_.libvirt_uri, .migrate_uri = options_.migrate_uri};
  {
    std::lock_guard lock(mu_);
    (*t)->busy = true;
  }
  absl::Status failed;
  for (size_t i = 0; i < (*t)->plan.volumes.size() && failed.ok(); ++i) {
    auto path = MakeEmptyVolume(**t, i);
    if (path.ok()) target.disk_paths.push_back(*path);
    failed = path.status();
  }
  {
    std::lock_guard lock(mu_);
    (*t)->busy = false;
    (*t)->last_used = clock_.Now();
  }
  if (!failed.ok()) {
    (void)Abort(*id);
    return failed;
  }
  return target;
}

absl::StatusOr<hv::DomainInfo> IncomingMigrations::FinishLive(Transfer& t) {
  auto d = hv_.GetDomain(t.plan.spec.name);
  if (!d.ok() || d->uuid != t.plan.spec.uuid || !hv::IsActive(d->state)) {
    return absl::FailedPreconditionError(
        absl::StrCat("domain '", t.plan.spec.name, "' has not arrived here running (live migration not done)"));
  }
  std::lock_guard lock(mu_);
  t.finished = true;
  t.hold.reset();  // the domain is here now
  (void)journal_.End(t.op, v1::OPERATION_STATE_SUCCEEDED);
  Log()->info("incoming domain {} from {}: arrived live", t.plan.spec.name, t.plan.source_host);
  return d;
}

absl::StatusOr<std::shared_ptr<IncomingMigrations::Transfer>> IncomingMigrations::Find(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = transfers_.find(id);
  if (it == transfers_.end()) return absl::NotFoundError(absl::StrCat("transfer_id: no open transfer '", id, "'"));
  it->second->last_used = clock_.Now();
  return it->second;
}

absl::StatusOr<ReceivedVolume> IncomingMigrations::WriteStream(const std::string& device, uint64_t size,
                                                               VolumeStream& stream) {
  // The writer's thread hashes what it writes, off this thread, which takes the stream.
  auto writer = storage::image::DeviceWriter::Open(device, size, /*hash=*/true);
  if (!writer.ok()) return writer.status();
  const std::string zeros(storage::image::kExportChunkBytes, '\0');
  uint64_t got = 0;
  for (;;) {
    auto piece = stream.Next();
    if (!piece.ok()) return piece.status();
    const uint64_t n = piece->kind == VolumePiece::Kind::kData ? piece->data.size() : piece->zeros;
    if (piece->kind != VolumePiece::Kind::kEnd && n > size - got) {
      return absl::InvalidArgumentError(absl::StrCat("data: the stream holds more than its ", size, " bytes"));
    }
    if (piece->kind == VolumePiece::Kind::kData) {
      if (auto s = (*writer)->Write(piece->data); !s.ok()) return s;
    } else if (piece->kind == VolumePiece::Kind::kZeros) {
      // The target is never assumed zero (a thick LV or a partition keeps old bytes).
      for (uint64_t left = n; left > 0;) {
        const absl::string_view run(zeros.data(), std::min<uint64_t>(left, zeros.size()));
        if (auto s = (*writer)->Write(run); !s.ok()) return s;
        left -= run.size();
      }
    } else {
      if (got != size) return absl::DataLossError(absl::StrCat("the stream ended after ", got, " of ", size, " bytes"));
      if (auto s = (*writer)->Finish(); !s.ok()) return s;
      std::string sha = (*writer)->HexDigest();
      if (sha != piece->sha256) {
        return absl::DataLossError(absl::StrCat("sha256: the sender read ", piece->sha256, ", this host wrote ", sha));
      }
      return ReceivedVolume{sha, got};
    }
    got += n;
  }
}

absl::StatusOr<ReceivedVolume> IncomingMigrations::Receive(const std::string& id, size_t disk, uint64_t size,
                                                           VolumeStream& stream) {
  auto t = Find(id);
  if (!t.ok()) return t.status();
  Transfer& tr = **t;
  size_t i = 0;
  while (i < tr.plan.volumes.size() && tr.plan.volumes[i].disk != disk) ++i;
  if (i == tr.plan.volumes.size()) {
    return absl::NotFoundError(absl::StrCat("disk: disk ", disk, " is no volume of the transfer"));
  }
  const VolumeClaim& c = tr.plan.volumes[i].claim;
  if (size != c.create_size_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("size_bytes: ", size, " is not the prepared size ", c.create_size_bytes));
  }
  {
    std::lock_guard lock(mu_);
    if (tr.received[i] || tr.busy || tr.finished) {
      return absl::FailedPreconditionError(absl::StrCat("disk: disk ", disk, " is received already or arriving"));
    }
    tr.busy = true;
  }
  internal::JournalStep step;
  step.set_name("receive-volume");
  *step.mutable_volume() = JournalVolumeOf(c);
  absl::Status s = journal_.Step(tr.op, step);
  ReceivedVolume got;
  if (s.ok()) {
    auto v = storage_.CreateVolumeFilled(
        c.pool, {c.name, size}, absl::StrCat("migration from ", tr.plan.source_host),
        [&](const storage::VolumeInfo& vol) {
          auto r = WriteStream(vol.path, size, stream);
          if (r.ok()) got = *r;
          return r.status();
        },
        tr.plan.spec.name);
    s = v.status();
  }
  std::lock_guard lock(mu_);
  tr.busy = false;
  tr.last_used = clock_.Now();
  if (!s.ok()) return s;
  tr.received[i] = true;
  Log()->info("incoming domain {}: volume {}/{} received ({} bytes, sha256 {})", tr.plan.spec.name, c.pool, c.name,
              got.bytes, got.sha256);
  return got;
}

absl::StatusOr<hv::DomainInfo> IncomingMigrations::Finish(const std::string& id) {
  auto t = Find(id);
  if (!t.ok()) return t.status();
  Transfer& tr = **t;
  if (tr.plan.live && !tr.finished) return FinishLive(tr);
  std::vector<DiskVolume> adopt = tr.plan.volumes;
  {
    std::lock_guard lock(mu_);
    if (tr.finished) return hv_.GetDomain(tr.plan.spec.name);
    for (size_t i = 0; i < adopt.size(); ++i) {
      if (!tr.received[i]) {
        return absl::FailedPreconditionError(absl::StrCat("disk ", adopt[i].disk, " has not been received"));
      }
      adopt[i].claim.create_size_bytes = 0;
      adopt[i].claim.adopt = true;
    }
    tr.busy = true;
  }
  internal::JournalStep step;
  step.set_name("define");
  absl::Status journalled = journal_.Step(tr.op, step);
  absl::StatusOr<hv::DomainInfo> d =
      journalled.ok() ? domains_.Create(tr.plan.spec, tr.plan.start, adopt) : journalled;
  std::lock_guard lock(mu_);
  tr.busy = false;
  if (!d.ok()) return d.status();
  tr.finished = true;
  tr.hold.reset();  // the domain is defined now
  (void)journal_.End(tr.op, v1::OPERATION_STATE_SUCCEEDED);
  Log()->info("incoming domain {} from {}: defined{}", tr.plan.spec.name, tr.plan.source_host,
              tr.plan.start ? " and started" : "");
  return d;
}

absl::Status IncomingMigrations::DeleteVolume(const VolumeClaim& c, const std::string& domain) {
  auto v = storage_.GetVolume(c.pool, c.name);
  if (absl::IsNotFound(v.status())) return absl::OkStatus();
  if (!v.ok()) return v.status();
  if (v->state == VolumeState::kDeleting) return absl::OkStatus();
  if (v->volume.attached_to == domain) return storage_.ReleaseVolume(c.pool, c.name, domain, true);
  if (!v->volume.attached_to.empty()) return absl::OkStatus();  // another domain's now: never ours to delete
  return storage_.DeleteVolume(c.pool, c.name).status();
}

absl::Status IncomingMigrations::Undo(const Transfer& t) {
  const std::string& name = t.plan.spec.name;
  auto dom = hv_.GetDomain(name);
  if (dom.ok() && dom->uuid == t.plan.spec.uuid) {
    if (auto s = domains_.Delete(name, /*force=*/true, /*delete_volumes=*/true); !s.ok()) return s;
  }
  absl::Status first;
  for (const DiskVolume& v : t.plan.volumes) {
    if (auto s = DeleteVolume(v.claim, name); !s.ok() && first.ok()) first = s;
  }
  return first;
}

absl::Status IncomingMigrations::Abort(const std::string& id) {
  std::shared_ptr<Transfer> t;
  {
    std::lock_guard lock(mu_);
    auto it = transfers_.find(id);
    if (it == transfers_.end()) return absl::NotFoundError(absl::StrCat("transfer_id: no open transfer '", id, "'"));
    t = it->second;
    transfers_.erase(it);
  }
  absl::Status s = Undo(*t);
  if (!t->finished) {
    (void)journal_.End(t->op, s.ok() ? v1::OPERATION_STATE_CANCELLED : v1::OPERATION_STATE_FAILED,
                       s.ok() ? "aborted by the source" : absl::StrCat("abort: ", s.message()));
  }
  Log()->warn("incoming domain {}: transfer aborted{}", t->plan.spec.name, s.ok() ? "" : absl::StrCat(": ", s.message()));
  return s;
}

absl::Status IncomingMigrations::Keep(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = transfers_.find(id);
  if (it == transfers_.end() || it->second->finished) {
    return absl::NotFoundError(absl::StrCat("transfer_id: no open transfer '", id, "'"));
  }
  it->second->last_used = clock_.Now();
  return absl::OkStatus();
}

void IncomingMigrations::ExpireIdle() {
  std::vector<std::string> idle;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, t] : transfers_) {
      if (t->busy || clock_.Now() - t->last_used <= options_.idle_timeout) continue;
      // A live transfer is silent while the hypervisors copy: never expired while its domain is
      // here (arriving, or arrived and running on the volumes).
      if (t->plan.live && hv_.GetDomainByUuid(t->plan.spec.uuid).ok()) continue;
      idle.push_back(id);
    }
  }
  for (const std::string& id : idle) {
    std::shared_ptr<Transfer> t;
    {
      std::lock_guard lock(mu_);
      auto it = transfers_.find(id);
      if (it == transfers_.end()) continue;
      t = it->second;
      transfers_.erase(it);
    }
    if (t->finished) continue;  // done: only forgotten
    absl::Status s = Undo(*t);
    (void)journal_.End(t->op, v1::OPERATION_STATE_FAILED, "the source went silent: transfer expired and undone");
    Log()->warn("incoming domain {}: idle transfer expired{}", t->plan.spec.name,
                s.ok() ? "" : absl::StrCat(" (undo: ", s.message(), ")"));
  }
}

std::vector<std::string> IncomingMigrations::Recover() {
  std::vector<std::string> done;
  for (const Journal::Operation& op : journal_.Unfinished()) {
    if (op.begin.type() == v1::OPERATION_KIND_MIGRATE_IN) done.push_back(RecoverOne(op));
  }
  return done;
}

std::string IncomingMigrations::RecoverOne(const Journal::Operation& op) {
  const std::string line = absl::StrCat("incoming domain ", op.begin.domain(), " (operation ", op.id, "): ");
  bool live = op.begin.live();
  for (const auto& step : op.steps) live = live || step.name() == "make-volume";  // journals before `live`
  if (live) {
    // The hypervisors go on without this agent: the guest may have arrived meanwhile. Running
    // here with its uuid, it is home (the source's libvirt undefined it there): keep it all.
    auto d = hv_.GetDomainByUuid(op.begin.uuid());
    if (d.ok() && (d->state == hv::DomainState::kRunning || d->state == hv::DomainState::kBlocked)) {
      (void)journal_.End(op.id, v1::OPERATION_STATE_RECOVERED, "recovery: the domain arrived live; kept");
      return absl::StrCat(line, "arrived live while this agent was down: kept with its volumes");
    }
  }
  Transfer t;
  t.plan.spec.name = op.begin.domain();
  t.plan.spec.uuid = op.begin.uuid();
  for (const auto& v : op.begin.volumes()) {
    t.plan.volumes.push_back(DiskVolume{0, VolumeClaim{.pool = v.pool(), .name = v.name()}});
  }
  // Undo also removes a half-arrived (paused, incoming) domain of that uuid: the source's job
  // then fails and its guest runs on there.
  absl::Status s = Undo(t);
  if (s.ok()) (void)journal_.End(op.id, v1::OPERATION_STATE_ROLLED_BACK, "recovery: received volumes removed");
  return absl::StrCat(line, s.ok() ? "rolled back" : absl::StrCat("undo failed: ", s.message()));
}

}  // namespace hvagent::service
