#include "hypervisor/domain_view.h"

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "hypervisor/domain_spec_validator.h"

namespace hvagent::hv {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("domain_view");
  return logger;
}

// Events after which what libvirt says about the domain may differ from what the view holds.
bool ChangesDomain(DomainEventType t) {
  switch (t) {
    case DomainEventType::kDefined:
    case DomainEventType::kUndefined:
    case DomainEventType::kStarted:
    case DomainEventType::kSuspended:
    case DomainEventType::kResumed:
    case DomainEventType::kStopped:
    case DomainEventType::kShutdown:
    case DomainEventType::kPmSuspended:
    case DomainEventType::kCrashed:
    case DomainEventType::kDeviceAdded:    // a hot-plugged NIC, or one the guest let go
    case DomainEventType::kDeviceRemoved:
    case DomainEventType::kUnknown:  // an event libvirt added after us: re-reading is cheap
      return true;
    case DomainEventType::kEventChannelsHigh:
    case DomainEventType::kEventChannelsCleared:
    case DomainEventType::kResync:  // handled by a rebuild
    case DomainEventType::kState:   // the inner's post-reconnect report; the rebuild read the same
      return false;
  }
  return true;
}

// The states in which LibvirtHypervisor reports an uptime.
bool HasUptime(DomainState s) {
  return s == DomainState::kRunning || s == DomainState::kPaused || s == DomainState::kBlocked;
}

}  // namespace

DomainView::DomainView(Hypervisor& inner, Options options) : inner_(inner), options_(options) {
  relay_->view = this;
  inner_.SetEventSink([relay = relay_](const DomainEvent& e) {
    std::lock_guard lock(relay->mu);
    if (relay->view != nullptr) relay->view->OnEvent(e);
  });
  worker_ = std::thread([this] { WorkerLoop(); });
}

DomainView::~DomainView() {
  inner_.SetEventSink(nullptr);
  {
    std::lock_guard lock(relay_->mu);
    relay_->view = nullptr;
  }
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  rebuilt_cv_.notify_all();
  worker_.join();
}

void DomainView::SetEventSink(EventSink sink) {
  std::lock_guard lock(sink_mu_);
  sink_ = std::move(sink);
}

bool DomainView::Connected() const {
  std::lock_guard lock(mu_);
  return CurrentLocked();
}

uint64_t DomainView::rebuilds() const {
  std::lock_guard lock(mu_);
  return rebuilds_;
}

uint64_t DomainView::refreshes() const {
  std::lock_guard lock(mu_);
  return refreshes_;
}

bool DomainView::CurrentLocked() const {
  return valid_ && inner_.Connected() && inner_.ConnectionGeneration() == built_generation_;
}

absl::Status DomainView::AwaitCurrent(std::unique_lock<std::mutex>& lock) {
  const auto deadline = std::chrono::steady_clock::now() + options_.rebuild_wait;
  while (!CurrentLocked()) {
    if (!inner_.Connected()) {
      return absl::UnavailableError(
          "hypervisor connection is down; domains are answered again once it is re-established");
    }
    // A reconnect whose kResync has not reached the view yet: what it holds may be stale.
    if (valid_ && inner_.ConnectionGeneration() != built_generation_) {
      valid_ = false;
      rebuild_requested_ = true;
      work_cv_.notify_one();
    }
    if (stopping_ || std::chrono::steady_clock::now() >= deadline) {
      return absl::UnavailableError(
          "the view of the host's domains is being rebuilt after a hypervisor reconnect; try again");
    }
    // Short slices: a connection that drops meanwhile is answered at once, not at the deadline.
    rebuilt_cv_.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() + std::chrono::milliseconds(50)));
  }
  return absl::OkStatus();
}

DomainInfo DomainView::Render(const Entry& e, std::chrono::steady_clock::time_point now) const {
  DomainInfo info = e.info;
  info.uptime.reset();
  if (HasUptime(info.state) && e.started) {
    info.uptime = std::chrono::duration_cast<std::chrono::seconds>(now - *e.started);
  }
  return info;
}

absl::StatusOr<std::vector<DomainInfo>> DomainView::ListDomains() {
  std::unique_lock lock(mu_);
  if (auto s = AwaitCurrent(lock); !s.ok()) return s;
  const auto now = std::chrono::steady_clock::now();
  std::vector<DomainInfo> out;
  out.reserve(domains_.size());
  for (const auto& [name, e] : domains_) {
    if (!e.gone) out.push_back(Render(e, now));
  }
  return out;
}

absl::StatusOr<DomainInfo> DomainView::GetDomain(const std::string& name) {
  if (auto s = ValidateDomainName("name", name); !s.ok()) return s;
  std::unique_lock lock(mu_);
  if (auto s = AwaitCurrent(lock); !s.ok()) return s;
  auto it = domains_.find(name);
  if (it == domains_.end() || it->second.gone) {
    return absl::NotFoundError(absl::StrCat("domain '", name, "' not found"));
  }
  return Render(it->second, std::chrono::steady_clock::now());
}

absl::StatusOr<DomainInfo> DomainView::GetDomainByUuid(const std::string& uuid) {
  {
    std::unique_lock lock(mu_);
    if (auto s = AwaitCurrent(lock); !s.ok()) return s;
    for (const auto& [name, e] : domains_) {
      if (!e.gone && e.info.uuid == uuid) return Render(e, std::chrono::steady_clock::now());
    }
  }
  // A miss goes to the hypervisor: it is rare, and keeps its answer for a malformed uuid.
  return inner_.GetDomainByUuid(uuid);
}

void DomainView::Refresh(const std::string& name) {
  uint64_t stamp;
  {
    std::lock_guard lock(mu_);
    stamp = ++seq_;
    ++refreshes_;
  }
  auto info = inner_.GetDomain(name);
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mu_);
  if (!info.ok() && !absl::IsNotFound(info.status())) {
    // Unavailable: the generation check answers for it. A bad name: nothing to hold. Anything
    // else leaves the view unsure of this domain, so it is rebuilt rather than trusted.
    if (!absl::IsUnavailable(info.status()) && !absl::IsInvalidArgument(info.status())) {
      Log()->warn("re-reading domain {} failed ({}); rebuilding the view", name, info.status().message());
      valid_ = false;
      rebuild_requested_ = true;
      work_cv_.notify_one();
    }
    return;
  }
  Entry& e = domains_[name];
  if (e.stamp > stamp) return;  // a read that began later already stored its answer
  e.stamp = stamp;
  if (!info.ok()) {
    e.gone = true;
    e.started.reset();
    return;
  }
  e.gone = false;
  const bool was_up = HasUptime(e.info.state) && e.info.uuid == info->uuid;
  if (info->uptime) {
    // The inner hypervisor's own start time wins: it saw the STARTED event first.
    e.started = now - *info->uptime;
  } else if (!HasUptime(info->state) || !was_up) {
    e.started.reset();
  }
  e.info = std::move(*info);
}

absl::Status DomainView::AfterWrite(const std::string& name, absl::Status s) {
  // Also after a failure: a start that failed half-way may still have changed the domain.
  if (ValidateDomainName("name", name).ok()) Refresh(name);
  return s;
}

absl::Status DomainView::DefineDomain(const DomainSpec& spec) {
  return AfterWrite(spec.name, inner_.DefineDomain(spec));
}
absl::Status DomainView::RedefineDomain(const DomainSpec& spec) {
  return AfterWrite(spec.name, inner_.RedefineDomain(spec));
}
absl::Status DomainView::UndefineDomain(const std::string& name) {
  return AfterWrite(name, inner_.UndefineDomain(name));
}
absl::Status DomainView::StartDomain(const std::string& name) { return AfterWrite(name, inner_.StartDomain(name)); }
absl::Status DomainView::RequestShutdown(const std::string& name) {
  return AfterWrite(name, inner_.RequestShutdown(name));
}
absl::Status DomainView::DestroyDomain(const std::string& name) {
  return AfterWrite(name, inner_.DestroyDomain(name));
}
absl::Status DomainView::RebootDomain(const std::string& name) { return AfterWrite(name, inner_.RebootDomain(name)); }
absl::Status DomainView::SuspendDomain(const std::string& name) {
  return AfterWrite(name, inner_.SuspendDomain(name));
}
absl::Status DomainView::ResumeDomain(const std::string& name) { return AfterWrite(name, inner_.ResumeDomain(name)); }
absl::Status DomainView::ManagedSaveDomain(const std::string& name) {
  return AfterWrite(name, inner_.ManagedSaveDomain(name));
}
absl::Status DomainView::RestoreDomainDefinition(const std::string& name, const std::string& definition) {
  return AfterWrite(name, inner_.RestoreDomainDefinition(name, definition));
}
absl::Status DomainView::AttachNic(const std::string& name, const NicSpec& nic) {
  return AfterWrite(name, inner_.AttachNic(name, nic));
}
absl::Status DomainView::DetachNic(const std::string& name, const std::string& mac) {
  return AfterWrite(name, inner_.DetachNic(name, mac));
}
absl::Status DomainView::SetDomainResources(const std::string& name, const ResourceChange& change) {
  return AfterWrite(name, inner_.SetDomainResources(name, change));
}

bool DomainView::Rebuild() {
  const uint64_t generation = inner_.ConnectionGeneration();
  uint64_t stamp;
  {
    std::lock_guard lock(mu_);
    stamp = ++seq_;
  }
  if (!inner_.Connected()) return false;
  auto list = inner_.ListDomains();
  if (!list.ok()) {
    Log()->warn("cannot list domains to rebuild the view: {}", list.status().message());
    return false;
  }
  if (inner_.ConnectionGeneration() != generation) return false;  // another reconnect meanwhile
  const auto now = std::chrono::steady_clock::now();
  std::map<std::string, Entry> fresh;
  for (DomainInfo& d : *list) {
    Entry e;
    if (d.uptime) e.started = now - *d.uptime;
    e.stamp = stamp;
    std::string name = d.name;
    e.info = std::move(d);
    fresh[name] = std::move(e);
  }
  std::lock_guard lock(mu_);
  // Writes that re-read a domain while the listing ran hold newer answers than it.
  for (auto& [name, e] : domains_) {
    if (e.stamp > stamp) fresh[name] = std::move(e);
  }
  domains_ = std::move(fresh);
  valid_ = true;
  built_generation_ = generation;
  ++rebuilds_;
  Log()->info("domain view built from {} domains (connection {})", list->size(), generation);
  rebuilt_cv_.notify_all();
  return true;
}

// Called on the hypervisor's event thread: only queues, never calls the hypervisor.
void DomainView::OnEvent(const DomainEvent& e) {
  {
    std::lock_guard lock(mu_);
    if (e.type == DomainEventType::kResync) {
      valid_ = false;
      rebuild_requested_ = true;
    }
    pending_.push_back(e);
  }
  work_cv_.notify_one();
}

void DomainView::WorkerLoop() {
  std::unique_lock lock(mu_);
  while (true) {
    work_cv_.wait(lock, [this] { return stopping_ || rebuild_requested_ || !pending_.empty(); });
    if (stopping_) return;
    std::deque<DomainEvent> batch;
    batch.swap(pending_);
    const bool rebuild = std::exchange(rebuild_requested_, false);
    lock.unlock();

    bool rebuilt = false;
    if (rebuild) {
      rebuilt = Rebuild();
      // On a live connection the listing is tried again; on a dead one the reconnect's kResync
      // (or a reader noticing the new generation) asks for it.
      if (!rebuilt && inner_.Connected()) {
        lock.lock();
        work_cv_.wait_for(lock, options_.retry_delay, [this] { return stopping_; });
        rebuild_requested_ = true;
        lock.unlock();
      }
    }
    // A rebuild that succeeded listed every domain after these events happened.
    if (!rebuilt) {
      std::set<std::string> names;
      for (const DomainEvent& e : batch) {
        if (!e.domain_name.empty() && ChangesDomain(e.type)) names.insert(e.domain_name);
      }
      for (const std::string& name : names) Refresh(name);
    }
    // Passed on only now, so a subscriber that reads on an event sees its effect.
    EventSink sink;
    {
      std::lock_guard sl(sink_mu_);
      sink = sink_;
    }
    if (sink) {
      for (const DomainEvent& e : batch) sink(e);
    }
    lock.lock();
  }
}

}  // namespace hvagent::hv
