#pragma once
// gRPC load on the asynchronous API: calls go out through a CompletionQueue and one thread
// drains it, so the client stays cheap next to the server it measures (both share the cores).
// A unary call is described by a function that prepares it on a stub (PrepareAsyncXxx).

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/completion_queue.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/support/async_unary_call.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench/loadgen/http_client.h"

namespace hvagent::bench {

// `count` channels to `address`, each with its own TCP connection (gRPC would otherwise share
// one subchannel between identical channels).
std::vector<std::shared_ptr<grpc::Channel>> MakeChannels(const std::string& address, int count);

template <typename Response>
using PrepareFn = std::function<std::unique_ptr<grpc::ClientAsyncResponseReader<Response>>(
    grpc::ClientContext*, grpc::CompletionQueue*, size_t channel)>;

// One call on `cq` and wait for it: the async API used synchronously (the overhead scenario).
template <typename Response>
grpc::Status AsyncUnary(grpc::CompletionQueue& cq, const PrepareFn<Response>& prepare, Response* out) {
  grpc::ClientContext ctx;
  grpc::Status status;
  auto reader = prepare(&ctx, &cq, 0);
  reader->StartCall();
  reader->Finish(out, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  if (!cq.Next(&tag, &ok) || !ok) return grpc::Status(grpc::StatusCode::INTERNAL, "completion queue failed");
  return status;
}

// Closed loop: `concurrency` calls outstanding at all times, spread over the channels, for
// `duration`; each completion starts the next call on the same slot.
template <typename Response>
LoadResult RunGrpcLoad(size_t channels, int concurrency, std::chrono::milliseconds duration,
                       const PrepareFn<Response>& prepare) {
  using Clock = std::chrono::steady_clock;
  struct Slot {
    std::unique_ptr<grpc::ClientContext> ctx;
    Response response;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<Response>> reader;
    Clock::time_point sent;
  };
  LoadResult result;
  grpc::CompletionQueue cq;
  std::vector<Slot> slots(static_cast<size_t>(concurrency));
  auto start_call = [&](size_t i) {
    Slot& s = slots[i];
    s.ctx = std::make_unique<grpc::ClientContext>();
    s.ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    s.response.Clear();
    s.sent = Clock::now();
    s.reader = prepare(s.ctx.get(), &cq, i % channels);
    s.reader->StartCall();
    s.reader->Finish(&s.response, &s.status, reinterpret_cast<void*>(i));
  };
  const auto start = Clock::now();
  const auto end = start + duration;
  for (size_t i = 0; i < slots.size(); ++i) start_call(i);
  size_t active = slots.size();
  void* tag = nullptr;
  bool ok = false;
  while (active > 0 && cq.Next(&tag, &ok)) {
    size_t i = reinterpret_cast<size_t>(tag);
    Slot& s = slots[i];
    if (ok && s.status.ok()) {
      ++result.ok;
      result.latencies.Add(Clock::now() - s.sent);
    } else {
      ++result.errors;
    }
    if (Clock::now() < end) {
      start_call(i);
    } else {
      --active;
    }
  }
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return result;
}

}  // namespace hvagent::bench
