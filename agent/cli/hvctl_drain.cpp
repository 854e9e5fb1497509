#include "agent/cli/hvctl_drain.h"

#include <chrono>
#include <deque>
#include <iostream>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>

#include "hvagent/v1/domain.grpc.pb.h"
#include "hvagent/v1/migration.grpc.pb.h"
#include "hvagent/v1/operation.grpc.pb.h"

namespace hvagent::cli {
namespace {

constexpr int kOk = 0, kRefused = 1, kUnreachable = 3;
using Clock = std::chrono::steady_clock;

struct Move {
  std::string name;
  bool running = false;
  bool live = false;  // how it was asked to move
  uint64_t op = 0;
  Clock::time_point started;
};

void Deadline(grpc::ClientContext& ctx, int seconds) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

bool Unreachable(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE || s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

bool Running(v1::DomainState s) {
  return s != v1::DOMAIN_STATE_SHUTOFF && s != v1::DOMAIN_STATE_CRASHED && s != v1::DOMAIN_STATE_UNSPECIFIED;
}

class Drainer {
 public:
  Drainer(const std::shared_ptr<grpc::Channel>& source, const DrainArgs& args)
      : migrations_(v1::MigrationService::NewStub(source)),
        operations_(v1::OperationService::NewStub(source)),
        args_(args) {}

  int Run(std::deque<Move> queue) {
    std::vector<Move> moving;
    while (!queue.empty() || !moving.empty()) {
      while (!queue.empty() && static_cast<int>(moving.size()) < args_.parallel) {
        Move m = std::move(queue.front());
        queue.pop_front();
        if (Start(m)) moving.push_back(std::move(m));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      for (auto it = moving.begin(); it != moving.end();) {
        it = Poll(*it) ? moving.erase(it) : it + 1;
      }
    }
    if (not_moved_.empty()) return kOk;
    std::cerr << "hvctl: not moved:";
    for (const std::string& n : not_moved_) std::cerr << " " << n;
    std::cerr << "\n";
    return kRefused;
  }

 private:
  grpc::Status Ask(Move& m, bool live) {
    v1::MigrateDomainRequest req;
    req.set_name(m.name);
    req.set_destination(args_.destination);
    req.set_live(live);
    if (!live) req.set_running_policy(v1::RUNNING_POLICY_SHUTDOWN);
    req.set_shutdown_timeout_seconds(args_.shutdown_timeout_seconds);
    grpc::ClientContext ctx;
    Deadline(ctx, 60);
    v1::MigrateDomainResponse r;
    grpc::Status s = migrations_->MigrateDomain(&ctx, req, &r);
    m.live = live;
    m.op = r.operation_id();
    return s;
  }

  // Asks the source to move `m`; false (and the domain listed as not moved) when it refused.
  bool Start(Move& m) {
    m.started = Clock::now();
    const bool live = args_.live && m.running;
    grpc::Status s = Ask(m, live);
    if (!s.ok() && live && args_.cold_fallback && s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      std::cerr << m.name << ": live refused (" << s.error_message() << "); moving it cold\n";
      s = Ask(m, false);
    }
    if (s.ok()) return true;
    Report(m, "REFUSED", s.error_message(), false);
    return false;
  }

  // True once the move has ended (and was reported).
  bool Poll(Move& m) {
    v1::GetOperationRequest get;
    get.set_id(std::to_string(m.op));
    v1::Operation op;
    grpc::ClientContext ctx;
    Deadline(ctx, 30);
    if (grpc::Status s = operations_->GetOperation(&ctx, get, &op); !s.ok()) {
      if (Unreachable(s)) return false;  // the source is busy or restarting: ask again
      Report(m, "UNKNOWN", s.error_message(), false);
      return true;
    }
    if (op.state() == v1::OPERATION_STATE_RUNNING) return false;
    const std::string state = v1::OperationState_Name(op.state()).substr(sizeof("OPERATION_STATE_") - 1);
    Report(m, state, op.message(), op.state() == v1::OPERATION_STATE_SUCCEEDED);
    return true;
  }

  void Report(const Move& m, const std::string& state, const std::string& message, bool moved) {
    if (!moved) not_moved_.push_back(m.name);
    const double seconds = std::chrono::duration<double>(Clock::now() - m.started).count();
    char took[32];
    std::snprintf(took, sizeof took, "%.1f s", seconds);
    if (args_.json) {
      // One operation per line, in the API's own JSON; a refused move has no state and no id.
      v1::Operation line;
      line.set_id(m.op);
      line.set_domain(m.name);
      line.set_message(message);
      v1::OperationState parsed = v1::OPERATION_STATE_UNSPECIFIED;
      if (v1::OperationState_Parse("OPERATION_STATE_" + state, &parsed)) line.set_state(parsed);
      google::protobuf::util::JsonPrintOptions opts;
      opts.preserve_proto_field_names = true;
      std::string text;
      (void)google::protobuf::util::MessageToJsonString(line, &text, opts);
      std::cout << text << std::endl;
      return;
    }
    std::cout << m.name << " -> " << args_.destination << ": " << state << " (" << (m.live ? "live" : "cold") << ", "
              << took << ")" << (message.empty() ? "" : ": " + message) << std::endl;
  }

  std::unique_ptr<v1::MigrationService::Stub> migrations_;
  std::unique_ptr<v1::OperationService::Stub> operations_;
  const DrainArgs& args_;
  std::vector<std::string> not_moved_;
};

}  // namespace

int Drain(const std::shared_ptr<grpc::Channel>& source, const std::shared_ptr<grpc::ChannelCredentials>& creds,
          const DrainArgs& args) {
  // The destination first: a drain that cannot reach it would only fail every move one by one.
  auto destination = grpc::CreateChannel(args.destination, creds);
  if (!destination->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5))) {
    std::cerr << "hvctl: destination " << args.destination << " cannot be reached; nothing was moved\n";
    return kUnreachable;
  }
  auto domains = v1::DomainService::NewStub(source);
  v1::ListDomainsResponse list;
  grpc::ClientContext ctx;
  Deadline(ctx, 30);
  if (grpc::Status s = domains->ListDomains(&ctx, v1::ListDomainsRequest(), &list); !s.ok()) {
    std::cerr << "hvctl: list the domains: " << s.error_message() << "\n";
    return Unreachable(s) ? kUnreachable : kRefused;
  }
  std::deque<Move> queue;
  for (const v1::Domain& d : list.domains()) queue.push_back({.name = d.name(), .running = Running(d.state())});
  if (queue.empty()) std::cout << "no domains to move\n";
  return Drainer(source, args).Run(std::move(queue));
}

}  // namespace hvagent::cli
