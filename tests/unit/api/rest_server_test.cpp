// RestServer over a real socket: what only the HTTP edge does (body limit, request ids,
// URL decoding), with the router and services behind it.
#include "agent/api/rest/rest_server.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/fakes/fake_clock.h"
#include "tests/fakes/free_port.h"
#include "tests/fakes/fake_hypervisor.h"

#include <cpprest/http_client.h>

namespace hvagent::api {
namespace {

using ::testing::HasSubstr;
using ::hvagent::testing::FreePort;
namespace http = web::http;

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
  RestRouter router_{ops::Pipeline({.host = &host_, .domains = &domains_}, {})};
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

// A keep-alive HTTP/1.1 connection that sends POSTs one after another, as load balancers and
// controllers do. Post() answers the status code, or -1 on timeout or reset.
class RawConnection {
 public:
  explicit RawConnection(const std::string& listen) : fd_(socket(AF_INET, SOCK_STREAM, 0)) {
    timeval tv{.tv_sec = 10, .tv_usec = 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(std::stoi(listen.substr(listen.rfind(':') + 1))));
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawConnection() { close(fd_); }
  int Post(const std::string& path, const std::string& body) {
    if (!connected_) return -1;
    std::string req = "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                      std::to_string(body.size()) + "\r\n\r\n" + body;
    if (send(fd_, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) return -1;
    size_t end;
    while ((end = in_.find("\r\n\r\n")) == std::string::npos) {
      if (!Read()) return -1;
    }
    size_t length = 0;
    if (size_t cl = in_.find("Content-Length: "); cl != std::string::npos && cl < end) {
      length = std::stoul(in_.substr(cl + 16));
    }
    while (in_.size() < end + 4 + length) {
      if (!Read()) return -1;
    }
    int status = std::atoi(in_.c_str() + 9);  // "HTTP/1.1 400 ..."
    in_.erase(0, end + 4 + length);
    return status;
  }

 private:
  bool Read() {
    char buf[4096];
    ssize_t n = recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) return false;
    in_.append(buf, static_cast<size_t>(n));
    return true;
  }
  int fd_;
  bool connected_ = false;
  std::string in_;
};

// cpprestsdk's pool has 40 threads; a handler that blocked on reading its body or on writing
// its reply wedged the whole server once 40 requests were in flight (for good: even SIGTERM
// could not stop it). 64 concurrent keep-alive clients must all be answered.
TEST_F(RestServerTest, ManyConcurrentRequestsWithBodiesAreAllAnswered) {
  constexpr int kClients = 64, kRequests = 20;
  std::vector<std::thread> clients;
  std::atomic<int> answered{0};
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      RawConnection c(listen_);
      for (int j = 0; j < kRequests; ++j) {
        std::string body = R"({"spec":{"name":"c)" + std::to_string(i) + "-" + std::to_string(j) +
                           R"(","vcpus":1,"memory_mib":64}})";
        if (c.Post("/v1/domains", body) != 201) break;  // a wedged server: fail in 10 s, not 200
        ++answered;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(answered.load(), kClients * kRequests);
  EXPECT_EQ(hv_.domain_count(), static_cast<size_t>(kClients * kRequests));
  EXPECT_EQ(Send(http::methods::GET, "/healthz").status_code(), 200);
}

// SIGTERM: a create half-way through runs to its end and is answered; a request that arrives
// after the drain began gets 503 with Retry-After; Stop() returns only once the create is done.
TEST_F(RestServerTest, DrainFinishesTheRequestInFlightAndRefusesNewOnes) {
  std::promise<void> entered, release;
  std::shared_future<void> released = release.get_future().share();
  hv_.before_define = [&](const std::string&) {
    entered.set_value();
    released.wait();
  };
  std::atomic<int> create_status{0};
  std::thread create([&] {
    create_status = Send(http::methods::POST, "/v1/domains", R"({"spec":{"name":"slow","vcpus":1,"memory_mib":64}})")
                        .status_code();
  });
  entered.get_future().wait();
  server_->BeginDrain();
  auto refused = Send(http::methods::GET, "/v1/host");
  EXPECT_EQ(refused.status_code(), 503);
  EXPECT_EQ(refused.headers()["Retry-After"], "1");
  EXPECT_THAT(refused.extract_utf8string().get(), HasSubstr("UNAVAILABLE"));

  std::atomic<bool> stopped{false};
  std::thread stop([&] {
    server_->Stop();
    stopped = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(stopped.load()) << "Stop() returned while a request was still being handled";
  release.set_value();
  create.join();
  stop.join();
  EXPECT_EQ(create_status.load(), 201);
  EXPECT_EQ(hv_.domain_count(), 1u);
}

TEST(RestServerStartTest, PortInUseIsReportedNotThrown) {
  testing::FakeHypervisor hv;
  testing::FakeClock clock;
  service::DomainService domains(hv, clock, {});
  service::HostService host(hv);
  RestRouter router(ops::Pipeline({.host = &host, .domains = &domains}, {}));
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
