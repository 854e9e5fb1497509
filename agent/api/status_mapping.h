#pragma once
// The one table from absl::Status codes to gRPC codes (identity) and to HTTP statuses,
// and the JSON error body {"code": "NOT_FOUND", "message": "...", "details": ""}.

#include <string>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace hvagent::api {

grpc::Status ToGrpcStatus(const absl::Status& s);
int HttpStatusFor(absl::StatusCode code);
std::string ErrorBody(absl::string_view code_name, absl::string_view message, absl::string_view details = {});
std::string ErrorBody(const absl::Status& s);

}  // namespace hvagent::api
