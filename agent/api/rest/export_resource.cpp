// GET /v1/pools/{pool}/volumes/{volume}:export and .../snapshots/{name}:export: a disk's bytes
// as the response body, streamed (chunked) through an HttpBodyWriter, never whole in memory.
//
// The sha256 travels in the response headers, not a trailer: cpprestsdk's listener ends a
// chunked body with a bare last chunk and has no way to add trailer fields. So the export reads
// its source twice: once to hash it (before the headers go out), once to send it, and fails
// the stream (the connection closes before the last chunk) if the bytes sent hash differently.
// A client that receives the whole body therefore has exactly the bytes Repr-Digest names.

#include <optional>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "agent/api/convert.h"
#include "agent/api/rest/json.h"
#include "agent/api/rest/rest_router.h"
#include "hvagent/v1/storage.pb.h"

namespace hvagent::api {
namespace {

// An export's pieces as body bytes: HTTP has no zero runs, so they go out as zeros.
class HttpExportSink final : public storage::image::ExportSink {
 public:
  explicit HttpExportSink(HttpBodyWriter& out) : out_(out) {}
  absl::Status Data(absl::string_view bytes) override { return out_.Write(bytes); }
  absl::Status Zeros(uint64_t bytes) override {
    static const std::string kZeros(storage::image::kExportChunkBytes, '\0');
    for (uint64_t left = bytes; left > 0;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left, kZeros.size()));
      if (auto s = out_.Write(absl::string_view(kZeros.data(), n)); !s.ok()) return s;
      left -= n;
    }
    return absl::OkStatus();
  }

 private:
  HttpBodyWriter& out_;
};

// RFC 9530's Repr-Digest value for a hex sha256: "sha-256=:<base64 of the 32 bytes>:".
std::string ReprDigest(const std::string& hex) {
  const std::string raw = absl::HexStringToBytes(hex);
  return absl::StrCat("sha-256=:", absl::Base64Escape(raw), ":");
}

HttpResponse ExportHead(const service::ExportStart& start, service::ImageFormat format) {
  HttpResponse head{.status = 200, .content_type = "application/octet-stream"};
  head.headers["Repr-Digest"] = ReprDigest(start.sha256);
  head.headers["X-Hvagent-Sha256"] = start.sha256;
  head.headers["X-Hvagent-Size-Bytes"] = absl::StrCat(start.size_bytes);
  head.headers["X-Hvagent-Format"] = format == service::ImageFormat::kQcow2 ? "qcow2" : "raw";
  return head;
}

}  // namespace

bool RestRouter::IsExport(const std::string& method, const std::string& path) const {
  RouteMatch match = MatchRoute(method, path, [&](const Route& r) { return Served(r); });
  const ops::Operation* op = match.route != nullptr ? ops::Find(match.route->operation) : nullptr;
  return op != nullptr && op->kind == ops::Kind::kStream;
}

std::optional<HttpResponse> RestRouter::HandleExport(const HttpRequest& req, HttpBodyWriter& out) const {
  const auth::Caller caller = CallerOf(req);
  RouteMatch match = MatchRoute(req.method, req.path, [&](const Route& r) { return Served(r); });
  const ops::Operation* op = match.route != nullptr ? ops::Find(match.route->operation) : nullptr;
  if (op == nullptr || op->kind != ops::Kind::kStream) return NoRoute(req, caller);
  // The same admission as the gRPC stream: role, rate limit, and a slot of the caller's streams
  // held until the body has gone out.
  auto slot = pipeline_.AdmitStream(*op, caller);
  if (!slot.ok()) {
    HttpResponse refused = ErrorResponse(slot.status());
    if (absl::IsResourceExhausted(slot.status())) refused.status = 429;
    return refused;
  }
  v1::ExportVolumeRequest bound;
  if (auto s = BindRequest(*match.route, match.params, req, &bound); !s.ok()) return ErrorResponse(s);
  auto request = ToExportRequest(bound);
  if (!request.ok()) return ErrorResponse(request.status());
  request->digest_first = true;
  HttpExportSink sink(out);
  bool started = false;
  auto result = pipeline_.services().images->Export(
      *request, sink,
      [&](const service::ExportStart& start) {
        started = true;
        return out.Start(ExportHead(start, request->format));
      },
      nullptr);
  if (!result.ok()) {
    if (!started) return ErrorResponse(result.status());
    out.Abort(std::string(result.status().message()));
    return std::nullopt;
  }
  out.Finish();
  return std::nullopt;
}

}  // namespace hvagent::api
