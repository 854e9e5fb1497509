#include "agent/service/migration_service.h"

#include <algorithm>
#include <functional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "agent/service/peer_heartbeat.h"
#include "common/failpoint.h"
#include "common/log.h"
#include "hypervisor/domain_spec_validator.h"

namespace hvagent::service {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("migration");
  return logger;
}

// "host:port" or "[v6]:port", port 1-65535; nothing that could name a path or carry options.
absl::Status CheckDestination(const std::string& d) {
  const size_t colon = d.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(d.substr(colon + 1), &port) || port == 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("destination: '", d, "' is not host:port"));
  }
  for (char c : d.substr(0, colon)) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '-' && c != '[' && c != ']' && c != ':') {
      return absl::InvalidArgumentError(absl::StrCat("destination: '", d, "' is not host:port"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckPoolName(const std::string& pool) {
  bool ok = pool.size() <= 64;
  for (char c : pool) ok = ok && (absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-');
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("destination_pool: '", pool, "' is no pool name"));
}

// What a destination hands back for a live migration reaches this host's libvirtd (it connects
// there itself): only qemu+tls:// or qemu+tcp:// to a host name, path /system, nothing else (no
// query: libvirt's ?command= or ?socket= would run or open something here); a data channel of
// tcp://HOST[:PORT]; and one plain absolute path per volume.
bool HostChars(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '-' && c != '[' && c != ']' && c != ':') return false;
  }
  return true;
}

absl::Status CheckLiveTarget(const LiveTarget& t, size_t volumes) {
  absl::string_view uri = t.libvirt_uri;
  const bool scheme = absl::ConsumePrefix(&uri, "qemu+tls://") || absl::ConsumePrefix(&uri, "qemu+tcp://");
  if (!scheme || !absl::ConsumeSuffix(&uri, "/system") || !HostChars(uri)) {
    return absl::FailedPreconditionError(
        absl::StrCat("the destination's libvirt_uri '", t.libvirt_uri, "' is not qemu+tls://HOST/system or qemu+tcp://HOST/system"));
  }
  absl::string_view data = t.migrate_uri;
  if (!data.empty() && (!absl::ConsumePrefix(&data, "tcp://") || !HostChars(data))) {
    return absl::FailedPreconditionError(
        absl::StrCat("the destination's migrate_uri '", t.migrate_uri, "' is not tcp://HOST[:PORT]"));
  }
  if (t.disk_paths.size() != volumes) {
    return absl::FailedPreconditionError(absl::StrCat("the destination prepared ", t.disk_paths.size(),
                                                      " volumes, not ", volumes));
  }
  for (const std::string& p : t.disk_paths) {
    // Only the destination's libvirtd opens it; still, nothing but a plain absolute path.
    bool ok = absl::StartsWith(p, "/") && p.find("..") == std::string::npos;
    for (char c : p) ok = ok && (absl::ascii_isalnum(c) || c == '/' || c == '_' || c == '.' || c == '-' || c == '+');
    if (!ok) return absl::FailedPreconditionError(absl::StrCat("the destination's disk path '", p, "' is no plain path"));
  }
  return absl::OkStatus();
}

// Counts what an export hands on, for the operation's progress.
class CountingSink final : public storage::image::ExportSink {
 public:
  CountingSink(storage::image::ExportSink& next, std::atomic<uint64_t>& done, std::function<void()> moved)
      : next_(next), done_(done), moved_(std::move(moved)) {}
  absl::Status Data(absl::string_view bytes) override {
    done_ += bytes.size();
    moved_();
    return next_.Data(bytes);
  }
  absl::Status Zeros(uint64_t bytes) override {
    done_ += bytes;
    moved_();
    return next_.Zeros(bytes);
  }

 private:
  storage::image::ExportSink& next_;
  std::atomic<uint64_t>& done_;
  const std::function<void()> moved_;  // after each count
};

}  // namespace

MigrationService::MigrationService(DomainService& domains, StorageService& storage, hv::Hypervisor& hypervisor,
                                   Journal& journal, MigrationPeerFactory connect, Options options)
    : domains_(domains),
      storage_(storage),
      hv_(hypervisor),
      journal_(journal),
      connect_(std::move(connect)),
      options_(options) {}

MigrationService::~MigrationService() {
  {
    std::lock_guard lock(mu_);
    for (auto& [id, job] : jobs_) job->cancel = true;
  }
  WaitForMigrations();
}

void MigrationService::WaitForMigrations() {
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(mu_);
    threads.swap(threads_);
  }
  for (auto& t : threads) t.join();
}

absl::StatusOr<std::shared_ptr<MigrationService::Job>> MigrationService::Plan(const MigrateRequest& r) {
  auto info = hv_.GetDomain(r.name);
  if (!info.ok()) return info.status();
  auto job = std::make_shared<Job>();
  job->request = r;
  job->was_running = hv::IsActive(info->state);
  if (r.live) {
    auto host = hv_.GetHostInfo();
    if (!host.ok()) return host.status();
    if (host->hypervisor_type == "Xen") {
      return absl::FailedPreconditionError(
          "live: Xen 4.17 has no live migration (nor save/restore) on Arm (Xen's SUPPORT.md lists them for x86 "
          "only); move the domain cold (running_policy SHUTDOWN)");
    }
    if (!job->was_running) {
      return absl::FailedPreconditionError(absl::StrCat("live: domain '", r.name, "' is not running; move it cold"));
    }
  } else if (job->was_running && r.running != RunningPolicy::kShutdown) {
    return absl::FailedPreconditionError(absl::StrCat(
        "domain '", r.name, "' is running: cold migration needs it shut off (running_policy SHUTDOWN does that)"));
  }
  auto disks = hv_.GetDomainDisks(r.name);
  if (!disks.ok()) return disks.status();
  auto nics = hv_.GetDomainNics(r.name);
  if (!nics.ok()) return nics.status();
  auto owned = storage_.VolumesOf(r.name);
  if (!owned.ok()) return owned.status();
  // The whole definition travels (boot, CPU, display, console, labels): the destination refuses
  // what it cannot honour before any byte moves. Disks and NICs as listed below (a running
  // guest's too); what the agent sets at define time the destination sets for itself.
  auto defined = hv_.GetDomainSpec(r.name);
  if (!defined.ok()) return defined.status();
  if (!r.live) {
    // A live move carries libvirt's whole XML; a cold one defines the model again, which would
    // silently lose what it has no field for.
    auto extra = hv_.GetUnmodelledDevices(r.name);
    if (!extra.ok()) return extra.status();
    if (!extra->empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "domain '", r.name, "' has devices the agent's model has no field for, which a cold move would drop: ",
          absl::StrJoin(*extra, ", "), "; detach them first",
          job->was_running ? ", or move the guest live (KVM hosts)" : ""));
    }
  }
  hv::DomainSpec& spec = job->plan.spec;
  spec = std::move(*defined);
  spec.vnc_listen.clear();
  spec.vnc_locked_password.clear();
  spec.console_log_path.clear();
  spec.disks.clear();
  spec.nics = *nics;
  for (size_t i = 0; i < disks->size(); ++i) {
    hv::DiskSpec disk = (*disks)[i];
    const storage::VolumeInfo* vol = nullptr;
    for (const auto& v : *owned) {
      if (v.path == disk.source_path) vol = &v;
    }
    if (vol == nullptr || vol->ownership != storage::Ownership::kOwned) {
      return absl::FailedPreconditionError(absl::StrCat(
          "disks[", i, "] (", disk.source_path, "): only pool volumes the domain owns move; this disk is ",
          vol == nullptr ? "no pool volume" : "a borrowed volume"));
    }
    disk.source_path.clear();
    disk.type = hv::DiskType::kBlock;
    spec.disks.push_back(disk);
    const std::string pool = r.destination_pool.empty() ? vol->pool : r.destination_pool;
    job->plan.volumes.push_back(
        DiskVolume{i, VolumeClaim{.pool = pool, .name = vol->name, .create_size_bytes = vol->size_bytes}});
    job->volumes.push_back(*vol);
    job->total += vol->size_bytes;
  }
  job->plan.start = job->was_running;
  job->plan.live = r.live;
  return job;
}

absl::StatusOr<uint64_t> MigrationService::Migrate(const MigrateRequest& r) {
  if (r.name.empty()) return absl::InvalidArgumentError("name: required");
  if (auto s = CheckDestination(r.destination); !s.ok()) return s;
  if (r.shutdown_timeout > std::chrono::seconds(3600)) {
    return absl::InvalidArgumentError("shutdown_timeout_seconds: at most 3600");
  }
  if (auto s = CheckPoolName(r.destination_pool); !s.ok()) return s;
  if (r.max_downtime_ms > 60000) return absl::InvalidArgumentError("max_downtime_ms: at most 60000");
  if (!r.live && r.max_downtime_ms > 0) return absl::InvalidArgumentError("max_downtime_ms: only for a live migration");
  if (r.max_bandwidth_mib_s > 100000) return absl::InvalidArgumentError("max_bandwidth_mib_s: at most 100000");
  if (!r.live && r.max_bandwidth_mib_s > 0) {
    return absl::InvalidArgumentError("max_bandwidth_mib_s: only for a live migration");
  }
  auto job = Plan(r);
  if (!job.ok()) return job.status();
  std::lock_guard lock(mu_);
  for (const auto& [id, other] : jobs_) {
    if (other->request.name == r.name && !other->ended) {
      return absl::FailedPreconditionError(absl::StrCat("domain '", r.name, "' is migrating already (operation ",
                                                        id, ")"));
    }
  }
  internal::JournalBegin begin;
  begin.set_type(v1::OPERATION_KIND_MIGRATE_DOMAIN);
  begin.set_domain(r.name);
  begin.set_uuid((*job)->plan.spec.uuid);
  begin.set_start((*job)->was_running);
  begin.set_peer(r.destination);
  auto id = journal_.Begin(begin);
  if (!id.ok()) return id.status();
  (*job)->id = *id;
  jobs_[*id] = *job;
  ForgetOldJobs();
  threads_.emplace_back([this, j = *job] { Run(j); });
  Log()->info("migrating domain {} to {} (operation {}, {} volume(s), {} bytes)", r.name, r.destination, *id,
              (*job)->volumes.size(), (*job)->total);
  return *id;
}

void MigrationService::ForgetOldJobs() {
  size_t ended = 0;
  for (const auto& [id, job] : jobs_) ended += job->ended ? 1 : 0;
  for (auto it = jobs_.begin(); it != jobs_.end() && ended > Journal::kHistory;) {
    if (it->second->ended) {
      it = jobs_.erase(it);
      --ended;
    } else {
      ++it;
    }
  }
}

absl::Status MigrationService::Step(Job& job, const std::string& name, const storage::VolumeInfo* volume) {
  internal::JournalStep step;
  step.set_name(name);
  if (volume != nullptr) {
    step.mutable_volume()->set_pool(volume->pool);
    step.mutable_volume()->set_name(volume->name);
  }
  return journal_.Step(job.id, step);
}

void MigrationService::Report(const Job& job) {
  if (options_.events != nullptr) options_.events->Progress(job.id, job.done, job.total);
}

absl::Status MigrationService::SendVolumes(Job& job, MigrationPeer& peer, const std::string& transfer) {
  for (size_t i = 0; i < job.volumes.size(); ++i) {
    const storage::VolumeInfo& v = job.volumes[i];
    if (auto s = Step(job, "send-volume", &v); !s.ok()) return s;
    if (auto s = storage_.RefuseBusy(v.pool, v.name); !s.ok()) return s;
    std::string sent_sha;
    auto got = peer.SendVolume(transfer, job.plan.volumes[i].disk, v.size_bytes,
                               [&](storage::image::ExportSink& sink) -> absl::StatusOr<storage::image::ExportResult> {
                                 CountingSink counting(sink, job.done, [&] { Report(job); });
                                 auto r = storage::image::ExportDevice(v.path, v.size_bytes, counting, &job.cancel);
                                 if (r.ok()) sent_sha = r->sha256;
                                 return r;
                               });
    if (job.cancel) return absl::CancelledError("cancelled");
    if (!got.ok()) {
      return absl::Status(got.status().code(),
                          absl::StrCat("volume ", v.pool, "/", v.name, ": ", got.status().message()));
    }
    if (got->sha256 != sent_sha || got->bytes != v.size_bytes) {
      return absl::DataLossError(absl::StrCat("volume ", v.pool, "/", v.name, ": sent sha256 ", sent_sha,
                                              ", the destination wrote ", got->sha256));
    }
    HVAGENT_FAILPOINT("migrate.after_send_volume");
  }
  return absl::OkStatus();
}

std::string MigrationService::WatchPeer(MigrationPeer& peer, const std::string& transfer,
                                        const std::atomic<bool>& done, const std::atomic<bool>& aborted) {
  using Steady = std::chrono::steady_clock;
  PeerHeartbeat heartbeat(options_.peer_heartbeat, options_.peer_heartbeat_misses, Steady::now());
  const auto tick = std::min(options_.peer_heartbeat, std::chrono::milliseconds(50));
  while (!done && !aborted) {
    std::this_thread::sleep_for(tick);
    if (!heartbeat.Due(Steady::now())) continue;
    absl::Status answer = peer.Keep(transfer, options_.peer_heartbeat);
    if (heartbeat.Record(Steady::now(), answer)) return heartbeat.Reason();
  }
  return "";
}

absl::Status MigrationService::RunLive(Job& job, MigrationPeer& peer, const std::string& transfer,
                                      const hv::LiveMigration& m) {
  const std::string& name = job.request.name;
  absl::Status result;
  std::atomic<bool> done{false}, aborted{false};
  auto abort = [&](absl::string_view why) {
    // Only while the job runs: once it completed the guest is there, and aborting is moot.
    if (done || aborted.exchange(true)) return;
    Log()->warn("aborting the live migration of {}: {}", name, why);
    if (auto s = hv_.AbortMigrationJob(name); !s.ok()) Log()->warn("abort the migration of {}: {}", name, s.message());
  };
  std::thread migrate([&] {
    result = hv_.MigrateLive(name, m);
    done = true;
  });
  // A thread of its own: reading the job's progress can stall for seconds (libvirt's query
  // waits on the migration's monitor), and the heartbeat must not wait with it.
  std::string lost;
  std::thread watch([&] {
    lost = WatchPeer(peer, transfer, done, aborted);
    if (!lost.empty()) {
      job.peer_lost = true;
      abort(absl::StrCat("the destination agent ", lost));
    }
  });
  const auto step = std::min(options_.live_poll, std::chrono::milliseconds(50));
  while (!done) {
    if (job.cancel) abort("cancelled");
    if (auto j = hv_.GetMigrationJob(name); j.ok() && j->bytes_total > 0) {
      job.total = j->bytes_total;
      job.done = std::min(j->bytes_done, j->bytes_total);
      Report(job);
    }
    // live_poll in short steps: the job's end or a cancel is seen at once.
    for (auto slept = std::chrono::milliseconds(0); slept < options_.live_poll && !done && (aborted || !job.cancel);
         slept += step) {
      std::this_thread::sleep_for(step);
    }
  }
  migrate.join();
  watch.join();
  if (result.ok()) {
    // Also when the destination was lost but the job completed first: the guest runs there.
    job.done = job.total.load();
    Report(job);
    return result;
  }
  if (aborted && job.cancel) return absl::CancelledError("cancelled");
  if (aborted && !lost.empty()) {
    return absl::UnavailableError(absl::StrCat("the destination agent at ", job.request.destination, " ", lost,
                                               ": the live migration was aborted"));
  }
  return result;
}

absl::Status MigrationService::LiveSteps(Job& job, MigrationPeer& peer, std::string& transfer) {
  if (auto s = Step(job, "prepare"); !s.ok()) return s;
  auto target = peer.PrepareLive(job.plan);
  if (!target.ok()) return target.status();
  transfer = target->transfer;
  if (auto s = CheckLiveTarget(*target, job.plan.volumes.size()); !s.ok()) return s;
  hv::LiveMigration m{.destination_uri = target->libvirt_uri, .migrate_uri = target->migrate_uri,
                      .max_downtime_ms = job.request.max_downtime_ms,
                      .bandwidth_mib_s = job.request.max_bandwidth_mib_s, .tls = options_.live_tls};
  for (size_t i = 0; i < job.plan.volumes.size(); ++i) {
    m.disk_paths[job.plan.spec.disks[job.plan.volumes[i].disk].target] = target->disk_paths[i];
  }
  if (job.cancel) return absl::CancelledError("cancelled");
  if (auto s = Step(job, "migrate-live"); !s.ok()) return s;
  if (auto s = RunLive(job, peer, transfer, m); !s.ok()) return s;
  job.committed = true;  // the guest runs there now: past cancelling
  if (auto s = Step(job, "finish"); !s.ok()) return s;
  if (auto s = peer.Finish(transfer); !s.ok()) return s;
  if (auto s = Step(job, "remove-source"); !s.ok()) return s;
  absl::Status first;
  for (const storage::VolumeInfo& v : job.volumes) {
    absl::Status s = storage_.ReleaseVolume(v.pool, v.name, job.request.name, /*delete_if_owned=*/true);
    if (!s.ok() && !absl::IsNotFound(s) && first.ok()) first = s;
  }
  return first;
}

absl::Status MigrationService::Steps(Job& job, std::string& transfer, bool& shut_down) {
  auto peer = connect_(job.request.destination);
  if (!peer.ok()) return peer.status();
  job.plan.source_host = job.request.destination;  // overwritten by the client with this host's name
  if (job.request.live) return LiveSteps(job, **peer, transfer);
  if (job.was_running) {
    if (auto s = Step(job, "shutdown"); !s.ok()) return s;
    shut_down = true;
    auto r = domains_.Shutdown(job.request.name, job.request.shutdown_timeout);
    if (!r.ok()) return r.status();
  }
  if (auto s = Step(job, "prepare"); !s.ok()) return s;
  job.plan.source_host = job.request.destination;  // overwritten by the client with this host's name
  auto t = (*peer)->Prepare(job.plan);
  if (!t.ok()) return t.status();
  transfer = *t;
  if (auto s = SendVolumes(job, **peer, transfer); !s.ok()) return s;
  if (job.cancel) return absl::CancelledError("cancelled");
  if (auto s = Step(job, "finish"); !s.ok()) return s;
  if (auto s = (*peer)->Finish(transfer); !s.ok()) return s;
  job.committed = true;
  HVAGENT_FAILPOINT("migrate.after_finish");
  if (auto s = Step(job, "remove-source"); !s.ok()) return s;
  return domains_.Delete(job.request.name, /*force=*/true, /*delete_volumes=*/true);
}

std::string MigrationService::Undo(Job& job, MigrationPeer* peer, const std::string& transfer, bool shut_down) {
  std::string notes;
  if (job.request.live && !hv_.GetDomain(job.request.name).ok()) {
    // The hypervisor may have moved the guest although the call failed: never undo there.
    return absl::StrCat("; the domain is no longer here and may run on ", job.request.destination,
                        " (its transfer there is left for an operator)");
  }
  if (peer == nullptr && !transfer.empty()) {
    absl::StrAppend(&notes, "; ", job.request.destination,
                    job.peer_lost ? " was not asked to abort its half, having stopped answering"
                                  : " could not be reached to abort its half",
                    " (its restart or idle expiry removes it)");
  } else if (peer != nullptr && !transfer.empty()) {
    if (auto s = peer->Abort(transfer); !s.ok() && !absl::IsNotFound(s)) {
      absl::StrAppend(&notes, "; the destination's abort failed (its idle expiry or recovery removes the rest): ",
                      s.message());
    }
  }
  if (shut_down) {
    if (auto s = domains_.Start(job.request.name); !s.ok()) {
      absl::StrAppend(&notes, "; starting the guest again failed: ", s.status().message());
    }
  }
  return notes;
}

void MigrationService::Run(std::shared_ptr<Job> job) {
  // Until the job ends: a live move's end undefines the domain here before its volumes go.
  auto hold = domains_.HoldName(job->request.name);
  std::string transfer;
  bool shut_down = false;
  absl::Status s = Steps(*job, transfer, shut_down);
  if (s.ok()) {
    (void)journal_.End(job->id, v1::OPERATION_STATE_SUCCEEDED);
    Log()->info("domain {} moved to {}", job->request.name, job->request.destination);
  } else if (job->committed) {
    // The destination has the domain: the source's removal is what failed.
    (void)journal_.End(job->id, v1::OPERATION_STATE_FAILED,
                       absl::StrCat("the domain runs on ", job->request.destination,
                                    "; removing it here failed: ", s.message()));
  } else {
    // A second connection for the abort (the first may be the one that broke); none is needed
    // when no transfer was opened, nor tried when the heartbeat gave the destination up (a
    // connect to a dead agent would only wait out its timeout).
    absl::StatusOr<std::unique_ptr<MigrationPeer>> peer = absl::UnavailableError("no transfer");
    if (!transfer.empty() && !job->peer_lost) peer = connect_(job->request.destination);
    std::string notes = Undo(*job, peer.ok() ? peer->get() : nullptr, transfer, shut_down);
    const bool cancelled = job->cancel.load();
    (void)journal_.End(job->id, cancelled ? v1::OPERATION_STATE_CANCELLED : v1::OPERATION_STATE_FAILED,
                       absl::StrCat(cancelled ? "cancelled" : s.message(), "; the domain stays here", notes));
    Log()->warn("migration of {} to {} {}: {}{}", job->request.name, job->request.destination,
                cancelled ? "cancelled" : "failed", s.message(), notes);
  }
  job->ended = true;
}

absl::Status MigrationService::Cancel(uint64_t id) {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end() || it->second->ended) {
    return absl::NotFoundError(absl::StrCat("operation_id: no migration ", id, " is running"));
  }
  if (it->second->committed) {
    return absl::FailedPreconditionError(absl::StrCat("operation_id: migration ", id,
                                                      " is past the point of no return (the destination has the domain)"));
  }
  it->second->cancel = true;
  return absl::OkStatus();
}

std::optional<Transfer> MigrationService::TransferOf(uint64_t id) const {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return std::nullopt;
  return Transfer{it->second->done.load(), it->second->total.load()};
}

std::vector<std::string> MigrationService::Recover() {
  std::vector<std::string> done;
  for (const Journal::Operation& op : journal_.Unfinished()) {
    if (op.begin.type() != v1::OPERATION_KIND_MIGRATE_DOMAIN) continue;
    bool shut_down = false, finishing = false, removing = false, live = false;
    for (const auto& step : op.steps) {
      live = live || step.name() == "migrate-live";
      shut_down = shut_down || step.name() == "shutdown";
      finishing = finishing || step.name() == "finish";
      removing = removing || step.name() == "remove-source";
    }
    if (live) {
      done.push_back(RecoverLive(op));
      continue;
    }
    std::string line = absl::StrCat("migration of ", op.begin.domain(), " (operation ", op.id, "): ");
    v1::OperationState state = v1::OPERATION_STATE_ROLLED_BACK;
    if (finishing && !removing) {
      // The destination may have defined (and started) the domain before the crash: starting
      // it here too could run it twice. It stays shut off here for an operator to decide.
      absl::StrAppend(&line, "cut short at finish: the domain is kept here shut off; ", op.begin.peer(),
                      " may hold it as well (check there before starting either)");
      (void)journal_.End(op.id, v1::OPERATION_STATE_FAILED, absl::StrCat("recovery: ", line));
      done.push_back(std::move(line));
      continue;
    }
    if (removing) {
      absl::Status s = domains_.Delete(op.begin.domain(), true, true);
      if (absl::IsNotFound(s)) s = absl::OkStatus();
      absl::StrAppend(&line, s.ok() ? "completed (the source removed)" : absl::StrCat("removal failed: ", s.message()));
      state = s.ok() ? v1::OPERATION_STATE_RECOVERED : v1::OPERATION_STATE_FAILED;
    } else {
      absl::StrAppend(&line, "rolled back (the domain stays here; the destination drops its half)");
      if (shut_down) {
        if (auto s = domains_.Start(op.begin.domain()); !s.ok()) absl::StrAppend(&line, "; start failed: ", s.status().message());
      }
    }
    if (state != v1::OPERATION_STATE_FAILED) (void)journal_.End(op.id, state, absl::StrCat("recovery: ", line));
    done.push_back(std::move(line));
  }
  return done;
}

// A live migration the agent's crash cut short: the hypervisor carried on without it, so what
// counts is where the guest is now. Still here (with this uuid): the move failed or never
// happened; the destination's recovery or idle expiry drops its empty volumes. Gone from here
// after `finish` was reached: it moved, and the volumes it owned here are deleted. Gone before
// that: it may run on the destination, and nothing is deleted until an operator has looked.
std::string MigrationService::RecoverLive(const Journal::Operation& op) {
  const std::string& name = op.begin.domain();
  std::string line = absl::StrCat("live migration of ", name, " (operation ", op.id, "): ");
  bool finishing = false;
  for (const auto& step : op.steps) finishing = finishing || step.name() == "finish";
  auto here = hv_.GetDomain(name);
  if (here.ok() && here->uuid == op.begin.uuid()) {
    absl::StrAppend(&line, "rolled back (the domain still runs here; the destination drops its half)");
    (void)journal_.End(op.id, v1::OPERATION_STATE_ROLLED_BACK, absl::StrCat("recovery: ", line));
    return line;
  }
  if (!finishing) {
    absl::StrAppend(&line, "the domain is no longer here and may run on ", op.begin.peer(),
                    "; its volumes here are kept for an operator");
    (void)journal_.End(op.id, v1::OPERATION_STATE_FAILED, absl::StrCat("recovery: ", line));
    return line;
  }
  absl::Status first;
  auto volumes = storage_.VolumesOf(name);
  if (!volumes.ok()) first = volumes.status();
  for (const storage::VolumeInfo& v : volumes.ok() ? *volumes : std::vector<storage::VolumeInfo>{}) {
    absl::Status s = storage_.ReleaseVolume(v.pool, v.name, name, /*delete_if_owned=*/true);
    if (!s.ok() && first.ok()) first = s;
  }
  absl::StrAppend(&line, first.ok() ? "completed (the guest moved; its volumes here removed)"
                                    : absl::StrCat("the guest moved; removing its volumes here failed: ", first.message()));
  (void)journal_.End(op.id, first.ok() ? v1::OPERATION_STATE_RECOVERED : v1::OPERATION_STATE_FAILED,
                     absl::StrCat("recovery: ", line));
  return line;
}

}  // namespace hvagent::service
