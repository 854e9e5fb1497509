#include "agent/api/grpc/console_grpc.h"

#include <mutex>
#include <optional>

#include "absl/strings/str_cat.h"
#include "agent/api/auth/audit.h"
#include "agent/api/grpc/grpc_services.h"
#include "agent/api/grpc/one_write_at_a_time.h"
#include "agent/api/status_mapping.h"
#include "common/log.h"

namespace hvagent::api {
namespace {

constexpr absl::string_view kOperation = "hvagent.v1.ConsoleService/Attach";

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("grpc");
  return logger;
}

using Reactor = grpc::ServerBidiReactor<v1::ConsoleInput, v1::ConsoleOutput>;

class RefusedConsole final : public Reactor {
 public:
  explicit RefusedConsole(grpc::Status s) { Finish(std::move(s)); }
  void OnDone() override { delete this; }
};

// One attached caller. Reads: the attach message, then keystrokes, one read outstanding at a
// time. Writes (one at a time, one_write_at_a_time.h): what the attachment buffered; its
// listener calls Pump() when output arrives.
class ConsoleReactor final : public OneWriteAtATime<Reactor, v1::ConsoleOutput> {
 public:
  ConsoleReactor(service::ConsoleSessions& consoles, auth::Caller caller, auth::RateLimiter::StreamSlot slot,
                 std::string rid)
      : consoles_(consoles), caller_(std::move(caller)), slot_(std::move(slot)), rid_(std::move(rid)) {
    StartSendInitialMetadata();
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    log::ScopedRequestId rid(rid_);
    if (!ok) {
      // The client half-closed (a reader may: it only listens) or went away.
      if (attachment_ == nullptr) FinishWhenIdle(grpc::Status(grpc::StatusCode::CANCELLED, "no attach message"));
      return;
    }
    absl::Status s = attachment_ == nullptr ? AttachFrom(in_) : Input(in_);
    if (!s.ok()) return FinishWhenIdle(ToGrpcStatus(s));
    StartRead(&in_);
  }

  void OnCancel() override { FinishWhenIdle(grpc::Status::CANCELLED); }

  void OnDone() override {
    if (attachment_) attachment_->SetListener(nullptr);  // no listener call runs after this
    log::ScopedRequestId rid(rid_);
    Log()->debug("console stream closed");
    delete this;
  }

 private:
  absl::Status AttachFrom(const v1::ConsoleInput& in) {
    if (!in.has_attach()) return absl::InvalidArgumentError("attach: the first message must be attach");
    const v1::ConsoleAttach& a = in.attach();
    absl::StatusOr<std::shared_ptr<service::ConsoleSessions::Attachment>> attached =
        a.domain_name().empty() ? absl::InvalidArgumentError("attach.domain_name: is required")
                                : consoles_.Attach(a.domain_name(), a.write(), a.take_over());
    // Who looked at or typed into which guest is worth an audit line either way.
    auth::Audit(caller_, kOperation,
                absl::StrCat("{\"domain_name\":\"", a.domain_name().size() <= 64 ? a.domain_name() : "(long)",
                             "\",\"write\":", a.write() ? "true" : "false", ",\"take_over\":",
                             a.take_over() ? "true" : "false", "}"),
                attached.status(), {});
    if (!attached.ok()) return attached.status();
    attachment_ = std::move(*attached);
    write_ = a.write();
    attachment_->SetListener([this] { Pump(); });
    Pump();
    return absl::OkStatus();
  }

  absl::Status Input(const v1::ConsoleInput& in) {
    if (!in.has_data()) return absl::InvalidArgumentError("attach: sent twice on one stream");
    if (!write_) return absl::InvalidArgumentError("data: this stream attached without write");
    if (in.data().empty()) return absl::OkStatus();
    absl::Status s = attachment_->Write(in.data());
    // A writer that was taken over ends with the attachment's Aborted status (Pump), not this.
    if (absl::IsFailedPrecondition(s) && attachment_->ended()) return absl::OkStatus();
    return s;
  }

  Step Next(v1::ConsoleOutput& out, grpc::Status& finish) override {
    if (auto next = attachment_->TryNext()) {
      out.set_data(std::move(next->data));
      out.set_dropped_bytes(next->dropped_before);
      return Step::kWrite;
    }
    if (auto ended = attachment_->ended()) {
      finish = ToGrpcStatus(*ended);
      return Step::kFinish;
    }
    return Step::kWait;
  }

  service::ConsoleSessions& consoles_;
  const auth::Caller caller_;
  const auth::RateLimiter::StreamSlot slot_;  // the caller's stream count, held while open
  const std::string rid_;
  v1::ConsoleInput in_;  // the read in flight; touched only by OnReadDone
  std::shared_ptr<service::ConsoleSessions::Attachment> attachment_;  // set once, by OnReadDone
  bool write_ = false;
};

}  // namespace

Reactor* ConsoleGrpcService::Attach(grpc::CallbackServerContext* ctx) {
  std::string request_id = RequestIdOf(ctx);
  log::ScopedRequestId rid(request_id);
  const ops::Operation* op = ops::Find(kOperation);
  auto caller = CallerOf(ctx, pipeline_.authorizer());
  auto slot = pipeline_.AdmitStream(*op, caller);
  if (!slot.ok()) return new RefusedConsole(ToGrpcStatus(slot.status()));
  if (!ops::Available(*op, pipeline_.services())) {
    return new RefusedConsole(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "consoles: not served by this agent"));
  }
  return new ConsoleReactor(*pipeline_.services().consoles, caller.value_or(auth::Caller{"-", auth::Role::kController}),
                            std::move(*slot), std::move(request_id));
}

grpc::ServerUnaryReactor* ConsoleGrpcService::IssueConsoleTicket(grpc::CallbackServerContext* ctx,
                                                                 const v1::IssueConsoleTicketRequest* req,
                                                                 v1::ConsoleTicket* out) {
  auto* reactor = ctx->DefaultReactor();
  workers_.Post([this, ctx, req, out, reactor] {
    reactor->Finish(Unary(pipeline_, ctx, "hvagent.v1.ConsoleService/IssueConsoleTicket", *req, out));
  });
  return reactor;
}

grpc::ServerUnaryReactor* ConsoleGrpcService::GetConsoleLog(grpc::CallbackServerContext* ctx,
                                                            const v1::GetConsoleLogRequest* req, v1::ConsoleLog* out) {
  auto* reactor = ctx->DefaultReactor();
  workers_.Post([this, ctx, req, out, reactor] {
    reactor->Finish(Unary(pipeline_, ctx, "hvagent.v1.ConsoleService/GetConsoleLog", *req, out));
  });
  return reactor;
}

}  // namespace hvagent::api
