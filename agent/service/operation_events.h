#pragma once
// OperationEvents: puts the agent's operations on the event stream (EventService.Watch,
// DOMAIN_EVENT_TYPE_OPERATION). The journal tells it when an operation begins and ends; the
// services that move bytes (ImageService, MigrationService) tell it how far they are.
//
// Rate: an operation's begin (RUNNING) and its end (whatever the state) are always published,
// at once. Progress in between is published at most once per `interval` per operation (500 ms
// in the agent): a report that comes sooner only updates the figures, which the next published
// event carries; the end event carries the last figures reported. So a copy reporting after
// every 4 MiB block yields a handful of events per second, not thousands, and nothing is
// published after an operation's end event. It never blocks on a subscriber (EventHub queues).

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "agent/service/journal.h"
#include "common/clock.h"

namespace hvagent::service {

// One operation event: the operation as journalled at its begin (no steps), its state now and
// how far it is. For a CREATE_DOMAIN or RESCUE_DOMAIN, copy_* name the disk being copied from an image.
struct OperationEvent {
  Journal::Operation op;
  v1::OperationState state = v1::OPERATION_STATE_RUNNING;
  std::string message;      // ended: why it failed, or what recovery did
  int64_t end_unix_ms = 0;  // ended only
  uint64_t done = 0;
  uint64_t total = 0;
  std::string copy_pool;
  std::string copy_image;
  std::string copy_volume;
};

class OperationEvents final : public JournalObserver {
 public:
  using Publish = std::function<void(const OperationEvent&)>;
  // `publish` runs on the reporting thread, under this object's lock (so events of one operation
  // keep their order); it must not block or call back into this object.
  OperationEvents(const Clock& clock, Publish publish,
                  std::chrono::milliseconds interval = std::chrono::milliseconds(500));

  // JournalObserver.
  void Begun(const Journal::Operation& op) override;
  void Ended(const Journal::Ended& ended) override;

  // Bytes done of total for operation `id` (ignored unless it has begun and not ended).
  void Progress(uint64_t id, uint64_t done, uint64_t total);
  // The same for the running CREATE_DOMAIN or RESCUE_DOMAIN of `domain`, copying image `image`
  // onto its disk `pool`/`volume` (the copy itself does not know the operation's id).
  void DiskCopyProgress(const std::string& domain, const std::string& pool, const std::string& image,
                        const std::string& volume, uint64_t done, uint64_t total);

 private:
  struct Tracked {
    OperationEvent last;
    Clock::TimePoint published{};
  };
  // Publishes `t` if the interval has passed since its last event; under mu_.
  void MaybePublishLocked(Tracked& t);

  const Clock& clock_;
  const Publish publish_;
  const std::chrono::milliseconds interval_;
  std::mutex mu_;
  std::map<uint64_t, Tracked> running_;
};

}  // namespace hvagent::service
