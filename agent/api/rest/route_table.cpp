#include "agent/api/rest/route_table.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "agent/api/rest/json.h"

namespace hvagent::api {
namespace {

const std::vector<Route>& Table() {
  static const std::vector<Route> table = {
      {"GET", "/healthz", ""},
      {"GET", "/metrics", "hvagent.v1.MetricsService/Prometheus"},
      {"GET", "/v1/host", "hvagent.v1.HostService/GetHost"},
      {"GET", "/v1/host/capacity", "hvagent.v1.HostService/GetCapacity"},
      {"GET", "/v1/host/event-channels", "hvagent.v1.MetricsService/GetEventChannels"},
      {"GET", "/v1/stats/domains", "hvagent.v1.MetricsService/GetDomainStats"},
      {"GET", "/v1/stats/domains/{name}", "hvagent.v1.MetricsService/GetDomainStats"},
      {"GET", "/v1/domains", "hvagent.v1.DomainService/ListDomains"},
      {"POST", "/v1/domains", "hvagent.v1.DomainService/CreateDomain", 201},
      {"GET", "/v1/domains/{name}", "hvagent.v1.DomainService/GetDomain"},
      {"DELETE", "/v1/domains/{name}", "hvagent.v1.DomainService/DeleteDomain", 204, {"force", "delete_volumes"}},
      {"POST", "/v1/domains/{name}:start", "hvagent.v1.DomainService/StartDomain"},
      {"POST", "/v1/domains/{name}:shutdown", "hvagent.v1.DomainService/ShutdownDomain"},
      {"POST", "/v1/domains/{name}:destroy", "hvagent.v1.DomainService/DestroyDomain"},
      {"POST", "/v1/domains/{name}:reboot", "hvagent.v1.DomainService/RebootDomain"},
      {"POST", "/v1/domains/{name}:suspend", "hvagent.v1.DomainService/SuspendDomain"},
      {"POST", "/v1/domains/{name}:resume", "hvagent.v1.DomainService/ResumeDomain"},
      {"POST", "/v1/domains/{name=domain_name}/console-tickets", "hvagent.v1.ConsoleService/IssueConsoleTicket", 201,
       {}},
      {"GET", "/v1/domains/{name=domain_name}/console-log", "hvagent.v1.ConsoleService/GetConsoleLog", 200,
       {"tail_bytes"}},
      {"POST", "/v1/domains/{name}:managed-save", "hvagent.v1.DomainService/ManagedSaveDomain"},
      {"POST", "/v1/domains/{name}:resize", "hvagent.v1.DomainService/UpdateDomain"},
      {"POST", "/v1/domains/{name}:rescue", "hvagent.v1.DomainService/RescueDomain"},
      {"POST", "/v1/domains/{name}:unrescue", "hvagent.v1.DomainService/UnrescueDomain"},
      // A MAC has colons, which a path segment reserves for verbs: it goes in the body.
      {"POST", "/v1/domains/{name=domain}/nics", "hvagent.v1.DomainService/AttachNic", 201},
      {"POST", "/v1/domains/{name=domain}/nics:detach", "hvagent.v1.DomainService/DetachNic"},
      {"GET", "/v1/pools", "hvagent.v1.StorageService/ListPools"},
      {"GET", "/v1/pools/{pool=name}", "hvagent.v1.StorageService/GetPool"},
      {"GET", "/v1/pools/{pool}/volumes", "hvagent.v1.StorageService/ListVolumes"},
      {"POST", "/v1/pools/{pool}/volumes", "hvagent.v1.StorageService/CreateVolume", 201},
      {"GET", "/v1/pools/{pool}/volumes/{name}", "hvagent.v1.StorageService/GetVolume"},
      // 202: the wipe runs on; GET shows its progress until the volume is gone (404).
      {"DELETE", "/v1/pools/{pool}/volumes/{name}", "hvagent.v1.StorageService/DeleteVolume", 202, {"cascade"}},
      {"POST", "/v1/pools/{pool}/volumes/{name}:resize", "hvagent.v1.StorageService/ResizeVolume"},
      {"POST", "/v1/pools/{pool}/volumes/{name}:attach", "hvagent.v1.StorageService/AttachVolume"},
      {"POST", "/v1/pools/{pool}/volumes/{name}:detach", "hvagent.v1.StorageService/DetachVolume"},
      {"POST", "/v1/pools/{pool}/volumes/{name}:release-ownership", "hvagent.v1.StorageService/ReleaseVolumeOwnership"},
      {"POST", "/v1/pools/{pool}/volumes/{volume}/snapshots", "hvagent.v1.StorageService/CreateSnapshot", 201},
      {"GET", "/v1/pools/{pool}/volumes/{volume}/snapshots", "hvagent.v1.StorageService/ListSnapshots"},
      {"DELETE", "/v1/pools/{pool}/volumes/{volume}/snapshots/{name}", "hvagent.v1.StorageService/DeleteSnapshot",
       204},
      {"POST", "/v1/pools/{pool}/volumes/{volume}/snapshots/{name}:revert", "hvagent.v1.StorageService/RevertSnapshot"},
      // The body is the disk's bytes, streamed (export_resource.cpp); the sha256 in Repr-Digest.
      {"GET", "/v1/pools/{pool}/volumes/{name}:export", "hvagent.v1.StorageService/ExportVolume", 200,
       {"domain_quiesced", "format"}},
      {"GET", "/v1/pools/{pool}/volumes/{volume=name}/snapshots/{name=snapshot}:export",
       "hvagent.v1.StorageService/ExportVolume", 200, {"format"}},
      // 202: the import runs on; the answer is its operation (GET /v1/operations/{id}).
      {"POST", "/v1/pools/{pool}/images", "hvagent.v1.ImageService/ImportImage", 202},
      {"GET", "/v1/pools/{pool}/images", "hvagent.v1.ImageService/ListImages"},
      {"GET", "/v1/pools/{pool}/images/{name}", "hvagent.v1.ImageService/GetImage"},
      {"DELETE", "/v1/pools/{pool}/images/{name}", "hvagent.v1.ImageService/DeleteImage"},
      // The body is the image's bytes (streamed, not JSON), its Content-Length the image's size.
      {"PUT", "/v1/pools/{pool}/images/{name}", "hvagent.v1.ImageService/UploadImage", 201,
       {"format", "sha256", "sha512"}},
      // Answers once the image is READY (the copy runs within the request; an operation meanwhile).
      {"POST", "/v1/pools/{pool}/volumes/{volume}:create-image", "hvagent.v1.ImageService/CreateImageFromVolume", 201},
      // 202: the copy runs on; the answer is its operation.
      {"POST", "/v1/pools/{pool}/images/{image}:create-volume", "hvagent.v1.ImageService/CreateVolumeFromImage", 202},
      // 202: the migration runs on; the answer is its operation id (GET /v1/operations/{id}).
      {"POST", "/v1/domains/{name}:migrate", "hvagent.v1.MigrationService/MigrateDomain", 202},
      {"POST", "/v1/migrations/{operation_id}:cancel", "hvagent.v1.MigrationService/CancelMigration"},
      {"GET", "/v1/operations", "hvagent.v1.OperationService/ListOperations", 200, {"running_only"}},
      {"GET", "/v1/operations/{id}", "hvagent.v1.OperationService/GetOperation"},
  };
  return table;
}

// A path split into its segments and the custom verb after the last colon of the last one.
struct SplitPath {
  std::vector<absl::string_view> segments;
  absl::string_view verb;
};

SplitPath Split(absl::string_view path) {
  SplitPath out;
  if (path.empty() || path[0] != '/') return out;
  out.segments = absl::StrSplit(path.substr(1), '/');
  absl::string_view& last = out.segments.back();
  // A colon inside a {param=field} pattern segment is not a verb; request paths have no braces.
  size_t colon = last.rfind(':');
  if (colon != absl::string_view::npos && last.find('}', colon) == absl::string_view::npos) {
    out.verb = last.substr(colon + 1);
    last = last.substr(0, colon);
  }
  return out;
}

// The table's patterns, split once (they point into the table's string literals).
const std::vector<SplitPath>& Patterns() {
  static const std::vector<SplitPath> patterns = [] {
    std::vector<SplitPath> out;
    for (const Route& r : Table()) out.push_back(Split(r.pattern));
    return out;
  }();
  return patterns;
}

// "{pool=name}" -> the field "name"; "{name}" -> "name".
absl::string_view FieldOf(absl::string_view pattern_segment) {
  absl::string_view inner = pattern_segment.substr(1, pattern_segment.size() - 2);
  size_t eq = inner.find('=');
  return eq == absl::string_view::npos ? inner : inner.substr(eq + 1);
}

bool IsParam(absl::string_view segment) {
  return segment.size() > 2 && segment.front() == '{' && segment.back() == '}';
}

// Whether `path`'s segments fit `pattern`'s (verbs aside); binds the parameters.
bool SegmentsMatch(const SplitPath& pattern, const SplitPath& path, std::map<std::string, std::string>* params) {
  if (pattern.segments.size() != path.segments.size()) return false;
  for (size_t i = 0; i < pattern.segments.size(); ++i) {
    absl::string_view want = pattern.segments[i], got = path.segments[i];
    if (IsParam(want)) {
      if (got.empty()) return false;  // "/v1/domains/" names no domain
      if (params != nullptr) (*params)[std::string(FieldOf(want))] = std::string(got);
    } else if (want != got) {
      return false;
    }
  }
  return true;
}

absl::Status NotAWholeNumber(const std::string& key, absl::string_view want) {
  return absl::InvalidArgumentError(absl::StrCat(key, ": must be ", want));
}

}  // namespace

bool QueryTypeSupported(const google::protobuf::FieldDescriptor& field) {
  using FD = google::protobuf::FieldDescriptor;
  if (field.is_repeated()) return false;
  switch (field.cpp_type()) {
    case FD::CPPTYPE_BOOL:
    case FD::CPPTYPE_INT32:
    case FD::CPPTYPE_UINT32:
    case FD::CPPTYPE_INT64:
    case FD::CPPTYPE_UINT64:
    case FD::CPPTYPE_ENUM:
    case FD::CPPTYPE_STRING: return true;
    default: return false;
  }
}

namespace {

absl::Status SetFromQuery(const std::string& key, const std::string& value, google::protobuf::Message* m) {
  const auto* field = m->GetDescriptor()->FindFieldByName(key);
  const auto* refl = m->GetReflection();
  using FD = google::protobuf::FieldDescriptor;
  if (field == nullptr || !QueryTypeSupported(*field)) {
    return absl::InternalError(absl::StrCat(key, ": not a request field a query parameter can set"));
  }
  switch (field->cpp_type()) {
    case FD::CPPTYPE_BOOL:
      if (value == "true" || value == "1") {
        refl->SetBool(m, field, true);
      } else if (value == "false" || value == "0") {
        refl->SetBool(m, field, false);
      } else {
        return absl::InvalidArgumentError(absl::StrCat(key, ": must be true or false"));
      }
      return absl::OkStatus();
    case FD::CPPTYPE_INT32: {
      int32_t v = 0;
      if (!absl::SimpleAtoi(value, &v)) return NotAWholeNumber(key, "a whole number that fits 32 bits");
      refl->SetInt32(m, field, v);
      return absl::OkStatus();
    }
    case FD::CPPTYPE_UINT32: {
      uint32_t v = 0;
      if (!absl::SimpleAtoi(value, &v)) return NotAWholeNumber(key, "a whole number from 0 to 4294967295");
      refl->SetUInt32(m, field, v);
      return absl::OkStatus();
    }
    case FD::CPPTYPE_INT64: {
      int64_t v = 0;
      if (!absl::SimpleAtoi(value, &v)) return NotAWholeNumber(key, "a whole number that fits 64 bits");
      refl->SetInt64(m, field, v);
      return absl::OkStatus();
    }
    case FD::CPPTYPE_UINT64: {
      uint64_t v = 0;
      if (!absl::SimpleAtoi(value, &v)) return NotAWholeNumber(key, "a whole number from 0 to 18446744073709551615");
      refl->SetUInt64(m, field, v);
      return absl::OkStatus();
    }
    case FD::CPPTYPE_ENUM: {
      // The value's name, as in a JSON body ("DOMAIN_STATE_RUNNING").
      const auto* e = field->enum_type()->FindValueByName(value);
      if (e == nullptr) return absl::InvalidArgumentError(absl::StrCat(key, ": not a ", field->enum_type()->name(), " value"));
      refl->SetEnum(m, field, e);
      return absl::OkStatus();
    }
    case FD::CPPTYPE_STRING: refl->SetString(m, field, value); return absl::OkStatus();
    default: break;
  }
  return absl::InternalError(absl::StrCat(key, ": not a request field a query parameter can set"));
}

}  // namespace

absl::Span<const Route> Routes() { return Table(); }

RouteMatch MatchRoute(absl::string_view method, absl::string_view path,
                      const std::function<bool(const Route&)>& served) {
  RouteMatch m;
  const SplitPath got = Split(path);
  if (got.segments.empty()) return m;
  const std::vector<SplitPath>& patterns = Patterns();
  for (size_t i = 0; i < patterns.size(); ++i) {
    const Route& r = Table()[i];
    if (served && !served(r)) continue;
    const SplitPath& want = patterns[i];
    if (!SegmentsMatch(want, got, nullptr)) continue;
    if (want.verb != got.verb) {
      if (!want.verb.empty()) m.verbs.push_back(want.verb);
      continue;
    }
    m.allowed.push_back(r.method);
    if (r.method == method && m.route == nullptr) {
      m.route = &r;
      SegmentsMatch(want, got, &m.params);
    }
  }
  return m;
}

absl::Status BindRequest(const Route& route, const std::map<std::string, std::string>& params,
                         const HttpRequest& http, google::protobuf::Message* request) {
  // A body is read for every method but GET (actions accept an empty object or their own
  // request message; unknown fields are refused).
  if (http.method != "GET" && !http.body.empty()) {
    if (auto s = FromJson(http.body, request); !s.ok()) return s;
  }
  const auto* desc = request->GetDescriptor();
  const auto* refl = request->GetReflection();
  for (const auto& [name, value] : params) {
    const auto* field = desc->FindFieldByName(name);
    if (field == nullptr) return absl::InternalError(absl::StrCat(route.pattern, ": no request field ", name));
    const std::string given = refl->GetString(*request, field);
    if (!given.empty() && given != value) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": '", given, "' in the body differs from '", value,
                                                     "' in the path"));
    }
    refl->SetString(request, field, value);
  }
  for (const auto& [key, value] : http.query) {
    if (std::find(route.query.begin(), route.query.end(), key) == route.query.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "query parameter '", key, "': not known here",
          route.query.empty() ? std::string() : absl::StrCat(" (known: ", absl::StrJoin(route.query, ", "), ")")));
    }
    if (auto s = SetFromQuery(key, value, request); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace hvagent::api
