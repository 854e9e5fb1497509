#pragma once
// EventHub: fans domain lifecycle events out to any number of subscribers (gRPC Watch streams).
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

struct SequencedEvent {
  hv::DomainEvent event;
  uint64_t sequence = 0;
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
    Subscription(std::set<std::string> names, size_t capacity) : names_(std::move(names)), capacity_(capacity) {}
    void Push(const SequencedEvent& e);
    void Close();

    void Notify();

    const std::set<std::string> names_;  // empty: every domain
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
  std::shared_ptr<Subscription> Subscribe(std::vector<std::string> domain_names);
  void Publish(const hv::DomainEvent& event);
  // Wakes and ends every subscription (agent shutdown).
  void Close();
  size_t subscriber_count() const;

 private:
  const size_t capacity_;
  mutable std::mutex mu_;
  uint64_t next_sequence_ = 1;
  bool closed_ = false;
  std::vector<std::weak_ptr<Subscription>> subscribers_;
};

}  // namespace hvagent::service
