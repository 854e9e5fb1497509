// hvctl: a small gRPC client for operators and for the README's example call. It talks to
// hvagentd only through the public API, like any third-party client.
//   hvctl [--server HOST:PORT] [--ca FILE --cert FILE --key FILE] host | capacity | list |
//         get NAME | start NAME | destroy NAME | delete NAME [--force] | watch [NAME...]
// Without --ca it speaks plain text (an agent in --plaintext-loopback development mode).

#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/create_channel.h>

#include "hvagent/v1/domain.grpc.pb.h"
#include "hvagent/v1/event.grpc.pb.h"
#include "hvagent/v1/host.grpc.pb.h"

namespace {

using namespace hvagent;

int Usage() {
  std::cerr << "usage: hvctl [--server HOST:PORT] [--ca FILE --cert FILE --key FILE] COMMAND\n"
               "commands: host | capacity | list | get NAME | start NAME | destroy NAME |\n"
               "          delete NAME [--force] | watch [NAME...]\n"
               "default server: 127.0.0.1:50051\n";
  return 2;
}

int Print(const grpc::Status& s, const google::protobuf::Message& m) {
  if (!s.ok()) {
    std::cerr << "hvctl: " << s.error_code() << " " << s.error_message() << "\n";
    return 1;
  }
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  std::cout << out;
  return 0;
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::map<std::string, std::string> opts = {{"--server", "127.0.0.1:50051"}};
  while (args.size() >= 2 && (args[0] == "--server" || args[0] == "--ca" || args[0] == "--cert" || args[0] == "--key")) {
    opts[args[0]] = args[1];
    args.erase(args.begin(), args.begin() + 2);
  }
  if (args.empty()) return Usage();
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (opts.contains("--ca")) {
    grpc::SslCredentialsOptions ssl;
    for (const auto& [flag, field] : {std::pair<std::string, std::string*>{"--ca", &ssl.pem_root_certs},
                                      {"--cert", &ssl.pem_cert_chain}, {"--key", &ssl.pem_private_key}}) {
      if (opts.contains(flag) && !ReadFile(opts[flag], field)) {
        std::cerr << "hvctl: " << flag << ": cannot read " << opts[flag] << "\n";
        return 2;
      }
    }
    creds = grpc::SslCredentials(ssl);
  }
  const std::string server = opts["--server"];
  auto channel = grpc::CreateChannel(server, creds);
  auto host = v1::HostService::NewStub(channel);
  auto domains = v1::DomainService::NewStub(channel);
  grpc::ClientContext ctx;
  const std::string& cmd = args[0];
  const std::string name = args.size() > 1 ? args[1] : "";

  if (cmd == "host") {
    v1::Host h;
    return Print(host->GetHost(&ctx, {}, &h), h);
  }
  if (cmd == "capacity") {
    v1::Capacity c;
    return Print(host->GetCapacity(&ctx, {}, &c), c);
  }
  if (cmd == "list") {
    v1::ListDomainsResponse r;
    return Print(domains->ListDomains(&ctx, {}, &r), r);
  }
  if (cmd == "get" && !name.empty()) {
    v1::GetDomainRequest req;
    req.set_name(name);
    v1::Domain d;
    return Print(domains->GetDomain(&ctx, req, &d), d);
  }
  if ((cmd == "start" || cmd == "destroy") && !name.empty()) {
    v1::DomainRef ref;
    ref.set_name(name);
    v1::Domain d;
    auto s = cmd == "start" ? domains->StartDomain(&ctx, ref, &d) : domains->DestroyDomain(&ctx, ref, &d);
    return Print(s, d);
  }
  if (cmd == "delete" && !name.empty()) {
    v1::DeleteDomainRequest req;
    req.set_name(name);
    req.set_force(args.size() > 2 && args[2] == "--force");
    v1::DeleteDomainResponse r;
    return Print(domains->DeleteDomain(&ctx, req, &r), r);
  }
  if (cmd == "watch") {
    auto events = v1::EventService::NewStub(channel);
    v1::WatchEventsRequest req;
    for (size_t i = 1; i < args.size(); ++i) req.add_domain_names(args[i]);
    auto reader = events->Watch(&ctx, req);
    v1::DomainEvent e;
    while (reader->Read(&e)) {
      std::string line;
      (void)google::protobuf::util::MessageToJsonString(e, &line);
      std::cout << line << std::endl;
    }
    return Print(reader->Finish(), e);
  }
  return Usage();
}
