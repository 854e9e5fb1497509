#pragma once
// The writing half of a server stream, shared by EventService.Watch and ConsoleService.Attach:
// at most one write in flight, and a Finish that waits for it (gRPC must not be told to finish
// under an outstanding write). The stream says what to send next (Next); Pump() sends it, and
// is called again when a write completes and by whatever wakes the stream (a listener).
// gRPC calls (StartWrite, Finish) are made outside mu_; Next runs under it.

#include <mutex>
#include <optional>

#include <grpcpp/grpcpp.h>

namespace hvagent::api {

template <typename Reactor, typename Out>
class OneWriteAtATime : public Reactor {
 public:
  void OnWriteDone(bool ok) override {
    std::optional<grpc::Status> finish;
    {
      std::lock_guard lock(mu_);
      writing_ = false;
      if (!ok && !finish_pending_) finish_pending_ = grpc::Status::OK;  // the client went away
      if (finish_pending_ && !finished_) {
        finished_ = true;
        finish = std::move(*finish_pending_);
      }
    }
    if (finish) {
      this->Finish(std::move(*finish));
    } else {
      Pump();
    }
  }

 protected:
  enum class Step { kWrite, kFinish, kWait };
  // Under mu_: fills `out` and answers kWrite, or sets `finish` and answers kFinish (the stream
  // is over), or answers kWait (nothing to send now).
  virtual Step Next(Out& out, grpc::Status& finish) = 0;

  void Pump() {
    std::optional<grpc::Status> finish;
    {
      std::lock_guard lock(mu_);
      if (writing_ || finished_) return;
      grpc::Status status;
      switch (Next(current_, status)) {
        case Step::kWrite: writing_ = true; break;
        case Step::kFinish:
          finished_ = true;
          finish = std::move(status);
          break;
        case Step::kWait: return;
      }
    }
    if (finish) {
      this->Finish(std::move(*finish));
    } else {
      this->StartWrite(&current_);
    }
  }

  // Finish now, or after the write in flight.
  void FinishWhenIdle(grpc::Status s) {
    {
      std::lock_guard lock(mu_);
      if (finished_) return;
      if (writing_) {
        if (!finish_pending_) finish_pending_ = std::move(s);
        return;
      }
      finished_ = true;
    }
    this->Finish(std::move(s));
  }

 private:
  std::mutex mu_;
  bool writing_ = false;
  bool finished_ = false;
  std::optional<grpc::Status> finish_pending_;
  Out current_;  // the write in flight
};

}  // namespace hvagent::api
