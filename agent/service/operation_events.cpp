#include "agent/service/operation_events.h"

namespace hvagent::service {

OperationEvents::OperationEvents(const Clock& clock, Publish publish, std::chrono::milliseconds interval)
    : clock_(clock), publish_(std::move(publish)), interval_(interval) {}

void OperationEvents::Begun(const Journal::Operation& op) {
  std::lock_guard lock(mu_);
  Tracked& t = running_[op.id];
  t.last.op = op;
  t.last.op.steps.clear();
  t.last.state = v1::OPERATION_STATE_RUNNING;
  t.published = clock_.Now();
  publish_(t.last);
}

void OperationEvents::Ended(const Journal::Ended& ended) {
  std::lock_guard lock(mu_);
  OperationEvent e;
  if (auto it = running_.find(ended.op.id); it != running_.end()) {
    e = std::move(it->second.last);
    running_.erase(it);
  }
  // An operation begun before this agent started (recovery ends it) was never tracked.
  e.op = ended.op;
  e.op.steps.clear();
  e.state = ended.state;
  e.message = ended.message;
  e.end_unix_ms = ended.end_unix_ms;
  publish_(e);
}

void OperationEvents::Progress(uint64_t id, uint64_t done, uint64_t total) {
  std::lock_guard lock(mu_);
  auto it = running_.find(id);
  if (it == running_.end()) return;
  it->second.last.done = done;
  it->second.last.total = total;
  MaybePublishLocked(it->second);
}

void OperationEvents::DiskCopyProgress(const std::string& domain, const std::string& pool, const std::string& image,
                                       const std::string& volume, uint64_t done, uint64_t total) {
  std::lock_guard lock(mu_);
  // One create or rescue of a name at a time (DomainService), so at most one matches.
  for (auto& [id, t] : running_) {
    const auto& begin = t.last.op.begin;
    const bool makes_disks =
        begin.type() == v1::OPERATION_KIND_CREATE_DOMAIN || begin.type() == v1::OPERATION_KIND_RESCUE_DOMAIN;
    if (!makes_disks || begin.domain() != domain) continue;
    t.last.done = done;
    t.last.total = total;
    t.last.copy_pool = pool;
    t.last.copy_image = image;
    t.last.copy_volume = volume;
    MaybePublishLocked(t);
    return;
  }
}

void OperationEvents::MaybePublishLocked(Tracked& t) {
  const auto now = clock_.Now();
  if (now - t.published < interval_) return;
  t.published = now;
  publish_(t.last);
}

}  // namespace hvagent::service
