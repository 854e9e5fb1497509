// HostNetworks on real parts: two network namespaces joined by a veth pair stand for two hosts
// and their physical link. In each, the real HostNetworks (real `ip`, real kernel VXLAN and
// bridges) makes VXLAN bridges; a UDP datagram between addresses on the bridges crosses when
// both sides use the same VNI and does not when they differ. Removing the networks leaves each
// namespace's `ip -d link` exactly as before. 802.1Q is not in this kernel (the measured
// facts): VLAN networks are covered by unit tests and belong to the Xen dom0 system tier.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/service/host_networks.h"
#include "storage/exec/subprocess_runner.h"

namespace hvagent::service {
namespace {

constexpr char kIp[] = "/usr/sbin/ip";

storage::CommandResult RunArgv(std::vector<std::string> argv) {
  storage::SubprocessRunner runner;
  storage::Command c;
  c.argv = std::move(argv);
  auto r = runner.Run(c);
  if (!r.ok()) return {-1, "", std::string(r.status().message())};
  return *r;
}

void MustRun(std::vector<std::string> argv) {
  auto r = RunArgv(argv);
  ASSERT_EQ(r.exit_code, 0) << argv[1] << " " << argv[2] << ": " << r.stderr_text;
}

// Runs `fn` on a thread that has entered namespace `ns`: the thread's sockets and the programs
// it starts live there, the rest of the process does not move.
void InNetns(const std::string& ns, const std::function<void()>& fn) {
  std::thread t([&] {
    int fd = open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0) << ns;
    ASSERT_EQ(setns(fd, CLONE_NEWNET), 0) << ns;
    close(fd);
    fn();
  });
  t.join();
}

// Sends one datagram from `from_ns` to `to_addr`:`port` and reports whether `to_ns` got it
// within two seconds (after a few tries: the first may be spent on ARP resolution).
bool Reaches(const std::string& from_ns, const std::string& to_ns, const std::string& to_addr) {
  constexpr int kPort = 47123;
  bool got = false;
  int rx = -1;
  InNetns(to_ns, [&] {
    rx = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(kPort);
    inet_pton(AF_INET, to_addr.c_str(), &a.sin_addr);
    ASSERT_EQ(bind(rx, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << to_addr;
    timeval tv{0, 200000};
    setsockopt(rx, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  });
  if (rx < 0) return false;
  for (int i = 0; i < 10 && !got; ++i) {
    InNetns(from_ns, [&] {
      int tx = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(kPort);
      inet_pton(AF_INET, to_addr.c_str(), &a.sin_addr);
      sendto(tx, "hello", 5, 0, reinterpret_cast<sockaddr*>(&a), sizeof a);
      close(tx);
    });
    char buf[16];
    got = recv(rx, buf, sizeof buf, 0) == 5;  // the socket's own namespace is fixed at creation
  }
  close(rx);
  return got;
}

class HostNetworksIntegration : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces)";
    const std::string id = std::to_string(getpid());
    a_ = "hvnA" + id;
    b_ = "hvnB" + id;
    MustRun({kIp, "netns", "add", a_});
    MustRun({kIp, "netns", "add", b_});
    // The "physical" link between the two hosts.
    MustRun({kIp, "-n", a_, "link", "add", "phys0", "type", "veth", "peer", "name", "phys0", "netns", b_});
    for (const auto& [ns, addr] : {std::pair{a_, "192.0.2.1/24"}, std::pair{b_, "192.0.2.2/24"}}) {
      MustRun({kIp, "-n", ns, "addr", "add", addr, "dev", "phys0"});
      MustRun({kIp, "-n", ns, "link", "set", "dev", "phys0", "up"});
      MustRun({kIp, "-n", ns, "link", "set", "dev", "lo", "up"});
    }
    // The veth's carrier comes up asynchronously: wait for it, so the "before" picture of the
    // links is a settled one.
    for (int i = 0; i < 50; ++i) {
      if (absl::StrContains(RunArgv({kIp, "-n", a_, "link", "show", "dev", "phys0"}).stdout_text, "state UP") &&
          absl::StrContains(RunArgv({kIp, "-n", b_, "link", "show", "dev", "phys0"}).stdout_text, "state UP")) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  void TearDown() override {
    if (a_.empty()) return;
    RunArgv({kIp, "netns", "del", a_});
    RunArgv({kIp, "netns", "del", b_});
  }
  static std::string Links(const std::string& ns) {
    std::vector<std::string> argv{kIp};
    if (!ns.empty()) argv.insert(argv.end(), {"-n", ns});
    argv.insert(argv.end(), {"-d", "link", "show"});
    return RunArgv(argv).stdout_text;
  }
  absl::StatusOr<bool> Ensure(const std::string& ns, uint32_t vni) {
    absl::StatusOr<bool> r = absl::UnknownError("not run");
    InNetns(ns, [&] { r = nets_.Ensure("nic", {hv::HostNetwork::Kind::kVxlan, "phys0", vni}); });
    return r;
  }
  absl::Status Remove(const std::string& ns, const std::string& bridge) {
    absl::Status s;
    InNetns(ns, [&] { s = nets_.RemoveIfOwned(bridge); });
    return s;
  }

  storage::SubprocessRunner runner_;
  HostNetworks nets_{runner_, {.physical_interfaces = {"phys0"}}};
  std::string a_, b_;
};

TEST_F(HostNetworksIntegration, SameVniReachesAnotherVniDoesNotAndTeardownRestoresTheLinks) {
  const std::string before_a = Links(a_);
  const std::string before_b = Links(b_);

  // VNI 100 on both sides; 200 on A against 300 on B, with addresses in one subnet.
  for (auto [ns, vni] : {std::pair{a_, 100u}, std::pair{b_, 100u}, std::pair{a_, 200u}, std::pair{b_, 300u}}) {
    auto made = Ensure(ns, vni);
    ASSERT_TRUE(made.ok()) << ns << " " << vni << ": " << made.status();
    EXPECT_TRUE(*made);
  }
  auto again = Ensure(a_, 100);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(*again) << "a second Ensure makes nothing";

  const std::string made_a = RunArgv({kIp, "-n", a_, "-d", "link", "show", "dev", "vxlan100"}).stdout_text;
  EXPECT_NE(made_a.find("vxlan id 100"), std::string::npos) << made_a;
  EXPECT_NE(made_a.find("group 239.0.0.100"), std::string::npos) << made_a;
  EXPECT_NE(made_a.find("master brvx100"), std::string::npos) << made_a;
  EXPECT_NE(made_a.find("alias hvagent-managed"), std::string::npos) << made_a;

  MustRun({kIp, "-n", a_, "addr", "add", "10.100.0.1/24", "dev", "brvx100"});
  MustRun({kIp, "-n", b_, "addr", "add", "10.100.0.2/24", "dev", "brvx100"});
  MustRun({kIp, "-n", a_, "addr", "add", "10.200.0.1/24", "dev", "brvx200"});
  MustRun({kIp, "-n", b_, "addr", "add", "10.200.0.2/24", "dev", "brvx300"});

  EXPECT_TRUE(Reaches(a_, b_, "10.100.0.2")) << "same VNI 100";
  EXPECT_TRUE(Reaches(b_, a_, "10.100.0.1")) << "same VNI 100, back";
  EXPECT_FALSE(Reaches(a_, b_, "10.200.0.2")) << "VNI 200 must not reach VNI 300";

  // A bridge the agent did not make is never removed, even under its naming scheme.
  MustRun({kIp, "-n", a_, "link", "add", "brvx999", "type", "bridge"});
  ASSERT_TRUE(Remove(a_, "brvx999").ok());
  EXPECT_NE(Links(a_).find("brvx999"), std::string::npos);
  MustRun({kIp, "-n", a_, "link", "del", "brvx999"});

  for (auto [ns, bridge] : {std::pair{a_, "brvx100"}, std::pair{a_, "brvx200"}, std::pair{b_, "brvx100"},
                            std::pair{b_, "brvx300"}}) {
    ASSERT_TRUE(Remove(ns, bridge).ok()) << ns << " " << bridge;
  }
  EXPECT_EQ(Links(a_), before_a);
  EXPECT_EQ(Links(b_), before_b);
}

// One network per VNI: the kernel's real VXLAN reports its underlay (`ip -d`), and the same VNI
// over a second interface is refused without touching a link, while it stays usable over its own.
TEST_F(HostNetworksIntegration, TheSameVniOverASecondInterfaceIsRefusedAndChangesNothing) {
  MustRun({kIp, "-n", a_, "link", "add", "phys1", "type", "veth", "peer", "name", "phys1p"});
  HostNetworks two{runner_, {.physical_interfaces = {"phys0", "phys1"}}};
  absl::StatusOr<bool> first = absl::UnknownError("not run");
  InNetns(a_, [&] { first = two.Ensure("nic", {hv::HostNetwork::Kind::kVxlan, "phys0", 700}); });
  ASSERT_TRUE(first.ok()) << first.status();
  // The links' names and masters (the bridge's carrier and timers move on their own).
  auto names = [&] {
    std::string out;
    for (absl::string_view line : absl::StrSplit(RunArgv({kIp, "-n", a_, "-o", "link", "show"}).stdout_text, '\n')) {
      std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (f.size() < 2) continue;
      absl::StrAppend(&out, f[1]);
      for (size_t i = 2; i + 1 < f.size(); ++i) {
        if (f[i] == "master") absl::StrAppend(&out, "master ", f[i + 1]);
      }
      out += "\n";
    }
    return out;
  };
  const std::string before = names();
  absl::StatusOr<bool> second = absl::UnknownError("not run");
  InNetns(a_, [&] { second = two.Ensure("spec.nics[0]", {hv::HostNetwork::Kind::kVxlan, "phys1", 700}); });
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
  EXPECT_TRUE(absl::StrContains(second.status().message(), "brvx700 over vxlan700 on phys0 already"))
      << second.status();
  EXPECT_EQ(names(), before);
  EXPECT_TRUE(absl::StrContains(RunArgv({kIp, "-n", a_, "-d", "link", "show", "dev", "vxlan700"}).stdout_text,
                                "dev phys0 "));
  absl::StatusOr<bool> again = absl::UnknownError("not run");
  InNetns(a_, [&] { again = two.Ensure("nic", {hv::HostNetwork::Kind::kVxlan, "phys0", 700}); });
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(*again);
  ASSERT_TRUE(Remove(a_, "brvx700").ok());
}

}  // namespace
}  // namespace hvagent::service
