#include "agent/api/status_mapping.h"

#include <gtest/gtest.h>

namespace hvagent::api {
namespace {

TEST(StatusMappingTest, GrpcCodesAreIdentical) {
  for (int c = 0; c <= 16; ++c) {
    absl::Status s(static_cast<absl::StatusCode>(c), "m");
    EXPECT_EQ(static_cast<int>(ToGrpcStatus(s).error_code()), c);
  }
  EXPECT_EQ(ToGrpcStatus(absl::NotFoundError("gone")).error_message(), "gone");
}

TEST(StatusMappingTest, HttpStatuses) {
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kAlreadyExists), 409);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kFailedPrecondition), 409);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kPermissionDenied), 403);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnauthenticated), 401);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnimplemented), 501);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInternal), 500);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kResourceExhausted), 507);
}

TEST(StatusMappingTest, ErrorBodyIsEscapedJson) {
  EXPECT_EQ(ErrorBody(absl::InvalidArgumentError("spec.name: \"a\"\n")),
            R"({"code":"INVALID_ARGUMENT","message":"spec.name: \"a\"\n","details":""})");
}

}  // namespace
}  // namespace hvagent::api
