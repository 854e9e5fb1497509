#include "agent/service/event_hub.h"

#include <algorithm>

#include "agent/service/operation_events.h"

namespace hvagent::service {

std::optional<SequencedEvent> EventHub::Subscription::Next(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [this] { return closed_ || !queue_.empty(); });
  if (queue_.empty()) return std::nullopt;
  SequencedEvent e = std::move(queue_.front());
  queue_.pop_front();
  return e;
}

std::optional<SequencedEvent> EventHub::Subscription::TryNext() {
  std::lock_guard lock(mu_);
  if (queue_.empty()) return std::nullopt;
  SequencedEvent e = std::move(queue_.front());
  queue_.pop_front();
  return e;
}

void EventHub::Subscription::SetListener(std::function<void()> listener) {
  std::lock_guard lock(listener_mu_);
  listener_ = std::move(listener);
}

void EventHub::Subscription::Notify() {
  std::lock_guard lock(listener_mu_);
  if (listener_) listener_();
}

uint64_t EventHub::Subscription::dropped() const {
  std::lock_guard lock(mu_);
  return dropped_;
}

bool EventHub::Subscription::closed() const {
  std::lock_guard lock(mu_);
  return closed_;
}

bool EventHub::Subscription::Wants(const SequencedEvent& e) const {
  if (e.operation != nullptr) {
    return ops_.mode != OperationFilter::Mode::kNone &&
           (ops_.operation_id == 0 || ops_.operation_id == e.operation->op.id);
  }
  if (ops_.mode == OperationFilter::Mode::kOnly) return false;
  // The resync marker concerns every stream of domain events (it names no domain).
  return names_.empty() || e.event.type == hv::DomainEventType::kResync || names_.contains(e.event.domain_name);
}

void EventHub::Subscription::Push(const SequencedEvent& e) {
  if (!Wants(e)) return;
  {
    std::lock_guard lock(mu_);
    if (queue_.size() >= capacity_) {
      queue_.pop_front();
      ++dropped_;
    }
    queue_.push_back(e);
  }
  cv_.notify_one();
  Notify();
}

void EventHub::Subscription::Close() {
  {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
  Notify();
}

std::shared_ptr<EventHub::Subscription> EventHub::Subscribe(std::vector<std::string> domain_names,
                                                           OperationFilter operations) {
  std::shared_ptr<Subscription> sub(
      new Subscription(std::set<std::string>(domain_names.begin(), domain_names.end()), operations, capacity_));
  std::lock_guard lock(mu_);
  if (closed_) sub->Close();
  subscribers_.push_back(sub);
  return sub;
}

void EventHub::Publish(const hv::DomainEvent& event) { Deliver(SequencedEvent{event, 0, nullptr}); }

void EventHub::Publish(const OperationEvent& event) {
  SequencedEvent e;
  e.event.time = std::chrono::system_clock::now();
  e.event.domain_name = event.op.begin.domain();
  e.operation = std::make_shared<const OperationEvent>(event);
  Deliver(std::move(e));
}

void EventHub::Deliver(SequencedEvent e) {
  std::vector<std::shared_ptr<Subscription>> live;
  {
    std::lock_guard lock(mu_);
    if (closed_) return;
    e.sequence = next_sequence_++;
    std::erase_if(subscribers_, [](const auto& w) { return w.expired(); });
    for (const auto& w : subscribers_) {
      if (auto s = w.lock()) live.push_back(std::move(s));
    }
  }
  for (const auto& s : live) s->Push(e);
}

void EventHub::Close() {
  std::vector<std::shared_ptr<Subscription>> live;
  {
    std::lock_guard lock(mu_);
    closed_ = true;
    for (const auto& w : subscribers_) {
      if (auto s = w.lock()) live.push_back(std::move(s));
    }
  }
  for (const auto& s : live) s->Close();
}

size_t EventHub::subscriber_count() const {
  std::lock_guard lock(mu_);
  return std::count_if(subscribers_.begin(), subscribers_.end(), [](const auto& w) { return !w.expired(); });
}

}  // namespace hvagent::service
