#pragma once
// hvctl's `console` command: attaches this terminal to a guest's console (raw mode; Ctrl-]
// detaches). Returns how the stream ended (OK when detached or the console closed).

#include <string>

#include <grpcpp/client_context.h>

#include "hvagent/v1/console.grpc.pb.h"

namespace hvagent::cli {

grpc::Status AttachConsole(v1::ConsoleService::Stub& stub, grpc::ClientContext& ctx, const std::string& name,
                           bool write, bool take_over);

}  // namespace hvagent::cli
