#pragma once
// Pipeline: the one path every request takes, from gRPC or REST alike:
//
//   admit (the caller's role for the operation, its rate limit)
//   -> bind the request (REST: path, query and body; gRPC: already parsed)
//   -> the in-flight gate (changing operations only)
//   -> idempotency (changing operations with a key: one fingerprint, the operation name plus
//      the request proto serialized deterministically, so a retry over the other API is
//      recognised)
//   -> the operation's handler
//   -> one log line, and an audit line for changes and refusals.
//
// Transports decide only how a caller is identified and how the result is written out.

#include <chrono>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "agent/api/auth/authorizer.h"
#include "agent/api/auth/rate_limiter.h"
#include "agent/api/operations/operation.h"
#include "agent/service/idempotency.h"
#include "agent/service/operation_gate.h"

namespace hvagent::api::ops {

class Pipeline {
 public:
  struct Options {
    const auth::Authorizer* authz = nullptr;      // null: no checks (unit tests of handlers)
    service::IdempotencyStore* idem = nullptr;    // null: idempotency keys are ignored
    service::OperationGate* gate = nullptr;       // null: no bound on operations in flight
  };
  Pipeline(Services services, Options options) : services_(services), options_(options) {}

  // One call as its transport saw it, and what the pipeline tells the transport back.
  struct Call {
    absl::StatusOr<auth::Caller> caller;            // as the transport identified it
    std::optional<std::string> idempotency_key;
    bool admitted = false;                           // out: the caller passed role and rate checks
    bool replayed = false;                           // out: the answer is a stored one
    std::optional<std::chrono::seconds> retry_after; // out: refused by the gate; retry then
  };
  // Fills the request after the caller is admitted (REST parses nothing for a refused caller).
  using Binder = std::function<absl::Status(Message* request)>;

  // Runs unary operation `op`. `request` must be of op.request's type; `response` of op.response's.
  absl::Status Run(const Operation& op, Call& call, const Message& request, Message* response) const;
  // The same, with the request built by `bind` (into a fresh message of op.request's type).
  absl::Status Run(const Operation& op, Call& call, const Binder& bind, Message* response) const;

  // Runs upload operation `op` (Kind::kUpload): its header built by `bind` once the caller is
  // admitted, then the handler with the caller's `body`. The same admission, gate, log and
  // audit as Run. No idempotency: a body is no fingerprint.
  absl::Status RunUpload(const Operation& op, Call& call, const Binder& bind, service::UploadBody& body,
                         Message* response) const;

  // Admission alone, for pages (GET /metrics): role and rate limit; refusals audited.
  absl::Status Admit(const Operation& op, const absl::StatusOr<auth::Caller>& caller) const;
  // Admission for a stream, and a stream slot held while it is open.
  absl::StatusOr<auth::RateLimiter::StreamSlot> AdmitStream(const Operation& op,
                                                             const absl::StatusOr<auth::Caller>& caller) const;

  const Services& services() const { return services_; }
  const auth::Authorizer* authorizer() const { return options_.authz; }

 private:
  // Run, with the request either `parsed` (gRPC) or built by `bind` (REST) once admitted.
  absl::Status RunOne(const Operation& op, Call& call, const Message* parsed, const Binder* bind,
                      Message* response) const;
  // The caller `call` names (a controller when there is no authorizer) and whether the
  // authorizer lets it run `op`; sets call.admitted.
  absl::Status AdmitCall(const Operation& op, Call& call, auth::Caller& caller) const;
  // A slot of the in-flight bound (none when there is no bound); when full, sets call.retry_after.
  absl::StatusOr<std::optional<service::OperationGate::Slot>> EnterGate(Call& call) const;
  absl::Status Execute(const Operation& op, Call& call, const Message& request, Message* response) const;
  absl::Status Once(const Operation& op, Call& call, const Message& request, Message* response) const;

  const Services services_;
  const Options options_;
};

// The idempotency fingerprint of `request` for `op` (hex sha256).
std::string Fingerprint(const Operation& op, const Message& request);

}  // namespace hvagent::api::ops
