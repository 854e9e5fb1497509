#pragma once
// EventHub: fans domain lifecycle events, and the agent's operation events (OperationEvents),
// out to any number of subscribers (gRPC Watch streams); operation events only to subscribers
// that ask for them.
// Publish never blocks: each subscriber has a bounded queue; when a slow subscriber's queue is
// full its oldest event is dropped and the drop is counted, so one stuck client cannot stall
// the hypervisor's event thread or the other clients.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "hypervisor/model.h"

namespace hvagent::service {

struct OperationEvent;  // operation_events.h

struct SequencedEvent {
  hv::DomainEvent event;  // a domain event; for an operation event only `time` and `domain_name`
  uint64_t sequence = 0;
  std::shared_ptr<const OperationEvent> operation;  // set: an operation event
};

// What a subscriber wants besides domain events of its named domains.
struct OperationFilter {
  enum class Mode { kNone, kAlso, kOnly };  // operation events: none, with domain events, alone
  Mode mode = Mode::kNone;
  uint64_t operation_id = 0;  // not 0: only this operation's
};

class EventHub {
 public:
  class Subscription {
   public:
    // The next event, or nullopt after `timeout` or once the hub is closed.
    std::optional<SequencedEvent> Next(std::chrono::milliseconds timeout);
    // The next event if one is queued; never waits.
    std::optional<SequencedEvent> TryNext();
    uint64_t dropped() const;
    bool closed() const;

    // For consumers that are told rather than wait (the callback-API Watch stream, which holds
    // no thread): `listener` runs after each event queued and once when the subscription
    // closes, on the publishing thread, outside the queue's lock; it must not block. Once
    // SetListener() returns, the previous listener is not running and will not run again, so
    // its owner may then be destroyed.
    void SetListener(std::function<void()> listener);

   private:
    friend class EventHub;
    Subscription(std::set<std::string> names, OperationFilter ops, size_t capacity)
        : names_(std::move(names)), ops_(ops), capacity_(capacity) {}
    bool Wants(const SequencedEvent& e) const;
    void Push(const SequencedEvent& e);
    void Close();

    void Notify();

    const std::set<std::string> names_;  // empty: every domain
    const OperationFilter ops_;
    const size_t capacity_;
    std::mutex listener_mu_;  // held while the listener runs: SetListener() waits for it
    std::function<void()> listener_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<SequencedEvent> queue_;
    uint64_t dropped_ = 0;
    bool closed_ = false;
  };

  explicit EventHub(size_t queue_capacity = 1024) : capacity_(queue_capacity == 0 ? 1 : queue_capacity) {}

  // Subscribes to events of the named domains (all domains when empty). Unsubscribes when the
  // returned pointer is released.
  std::shared_ptr<Subscription> Subscribe(std::vector<std::string> domain_names, OperationFilter operations = {});
  void Publish(const hv::DomainEvent& event);
  // An operation event, in the same sequence as domain events.
  void Publish(const OperationEvent& event);
  // Wakes and ends every subscription (agent shutdown).
  void Close();
  size_t subscriber_count() const;

 private:
  void Deliver(SequencedEvent e);

  const size_t capacity_;
  mutable std::mutex mu_;
  uint64_t next_sequence_ = 1;
  bool closed_ = false;
  std::vector<std::weak_ptr<Subscription>> subscribers_;
};

}  // namespace hvagent::service
