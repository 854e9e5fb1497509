#include "agent/api/rest/json.h"

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "agent/api/status_mapping.h"

namespace hvagent::api {

std::string ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;
  std::string out;
  auto s = google::protobuf::util::MessageToJsonString(m, &out, opts);
  if (!s.ok()) return "{}";
  return out;
}

absl::Status FromJson(const std::string& body, google::protobuf::Message* m) {
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = false;
  auto s = google::protobuf::util::JsonStringToMessage(body, m, opts);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("request body: ", s.message().as_string()));
  return absl::OkStatus();
}

HttpResponse JsonResponse(int status, const google::protobuf::Message& m) { return {status, ToJson(m)}; }

HttpResponse ErrorResponse(const absl::Status& s) { return {HttpStatusFor(s.code()), ErrorBody(s)}; }

}  // namespace hvagent::api
