// Specification of agent/service ConsoleTickets (one-time, expiring, bound to a domain and a
// kind) and ConsoleAccess (which kinds are issued, the console log's tail).

#include "agent/service/console_tickets.h"

#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/service/console_access.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"

namespace hvagent::service {
namespace {

using testing::FakeClock;
using testing::FakeHypervisor;
using ::testing::HasSubstr;

class ConsoleTicketsTest : public ::testing::Test {
 protected:
  FakeClock clock;
  ConsoleTickets tickets{clock, std::chrono::seconds(60)};
};

TEST_F(ConsoleTicketsTest, ConsoleTickets_AreLongRandomAndDistinct) {
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) {
    auto t = tickets.Issue("web1", ConsoleKind::kSerialTcp);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(t->ticket.size(), 43u);  // 32 bytes, base64url without padding
    EXPECT_EQ(t->ticket.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
              std::string::npos);
    EXPECT_TRUE(seen.insert(t->ticket).second);
  }
}

TEST_F(ConsoleTicketsTest, ConsoleTickets_RedeemOnceOnly) {
  auto t = tickets.Issue("web1", ConsoleKind::kSerialTcp);
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(tickets.Redeem(t->ticket, "web1", ConsoleKind::kSerialTcp).ok());
  absl::Status again = tickets.Redeem(t->ticket, "web1", ConsoleKind::kSerialTcp);
  EXPECT_EQ(again.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(again.message(), HasSubstr("already used"));
}

TEST_F(ConsoleTicketsTest, ConsoleTickets_ExpiredTicketIsRefused) {
  auto t = tickets.Issue("web1", ConsoleKind::kSerialTcp);
  ASSERT_TRUE(t.ok());
  clock.SleepFor(std::chrono::seconds(60));
  absl::Status s = tickets.Redeem(t->ticket, "web1", ConsoleKind::kSerialTcp);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(s.message(), HasSubstr("expired"));
}

TEST_F(ConsoleTicketsTest, ConsoleTickets_JustBeforeExpiryIsAccepted) {
  auto t = tickets.Issue("web1", ConsoleKind::kSerialTcp);
  ASSERT_TRUE(t.ok());
  clock.SleepFor(std::chrono::seconds(59));
  EXPECT_TRUE(tickets.Redeem(t->ticket, "web1", ConsoleKind::kSerialTcp).ok());
}

TEST_F(ConsoleTicketsTest, ConsoleTickets_AnotherDomainIsRefusedAndBurnsTheTicket) {
  auto t = tickets.Issue("web1", ConsoleKind::kSerialTcp);
  ASSERT_TRUE(t.ok());
  absl::Status s = tickets.Redeem(t->ticket, "db1", ConsoleKind::kSerialTcp);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(s.message(), HasSubstr("another domain"));
  EXPECT_THAT(s.message(), ::testing::Not(HasSubstr("web1")));
  // Presented wrongly once, it cannot be tried again, not even rightly.
  EXPECT_FALSE(tickets.Redeem(t->ticket, "web1", ConsoleKind::kSerialTcp).ok());
}

TEST_F(ConsoleTicketsTest, ConsoleTickets_AnotherKindIsRefused) {
  auto t = tickets.Issue("web1", ConsoleKind::kSerialWs);
  ASSERT_TRUE(t.ok());
  absl::Status s = tickets.Redeem(t->ticket, "web1", ConsoleKind::kSerialTcp);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(s.message(), HasSubstr("serial-ws"));
}

TEST_F(ConsoleTicketsTest, ConsoleTickets_UnknownAndRevokedAreRefused) {
  EXPECT_EQ(tickets.Redeem("forged", "web1", ConsoleKind::kSerialTcp).code(), absl::StatusCode::kUnauthenticated);
  auto t = tickets.Issue("web1", ConsoleKind::kSerialTcp);
  ASSERT_TRUE(t.ok());
  tickets.Revoke(t->ticket);
  EXPECT_EQ(tickets.Redeem(t->ticket, "web1", ConsoleKind::kSerialTcp).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(tickets.outstanding(), 0u);
}

TEST_F(ConsoleTicketsTest, ConsoleTickets_ExpiredOnesAreForgottenOnTheNextIssue) {
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(tickets.Issue("web1", ConsoleKind::kSerialTcp).ok());
  clock.SleepFor(std::chrono::seconds(61));
  ASSERT_TRUE(tickets.Issue("web1", ConsoleKind::kSerialTcp).ok());
  EXPECT_EQ(tickets.outstanding(), 1u);
}

class ConsoleAccessTest : public ::testing::Test {
 protected:
  ConsoleAccessTest() {
    dir = std::filesystem::temp_directory_path() / ("hvagent-console-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    hv::DomainSpec spec;
    spec.name = "web1";
    spec.vcpus = 1;
    spec.memory_mib = 256;
    EXPECT_TRUE(hv.DefineDomain(spec).ok());
  }
  ~ConsoleAccessTest() override { std::filesystem::remove_all(dir); }
  std::filesystem::path dir;
  FakeHypervisor hv;
  FakeClock clock;
  ConsoleTickets tickets{clock, std::chrono::seconds(60)};
};

TEST_F(ConsoleAccessTest, ConsoleAccess_KindsWithoutAnEndpointAreUnimplemented) {
  ConsoleAccess access(hv, tickets, nullptr, {});
  for (ConsoleKind k : {ConsoleKind::kSerialWs, ConsoleKind::kSerialTcp}) {
    auto t = access.Issue("web1", k);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_THAT(t.status().message(), HasSubstr("kind: "));
  }
  EXPECT_EQ(tickets.outstanding(), 0u);
}

TEST_F(ConsoleAccessTest, ConsoleAccess_VncOnXenSaysThereIsNoGraphicalConsole) {
  hv.host_type = "Xen";
  ConsoleAccess access(hv, tickets, nullptr, {});
  auto t = access.Issue("web1", ConsoleKind::kVnc);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(t.status().message(), HasSubstr("kind: vnc: domain 'web1' has no graphical console"));
  EXPECT_THAT(t.status().message(), HasSubstr("serial-ws"));
  EXPECT_EQ(access.Issue("absent", ConsoleKind::kVnc).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tickets.outstanding(), 0u);
  EXPECT_TRUE(hv.vnc_passwords.empty());
}

TEST_F(ConsoleAccessTest, ConsoleAccess_VncSetsAFreshEightCharacterPasswordUntilTheTtl) {
  hv.host_type = "QEMU";
  hv::DomainSpec spec;
  spec.name = "desk1";
  spec.vcpus = 1;
  spec.memory_mib = 256;
  spec.vnc = true;
  ASSERT_TRUE(hv.DefineDomain(spec).ok());
  ConsoleAccess access(hv, tickets, nullptr, {.vnc_ttl = std::chrono::seconds(30)});
  // Stopped: no display now, and nothing was set.
  auto stopped = access.Issue("desk1", ConsoleKind::kVnc);
  EXPECT_EQ(stopped.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(stopped.status().message(), HasSubstr("not running"));
  EXPECT_TRUE(hv.vnc_passwords.empty());
  ASSERT_TRUE(hv.StartDomain("desk1").ok());
  const auto before = std::chrono::system_clock::now();
  auto t = access.Issue("desk1", ConsoleKind::kVnc);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->password.size(), 8u);
  for (char c : t->password) EXPECT_TRUE(std::isalnum(static_cast<unsigned char>(c))) << t->password;
  EXPECT_EQ(hv.vnc_passwords["desk1"].first, t->password);
  EXPECT_EQ(t->host, "127.0.0.1");
  EXPECT_EQ(t->port, 5900);
  EXPECT_TRUE(t->ticket.empty());  // the password is the credential
  EXPECT_GE(t->expires, std::chrono::time_point_cast<std::chrono::seconds>(before + std::chrono::seconds(29)));
  EXPECT_LE(t->expires, hv.vnc_passwords["desk1"].second);
  EXPECT_LE(hv.vnc_passwords["desk1"].second, std::chrono::system_clock::now() + std::chrono::seconds(30));
  // The next ticket replaces the password; a hundred tickets give a hundred passwords.
  std::set<std::string> seen{t->password};
  for (int i = 0; i < 100; ++i) {
    auto next = access.Issue("desk1", ConsoleKind::kVnc);
    ASSERT_TRUE(next.ok()) << next.status();
    EXPECT_EQ(hv.vnc_passwords["desk1"].first, next->password);
    seen.insert(next->password);
  }
  EXPECT_EQ(seen.size(), 101u);
  EXPECT_EQ(tickets.outstanding(), 0u);
}

TEST_F(ConsoleAccessTest, ConsoleAccess_VncOnADomainWithoutADisplayIsAClearError) {
  hv.host_type = "QEMU";
  ASSERT_TRUE(hv.StartDomain("web1").ok());
  ConsoleAccess access(hv, tickets, nullptr, {});
  auto t = access.Issue("web1", ConsoleKind::kVnc);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(t.status().message(), HasSubstr("has no VNC display"));
}

TEST_F(ConsoleAccessTest, ConsoleAccess_LogTailIsTheEndOfTheFile) {
  std::ofstream(dir / "web1.log") << "boot line\nhv-abc\n";
  ConsoleAccess access(hv, tickets, nullptr, {.log_dir = dir.string()});
  auto tail = access.Log("web1", 7);
  ASSERT_TRUE(tail.ok()) << tail.status();
  EXPECT_EQ(tail->data, "hv-abc\n");
  EXPECT_EQ(tail->size, 17u);
  auto all = access.Log("web1", 0);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->data, "boot line\nhv-abc\n");
}

TEST_F(ConsoleAccessTest, ConsoleAccess_LogRefusals) {
  ConsoleAccess none(hv, tickets, nullptr, {});
  EXPECT_EQ(none.Log("web1", 0).status().code(), absl::StatusCode::kFailedPrecondition);
  ConsoleAccess access(hv, tickets, nullptr, {.log_dir = dir.string()});
  EXPECT_EQ(access.Log("web1", 0).status().code(), absl::StatusCode::kFailedPrecondition);  // no file yet
  EXPECT_EQ(access.Log("nope", 0).status().code(), absl::StatusCode::kNotFound);
  auto big = access.Log("web1", (1 << 20) + 1);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(big.status().message(), HasSubstr("tail_bytes"));
  // A name that is a path never reaches the file system.
  std::ofstream(dir / "secret") << "x";
  EXPECT_FALSE(access.Log("../secret", 0).ok());
}

// On a Xen host the log is xenconsoled's guest-NAME.log in its own directory, not the agent's.
TEST_F(ConsoleAccessTest, ConsoleAccess_XenLogIsXenconsoledsGuestLog) {
  hv.host_type = "Xen";
  std::filesystem::create_directories(dir / "xen");
  std::ofstream(dir / "xen" / "guest-web1.log") << "xen boot\nhv-xen\n";
  std::ofstream(dir / "web1.log") << "not this one\n";
  ConsoleAccess access(hv, tickets, nullptr, {.log_dir = dir.string(), .xen_log_dir = (dir / "xen").string()});
  auto tail = access.Log("web1", 7);
  ASSERT_TRUE(tail.ok()) << tail.status();
  EXPECT_EQ(tail->data, "hv-xen\n");
  EXPECT_EQ(tail->size, 16u);
  ConsoleAccess no_xen_dir(hv, tickets, nullptr, {.log_dir = dir.string()});
  auto refused = no_xen_dir.Log("web1", 0);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("xen_log_dir"));
}

}  // namespace
}  // namespace hvagent::service
