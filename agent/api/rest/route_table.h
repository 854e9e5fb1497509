#pragma once
// The REST route table: one row per {method, path pattern} naming the operation it performs
// (operations/operation.h). Dispatch, authorization, 404 and 405 (with Allow) all read it, and
// RouteTableTest holds docs/openapi.yaml to it.
//
// Patterns are Google-API style: literal segments, `{field}` segments that bind the request
// message's string field of that name, and an optional custom verb after the last colon
// ("/v1/domains/{name}:start"). The request message is filled from, in order: the JSON body
// (protobuf's JSON mapping), the path (a field also given in the body must agree), and the
// query string (only the fields a row lists, typed as the field is).

#include <functional>
#include <map>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "agent/api/operations/operation.h"
#include "agent/api/rest/http_types.h"

namespace hvagent::api {

struct Route {
  absl::string_view method;               // "GET", "POST", "DELETE"
  absl::string_view pattern;              // "/v1/pools/{pool}/volumes/{name}:attach"
  absl::string_view operation;            // a row of the operation table, or "" for /healthz
  int ok_status = 200;                   // 201 created, 202 accepted (runs on), 204 no body
  std::vector<absl::string_view> query;   // query parameters bound to request fields
  bool body = false;                     // takes a JSON body (others refuse one that is not {})
};

// Every route, in the order of docs/openapi.yaml.
absl::Span<const Route> Routes();

// The result of matching a request path against the table.
struct RouteMatch {
  const Route* route = nullptr;                 // null: no route for this method
  std::map<std::string, std::string> params;    // {field} -> path segment
  std::vector<absl::string_view> allowed;        // methods the path has (for 405's Allow)
  std::vector<absl::string_view> verbs;          // the verbs the path has, when its verb is unknown
};
// `served`, when given, leaves out the routes it refuses (operations this agent runs without).
RouteMatch MatchRoute(absl::string_view method, absl::string_view path,
                      const std::function<bool(const Route&)>& served = nullptr);

// Whether a query parameter can set `field`: singular bool, integers, enums (by value name) and
// strings. RouteTableTest holds every row's query list to it.
bool QueryTypeSupported(const google::protobuf::FieldDescriptor& field);

// Fills `request` (a fresh message of the route's operation) from the HTTP request.
// INVALID_ARGUMENT naming the field or parameter for anything that does not fit.
absl::Status BindRequest(const Route& route, const std::map<std::string, std::string>& params,
                         const HttpRequest& http, google::protobuf::Message* request);

}  // namespace hvagent::api
