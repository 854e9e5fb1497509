#pragma once
// The audit log: one line per mutating request (and per refused request of any kind), on the
// "audit" component logger: who, what, arguments, result, duration. Arguments are the request
// as JSON; the agent's requests carry no secrets (tokens travel in headers, never logged).

#include <chrono>
#include <string>

#include "absl/status/status.h"
#include "agent/api/auth/authorizer.h"

namespace hvagent::api::auth {

// `result`: a gRPC code name ("OK", "PERMISSION_DENIED") or an HTTP status ("HTTP 201").
void Audit(const Caller& caller, absl::string_view operation, absl::string_view arguments, absl::string_view result,
           absl::string_view error, std::chrono::steady_clock::duration took);
inline void Audit(const Caller& caller, absl::string_view operation, absl::string_view arguments,
                  const absl::Status& result, std::chrono::steady_clock::duration took) {
  Audit(caller, operation, arguments, absl::StatusCodeToString(result.code()), result.message(), took);
}

}  // namespace hvagent::api::auth
