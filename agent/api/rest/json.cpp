#include "agent/api/rest/json.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/api/status_mapping.h"
#include "agent/service/admission.h"

namespace hvagent::api {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Value;

// Protobuf's JSON parser is lenient where a REST API must not be: it takes "yes", "t" or "1"
// for a bool and "12" for an int32, so {"start": "yes"} would start a domain. This walk holds
// the body to the types the message declares before protobuf parses it:
//   bool                              a JSON true or false
//   int32, uint32 (and s/fixed), float, double   a JSON number
//   enum                              a JSON string (the value's name)
//   string, bytes                     a JSON string
//   message / repeated / map          an object / an array / an object
// int64 and uint64 stay as proto3's JSON mapping has them: a string (their canonical form, since
// a JSON number cannot hold every 64-bit value exactly) or a number. null is the default value
// of any field, as in proto3. Range, unknown names and unknown fields are left to protobuf.

const char* KindOf(const Value& v) {
  switch (v.kind_case()) {
    case Value::kNullValue: return "null";
    case Value::kNumberValue: return "a number";
    case Value::kStringValue: return "a string";
    case Value::kBoolValue: return "a boolean";
    case Value::kStructValue: return "an object";
    case Value::kListValue: return "an array";
    default: return "nothing";
  }
}

absl::Status WrongType(absl::string_view field, absl::string_view want, const Value& got) {
  return absl::InvalidArgumentError(absl::StrCat("request body: ", field, ": must be ", want, ", not ", KindOf(got)));
}

absl::Status CheckMessage(const Descriptor* d, const Value& v, const std::string& path);

absl::Status CheckSingle(const FieldDescriptor* f, const Value& v, const std::string& field) {
  if (v.kind_case() == Value::kNullValue) return absl::OkStatus();
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_BOOL:
      if (v.kind_case() != Value::kBoolValue) return WrongType(field, "a JSON boolean (true or false)", v);
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_INT32:
    case FieldDescriptor::CPPTYPE_UINT32:
    case FieldDescriptor::CPPTYPE_FLOAT:
    case FieldDescriptor::CPPTYPE_DOUBLE:
      if (v.kind_case() != Value::kNumberValue) return WrongType(field, "a JSON number", v);
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_INT64:
    case FieldDescriptor::CPPTYPE_UINT64:
      if (v.kind_case() != Value::kNumberValue && v.kind_case() != Value::kStringValue) {
        return WrongType(field, "a whole number (a JSON string of digits, or a number)", v);
      }
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_ENUM:
      if (v.kind_case() != Value::kStringValue) {
        return WrongType(field, absl::StrCat("the name of a ", f->enum_type()->name(), " value (a JSON string)"), v);
      }
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_STRING:
      if (v.kind_case() != Value::kStringValue) return WrongType(field, "a JSON string", v);
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_MESSAGE:
      // Well-known types (Timestamp, Duration, wrappers, Struct...) have JSON forms of their own.
      if (absl::StartsWith(f->message_type()->full_name(), "google.protobuf.")) return absl::OkStatus();
      if (v.kind_case() != Value::kStructValue) return WrongType(field, "a JSON object", v);
      return CheckMessage(f->message_type(), v, field);
  }
  return absl::OkStatus();
}

absl::Status CheckField(const FieldDescriptor* f, const Value& v, const std::string& field) {
  if (v.kind_case() == Value::kNullValue) return absl::OkStatus();
  if (f->is_map()) {
    if (v.kind_case() != Value::kStructValue) return WrongType(field, "a JSON object", v);
    const FieldDescriptor* value_field = f->message_type()->map_value();
    for (const auto& [key, item] : v.struct_value().fields()) {
      if (auto s = CheckSingle(value_field, item, absl::StrCat(field, "[\"", key, "\"]")); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (f->is_repeated()) {
    if (v.kind_case() != Value::kListValue) return WrongType(field, "a JSON array", v);
    const auto& items = v.list_value().values();
    for (int i = 0; i < items.size(); ++i) {
      if (auto s = CheckSingle(f, items[i], absl::StrCat(field, "[", i, "]")); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  return CheckSingle(f, v, field);
}

// `path`: the message's own field path ("" for the body), so errors name the field the way the
// rest of the API does: "spec.disks[1].readonly".
absl::Status CheckMessage(const Descriptor* d, const Value& v, const std::string& path) {
  if (v.kind_case() != Value::kStructValue) {
    return WrongType(path.empty() ? "the body" : path, "a JSON object", v);
  }
  for (const auto& [key, item] : v.struct_value().fields()) {
    const FieldDescriptor* f = nullptr;
    for (int i = 0; i < d->field_count() && f == nullptr; ++i) {
      if (d->field(i)->name() == key || d->field(i)->json_name() == key) f = d->field(i);
    }
    if (f == nullptr) continue;  // protobuf refuses it, naming it
    if (auto s = CheckField(f, item, path.empty() ? f->name() : absl::StrCat(path, ".", f->name())); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

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
  // The JSON types first, so every such mistake reads the same; a body that is not JSON at all
  // is left to protobuf's parser, whose message says where it breaks.
  Value tree;
  if (google::protobuf::util::JsonStringToMessage(body, &tree, opts).ok()) {
    if (auto s = CheckMessage(m->GetDescriptor(), tree, ""); !s.ok()) return s;
  }
  auto s = google::protobuf::util::JsonStringToMessage(body, m, opts);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("request body: ", s.message().as_string()));
  return absl::OkStatus();
}

HttpResponse JsonResponse(int status, const google::protobuf::Message& m) { return {status, ToJson(m)}; }

HttpResponse ErrorResponse(const absl::Status& s) {
  // Capacity refusals are told apart by their payload, not their message: the host is full
  // (409, CPU/memory) or a pool is (507); `details` names which.
  if (auto kind = service::CapacityKindOf(s)) {
    return {*kind == service::CapacityKind::kCompute ? 409 : 507,
            ErrorBody(absl::StatusCodeToString(s.code()), s.message(), service::CapacityKindName(*kind))};
  }
  return {HttpStatusFor(s.code()), ErrorBody(s)};
}

}  // namespace hvagent::api
