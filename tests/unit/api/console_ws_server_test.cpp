// Specification of agent/api ConsoleWsServer: the web terminal page, its fixed static files, and
// the console WebSocket that redeems a serial-ws ticket and joins ConsoleSessions like a gRPC
// Attach. A real listener on loopback, real Beast clients; the guest is tests/fakes/fake_console.h.

#include "agent/api/console_ws/console_ws_server.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_console.h"

namespace hvagent::api {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;
using service::ConsoleKind;
using ::testing::HasSubstr;

struct Reply {
  int status = 0;
  std::string body;
  std::string csp;
};

class ConsoleWsServerTest : public ::testing::Test {
 protected:
  ConsoleWsServerTest() {
    guest.AddDomain("web1");
    guest.AddDomain("web2");
    assets = std::filesystem::temp_directory_path() / ("hvws-assets-" + std::to_string(getpid()));
    std::filesystem::create_directories(assets);
    std::ofstream(assets / "xterm.js") << "/* xterm under test */";
    std::ofstream(assets / "secret.txt") << "not to be served";
    server = std::make_unique<ConsoleWsServer>(
        sessions, tickets, ConsoleWsServer::Options{.listen = "127.0.0.1:0", .asset_dir = assets.string()},
        [this](const std::string& domain, const std::string& peer, const absl::Status& why) {
          std::lock_guard lock(mu);
          refusals.push_back(domain + ": " + std::string(why.message()));
          peers.push_back(peer);
        });
    EXPECT_TRUE(server->Start().ok());
  }
  // The server again, now with a per-caller limit.
  void RestartWithLimiter(auth::RateLimiter* limiter) {
    server->Stop();
    server = std::make_unique<ConsoleWsServer>(
        sessions, tickets,
        ConsoleWsServer::Options{.listen = "127.0.0.1:0", .asset_dir = assets.string(), .limiter = limiter},
        [this](const std::string& domain, const std::string& peer, const absl::Status& why) {
          std::lock_guard lock(mu);
          refusals.push_back(domain + ": " + std::string(why.message()));
          peers.push_back(peer);
        });
    ASSERT_TRUE(server->Start().ok());
  }
  ~ConsoleWsServerTest() override {
    server->Stop();
    std::filesystem::remove_all(assets);
  }

  std::string Ticket(const std::string& domain, ConsoleKind kind = ConsoleKind::kSerialWs) {
    return tickets.Issue(domain, kind)->ticket;
  }

  Reply Get(const std::string& target, bool upgrade = false) {
    asio::io_context ioc;
    tcp::socket sock(ioc);
    sock.connect({asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(server->port())});
    http::request<http::empty_body> req{http::verb::get, target, 11};
    req.set(http::field::host, "127.0.0.1");
    if (upgrade) {
      req.set(http::field::upgrade, "websocket");
      req.set(http::field::connection, "Upgrade");
      req.set(http::field::sec_websocket_version, "13");
      req.set(http::field::sec_websocket_key, "dGhlIHNhbXBsZSBub25jZQ==");
    }
    http::write(sock, req);
    beast::flat_buffer buf;
    http::response<http::string_body> res;
    http::read(sock, buf, res);
    return {static_cast<int>(res.result_int()), res.body(), std::string(res["Content-Security-Policy"])};
  }

  // A WebSocket upgrade that is expected to be refused: the HTTP answer (Beast's client keeps
  // no response when it declines one).
  Reply Refused(const std::string& target) { return Get(target, /*upgrade=*/true); }

  // A WebSocket client; `status` is 101 when open, 0 when the upgrade was declined.
  struct Client {
    asio::io_context ioc;
    websocket::stream<tcp::socket> ws{ioc};
    int status = 0;
  };
  std::unique_ptr<Client> Connect(const std::string& target) {
    auto c = std::make_unique<Client>();
    c->ws.next_layer().connect({asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(server->port())});
    websocket::response_type res;
    beast::error_code ec;
    c->ws.handshake(res, "127.0.0.1", target, ec);
    c->status = ec ? 0 : static_cast<int>(res.result_int());
    return c;
  }
  // Reads frames until `want` has arrived (the fake emits synchronously, so it is on its way).
  static std::string ReadUntil(Client& c, const std::string& want) {
    std::string got;
    while (got.find(want) == std::string::npos) {
      beast::flat_buffer buf;
      c.ws.read(buf);
      EXPECT_TRUE(c.ws.got_binary());
      got += beast::buffers_to_string(buf.data());
    }
    return got;
  }
  // The close frame's code, once the server closed.
  static int CloseCode(Client& c) {
    beast::flat_buffer buf;
    beast::error_code ec;
    while (!ec) c.ws.read(buf, ec);
    EXPECT_EQ(ec, websocket::error::closed);
    return c.ws.reason().code;
  }
  std::string Typed(const std::string& domain, const std::string& want) {
    for (int i = 0; i < 500 && guest.Typed(domain).find(want) == std::string::npos; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return guest.Typed(domain);
  }
  void WaitAttachments(size_t n) {
    for (int i = 0; i < 500 && sessions.open_consoles() != n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  testing::FakeConsoleOpener guest;
  testing::FakeClock clock;
  service::ConsoleSessions sessions{guest, {.reader_buffer_bytes = 1024}};
  service::ConsoleTickets tickets{clock, std::chrono::seconds(60)};
  std::filesystem::path assets;
  std::mutex mu;
  std::vector<std::string> refusals;
  std::vector<std::string> peers;
  std::unique_ptr<ConsoleWsServer> server;
};

TEST_F(ConsoleWsServerTest, ConsoleWs_PageIsServedWithoutSpendingTheTicket) {
  const std::string t = Ticket("web1");
  Reply page = Get("/console/web1?ticket=" + t);
  EXPECT_EQ(page.status, 200);
  EXPECT_THAT(page.body, HasSubstr("/console/static/xterm.js"));
  EXPECT_THAT(page.csp, HasSubstr("script-src 'self'"));
  Reply script = Get("/console/static/console.js");
  EXPECT_EQ(script.status, 200);
  EXPECT_THAT(script.body, HasSubstr("new WebSocket"));
  EXPECT_EQ(tickets.outstanding(), 1u);  // only the socket redeems it
  auto c = Connect("/console/web1/ws?ticket=" + t);
  EXPECT_EQ(c->status, 101);
}

TEST_F(ConsoleWsServerTest, ConsoleWs_ServesOnlyItsFixedFiles) {
  Reply js = Get("/console/static/xterm.js");
  EXPECT_EQ(js.status, 200);
  EXPECT_EQ(js.body, "/* xterm under test */");
  EXPECT_EQ(Get("/console/static/secret.txt").status, 404);
  EXPECT_EQ(Get("/console/static/..%2Fsecret.txt").status, 404);
  EXPECT_EQ(Get("/console/static/../static/secret.txt").status, 404);
  EXPECT_EQ(Get("/console/static/xterm.css").status, 500);  // listed, but not in this asset dir
  EXPECT_EQ(Get("/").status, 404);
  EXPECT_EQ(Get("/etc/passwd").status, 404);
  EXPECT_EQ(Get("/console/web1/other").status, 404);
}

TEST_F(ConsoleWsServerTest, ConsoleWs_PlainRequestToTheSocketPathIs400) {
  Reply r = Get("/console/web1/ws?ticket=" + Ticket("web1"));
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("WebSocket"));
}

TEST_F(ConsoleWsServerTest, ConsoleWs_BadTicketsAre401BeforeTheUpgradeAndAudited) {
  EXPECT_EQ(Refused("/console/web1/ws").status, 401);
  EXPECT_EQ(Refused("/console/web1/ws?ticket=made-up").status, 401);
  Reply other = Refused("/console/web1/ws?ticket=" + Ticket("web2"));
  EXPECT_EQ(other.status, 401);
  EXPECT_THAT(other.body, HasSubstr("another domain"));
  Reply tcp_kind = Refused("/console/web1/ws?ticket=" + Ticket("web1", ConsoleKind::kSerialTcp));
  EXPECT_EQ(tcp_kind.status, 401);
  EXPECT_THAT(tcp_kind.body, HasSubstr("serial-tcp"));
  const std::string expiring = Ticket("web1");
  clock.SleepFor(std::chrono::seconds(61));
  Reply expired = Refused("/console/web1/ws?ticket=" + expiring);
  EXPECT_EQ(expired.status, 401);
  EXPECT_THAT(expired.body, HasSubstr("expired"));
  EXPECT_EQ(guest.opens("web1"), 0);  // nothing attached
  std::lock_guard lock(mu);
  ASSERT_EQ(refusals.size(), 5u);
  EXPECT_THAT(refusals[0], HasSubstr("web1: ticket: is required"));
  for (const std::string& p : peers) EXPECT_EQ(p, "127.0.0.1");  // who tried, for the audit line
}

TEST_F(ConsoleWsServerTest, ConsoleWs_CallerOverItsRateIs429BeforeTheTicketIsLookedAt) {
  auth::RateLimiter limiter({.requests_per_second = 1, .burst = 3}, clock);
  RestartWithLimiter(&limiter);
  EXPECT_EQ(Get("/console/web1?ticket=x").status, 200);
  EXPECT_EQ(Refused("/console/web1/ws?ticket=guess-1").status, 401);
  EXPECT_EQ(Refused("/console/web1/ws?ticket=guess-2").status, 401);
  // The bucket is empty: even a good ticket is refused, and not spent.
  const std::string good = Ticket("web1");
  Reply limited = Refused("/console/web1/ws?ticket=" + good);
  EXPECT_EQ(limited.status, 429);
  EXPECT_THAT(limited.body, HasSubstr("rate limit: 'serial-ws 127.0.0.1'"));
  EXPECT_EQ(Get("/console/static/console.js").status, 429);  // every request counts
  EXPECT_EQ(tickets.outstanding(), 1u);
  {
    std::lock_guard lock(mu);
    ASSERT_EQ(refusals.size(), 4u);  // two bad tickets, two over the rate: each audited
    EXPECT_THAT(refusals[2], HasSubstr("web1: rate limit"));
    EXPECT_THAT(refusals[3], HasSubstr(": rate limit"));
    EXPECT_EQ(peers[3], "127.0.0.1");
  }
  clock.SleepFor(std::chrono::seconds(1));  // one token back
  auto c = Connect("/console/web1/ws?ticket=" + good);
  EXPECT_EQ(c->status, 101);
}

TEST_F(ConsoleWsServerTest, ConsoleWs_TicketIsGoodOnce) {
  const std::string t = Ticket("web1");
  auto first = Connect("/console/web1/ws?ticket=" + t);
  EXPECT_EQ(first->status, 101);
  EXPECT_EQ(Refused("/console/web1/ws?ticket=" + t).status, 401);
}

TEST_F(ConsoleWsServerTest, ConsoleWs_OutputAndKeystrokesFlowInBinaryFrames) {
  auto c = Connect("/console/web1/ws?ticket=" + Ticket("web1"));
  ASSERT_EQ(c->status, 101);
  WaitAttachments(1);
  guest.Emit("web1", "login: ");
  EXPECT_THAT(ReadUntil(*c, "login: "), HasSubstr("login: "));
  c->ws.binary(true);
  c->ws.write(asio::buffer(std::string("echo hv-1\r")));
  EXPECT_THAT(Typed("web1", "echo hv-1\r"), HasSubstr("echo hv-1\r"));
}

TEST_F(ConsoleWsServerTest, ConsoleWs_SecondWriterIs409UnlessItTakesOver) {
  auto first = Connect("/console/web1/ws?ticket=" + Ticket("web1"));
  ASSERT_EQ(first->status, 101);
  WaitAttachments(1);
  Reply second = Refused("/console/web1/ws?ticket=" + Ticket("web1"));
  EXPECT_EQ(second.status, 409);
  EXPECT_THAT(second.body, HasSubstr("take_over"));
  auto taker = Connect("/console/web1/ws?take_over=1&ticket=" + Ticket("web1"));
  EXPECT_EQ(taker->status, 101);
  EXPECT_EQ(CloseCode(*first), 4001);
  taker->ws.write(asio::buffer(std::string("x")));
  EXPECT_THAT(Typed("web1", "x"), HasSubstr("x"));
}

TEST_F(ConsoleWsServerTest, ConsoleWs_ReaderSeesOutputAndIsClosedIfItTypes) {
  auto writer = Connect("/console/web1/ws?ticket=" + Ticket("web1"));
  auto reader = Connect("/console/web1/ws?read_only=1&ticket=" + Ticket("web1"));
  ASSERT_EQ(writer->status, 101);
  ASSERT_EQ(reader->status, 101);  // a reader beside a writer is no conflict
  WaitAttachments(1);
  for (int i = 0; i < 100; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  guest.Emit("web1", "both see this");
  EXPECT_THAT(ReadUntil(*reader, "both see this"), HasSubstr("both see this"));
  EXPECT_THAT(ReadUntil(*writer, "both see this"), HasSubstr("both see this"));
  reader->ws.write(asio::buffer(std::string("rm -rf /")));
  EXPECT_EQ(CloseCode(*reader), static_cast<int>(websocket::close_code::policy_error));
  EXPECT_EQ(guest.Typed("web1"), "");
}

TEST_F(ConsoleWsServerTest, ConsoleWs_ClosesNormallyWhenTheConsoleEnds) {
  auto c = Connect("/console/web1/ws?ticket=" + Ticket("web1"));
  ASSERT_EQ(c->status, 101);
  WaitAttachments(1);
  for (int i = 0; i < 20; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  guest.Hangup("web1");
  EXPECT_EQ(CloseCode(*c), static_cast<int>(websocket::close_code::normal));
}

TEST_F(ConsoleWsServerTest, ConsoleWs_DomainNotRunningIs409AfterAValidTicket) {
  guest.AddDomain("off", /*running=*/false);
  EXPECT_EQ(Refused("/console/off/ws?ticket=" + Ticket("off")).status, 409);
}

TEST_F(ConsoleWsServerTest, ConsoleWs_StopDetachesEveryConnection) {
  auto c = Connect("/console/web1/ws?ticket=" + Ticket("web1"));
  ASSERT_EQ(c->status, 101);
  WaitAttachments(1);
  for (int i = 0; i < 20; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_TRUE(guest.IsOpen("web1"));
  server->Stop();
  EXPECT_FALSE(guest.IsOpen("web1"));
}

}  // namespace
}  // namespace hvagent::api
