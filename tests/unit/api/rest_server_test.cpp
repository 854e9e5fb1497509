// RestServer over a real socket: what only the HTTP edge does (body limit, request ids,
// URL decoding), with the router and services behind it.
#include "agent/api/rest/rest_server.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"

#include <cpprest/http_client.h>

namespace hvagent::api {
namespace {

using ::testing::HasSubstr;
namespace http = web::http;

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

class RestServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    listen_ = "127.0.0.1:" + std::to_string(FreePort());
    server_ = std::make_unique<RestServer>(listen_, router_, 4096);
    ASSERT_TRUE(server_->Start().ok());
    client_ = std::make_unique<http::client::http_client>("http://" + listen_);
  }
  void TearDown() override { server_->Stop(); }

  http::http_response Send(const http::method& m, const std::string& path, const std::string& body = "") {
    http::http_request req(m);
    req.set_request_uri(path);
    if (!body.empty()) req.set_body(body, "application/json");
    return client_->request(req).get();
  }

  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  service::DomainService domains_{hv_, clock_, {}};
  service::HostService host_{hv_};
  RestRouter router_{host_, domains_};
  std::string listen_;
  std::unique_ptr<RestServer> server_;
  std::unique_ptr<http::client::http_client> client_;
};

TEST_F(RestServerTest, ServesHealthzWithGeneratedRequestId) {
  auto r = Send(http::methods::GET, "/healthz");
  EXPECT_EQ(r.status_code(), 200);
  EXPECT_THAT(r.extract_utf8string().get(), HasSubstr("SERVING"));
  ASSERT_TRUE(r.headers().has("X-Request-Id"));
  EXPECT_EQ(r.headers()["X-Request-Id"].size(), 16u);
}

TEST_F(RestServerTest, EchoesClientRequestId) {
  http::http_request req(http::methods::GET);
  req.set_request_uri("/v1/host");
  req.headers().add("X-Request-Id", "abc-123");
  auto r = client_->request(req).get();
  EXPECT_EQ(r.headers()["X-Request-Id"], "abc-123");
}

TEST_F(RestServerTest, BodyOverLimitIs413AndCreatesNothing) {
  std::string big = R"({"spec":{"name":"big","vcpus":1,"memory_mib":64,"machine":")" + std::string(8000, 'a') + "\"}}";
  auto r = Send(http::methods::POST, "/v1/domains", big);
  EXPECT_EQ(r.status_code(), 413);
  EXPECT_THAT(r.extract_utf8string().get(), HasSubstr("over the limit"));
  EXPECT_EQ(hv_.domain_count(), 0u);
}

TEST_F(RestServerTest, MalformedJsonIs400) {
  auto r = Send(http::methods::POST, "/v1/domains", "{\"spec\": ");
  EXPECT_EQ(r.status_code(), 400);
  EXPECT_THAT(r.extract_utf8string().get(), HasSubstr("INVALID_ARGUMENT"));
}

TEST_F(RestServerTest, CreateThenGetWithPercentEncodedName) {
  auto r = Send(http::methods::POST, "/v1/domains", R"({"spec":{"name":"web1","vcpus":1,"memory_mib":64}})");
  ASSERT_EQ(r.status_code(), 201);
  r = Send(http::methods::GET, "/v1/domains/web%31");
  EXPECT_EQ(r.status_code(), 200);
  EXPECT_THAT(r.extract_utf8string().get(), HasSubstr(R"("name":"web1")"));
}

TEST(RestServerStartTest, PortInUseIsReportedNotThrown) {
  testing::FakeHypervisor hv;
  testing::FakeClock clock;
  service::DomainService domains(hv, clock, {});
  service::HostService host(hv);
  RestRouter router(host, domains);
  std::string listen = "127.0.0.1:" + std::to_string(FreePort());
  RestServer first(listen, router, 1024);
  ASSERT_TRUE(first.Start().ok());
  RestServer second(listen, router, 1024);
  absl::Status s = second.Start();
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("rest.listen"));
}

}  // namespace
}  // namespace hvagent::api
