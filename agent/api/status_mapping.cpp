#include "agent/api/status_mapping.h"

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace hvagent::api {

grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  // absl and gRPC share the canonical code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return 200;
    case absl::StatusCode::kCancelled: return 499;
    case absl::StatusCode::kInvalidArgument: return 400;
    case absl::StatusCode::kOutOfRange: return 400;
    case absl::StatusCode::kDeadlineExceeded: return 504;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kAlreadyExists: return 409;
    case absl::StatusCode::kFailedPrecondition: return 409;  // wrong state for the operation
    case absl::StatusCode::kAborted: return 409;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kUnauthenticated: return 401;
    // A full pool: 507 Insufficient Storage. Capacity refusals carry their kind (409 for CPU and
    // memory, ErrorResponse in rest/json.cpp); the rate limiter answers 429 (rest_router.cpp).
    case absl::StatusCode::kResourceExhausted: return 507;
    case absl::StatusCode::kUnimplemented: return 501;
    case absl::StatusCode::kUnavailable: return 503;
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kDataLoss:
    default: return 500;
  }
}

std::string ErrorBody(absl::string_view code_name, absl::string_view message, absl::string_view details) {
  return absl::StrCat(R"({"code":")", log::JsonEscape(code_name), R"(","message":")", log::JsonEscape(message),
                      R"(","details":")", log::JsonEscape(details), R"("})");
}

std::string ErrorBody(const absl::Status& s) {
  return ErrorBody(absl::StatusCodeToString(s.code()), s.message());
}

}  // namespace hvagent::api
