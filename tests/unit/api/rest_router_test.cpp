// The REST surface, request by request, over the real service layer and a fake hypervisor.
#include "agent/api/rest/rest_router.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"

namespace hvagent::api {
namespace {

using ::testing::HasSubstr;

constexpr char kCreateWeb1[] =
    R"({"spec":{"name":"web1","vcpus":2,"memory_mib":256,"firmware":{"type":"TYPE_BIOS"}},"start":true})";

class RestRouterTest : public ::testing::Test {
 protected:
  HttpResponse Call(const std::string& method, const std::string& path, const std::string& body = "",
                    std::map<std::string, std::string> query = {}) {
    return router_.Handle({method, path, std::move(query), body});
  }
  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  service::DomainService domains_{hv_, clock_, {}};
  service::HostService host_{hv_};
  RestRouter router_{ops::Pipeline({.host = &host_, .domains = &domains_}, {})};
};

TEST_F(RestRouterTest, Healthz_ReflectsHypervisorConnection) {
  auto r = Call("GET", "/healthz");
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr(R"("hypervisor_connected":true)"));
  hv_.connected = false;
  r = Call("GET", "/healthz");
  EXPECT_EQ(r.status, 503);
  EXPECT_THAT(r.body, HasSubstr("NOT_SERVING"));
}

// REST listens before gRPC: until main() says every listener serves, /healthz is not healthy.
TEST_F(RestRouterTest, Healthz_IsStartingUntilEveryListenerServes) {
  router_.SetStarting(true);
  auto r = Call("GET", "/healthz");
  EXPECT_EQ(r.status, 503);
  EXPECT_THAT(r.body, HasSubstr("STARTING"));
  router_.SetStarting(false);
  EXPECT_EQ(Call("GET", "/healthz").status, 200);
}

TEST_F(RestRouterTest, GetHost_UsesProtoFieldNames) {
  auto r = Call("GET", "/v1/host");
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr(R"("arch":"aarch64")"));
  EXPECT_THAT(r.body, HasSubstr(R"("memory_bytes":"17179869184")"));
  EXPECT_THAT(r.body, HasSubstr(R"("agent_version":)"));
}

TEST_F(RestRouterTest, GetCapacity) {
  ASSERT_EQ(Call("POST", "/v1/domains", kCreateWeb1).status, 201);
  auto r = Call("GET", "/v1/host/capacity");
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr(R"("domains_running":1)"));
  EXPECT_THAT(r.body, HasSubstr(R"("allocated_vcpus":2)"));
}

TEST_F(RestRouterTest, CreateGetListDelete) {
  auto r = Call("POST", "/v1/domains", kCreateWeb1);
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_THAT(r.body, HasSubstr(R"("state":"DOMAIN_STATE_RUNNING")"));
  EXPECT_THAT(r.body, HasSubstr(R"("memory_mib":"256")"));
  r = Call("GET", "/v1/domains/web1");
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr(R"("name":"web1")"));
  r = Call("GET", "/v1/domains");
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr(R"("domains":[{"name":"web1")"));
  r = Call("DELETE", "/v1/domains/web1", "", {{"force", "true"}});
  EXPECT_EQ(r.status, 204);
  EXPECT_TRUE(r.body.empty());
  EXPECT_EQ(Call("GET", "/v1/domains/web1").status, 404);
}

// GET /v1/domains/{name} and the listing carry the domain's NICs as the spec gave them (OVS
// port with Neutron's port id and tag, Linux bridge, libvirt network), with the tap while it runs.
TEST_F(RestRouterTest, GetDomain_ListsItsNicsWithTheirHostDeviceWhileRunning) {
  service::DomainService domains{
      hv_, clock_, {.networks = {.bridges = std::vector<std::string>{"br0"}, .ovs_bridges = {"br-int"}}}};
  RestRouter router{ops::Pipeline({.host = &host_, .domains = &domains}, {})};
  auto call = [&](const std::string& method, const std::string& path, const std::string& body = "") {
    return router.Handle({method, path, {}, body});
  };
  auto r = call("POST", "/v1/domains", R"({"spec":{"name":"web1","vcpus":1,"memory_mib":64,"nics":[
      {"mac":"52:54:00:00:00:01","ovs":{"bridge":"br-int","interface_id":"3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b","vlan":42}},
      {"mac":"52:54:00:00:00:02","bridge":"br0","model":"virtio","mtu":1400},
      {"mac":"52:54:00:00:00:03","network":"default"}]}})");
  ASSERT_EQ(r.status, 201) << r.body;
  r = call("GET", "/v1/domains/web1");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_THAT(r.body, HasSubstr(R"("nics":[{"nic":{"mac":"52:54:00:00:00:01",)"));
  EXPECT_THAT(r.body,
              HasSubstr(R"("ovs":{"bridge":"br-int","interface_id":"3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b","vlan":42})"));
  EXPECT_THAT(r.body, HasSubstr(R"("bridge":"br0")"));
  EXPECT_THAT(r.body, HasSubstr(R"("model":"virtio")"));
  EXPECT_THAT(r.body, HasSubstr(R"("mtu":1400)"));
  EXPECT_THAT(r.body, HasSubstr(R"("network":"default")"));
  EXPECT_THAT(r.body, HasSubstr(R"("host_device":"")"));
  EXPECT_THAT(r.body, ::testing::Not(HasSubstr("vnet")));  // shut off: no taps
  ASSERT_EQ(call("POST", "/v1/domains/web1:start").status, 200);
  r = call("GET", "/v1/domains/web1");
  EXPECT_THAT(r.body, HasSubstr(R"("host_device":"vnet0")"));
  EXPECT_THAT(r.body, HasSubstr(R"("host_device":"vnet2")"));
  EXPECT_THAT(call("GET", "/v1/domains").body, HasSubstr(R"("host_device":"vnet1")"));
  // Hot-plugged: the next GET lists it.
  ASSERT_EQ(call("POST", "/v1/domains/web1/nics", R"({"nic":{"mac":"52:54:00:00:00:04","bridge":"br0"}})").status, 201);
  EXPECT_THAT(call("GET", "/v1/domains/web1").body, HasSubstr(R"("mac":"52:54:00:00:00:04")"));
}

TEST_F(RestRouterTest, Actions) {
  ASSERT_EQ(Call("POST", "/v1/domains", kCreateWeb1).status, 201);
  auto r = Call("POST", "/v1/domains/web1:suspend");
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr("DOMAIN_STATE_PAUSED"));
  EXPECT_THAT(Call("POST", "/v1/domains/web1:resume", "{}").body, HasSubstr("DOMAIN_STATE_RUNNING"));
  EXPECT_EQ(Call("POST", "/v1/domains/web1:reboot").status, 200);
  r = Call("POST", "/v1/domains/web1:shutdown", R"({"timeout_seconds": 5})");
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr(R"("forced":false)"));
  EXPECT_THAT(r.body, HasSubstr("DOMAIN_STATE_SHUTOFF"));
  EXPECT_THAT(Call("POST", "/v1/domains/web1:start").body, HasSubstr("DOMAIN_STATE_RUNNING"));
  EXPECT_THAT(Call("POST", "/v1/domains/web1:destroy").body, HasSubstr("DOMAIN_STATE_SHUTOFF"));
}

TEST_F(RestRouterTest, Shutdown_ReportsForcedWhenGuestIgnoresIt) {
  hv_.guests_honour_shutdown = false;
  ASSERT_EQ(Call("POST", "/v1/domains", kCreateWeb1).status, 201);
  auto r = Call("POST", "/v1/domains/web1:shutdown", R"({"timeout_seconds": 2})");
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr(R"("forced":true)"));
}

TEST_F(RestRouterTest, Errors_UnknownDomainIs404WithCode) {
  for (auto [method, path] : std::vector<std::pair<std::string, std::string>>{
           {"GET", "/v1/domains/ghost"}, {"DELETE", "/v1/domains/ghost"}, {"POST", "/v1/domains/ghost:start"}}) {
    auto r = Call(method, path);
    EXPECT_EQ(r.status, 404) << method << " " << path;
    EXPECT_THAT(r.body, HasSubstr(R"("code":"NOT_FOUND")"));
  }
}

TEST_F(RestRouterTest, Errors_DuplicateIs409AndOriginalUnchanged) {
  ASSERT_EQ(Call("POST", "/v1/domains", kCreateWeb1).status, 201);
  auto r = Call("POST", "/v1/domains", R"({"spec":{"name":"web1","vcpus":4,"memory_mib":64}})");
  EXPECT_EQ(r.status, 409);
  EXPECT_THAT(r.body, HasSubstr("ALREADY_EXISTS"));
  EXPECT_THAT(Call("GET", "/v1/domains/web1").body, HasSubstr(R"("vcpus":2)"));
}

TEST_F(RestRouterTest, Errors_InvalidSpecIs400NamingTheField) {
  struct Case {
    std::string body, field;
  };
  for (const auto& c : std::vector<Case>{
           {R"({"spec":{"name":"bad name","vcpus":1,"memory_mib":64}})", "spec.name"},
           {R"({"spec":{"name":"a'/><devices>","vcpus":1,"memory_mib":64}})", "spec.name"},
           {R"({"spec":{"name":"x","vcpus":0,"memory_mib":64}})", "spec.vcpus"},
           {R"({"spec":{"name":"x","vcpus":100000,"memory_mib":64}})", "spec.vcpus"},
           {R"({"spec":{"name":"x","vcpus":1,"memory_mib":0}})", "spec.memory_mib"},
           {R"({"spec":{"name":"x","vcpus":1,"memory_mib":"1000000000000"}})", "spec.memory_mib"},
           {R"({"spec":{"name":"x","vcpus":1,"memory_mib":64,"disks":[{"source_path":"/a","target":"vda","type":7}]}})",
            "spec.disks[0].type"},
           {R"({"start":true})", "spec"},
       }) {
    auto r = Call("POST", "/v1/domains", c.body);
    EXPECT_EQ(r.status, 400) << c.body;
    EXPECT_THAT(r.body, HasSubstr(R"("code":"INVALID_ARGUMENT")")) << c.body;
    EXPECT_THAT(r.body, HasSubstr(c.field)) << c.body;
  }
  EXPECT_EQ(hv_.domain_count(), 0u);
  EXPECT_TRUE(hv_.calls.empty()) << "invalid input must not reach the hypervisor";
}

TEST_F(RestRouterTest, Errors_MalformedOrUnknownJsonIs400) {
  for (std::string body : {"{", "not json", R"({"spec":{"name":"x","vcpus":"many"}})", R"({"spec":{"nmae":"x"}})"}) {
    auto r = Call("POST", "/v1/domains", body);
    EXPECT_EQ(r.status, 400) << body;
    EXPECT_THAT(r.body, HasSubstr("request body")) << body;
  }
  EXPECT_EQ(hv_.domain_count(), 0u);
}

TEST_F(RestRouterTest, Errors_DeleteRunningWithoutForceIs409) {
  ASSERT_EQ(Call("POST", "/v1/domains", kCreateWeb1).status, 201);
  auto r = Call("DELETE", "/v1/domains/web1");
  EXPECT_EQ(r.status, 409);
  EXPECT_THAT(r.body, HasSubstr("FAILED_PRECONDITION"));
  EXPECT_EQ(Call("DELETE", "/v1/domains/web1", "", {{"force", "perhaps"}}).status, 400);
  EXPECT_EQ(Call("GET", "/v1/domains/web1").status, 200);
}

TEST_F(RestRouterTest, Errors_RoutingProblems) {
  EXPECT_EQ(Call("GET", "/v2/everything").status, 404);
  EXPECT_EQ(Call("GET", "/v1/domains/web1/disks").status, 404);
  EXPECT_EQ(Call("PUT", "/v1/domains").status, 405);
  EXPECT_EQ(Call("POST", "/v1/host").status, 405);
  EXPECT_EQ(Call("GET", "/v1/domains/web1:start").status, 405);
  ASSERT_EQ(Call("POST", "/v1/domains", kCreateWeb1).status, 201);
  auto r = Call("POST", "/v1/domains/web1:explode");
  EXPECT_EQ(r.status, 404);
  EXPECT_THAT(r.body, HasSubstr("unknown action"));
}

TEST_F(RestRouterTest, Errors_NameCarryingXmlInPathIs400) {
  auto r = Call("GET", "/v1/domains/a'><devices>");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("INVALID_ARGUMENT"));
}

TEST_F(RestRouterTest, Errors_HypervisorDownIs503) {
  hv_.connected = false;
  auto r = Call("GET", "/v1/domains");
  EXPECT_EQ(r.status, 503);
  EXPECT_THAT(r.body, HasSubstr("UNAVAILABLE"));
}

}  // namespace
}  // namespace hvagent::api

namespace hvagent::api {
namespace {

class RestMetricsTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(domains_.Create({.name = "web1", .vcpus = 1, .memory_mib = 64}, true).ok()); }
  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  service::DomainService domains_{hv_, clock_, {}};
  service::HostService host_{hv_};
  service::MetricsCollector metrics_{hv_, host_, clock_, {}};
  RestRouter router_{ops::Pipeline({.host = &host_, .domains = &domains_, .metrics = &metrics_}, {})};
};

TEST_F(RestMetricsTest, MetricsIsPrometheusText) {
  auto r = router_.Handle({"GET", "/metrics", {}, ""});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_THAT(r.body, HasSubstr("hvagent_domain_info{domain=\"web1\""));
  EXPECT_EQ(router_.Handle({"POST", "/metrics", {}, ""}).status, 405);
}

TEST_F(RestMetricsTest, DomainStatsAllAndOne) {
  auto all = router_.Handle({"GET", "/v1/stats/domains", {}, ""});
  EXPECT_EQ(all.status, 200);
  EXPECT_EQ(all.content_type, "application/json");
  EXPECT_THAT(all.body, HasSubstr(R"("name":"web1")"));
  EXPECT_EQ(router_.Handle({"GET", "/v1/stats/domains/web1", {}, ""}).status, 200);
  auto missing = router_.Handle({"GET", "/v1/stats/domains/nope", {}, ""});
  EXPECT_EQ(missing.status, 404);
  EXPECT_THAT(missing.body, HasSubstr("'nope' not found"));
  EXPECT_EQ(router_.Handle({"GET", "/v1/stats/domains/a/b", {}, ""}).status, 404);
  EXPECT_EQ(hv_.stats_calls, 1);  // one shared sample served all of these
}

TEST_F(RestMetricsTest, WithoutACollectorThereIsNoMetricsPath) {
  RestRouter plain(ops::Pipeline({.host = &host_, .domains = &domains_}, {}));
  EXPECT_EQ(plain.Handle({"GET", "/metrics", {}, ""}).status, 404);
}

}  // namespace
}  // namespace hvagent::api

namespace hvagent::api {
namespace {

TEST_F(RestMetricsTest, EventChannelsOffXenAre501NamingWhy) {
  auto r = router_.Handle({"GET", "/v1/host/event-channels", {}, ""});
  EXPECT_EQ(r.status, 501);
  EXPECT_THAT(r.body, HasSubstr("only on Xen hosts"));
}

// Past limits.max_operations_in_flight a changing request gets 503 with Retry-After and
// changes nothing; reads are not counted.
TEST(RestRouterGateTest, ChangingRequestsPastTheBoundAre503WithRetryAfter) {
  testing::FakeHypervisor hv;
  testing::FakeClock clock;
  service::DomainService domains(hv, clock, {});
  service::HostService host(hv);
  service::OperationGate gate(1);
  RestRouter router(ops::Pipeline({.host = &host, .domains = &domains}, {.gate = &gate}));
  const std::string create = R"({"spec":{"name":"web1","vcpus":1,"memory_mib":64}})";
  {
    auto busy = gate.Enter();  // an operation in flight
    ASSERT_TRUE(busy.ok());
    HttpResponse r = router.Handle({"POST", "/v1/domains", {}, create, ""});
    EXPECT_EQ(r.status, 503);
    EXPECT_THAT(r.body, ::testing::HasSubstr("max_operations_in_flight"));
    EXPECT_EQ(r.headers["Retry-After"], "1");
    EXPECT_EQ(hv.domain_count(), 0u);
    EXPECT_EQ(router.Handle({"GET", "/v1/domains", {}, "", ""}).status, 200);  // reads pass
  }
  EXPECT_EQ(router.Handle({"POST", "/v1/domains", {}, create, ""}).status, 201);
  EXPECT_EQ(gate.in_flight(), 0);
}

}  // namespace
}  // namespace hvagent::api

namespace hvagent::api {
namespace {

// POST /v1/domains/{name}:resize (UpdateDomain): an absent field stays, an explicit 0 is 400
// naming the field, a running domain past its maximum is 409, and each refusal changes nothing.
TEST_F(RestRouterTest, Resize_StoppedDomainThenRefusalsNameTheField) {
  ASSERT_EQ(Call("POST", "/v1/domains",
                 R"({"spec":{"name":"web1","vcpus":1,"max_vcpus":2,"memory_mib":256,"firmware":{"type":"TYPE_BIOS"}}})")
                .status,
            201);
  auto r = Call("POST", "/v1/domains/web1:resize", R"({"vcpus": 2, "memory_mib": "512"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_THAT(r.body, HasSubstr(R"("vcpus":2)"));
  EXPECT_THAT(r.body, HasSubstr(R"("memory_mib":"512")"));
  r = Call("POST", "/v1/domains/web1:resize", R"({"vcpus": 0})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("vcpus: must be between 1"));
  r = Call("POST", "/v1/domains/web1:resize", R"({"memory_mib": "4"})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("memory_mib: must be between 16"));
  EXPECT_EQ(Call("POST", "/v1/domains/web1:resize", "{}").status, 400);
  EXPECT_EQ(Call("POST", "/v1/domains/web1:resize", R"({"name": "other", "vcpus": 1})").status, 400);
  EXPECT_EQ(Call("POST", "/v1/domains/ghost:resize", R"({"vcpus": 1})").status, 404);
  ASSERT_EQ(Call("POST", "/v1/domains/web1:start").status, 200);
  r = Call("POST", "/v1/domains/web1:resize", R"({"vcpus": 3})");
  EXPECT_EQ(r.status, 409);
  EXPECT_THAT(r.body, HasSubstr("vcpus"));
  r = Call("GET", "/v1/domains/web1");
  EXPECT_THAT(r.body, HasSubstr(R"("vcpus":2)"));
  EXPECT_THAT(r.body, HasSubstr(R"("memory_mib":"512")"));
}

// Nova's hw:cpu_* and quota:cpu_shares arrive as spec.cpu_topology / spec.cpu_shares: a topology
// that does not cover the vCPUs, or shares out of range, is 400 naming the field and creates
// nothing; a consistent one is created.
TEST_F(RestRouterTest, Create_CpuTopologyAndSharesAreCheckedNamingTheField) {
  auto r = Call("POST", "/v1/domains",
                R"({"spec":{"name":"web1","vcpus":4,"memory_mib":256,"firmware":{"type":"TYPE_BIOS"},)"
                R"("cpu_topology":{"sockets":2,"cores":1,"threads":1}}})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("spec.cpu_topology"));
  r = Call("POST", "/v1/domains",
           R"({"spec":{"name":"web1","vcpus":4,"memory_mib":256,"firmware":{"type":"TYPE_BIOS"},)"
           R"("cpu_shares":300000}})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("spec.cpu_shares"));
  EXPECT_EQ(Call("GET", "/v1/domains/web1").status, 404);
  r = Call("POST", "/v1/domains",
           R"({"spec":{"name":"web1","vcpus":4,"memory_mib":256,"firmware":{"type":"TYPE_BIOS"},)"
           R"("cpu_topology":{"sockets":2,"cores":1,"threads":2},"cpu_shares":2048}})");
  EXPECT_EQ(r.status, 201) << r.body;
}

}  // namespace
}  // namespace hvagent::api
