#include "bench/loadgen/grpc_load.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

namespace hvagent::bench {

std::vector<std::shared_ptr<grpc::Channel>> MakeChannels(const std::string& address, int count) {
  std::vector<std::shared_ptr<grpc::Channel>> out;
  for (int i = 0; i < count; ++i) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt("hvagent.bench.channel", i);  // distinct arguments: never one shared connection
    out.push_back(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  }
  for (auto& c : out) c->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return out;
}

}  // namespace hvagent::bench
