#include "agent/api/operations/pipeline.h"

#include <memory>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "agent/api/auth/audit.h"
#include "common/log.h"

namespace hvagent::api::ops {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("api");
  return logger;
}

// Changes and failures at info; a read that succeeded at debug: controllers read every VM on
// every ping (CloudStack's status, Nova's power-state sync), and a line per read would bury the
// changes in the log and cost each read a formatted write.
void LogOutcome(const Operation& op, const absl::Status& s, bool replayed) {
  if (s.ok()) {
    Log()->log(op.mutating ? spdlog::level::info : spdlog::level::debug, "{} ok{}", op.name,
               replayed ? " (replayed)" : "");
  } else {
    Log()->info("{} failed: {} {}", op.name, absl::StatusCodeToString(s.code()), s.message());
  }
}

std::string ArgumentsOf(const Message* request) {
  if (request == nullptr) return "";
  std::string json;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(*request, &json, opts).ok()) return "?";
  return json;
}

// Bytes that are the same for the same request whichever API carried it (map fields sorted).
std::string CanonicalBytes(const Message& m) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    m.SerializePartialToCodedStream(&coded);
  }
  return out;
}

}  // namespace

std::string Fingerprint(const Operation& op, const Message& request) {
  return auth::Sha256Hex(absl::StrCat(op.name, "\n", CanonicalBytes(request)));
}

absl::Status Pipeline::Admit(const Operation& op, const absl::StatusOr<auth::Caller>& caller) const {
  if (options_.authz == nullptr) return absl::OkStatus();
  absl::Status s = caller.ok() ? options_.authz->Admit(*caller, op.name) : caller.status();
  if (!s.ok()) auth::Audit(caller.value_or(auth::Caller{}), op.name, "", s, {});
  return s;
}

absl::StatusOr<auth::RateLimiter::StreamSlot> Pipeline::AdmitStream(
    const Operation& op, const absl::StatusOr<auth::Caller>& caller) const {
  if (options_.authz == nullptr) return auth::RateLimiter::StreamSlot(nullptr, "", absl::OkStatus());
  if (auto s = Admit(op, caller); !s.ok()) return s;
  auto slot = options_.authz->OpenStream(*caller);
  if (!slot.status().ok()) {
    auth::Audit(*caller, op.name, "", slot.status(), {});
    return slot.status();
  }
  return slot;
}

absl::Status Pipeline::Run(const Operation& op, Call& call, const Message& request, Message* response) const {
  return RunOne(op, call, &request, nullptr, response);
}

absl::Status Pipeline::Run(const Operation& op, Call& call, const Binder& bind, Message* response) const {
  return RunOne(op, call, nullptr, &bind, response);
}

absl::Status Pipeline::RunOne(const Operation& op, Call& call, const Message* parsed, const Binder* bind,
                              Message* response) const {
  const auto start = std::chrono::steady_clock::now();
  auth::Caller caller;
  absl::Status s = AdmitCall(op, call, caller);
  std::unique_ptr<Message> bound;  // REST's request, built only for an admitted caller
  const Message* request = parsed;  // gRPC's, as it arrived: no copy
  if (call.admitted && (op.kind != Kind::kUnary || !Available(op, services_))) {
    s = absl::UnimplementedError(absl::StrCat(op.name, ": not served by this agent"));
  } else if (call.admitted) {
    if (request == nullptr) {
      bound.reset(op.request->New());
      s = (*bind)(bound.get());
      request = bound.get();
    }
    if (s.ok()) s = Execute(op, call, *request, response);
  }
  LogOutcome(op, s, call.replayed);
  if (!call.admitted || op.mutating) {
    auth::Audit(caller, op.name, ArgumentsOf(request), s, std::chrono::steady_clock::now() - start);
  }
  return s;
}

absl::Status Pipeline::RunUpload(const Operation& op, Call& call, const Binder& bind, service::UploadBody& body,
                                 Message* response) const {
  const auto start = std::chrono::steady_clock::now();
  auth::Caller caller;
  absl::Status s = AdmitCall(op, call, caller);
  std::unique_ptr<Message> header;
  if (call.admitted && (op.kind != Kind::kUpload || !Available(op, services_))) {
    s = absl::UnimplementedError(absl::StrCat(op.name, ": not served by this agent"));
  } else if (call.admitted) {
    header.reset(op.request->New());
    s = bind(header.get());
  }
  if (call.admitted && s.ok()) {
    auto slot = EnterGate(call);
    s = slot.ok() ? op.upload(services_, *header, body, response) : slot.status();
  }
  LogOutcome(op, s, false);
  auth::Audit(caller, op.name, ArgumentsOf(header.get()), s, std::chrono::steady_clock::now() - start);
  return s;
}

absl::Status Pipeline::AdmitCall(const Operation& op, Call& call, auth::Caller& caller) const {
  caller = options_.authz == nullptr ? auth::Caller{"-", auth::Role::kController} : call.caller.value_or(auth::Caller{});
  absl::Status s;
  if (options_.authz != nullptr) s = call.caller.ok() ? options_.authz->Admit(caller, op.name) : call.caller.status();
  call.admitted = s.ok();
  return s;
}

absl::StatusOr<std::optional<service::OperationGate::Slot>> Pipeline::EnterGate(Call& call) const {
  if (options_.gate == nullptr) return std::optional<service::OperationGate::Slot>();
  auto slot = options_.gate->Enter();
  if (!slot.ok()) {
    call.retry_after = options_.gate->retry_after();
    return slot.status();
  }
  return std::optional<service::OperationGate::Slot>(std::move(*slot));
}

absl::Status Pipeline::Execute(const Operation& op, Call& call, const Message& request, Message* response) const {
  if (!op.mutating) return Once(op, call, request, response);
  auto slot = EnterGate(call);  // held until the call returns
  if (!slot.ok()) return slot.status();
  return Once(op, call, request, response);
}

// A changing call with an idempotency key runs at most once per key (service/idempotency.h); a
// replay answers with the first call's status and reply.
absl::Status Pipeline::Once(const Operation& op, Call& call, const Message& request, Message* response) const {
  auto run = [&] { return op.handler(services_, request, response); };
  if (call.idempotency_key && op.secret_reply) {
    return absl::InvalidArgumentError(absl::StrCat(
        "idempotency-key: not accepted by ", op.name,
        ": its reply holds a secret, which the agent never stores; send the request again without a key"));
  }
  if (!call.idempotency_key || options_.idem == nullptr || !op.mutating) return run();
  if (auto s = service::IdempotencyStore::ValidateKey(*call.idempotency_key); !s.ok()) return s;
  auto outcome = options_.idem->Run(*call.idempotency_key, std::string(op.name), Fingerprint(op, request), [&] {
    service::IdempotencyStore::Outcome o;
    o.status = run();
    if (o.status.ok()) response->SerializePartialToString(&o.response);
    return o;
  });
  if (outcome.replayed) {
    call.replayed = true;
    response->Clear();
    if (outcome.status.ok() && !response->ParsePartialFromString(outcome.response)) {
      return absl::InternalError("idempotency store: the stored reply does not parse");
    }
  }
  return outcome.status;
}

}  // namespace hvagent::api::ops
