#pragma once
// Protobuf's JSON mapping as REST uses it: proto field names, default values printed,
// unknown fields rejected, and stricter than protobuf's parser about JSON types (json.cpp):
// a bool is true or false, a 32-bit number or float a JSON number, an enum its name. One
// schema for gRPC and REST.

#include <string>

#include <google/protobuf/message.h>

#include "absl/status/status.h"
#include "agent/api/rest/http_types.h"

namespace hvagent::api {

std::string ToJson(const google::protobuf::Message& m);
// InvalidArgument ("request body: ...") when the body is not valid JSON for the message, or
// gives a field a value of the wrong JSON type ("request body: start: must be a JSON boolean
// (true or false), not a string").
absl::Status FromJson(const std::string& body, google::protobuf::Message* m);
HttpResponse JsonResponse(int status, const google::protobuf::Message& m);
HttpResponse ErrorResponse(const absl::Status& s);

}  // namespace hvagent::api
