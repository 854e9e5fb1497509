#pragma once
// ConsoleService over gRPC: a bidirectional stream per attached caller, served with gRPC's
// callback API (no thread per stream). The stream is a thin transport over
// service::ConsoleSessions: it admits the caller like every stream (operations/pipeline.h),
// attaches on the first message, forwards keystrokes, and writes out what the attachment
// buffers, at most one write in flight.

#include "agent/api/operations/pipeline.h"
#include "common/worker_pool.h"
#include "hvagent/v1/console.grpc.pb.h"

namespace hvagent::api {

class ConsoleGrpcService final : public v1::ConsoleService::CallbackService {
 public:
  ConsoleGrpcService(const ops::Pipeline& pipeline, WorkerPool& workers) : pipeline_(pipeline), workers_(workers) {}
  grpc::ServerBidiReactor<v1::ConsoleInput, v1::ConsoleOutput>* Attach(grpc::CallbackServerContext* ctx) override;
  // The unary calls run on the agent's worker pool (grpc_services.h says why): a VNC ticket
  // changes the live guest through libvirt, and a console log is read from disk.
  grpc::ServerUnaryReactor* IssueConsoleTicket(grpc::CallbackServerContext* ctx, const v1::IssueConsoleTicketRequest* req,
                                               v1::ConsoleTicket* out) override;
  grpc::ServerUnaryReactor* GetConsoleLog(grpc::CallbackServerContext* ctx, const v1::GetConsoleLogRequest* req,
                                          v1::ConsoleLog* out) override;

 private:
  ops::Pipeline pipeline_;
  WorkerPool& workers_;
};

}  // namespace hvagent::api
