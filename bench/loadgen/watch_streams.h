#pragma once
// WatchStreams: any number of EventService.Watch streams on one CompletionQueue (the async
// API, so 1000 streams cost the benchmark no threads). A stream counts as subscribed once the
// server's initial metadata arrived, which the agent sends only after it subscribed.

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bench/loadgen/grpc_load.h"
#include "hvagent/v1/event.grpc.pb.h"

namespace hvagent::bench {

// Open Watch streams, each confirmed by the server's initial metadata (sent once subscribed).
class WatchStreams {
 public:
  WatchStreams(const std::vector<std::shared_ptr<grpc::Channel>>& channels, int count,
               std::vector<std::string> names = {}) {
    for (auto& c : channels) stubs_.push_back(v1::EventService::NewStub(c));
    v1::WatchEventsRequest req;
    for (auto& n : names) req.add_domain_names(n);
    for (int i = 0; i < count; ++i) streams_.push_back(std::make_unique<Stream>());
    for (size_t i = 0; i < streams_.size(); ++i) {
      Stream& s = *streams_[i];
      s.ctx.set_wait_for_ready(true);
      s.reader = stubs_[i % stubs_.size()]->PrepareAsyncWatch(&s.ctx, req, &cq_);
      s.reader->StartCall(Tag(i, kStarted));
      s.reader->ReadInitialMetadata(Tag(i, kSubscribed));
    }
  }
  ~WatchStreams() {
    // Cancelled streams complete their pending operations with ok=false; drain them all.
    for (auto& s : streams_) s->ctx.TryCancel();
    cq_.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok)) {
    }
  }

  // Waits until every stream is subscribed; the number that are.
  int AwaitSubscribed(std::chrono::seconds timeout) {
    const auto deadline = std::chrono::system_clock::now() + timeout;
    while (subscribed_ < static_cast<int>(streams_.size())) {
      void* tag = nullptr;
      bool ok = false;
      if (cq_.AsyncNext(&tag, &ok, deadline) != grpc::CompletionQueue::NextStatus::GOT_EVENT) break;
      auto [i, what] = Untag(tag);
      if (what == kSubscribed && ok) {
        streams_[i]->subscribed = true;
        ++subscribed_;
      }
    }
    return subscribed_;
  }

  // For one stream used as a subscriber: reads the next event (blocking, with a deadline).
  bool Read(size_t i, v1::DomainEvent* out, std::chrono::system_clock::time_point deadline) {
    streams_[i]->reader->Read(out, Tag(i, kRead));
    while (true) {
      void* tag = nullptr;
      bool ok = false;
      if (cq_.AsyncNext(&tag, &ok, deadline) != grpc::CompletionQueue::NextStatus::GOT_EVENT) return false;
      auto [k, what] = Untag(tag);
      if (k == i && what == kRead) return ok;
    }
  }

 private:
  enum What : uintptr_t { kStarted = 0, kSubscribed = 1, kRead = 2, kFinished = 3 };
  static void* Tag(size_t i, What w) { return reinterpret_cast<void*>((i << 2) | w); }
  static std::pair<size_t, What> Untag(void* t) {
    auto v = reinterpret_cast<uintptr_t>(t);
    return {v >> 2, static_cast<What>(v & 3)};
  }
  struct Stream {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientAsyncReader<v1::DomainEvent>> reader;
    grpc::Status status;
    bool subscribed = false;
  };
  std::vector<std::unique_ptr<v1::EventService::Stub>> stubs_;
  grpc::CompletionQueue cq_;
  std::vector<std::unique_ptr<Stream>> streams_;
  int subscribed_ = 0;
};

}  // namespace hvagent::bench
