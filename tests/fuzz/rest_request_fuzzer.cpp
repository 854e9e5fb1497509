// libFuzzer target: arbitrary REST requests (method, path, body, Authorization) through the
// whole RestRouter over the service layer and an in-memory hypervisor, with roles on.
// Properties: never a crash; every answer has a known HTTP status and, when it is JSON, a body
// that parses as JSON; a request without the controller token never creates a domain.
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>

#include "agent/api/rest/rest_router.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"

namespace {

using namespace hvagent;

struct World {
  testing::FakeHypervisor hv;
  testing::FakeClock clock;
  service::DomainService domains{hv, clock, {}};
  service::HostService host{hv};
  api::auth::Authorizer authz{api::auth::Authorizer::Options{
      .tokens = {{"ctl", api::auth::Sha256Hex("controller-token"), api::auth::Role::kController},
                 {"mon", api::auth::Sha256Hex("monitor-token"), api::auth::Role::kMonitor}}}};
  api::RestRouter router{api::ops::Pipeline({.host = &host, .domains = &domains}, {.authz = &authz})};
};

void Check(bool ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "property violated: %s\n", what);
    abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* w = new World();  // one world; domains it creates are deleted below
  std::string in(reinterpret_cast<const char*>(data), size);
  // Layout: method byte, token byte, path up to the first '\n', then the body.
  if (in.size() < 2) return 0;
  static const char* kMethods[] = {"GET", "POST", "DELETE", "PUT", "PATCH"};
  static const char* kTokens[] = {"", "Bearer controller-token", "Bearer monitor-token", "Bearer x"};
  api::HttpRequest req;
  req.method = kMethods[static_cast<uint8_t>(in[0]) % 5];
  req.authorization = kTokens[static_cast<uint8_t>(in[1]) % 4];
  std::string rest = in.substr(2);
  size_t nl = rest.find('\n');
  req.path = rest.substr(0, nl);
  if (nl != std::string::npos) req.body = rest.substr(nl + 1);
  const size_t before = w->hv.domain_count();

  api::HttpResponse r = w->router.Handle(req);

  static const std::set<int> kKnown = {200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 413, 429,
                                       500, 501, 503, 504, 507};
  Check(kKnown.contains(r.status), "unknown HTTP status");
  if (!r.body.empty() && r.content_type == "application/json") {
    google::protobuf::Value v;
    Check(google::protobuf::util::JsonStringToMessage(r.body, &v).ok(), "a JSON answer that is not JSON");
  }
  if (req.authorization != "Bearer controller-token") Check(w->hv.domain_count() == before, "unauthorized create");
  auto left = w->hv.ListDomains();
  for (const auto& d : *left) {
    (void)w->hv.DestroyDomain(d.name);
    (void)w->hv.UndefineDomain(d.name);
  }
  w->hv.calls.clear();
  return 0;
}
