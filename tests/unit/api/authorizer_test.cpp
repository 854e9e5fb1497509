#include "agent/api/auth/authorizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/api/rest/rest_router.h"
#include "agent/api/rest/route_table.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"

namespace hvagent::api::auth {
namespace {

using ::testing::HasSubstr;

Authorizer Make() {
  Authorizer::Options o;
  o.identities = {{"nova-1", Role::kController}, {"ops-desk", Role::kOperator}, {"prom", Role::kMonitor}};
  o.tokens = {{"grafana", Sha256Hex("s3cret-monitor"), Role::kMonitor},
              {"cloudstack", Sha256Hex("s3cret-controller"), Role::kController}};
  return Authorizer(o);
}

TEST(AuthorizerTest, Sha256IsTheStandardOne) {
  EXPECT_EQ(Sha256Hex("test"), "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
}

TEST(AuthorizerTest, RolesNest) {
  Authorizer a = Make();
  const Caller monitor = a.FromCertificate({"prom"});
  const Caller op = a.FromCertificate({"ops-desk"});
  const Caller ctl = a.FromCertificate({"nova-1"});
  struct Case {
    const char* operation;
    bool monitor, op, ctl;
  };
  for (const Case& c : {Case{"hvagent.v1.HostService/GetCapacity", true, true, true},
                        Case{"hvagent.v1.MetricsService/Prometheus", true, true, true},
                        Case{"hvagent.v1.DomainService/ListDomains", false, true, true},
                        Case{"hvagent.v1.DomainService/RebootDomain", false, true, true},
                        Case{"hvagent.v1.DomainService/CreateDomain", false, false, true},
                        Case{"hvagent.v1.StorageService/DeleteVolume", false, false, true}}) {
    EXPECT_EQ(a.Check(monitor, c.operation).ok(), c.monitor) << c.operation;
    EXPECT_EQ(a.Check(op, c.operation).ok(), c.op) << c.operation;
    EXPECT_EQ(a.Check(ctl, c.operation).ok(), c.ctl) << c.operation;
  }
  absl::Status s = a.Check(op, "hvagent.v1.DomainService/CreateDomain");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(s.message()), HasSubstr("'ops-desk' is operator, this needs controller"));
}

// A peer agent may hand over a domain and do nothing else; nobody below the controller may
// pose as a peer.
TEST(AuthorizerTest, PeerMayOnlyReceiveTransfers) {
  Authorizer::Options o;
  o.identities = {{"hv2.example", Role::kPeer}, {"nova-1", Role::kController}, {"ops-desk", Role::kOperator}};
  Authorizer a(o);
  const Caller peer = a.FromCertificate({"hv2.example"});
  const Caller ctl = a.FromCertificate({"nova-1"});
  const Caller op = a.FromCertificate({"ops-desk"});
  for (const char* incoming : {"hvagent.v1.MigrationService/PrepareIncoming", "hvagent.v1.MigrationService/ReceiveVolume",
                               "hvagent.v1.MigrationService/FinishIncoming", "hvagent.v1.MigrationService/AbortIncoming",
                               "hvagent.v1.MigrationService/KeepIncoming"}) {
    EXPECT_TRUE(a.Check(peer, incoming).ok()) << incoming;
    EXPECT_TRUE(a.Check(ctl, incoming).ok()) << incoming;
    EXPECT_EQ(a.Check(op, incoming).code(), absl::StatusCode::kPermissionDenied) << incoming;
  }
  for (const char* other : {"hvagent.v1.HostService/GetHost", "hvagent.v1.DomainService/ListDomains",
                            "hvagent.v1.DomainService/CreateDomain", "hvagent.v1.StorageService/ExportVolume",
                            "hvagent.v1.MigrationService/MigrateDomain", "hvagent.v1.MetricsService/Prometheus"}) {
    absl::Status s = a.Check(peer, other);
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << other;
    EXPECT_THAT(std::string(s.message()), HasSubstr("'hv2.example' is peer")) << other;
  }
  EXPECT_EQ(ParseRole("peer"), Role::kPeer);
}

TEST(AuthorizerTest, DefaultDeny) {
  Authorizer a = Make();
  EXPECT_EQ(a.Check(a.FromCertificate({"nova-1"}), "hvagent.v1.DomainService/Frobnicate").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_FALSE(RequiredRole("grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo").has_value());
}

TEST(AuthorizerTest, UnknownOrMissingIdentity) {
  Authorizer a = Make();
  EXPECT_EQ(a.Check(a.FromCertificate({}), "hvagent.v1.HostService/GetHost").code(),
            absl::StatusCode::kUnauthenticated);
  Caller stranger = a.FromCertificate({"hvagent-nobody"});
  EXPECT_EQ(stranger.identity, "hvagent-nobody");
  absl::Status s = a.Check(stranger, "hvagent.v1.HostService/GetHost");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(s.message()), HasSubstr("has no role"));
  // A SAN name that has a role wins over a CN that has none, whatever the order.
  EXPECT_EQ(a.FromCertificate({"cn-without-role", "nova-1"}).role, Role::kController);
}

TEST(AuthorizerTest, BearerTokens) {
  Authorizer a = Make();
  EXPECT_EQ(a.FromBearerToken("Bearer s3cret-monitor").role, Role::kMonitor);
  EXPECT_EQ(a.FromBearerToken("Bearer s3cret-monitor").identity, "token:grafana");
  EXPECT_TRUE(a.FromBearerToken("Bearer s3cret-monitorX").identity.empty());
  EXPECT_TRUE(a.FromBearerToken("Basic s3cret-monitor").identity.empty());
  EXPECT_TRUE(a.FromBearerToken("Bearer ").identity.empty());
  EXPECT_TRUE(a.FromBearerToken("").identity.empty());
  // The config holds hashes: the hash itself is not a token.
  EXPECT_TRUE(a.FromBearerToken("Bearer " + Sha256Hex("s3cret-monitor")).identity.empty());
}

TEST(AuthorizerTest, DevelopmentModeMakesEveryoneTheLocalController) {
  Authorizer a(Authorizer::Options{.everyone_is_controller = true});
  EXPECT_TRUE(a.Check(a.FromBearerToken(""), "hvagent.v1.DomainService/CreateDomain").ok());
  EXPECT_EQ(a.FromCertificate({}).identity, "local");
}

TEST(RestOperationTest, RoutesMapToTheGrpcOperations) {
  auto op = [](const std::string& m, const std::string& p) {
    RouteMatch match = MatchRoute(m, p);
    return match.route == nullptr ? std::string("none") : std::string(match.route->operation);
  };
  EXPECT_EQ(op("GET", "/v1/domains"), "hvagent.v1.DomainService/ListDomains");
  EXPECT_EQ(op("POST", "/v1/domains"), "hvagent.v1.DomainService/CreateDomain");
  EXPECT_EQ(op("GET", "/v1/domains/web1"), "hvagent.v1.DomainService/GetDomain");
  EXPECT_EQ(op("DELETE", "/v1/domains/web1"), "hvagent.v1.DomainService/DeleteDomain");
  EXPECT_EQ(op("POST", "/v1/domains/web1:reboot"), "hvagent.v1.DomainService/RebootDomain");
  EXPECT_EQ(op("POST", "/v1/domains/web1:frobnicate"), "none");
  EXPECT_EQ(op("GET", "/v1/pools/vg0/volumes/data"), "hvagent.v1.StorageService/GetVolume");
  EXPECT_EQ(op("POST", "/v1/pools/vg0/volumes/data:attach"), "hvagent.v1.StorageService/AttachVolume");
  EXPECT_EQ(op("POST", "/v1/pools/vg0/volumes"), "hvagent.v1.StorageService/CreateVolume");
  EXPECT_EQ(op("GET", "/metrics"), "hvagent.v1.MetricsService/Prometheus");
  EXPECT_EQ(op("GET", "/v1/stats/domains/web1"), "hvagent.v1.MetricsService/GetDomainStats");
  EXPECT_EQ(op("PUT", "/v1/host"), "none");
  for (const char* alias : {"/v1/pools/", "/v1/pools//volumes", "/v1/pools/vg0/", "/v1/pools/vg0/volumes/",
                            "/v1/pools/vg0/volumes/data/", "/v1/domains/", "/v1/domains/web1/"}) {
    EXPECT_EQ(op("GET", alias), "none") << alias;
  }
}

class RestAuthTest : public ::testing::Test {
 protected:
  HttpResponse Call(const std::string& method, const std::string& path, const std::string& token,
                    const std::string& body = "") {
    return router_.Handle({method, path, {}, body, token.empty() ? "" : "Bearer " + token});
  }
  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  service::DomainService domains_{hv_, clock_, {}};
  service::HostService host_{hv_};
  Authorizer authz_ = Make();
  RestRouter router_{ops::Pipeline({.host = &host_, .domains = &domains_}, {.authz = &authz_})};
};

TEST_F(RestAuthTest, NoTokenIs401WrongRoleIs403AndNothingRuns) {
  constexpr char kCreate[] = R"({"spec":{"name":"web1","vcpus":1,"memory_mib":64,"firmware":{"type":"TYPE_BIOS"}}})";
  auto r = Call("POST", "/v1/domains", "", kCreate);
  EXPECT_EQ(r.status, 401);
  EXPECT_THAT(r.body, HasSubstr("UNAUTHENTICATED"));
  r = Call("POST", "/v1/domains", "wrong", kCreate);
  EXPECT_EQ(r.status, 401);
  r = Call("POST", "/v1/domains", "s3cret-monitor", kCreate);
  EXPECT_EQ(r.status, 403);
  EXPECT_THAT(r.body, HasSubstr("PERMISSION_DENIED"));
  EXPECT_TRUE(hv_.calls.empty());
  r = Call("POST", "/v1/domains", "s3cret-controller", kCreate);
  EXPECT_EQ(r.status, 201) << r.body;
}

// A path spelling the roles check does not know (a trailing slash, an empty segment) must not
// reach a resource that would accept it: it was a way to create domains with a monitor token.
TEST_F(RestAuthTest, PathsWithoutAnOperationNeverReachAResource) {
  constexpr char kCreate[] = R"({"spec":{"name":"web1","vcpus":1,"memory_mib":64,"firmware":{"type":"TYPE_BIOS"}}})";
  for (const char* path : {"/v1/domains/", "/v1//domains", "/v1/domains//"}) {
    auto r = Call("POST", path, "s3cret-monitor", kCreate);
    EXPECT_EQ(r.status, 404) << path << " " << r.body;
  }
  EXPECT_TRUE(hv_.calls.empty());
  EXPECT_FALSE(hv_.GetDomain("web1").ok());
  EXPECT_EQ(Call("GET", "/v1/domains/web1:frob", "s3cret-monitor").status, 404);  // no such action
  EXPECT_EQ(Call("PUT", "/v1/domains", "s3cret-controller").status, 405);        // the path exists
  EXPECT_EQ(Call("OPTIONS", "/v1/host", "s3cret-monitor").status, 405);
}

TEST_F(RestAuthTest, HealthIsPublicUnknownRoutesNeedAnIdentity) {
  EXPECT_EQ(Call("GET", "/healthz", "").status, 200);
  EXPECT_EQ(Call("GET", "/v1/nothing", "").status, 401);
  EXPECT_EQ(Call("GET", "/v1/nothing", "s3cret-monitor").status, 404);
  EXPECT_EQ(Call("GET", "/v1/host", "s3cret-monitor").status, 200);
}

}  // namespace
}  // namespace hvagent::api::auth

namespace hvagent::api::auth {
namespace {

TEST(RateLimiterTest, BucketRefillsPerCallerAndStreamsAreCapped) {
  testing::FakeClock clock;
  RateLimiter limiter({.requests_per_second = 2, .burst = 3, .max_streams_per_caller = 1}, clock);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(limiter.Allow("a").ok()) << i;
  absl::Status s = limiter.Allow("a");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()), HasSubstr("rate limit: 'a'"));
  EXPECT_TRUE(limiter.Allow("b").ok());  // another caller has its own bucket
  clock.SleepFor(std::chrono::milliseconds(500));  // one token back
  EXPECT_TRUE(limiter.Allow("a").ok());
  EXPECT_FALSE(limiter.Allow("a").ok());
  clock.SleepFor(std::chrono::seconds(60));  // refills to the burst, not beyond
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(limiter.Allow("a").ok()) << i;
  EXPECT_FALSE(limiter.Allow("a").ok());

  {
    auto first = limiter.OpenStream("a");
    EXPECT_TRUE(first.status().ok());
    auto second = limiter.OpenStream("a");
    EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_TRUE(limiter.OpenStream("b").status().ok());
  }
  EXPECT_TRUE(limiter.OpenStream("a").status().ok());  // released with the slot
}

TEST(RateLimiterTest, RefilledBucketsAreForgottenButAnEmptyOneIsKept) {
  testing::FakeClock clock;
  RateLimiter limiter({.requests_per_second = 1, .burst = 2}, clock);
  EXPECT_TRUE(limiter.Allow("drained").ok());
  EXPECT_TRUE(limiter.Allow("drained").ok());
  for (size_t i = 0; i + 1 < RateLimiter::kSweepAt; ++i) EXPECT_TRUE(limiter.Allow("once-" + std::to_string(i)).ok());
  EXPECT_EQ(limiter.tracked_callers(), RateLimiter::kSweepAt);
  clock.SleepFor(std::chrono::milliseconds(1500));  // the one-timers refill; "drained" does not
  EXPECT_TRUE(limiter.Allow("new").ok());  // sweeps first
  EXPECT_EQ(limiter.tracked_callers(), 2u);  // "drained" and "new"
  EXPECT_TRUE(limiter.Allow("drained").ok());
  EXPECT_FALSE(limiter.Allow("drained").ok());  // its debt survived the sweep
}

TEST(RateLimiterTest, RestAnswers429WhenTheCallerIsOverItsLimit) {
  testing::FakeHypervisor hv;
  testing::FakeClock clock;
  service::DomainService domains(hv, clock, {});
  service::HostService host(hv);
  RateLimiter limiter({.requests_per_second = 1, .burst = 1}, clock);
  Authorizer::Options o;
  o.tokens = {{"t", Sha256Hex("tok"), Role::kMonitor}};
  o.limiter = &limiter;
  Authorizer authz(o);
  RestRouter router(ops::Pipeline({.host = &host, .domains = &domains}, {.authz = &authz}));
  EXPECT_EQ(router.Handle({"GET", "/v1/host", {}, "", "Bearer tok"}).status, 200);
  auto r = router.Handle({"GET", "/v1/host", {}, "", "Bearer tok"});
  EXPECT_EQ(r.status, 429);
  EXPECT_THAT(r.body, HasSubstr("RESOURCE_EXHAUSTED"));
}

}  // namespace
}  // namespace hvagent::api::auth
