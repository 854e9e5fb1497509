#pragma once
// hvctl's `drain` command: moves every domain the source agent lists to one destination agent
// (MigrationService.MigrateDomain, at most `parallel` at a time) and prints one line per domain
// as its move ends. Running domains move live with `live` (QEMU/KVM), else cold: shut down
// first, started again over there. A live move the source refuses up front (Xen on Arm has no
// live migration) falls back to cold only with `cold_fallback`. Nothing starts when the
// destination cannot be reached. Only public gRPC calls, like the rest of hvctl.

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/security/credentials.h>

namespace hvagent::cli {

struct DrainArgs {
  std::string destination;  // HOST:PORT of the destination agent
  bool live = false;
  bool cold_fallback = false;
  int parallel = 1;  // 1-16
  uint32_t shutdown_timeout_seconds = 0;
  bool json = false;  // one JSON object per line instead of text
};

// Exit code: 0 every domain moved; 1 some did not (named on stderr); 3 the source or the
// destination could not be reached (nothing was started).
int Drain(const std::shared_ptr<grpc::Channel>& source, const std::shared_ptr<grpc::ChannelCredentials>& creds,
          const DrainArgs& args);

}  // namespace hvagent::cli
