// Specification of agent/config: defaults <- TOML file <- command line, then validation.

#include "agent/config/config.h"

#include <unistd.h>

#include <chrono>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"

namespace hvagent::config {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

// A config file under the test's temp dir, removed afterwards.
class TempFile {
 public:
  explicit TempFile(const std::string& contents) {
    static int counter = 0;
    path_ = ::testing::TempDir() + "hvagent_config_test_" + std::to_string(getpid()) + "_" +
            std::to_string(counter++) + ".toml";
    std::ofstream out(path_);
    out << contents;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---------------------------------------------------------------------------------------------
// Defaults

TEST(ConfigDefaults, ServeTestDriverOnLoopbackWithOneMebibyteBodies) {
  Config c;
  EXPECT_EQ(c.hypervisor_uri, "test:///default");
  EXPECT_EQ(c.grpc_listen, "127.0.0.1:50051");
  EXPECT_EQ(c.rest_listen, "127.0.0.1:8780");
  EXPECT_EQ(c.rest_max_body_bytes, 1024u * 1024u);
  EXPECT_EQ(c.log_level, "info");
  EXPECT_EQ(c.log_format, log::Format::kText);
  EXPECT_EQ(c.shutdown_timeout, std::chrono::seconds(60));
}

// The development mode: plain text on loopback, explicitly asked for.
Config Dev() {
  Config c;
  c.plaintext_loopback = true;
  return c;
}

TEST(ConfigDefaults, NeedTlsOrTheExplicitDevelopmentMode) {
  absl::Status s = Validate(Config{});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("no TLS is configured"));
  EXPECT_THAT(Msg(s), HasSubstr("--plaintext-loopback"));
  EXPECT_TRUE(Validate(Dev()).ok());
}

TEST(Resolve, WithNoFlagsGivesTheDefaults) {
  CommandLine dev;
  dev.plaintext_loopback = true;
  auto c = Resolve(dev);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hypervisor_uri, "test:///default");
  EXPECT_EQ(c->grpc_listen, "127.0.0.1:50051");
  EXPECT_EQ(c->rest_listen, "127.0.0.1:8780");
  EXPECT_EQ(c->rest_max_body_bytes, 1u << 20);
}

// ---------------------------------------------------------------------------------------------
// ParseConfigToml

TEST(ParseConfigToml, ReadsEveryKey) {
  auto c = ParseConfigToml(R"(
[hypervisor]
uri = "xen:///system"

[grpc]
listen = "127.0.0.1:6000"

[rest]
listen = "localhost:6001"
max_body_bytes = 4096

[log]
level = "debug"
format = "json"

[domain]
shutdown_timeout_seconds = 15
)");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hypervisor_uri, "xen:///system");
  EXPECT_EQ(c->grpc_listen, "127.0.0.1:6000");
  EXPECT_EQ(c->rest_listen, "localhost:6001");
  EXPECT_EQ(c->rest_max_body_bytes, 4096u);
  EXPECT_EQ(c->log_level, "debug");
  EXPECT_EQ(c->log_format, log::Format::kJson);
  EXPECT_EQ(c->shutdown_timeout, std::chrono::seconds(15));
}

TEST(ParseConfigToml, DomainTypeAndGrpcWorkersAndXenConsoleLogs) {
  Config d;
  EXPECT_EQ(d.hypervisor_domain_type, "");
  EXPECT_EQ(d.grpc_workers, 64);
  EXPECT_EQ(d.console_xen_log_dir, "/var/log/xen/console");
  auto c = ParseConfigToml(
      "[hypervisor]\ndomain_type = \"qemu\"\n[grpc]\nworkers = 8\n[console]\nxen_log_dir = \"\"\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hypervisor_domain_type, "qemu");
  EXPECT_EQ(c->grpc_workers, 8);
  EXPECT_EQ(c->console_xen_log_dir, "");
  auto bad_type = ParseConfigToml("[hypervisor]\ndomain_type = \"lxc\"\n");
  EXPECT_THAT(std::string(bad_type.status().message()), HasSubstr("hypervisor.domain_type"));
  auto no_workers = ParseConfigToml("[grpc]\nworkers = 0\n");
  EXPECT_THAT(std::string(no_workers.status().message()), HasSubstr("grpc.workers"));
  auto relative = ParseConfigToml("[console]\nxen_log_dir = \"var/log\"\n");
  EXPECT_THAT(std::string(relative.status().message()), HasSubstr("console.xen_log_dir"));
}

TEST(ParseConfigToml, VncListenIsAnIpAddressDefaultingToLoopback) {
  auto none = ParseConfigToml("");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->console_vnc_listen, "127.0.0.1");
  for (const char* good : {"192.0.2.7", "::1", "0.0.0.0"}) {
    auto c = ParseConfigToml(std::string("[console]\nvnc_listen = \"") + good + "\"\n");
    ASSERT_TRUE(c.ok()) << good << ": " << c.status();
    EXPECT_EQ(c->console_vnc_listen, good);
  }
  // Names and ports would reach QEMU's -vnc option and the console proxy wrong.
  for (const char* bad : {R"("host.example")", R"("127.0.0.1:5900")", R"("")", R"("127.0.0.1,x=y")", "5900"}) {
    auto r = ParseConfigToml(std::string("[console]\nvnc_listen = ") + bad + "\n");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(Msg(r.status()), HasSubstr("console.vnc_listen")) << bad;
  }
}

TEST(ParseConfigToml, NetworkBridgesAreInterfaceNamesAndAbsentMeansAnyLinuxBridgeNoOvs) {
  auto none = ParseConfigToml("");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->network_bridges.has_value());
  EXPECT_TRUE(none->network_ovs_bridges.empty());
  auto c = ParseConfigToml(R"(
[network]
bridges = ["br0", "cloudbr0"]
ovs_bridges = ["br-int"]
)");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(*c->network_bridges, (std::vector<std::string>{"br0", "cloudbr0"}));
  EXPECT_EQ(c->network_ovs_bridges, (std::vector<std::string>{"br-int"}));
  auto empty = ParseConfigToml("[network]\nbridges = []\n");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->network_bridges.has_value() && empty->network_bridges->empty());
  for (const char* bad : {R"(ovs_bridges = ["br;x"])", R"(ovs_bridges = ["0123456789abcdef"])",
                          R"(bridges = ["a/b"])", R"(bridges = "br0")", R"(bridges = [1])"}) {
    auto r = ParseConfigToml(std::string("[network]\n") + bad + "\n");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(Msg(r.status()), HasSubstr("network.")) << bad;
  }
}

// The networks the agent makes: which interfaces, the bridges' prefixes, the MTU.
TEST(ConfigNetwork, HostNetworkKeys) {
  auto none = ParseConfigToml("");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->network_physical_interfaces.empty());  // none unless listed
  EXPECT_EQ(none->network_vlan_bridge_prefix, "brvlan");
  EXPECT_EQ(none->network_vxlan_bridge_prefix, "brvx");
  EXPECT_EQ(none->network_mtu, 0u);
  auto c = ParseConfigToml(
      "[network]\nphysical_interfaces = [\"eth1\"]\nvlan_bridge_prefix = \"vl\"\nvxlan_bridge_prefix = \"vx\"\n"
      "mtu = 9000\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->network_physical_interfaces, (std::vector<std::string>{"eth1"}));
  EXPECT_EQ(c->network_vlan_bridge_prefix, "vl");
  EXPECT_EQ(c->network_vxlan_bridge_prefix, "vx");
  EXPECT_EQ(c->network_mtu, 9000u);
  // A VXLAN bridge is the prefix and up to 8 digits in 15 bytes: at most 7 bytes of prefix.
  for (const char* bad : {R"(physical_interfaces = ["eth1;x"])", R"(vxlan_bridge_prefix = "brvxlan1")",
                          R"(vlan_bridge_prefix = "br/")", R"(vlan_bridge_prefix = "")", "mtu = 100",
                          "mtu = 100000"}) {
    auto r = ParseConfigToml(std::string("[network]\n") + bad + "\n");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(Msg(r.status()), HasSubstr("network.")) << bad;
  }
}

TEST(ConfigDefaults, HostFilesOnlyFromDebiansFirmwareDirectories) {
  Config c;
  EXPECT_TRUE(c.image_dirs.empty());
  EXPECT_TRUE(c.kernel_dirs.empty());
  EXPECT_EQ(c.firmware_dirs,
            (std::vector<std::string>{"/usr/share/OVMF", "/usr/share/AAVMF", "/usr/share/qemu-efi-aarch64"}));
}

TEST(ParseConfigToml, ReadsHostFileDirectories) {
  auto c = ParseConfigToml(R"(
[security]
image_dirs = ["/srv/images", "/var/lib/hvagent/images"]
kernel_dirs = ["/srv/kernels"]
firmware_dirs = []
)");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->image_dirs, (std::vector<std::string>{"/srv/images", "/var/lib/hvagent/images"}));
  EXPECT_EQ(c->kernel_dirs, std::vector<std::string>{"/srv/kernels"});
  EXPECT_TRUE(c->firmware_dirs.empty());
}

TEST(ParseConfigToml, RejectsHostFileDirectoriesThatAreNotCanonicalNamingTheEntry) {
  for (const char* dir : {"srv/images", "/", "/srv/images/", "/srv//images", "/srv/./images", "/srv/../etc", "/srv/.."}) {
    auto c = ParseConfigToml(std::string("[security]\nimage_dirs = [\"/ok\", \"") + dir + "\"]\n");
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << dir;
    EXPECT_THAT(Msg(c.status()), HasSubstr("security.image_dirs[1]: must be an absolute directory")) << dir;
  }
  EXPECT_THAT(Msg(ParseConfigToml("[security]\nkernel_dirs = \"/srv\"\n").status()),
              HasSubstr("security.kernel_dirs: must be an array"));
  EXPECT_THAT(Msg(ParseConfigToml("[security]\nfirmware_dirs = [1]\n").status()),
              HasSubstr("security.firmware_dirs[0]: must be a string"));
}

TEST(ParseConfigToml, ImagesAllowNoSourceByDefaultAndOnlyWholeHostPrefixes) {
  Config d;
  EXPECT_TRUE(d.image_allowed_sources.empty());
  EXPECT_TRUE(d.image_import_dirs.empty());
  auto c = ParseConfigToml(R"(
[images]
allowed_sources = ["https://images.example.org/cloud/", "http://127.0.0.1:8000/"]
import_dirs = ["/var/lib/hvagent/import"]
scratch_dir = "/var/tmp/hvagent-scratch"
max_virtual_size_mib = 1024
)");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->image_allowed_sources.size(), 2u);
  EXPECT_EQ(c->image_import_dirs, std::vector<std::string>{"/var/lib/hvagent/import"});
  EXPECT_EQ(c->image_scratch_dir, "/var/tmp/hvagent-scratch");
  EXPECT_EQ(c->image_max_virtual_size_mib, 1024u);
  // "https://images.example.org" would also allow https://images.example.org.evil.example/.
  for (const char* bad : {"https://images.example.org", "ftp://x/", "https:///x/", "https://u@x/", "x/"}) {
    auto r = ParseConfigToml(std::string("[images]\nallowed_sources = [\"") + bad + "\"]\n");
    EXPECT_THAT(Msg(r.status()), HasSubstr("images.allowed_sources[0]: must be an http:// or https:// URL")) << bad;
  }
  EXPECT_THAT(Msg(ParseConfigToml("[images]\nscratch_dir = \"tmp\"\n").status()),
              HasSubstr("images.scratch_dir: must be an absolute path"));
}

TEST(ParseConfigToml, EmptyTextKeepsTheBase) {
  Config base;
  base.hypervisor_uri = "qemu:///system";
  base.log_level = "warn";
  auto c = ParseConfigToml("", base);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hypervisor_uri, "qemu:///system");
  EXPECT_EQ(c->log_level, "warn");
  EXPECT_EQ(c->grpc_listen, "127.0.0.1:50051");
}

TEST(ParseConfigToml, KeysAbsentFromTheFileKeepTheBaseValues) {
  Config base;
  base.rest_listen = "127.0.0.1:9999";
  base.log_format = log::Format::kJson;
  auto c = ParseConfigToml("[grpc]\nlisten = \"127.0.0.1:7000\"\n", base);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->grpc_listen, "127.0.0.1:7000");
  EXPECT_EQ(c->rest_listen, "127.0.0.1:9999");
  EXPECT_EQ(c->log_format, log::Format::kJson);
}

TEST(ParseConfigToml, FormatTextOverridesAJsonBase) {
  Config base;
  base.log_format = log::Format::kJson;
  auto c = ParseConfigToml("[log]\nformat = \"text\"\n", base);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->log_format, log::Format::kText);
}

TEST(ParseConfigToml, RejectsUnknownSectionNamingIt) {
  auto c = ParseConfigToml("[tls]\ncert = \"/etc/x.pem\"\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("tls"));
}

TEST(ParseConfigToml, RejectsUnknownKeyNamingIt) {
  auto c = ParseConfigToml("[grpc]\nlisten = \"127.0.0.1:1\"\nlistne = \"127.0.0.1:2\"\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("grpc.listne"));
}

TEST(ParseConfigToml, RejectsKeyOfAnotherSectionNamingIt) {
  // max_body_bytes exists, but under [rest], not [grpc].
  auto c = ParseConfigToml("[grpc]\nmax_body_bytes = 4096\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("grpc.max_body_bytes"));
}

TEST(ParseConfigToml, RejectsTopLevelKeyNamingIt) {
  auto c = ParseConfigToml("verbose = true\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("verbose"));
}

TEST(ParseConfigToml, RejectsSectionGivenAsAValueNamingIt) {
  auto c = ParseConfigToml("hypervisor = \"xen:///system\"\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("hypervisor"));
}

TEST(ParseConfigToml, RejectsStringKeyGivenANumberNamingIt) {
  auto c = ParseConfigToml("[grpc]\nlisten = 50051\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("grpc.listen"));
}

TEST(ParseConfigToml, RejectsUriGivenABooleanNamingIt) {
  auto c = ParseConfigToml("[hypervisor]\nuri = true\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("hypervisor.uri"));
}

TEST(ParseConfigToml, RejectsNumberKeyGivenAStringNamingIt) {
  auto c = ParseConfigToml("[rest]\nmax_body_bytes = \"1MiB\"\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("rest.max_body_bytes"));
}

TEST(ParseConfigToml, RejectsLogLevelGivenANumberNamingIt) {
  auto c = ParseConfigToml("[log]\nlevel = 3\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("log.level"));
}

TEST(ParseConfigToml, RejectsShutdownTimeoutGivenAStringNamingIt) {
  auto c = ParseConfigToml("[domain]\nshutdown_timeout_seconds = \"60\"\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("domain.shutdown_timeout_seconds"));
}

TEST(ParseConfigToml, RejectsSyntaxErrorWithItsLineNumber) {
  auto c = ParseConfigToml("[grpc]\nlisten = \"127.0.0.1:1\"\nthis is not toml\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("line 3"));
}

TEST(ParseConfigToml, RejectsUnterminatedStringWithItsLineNumber) {
  auto c = ParseConfigToml("\n\n\n\n[hypervisor]\nuri = \"xen:///system\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("line 6"));
}

TEST(ParseConfigToml, RejectsUnknownLogFormatNamingTheKey) {
  auto c = ParseConfigToml("[log]\nformat = \"xml\"\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("log.format"));
}

TEST(ParseConfigToml, RejectsBodyLimitBelowOneKibibyte) {
  auto c = ParseConfigToml("[rest]\nmax_body_bytes = 1023\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("rest.max_body_bytes"));
}

TEST(ParseConfigToml, RejectsBodyLimitAboveSixtyFourMebibytes) {
  auto c = ParseConfigToml("[rest]\nmax_body_bytes = 67108865\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("rest.max_body_bytes"));
}

TEST(ParseConfigToml, AcceptsBodyLimitsAtTheBounds) {
  auto low = ParseConfigToml("[rest]\nmax_body_bytes = 1024\n");
  ASSERT_TRUE(low.ok()) << low.status();
  EXPECT_EQ(low->rest_max_body_bytes, 1024u);
  auto high = ParseConfigToml("[rest]\nmax_body_bytes = 67108864\n");
  ASSERT_TRUE(high.ok()) << high.status();
  EXPECT_EQ(high->rest_max_body_bytes, 64u << 20);
}

TEST(ParseConfigToml, RejectsNegativeBodyLimit) {
  auto c = ParseConfigToml("[rest]\nmax_body_bytes = -1\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("rest.max_body_bytes"));
}

TEST(ParseConfigToml, RejectsShutdownTimeoutOutsideOneToThreeThousandSixHundredSeconds) {
  for (const char* v : {"0", "-5", "3601"}) {
    auto c = ParseConfigToml(std::string("[domain]\nshutdown_timeout_seconds = ") + v + "\n");
    ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << v;
    EXPECT_THAT(Msg(c.status()), HasSubstr("domain.shutdown_timeout_seconds")) << v;
  }
  auto ok = ParseConfigToml("[domain]\nshutdown_timeout_seconds = 3600\n");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->shutdown_timeout, std::chrono::seconds(3600));
}

// ---------------------------------------------------------------------------------------------
// Validate

Config WithGrpc(const std::string& listen) {
  Config c = Dev();
  c.grpc_listen = listen;
  return c;
}

TEST(Validate, RefusesListeningOnAllInterfacesNamingTheKey) {
  absl::Status s = Validate(WithGrpc("0.0.0.0:50051"));
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("grpc.listen"));
  EXPECT_THAT(Msg(s), HasSubstr("0.0.0.0"));
}

TEST(Validate, RefusesNonLoopbackAddress) {
  Config c = Dev();
  c.rest_listen = "10.1.2.3:8780";
  absl::Status s = Validate(c);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("rest.listen"));
}

TEST(Validate, RefusesIpv6AnyAddress) {
  EXPECT_EQ(Validate(WithGrpc("[::]:50051")).code(), absl::StatusCode::kInvalidArgument);
}

TEST(Validate, RefusesHostnameThatMerelyStartsWith127) {
  // "127.example.com" is a DNS name that can resolve anywhere; only 127.0.0.0/8 addresses are
  // loopback.
  absl::Status s = Validate(WithGrpc("127.example.com:50051"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

TEST(Validate, AcceptsLoopbackForms) {
  for (const char* listen : {"127.0.0.1:50051", "localhost:50051", "[::1]:50051", "127.0.0.2:50051"}) {
    EXPECT_TRUE(Validate(WithGrpc(listen)).ok()) << listen << ": " << Validate(WithGrpc(listen));
  }
}

TEST(Validate, RefusesBadPortsNamingTheKey) {
  for (const char* listen :
       {"127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:http",
        "127.0.0.1:+80", "127.0.0.1: 80", "127.0.0.1:80 ", "127.0.0.1:0080000"}) {
    absl::Status s = Validate(WithGrpc(listen));
    ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << listen;
    EXPECT_THAT(Msg(s), HasSubstr("grpc.listen")) << listen;
  }
}

TEST(Validate, AcceptsPortsAtTheBounds) {
  Config c = Dev();
  c.grpc_listen = "127.0.0.1:1";
  c.rest_listen = "127.0.0.1:65535";
  EXPECT_TRUE(Validate(c).ok()) << Validate(c);
}

TEST(Validate, RefusesTheSameListenAddressForGrpcAndRest) {
  Config c = Dev();
  c.rest_listen = c.grpc_listen;
  absl::Status s = Validate(c);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("rest.listen"));
}

TEST(Validate, RefusesUnknownLogLevelNamingTheKey) {
  Config c = Dev();
  c.log_level = "verbose";
  absl::Status s = Validate(c);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("log.level"));
}

TEST(Validate, AcceptsEveryDocumentedLogLevel) {
  for (const char* level : {"trace", "debug", "info", "warn", "error"}) {
    Config c = Dev();
    c.log_level = level;
    EXPECT_TRUE(Validate(c).ok()) << level;
  }
}

TEST(Validate, RefusesEmptyHypervisorUri) {
  Config c;
  c.hypervisor_uri = "";
  absl::Status s = Validate(c);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("hypervisor.uri"));
}

// ---------------------------------------------------------------------------------------------
// ParseCommandLine

TEST(ParseCommandLine, NoArgumentsSetsNothing) {
  auto cli = ParseCommandLine({});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_FALSE(cli->config_path);
  EXPECT_FALSE(cli->hypervisor_uri);
  EXPECT_FALSE(cli->grpc_listen);
  EXPECT_FALSE(cli->rest_listen);
  EXPECT_FALSE(cli->log_level);
  EXPECT_FALSE(cli->version);
  EXPECT_FALSE(cli->help);
}

TEST(ParseCommandLine, ReadsEveryFlagWithSeparateValues) {
  auto cli = ParseCommandLine({"--config", "/etc/hvagent.toml", "--hypervisor-uri", "xen:///system",
                               "--grpc-listen", "127.0.0.1:1", "--rest-listen", "127.0.0.1:2", "--log-level",
                               "debug"});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ(cli->config_path, "/etc/hvagent.toml");
  EXPECT_EQ(cli->hypervisor_uri, "xen:///system");
  EXPECT_EQ(cli->grpc_listen, "127.0.0.1:1");
  EXPECT_EQ(cli->rest_listen, "127.0.0.1:2");
  EXPECT_EQ(cli->log_level, "debug");
  EXPECT_FALSE(cli->version);
  EXPECT_FALSE(cli->help);
}

TEST(ParseCommandLine, ReadsEveryFlagWithEqualsValues) {
  auto cli = ParseCommandLine({"--config=/etc/hvagent.toml", "--hypervisor-uri=xen:///system",
                               "--grpc-listen=127.0.0.1:1", "--rest-listen=127.0.0.1:2", "--log-level=warn"});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ(cli->config_path, "/etc/hvagent.toml");
  EXPECT_EQ(cli->hypervisor_uri, "xen:///system");
  EXPECT_EQ(cli->grpc_listen, "127.0.0.1:1");
  EXPECT_EQ(cli->rest_listen, "127.0.0.1:2");
  EXPECT_EQ(cli->log_level, "warn");
}

TEST(ParseCommandLine, EqualsValueKeepsLaterEqualsSigns) {
  auto cli = ParseCommandLine({"--hypervisor-uri=test:///default?a=b"});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ(cli->hypervisor_uri, "test:///default?a=b");
}

TEST(ParseCommandLine, LaterFlagWins) {
  auto cli = ParseCommandLine({"--log-level", "debug", "--log-level=error"});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ(cli->log_level, "error");
}

TEST(ParseCommandLine, RecognisesVersion) {
  auto cli = ParseCommandLine({"--version"});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_TRUE(cli->version);
  EXPECT_FALSE(cli->help);
}

TEST(ParseCommandLine, RecognisesHelpLongAndShort) {
  for (const char* flag : {"--help", "-h"}) {
    auto cli = ParseCommandLine({flag});
    ASSERT_TRUE(cli.ok()) << flag << ": " << cli.status();
    EXPECT_TRUE(cli->help) << flag;
    EXPECT_FALSE(cli->version) << flag;
  }
}

TEST(ParseCommandLine, RejectsUnknownFlagNamingIt) {
  auto cli = ParseCommandLine({"--grpc-listen", "127.0.0.1:1", "--frobnicate"});
  ASSERT_EQ(cli.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(cli.status()), HasSubstr("--frobnicate"));
}

TEST(ParseCommandLine, RejectsUnknownFlagWithEqualsValueNamingIt) {
  auto cli = ParseCommandLine({"--log-format=json"});
  ASSERT_EQ(cli.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(cli.status()), HasSubstr("--log-format"));
}

TEST(ParseCommandLine, RejectsStrayPositionalArgument) {
  auto cli = ParseCommandLine({"hvagent.toml"});
  ASSERT_EQ(cli.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(cli.status()), HasSubstr("hvagent.toml"));
}

TEST(ParseCommandLine, RejectsMissingValueNamingTheFlag) {
  for (const char* flag : {"--config", "--hypervisor-uri", "--grpc-listen", "--rest-listen", "--log-level"}) {
    auto cli = ParseCommandLine({"--version", flag});
    ASSERT_EQ(cli.status().code(), absl::StatusCode::kInvalidArgument) << flag;
    EXPECT_THAT(Msg(cli.status()), HasSubstr(flag));
  }
}

TEST(Usage, MentionsEveryFlag) {
  std::string usage = Usage();
  for (const char* flag :
       {"--config", "--hypervisor-uri", "--grpc-listen", "--rest-listen", "--log-level", "--version", "--help"}) {
    EXPECT_THAT(usage, HasSubstr(flag));
  }
}

// ---------------------------------------------------------------------------------------------
// LoadConfigFile and Resolve

TEST(LoadConfigFile, MissingFileIsNotFound) {
  auto c = LoadConfigFile(::testing::TempDir() + "no-such-hvagent-config.toml");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

TEST(LoadConfigFile, ParseErrorsNameTheFile) {
  TempFile file("[grpc]\nlistne = \"127.0.0.1:1\"\n");
  auto c = LoadConfigFile(file.path());
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr(file.path()));
  EXPECT_THAT(Msg(c.status()), HasSubstr("grpc.listne"));
}

TEST(Resolve, MissingConfigFileIsNotFound) {
  CommandLine cli;
  cli.config_path = ::testing::TempDir() + "no-such-hvagent-config.toml";
  EXPECT_EQ(Resolve(cli).status().code(), absl::StatusCode::kNotFound);
}

TEST(Resolve, FileOverridesDefaults) {
  TempFile file(R"(
[hypervisor]
uri = "xen:///system"
[rest]
listen = "127.0.0.1:9000"
max_body_bytes = 2048
[log]
level = "debug"
format = "json"
)");
  CommandLine cli;
  cli.config_path = file.path();
  cli.plaintext_loopback = true;
  auto c = Resolve(cli);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hypervisor_uri, "xen:///system");
  EXPECT_EQ(c->rest_listen, "127.0.0.1:9000");
  EXPECT_EQ(c->rest_max_body_bytes, 2048u);
  EXPECT_EQ(c->log_level, "debug");
  EXPECT_EQ(c->log_format, log::Format::kJson);
  EXPECT_EQ(c->grpc_listen, "127.0.0.1:50051");  // not in the file: default
}

TEST(Resolve, FlagsOverrideFileWhichOverridesDefaults) {
  TempFile file(R"(
[hypervisor]
uri = "xen:///system"
[grpc]
listen = "127.0.0.1:7001"
[rest]
listen = "127.0.0.1:7002"
[log]
level = "debug"
)");
  auto cli = ParseCommandLine(
      {"--config", file.path(), "--grpc-listen=127.0.0.1:7101", "--log-level", "error", "--plaintext-loopback"});
  ASSERT_TRUE(cli.ok()) << cli.status();
  auto c = Resolve(*cli);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->grpc_listen, "127.0.0.1:7101");    // flag over file
  EXPECT_EQ(c->log_level, "error");               // flag over file
  EXPECT_EQ(c->hypervisor_uri, "xen:///system");  // file over default
  EXPECT_EQ(c->rest_listen, "127.0.0.1:7002");    // file over default
  EXPECT_EQ(c->rest_max_body_bytes, 1u << 20);    // default
}

TEST(Resolve, FlagsOverrideDefaultsWithoutAFile) {
  CommandLine cli;
  cli.plaintext_loopback = true;
  cli.hypervisor_uri = "qemu:///system";
  cli.rest_listen = "localhost:8000";
  auto c = Resolve(cli);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hypervisor_uri, "qemu:///system");
  EXPECT_EQ(c->rest_listen, "localhost:8000");
  EXPECT_EQ(c->grpc_listen, "127.0.0.1:50051");
}

TEST(Resolve, ValidatesTheMergedResult) {
  TempFile file("[grpc]\nlisten = \"0.0.0.0:50051\"\n");
  CommandLine cli;
  cli.config_path = file.path();
  cli.plaintext_loopback = true;
  auto c = Resolve(cli);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("grpc.listen"));
}

TEST(Resolve, FlagCanRepairAnInvalidFileValue) {
  TempFile file("[grpc]\nlisten = \"0.0.0.0:50051\"\n");
  CommandLine cli;
  cli.config_path = file.path();
  cli.plaintext_loopback = true;
  cli.grpc_listen = "127.0.0.1:50051";
  auto c = Resolve(cli);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->grpc_listen, "127.0.0.1:50051");
}

TEST(Resolve, RejectsInvalidFlagValue) {
  CommandLine cli;
  cli.plaintext_loopback = true;
  cli.log_level = "loud";
  auto c = Resolve(cli);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("log.level"));
  EXPECT_THAT(Msg(c.status()), Not(HasSubstr("grpc")));
}

TEST(Resolve, FileErrorIsReturnedNotIgnored) {
  TempFile file("[grpc]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n");
  CommandLine cli;
  cli.config_path = file.path();
  cli.plaintext_loopback = true;
  auto c = Resolve(cli);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), HasSubstr("grpc.bogus"));
}

TEST(LoadConfigFile, TheShippedExampleIsValid) {
  auto c = LoadConfigFile(std::string(HVAGENT_SOURCE_DIR) + "/deploy/hvagent.toml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(Validate(*c).ok()) << Validate(*c);
  EXPECT_EQ(c->hypervisor_uri, "qemu:///system");
  EXPECT_EQ(c->log_format, hvagent::log::Format::kJson);
}

TEST(StoragePools, ParsesLvmAndPartitionPools) {
  auto c = ParseConfigToml(R"(
[[storage.pools]]
name = "vg0"
type = "lvm"
volume_group = "hvagent_vg"
physical_volumes = ["/dev/sdb", "/dev/sdc"]
thin_pool = "thin"
wipe = "discard"
tool_timeout_seconds = 5

[[storage.pools]]
name = "disk1"
type = "partition"
disk = "/dev/nvme1n1"
)");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->storage_pools.size(), 2u);
  const auto& lvm = c->storage_pools[0];
  EXPECT_EQ(lvm.type, storage::PoolType::kLvm);
  EXPECT_EQ(lvm.volume_group, "hvagent_vg");
  EXPECT_EQ(lvm.physical_volumes, (std::vector<std::string>{"/dev/sdb", "/dev/sdc"}));
  EXPECT_EQ(lvm.thin_pool, "thin");
  EXPECT_EQ(lvm.wipe, storage::WipeMode::kDiscard);
  EXPECT_EQ(lvm.tool_timeout, std::chrono::seconds(5));
  const auto& part = c->storage_pools[1];
  EXPECT_EQ(part.type, storage::PoolType::kPartition);
  EXPECT_EQ(part.disk, "/dev/nvme1n1");
  EXPECT_EQ(part.wipe, storage::WipeMode::kZero) << "wiping is the default";
  EXPECT_EQ(part.tool_timeout, std::chrono::seconds(0)) << "0: the backend's own default";
}

TEST(StoragePools, RejectsHostileOrAmbiguousPoolsNamingTheKey) {
  struct Case {
    const char* toml;
    const char* field;
  };
  for (const Case& c : std::vector<Case>{
           {"[[storage.pools]]\nname = \"p\"\ntype = \"partition\"\ndisk = \"../../etc/passwd\"\n", "storage.pools[0].disk"},
           {"[[storage.pools]]\nname = \"p\"\ntype = \"partition\"\ndisk = \"/dev/../etc/passwd\"\n", "storage.pools[0].disk"},
           {"[[storage.pools]]\nname = \"p\"\ntype = \"partition\"\ndisk = \"/dev/sdb;rm -rf /\"\n", "storage.pools[0].disk"},
           // Found by the config fuzzer: not traversal, but nothing a real device is called.
           {"[[storage.pools]]\nname = \"p\"\ntype = \"lvm\"\nvolume_group = \"vg\"\nphysical_volumes = [\"/dev//..sdb\"]\n",
            "storage.pools[0].physical_volumes"},
           {"[[storage.pools]]\nname = \"p\"\ntype = \"partition\"\ndisk = \"/dev//sdb\"\n", "storage.pools[0].disk"},
           {"[[storage.pools]]\nname = \"p\"\ntype = \"lvm\"\nvolume_group = \"vg 0\"\n", "storage.pools[0].volume_group"},
           {"[[storage.pools]]\nname = \"p\"\ntype = \"lvm\"\nvolume_group = \"-vg\"\n", "storage.pools[0].volume_group"},
           {"[[storage.pools]]\nname = \"p\"\ntype = \"lvm\"\nvolume_group = \"vg\"\nphysical_volumes = [\"/tmp/x\"]\n", "storage.pools[0].physical_volumes"},
           {"[[storage.pools]]\nname = \"bad name\"\ntype = \"lvm\"\nvolume_group = \"vg\"\n", "storage.pools[0].name"},
           {"[[storage.pools]]\nname = \"p\"\ntype = \"zfs\"\n", "storage.pools[0].type"},
           {"[[storage.pools]]\nname = \"p\"\ntype = \"lvm\"\nvolume_group = \"vg\"\nwipe = \"maybe\"\n", "storage.pools[0].wipe"},
           {"[[storage.pools]]\nname = \"p\"\ntype = \"lvm\"\nvolume_group = \"vg\"\nsize = 3\n", "storage.pools[0].size"},
           {"[[storage.pools]]\nname = \"p\"\ntype = \"lvm\"\nvolume_group = \"vg\"\n"
            "[[storage.pools]]\nname = \"p\"\ntype = \"lvm\"\nvolume_group = \"vg2\"\n", "storage.pools[1].name"},
           {"[[storage.pools]]\nname = \"a\"\ntype = \"partition\"\ndisk = \"/dev/sdb\"\n"
            "[[storage.pools]]\nname = \"b\"\ntype = \"lvm\"\nvolume_group = \"vg\"\nphysical_volumes = [\"/dev/sdb\"]\n",
            "storage.pools[1].physical_volumes"},
           {"[storage]\npools = 3\n", "storage.pools"},
           {"[[storage.pools]]\nname = \"p\"\ntype = \"lvm\"\nvolume_group = \"vg\"\ntool_timeout_seconds = 0\n",
            "storage.pools[0].tool_timeout_seconds"},
           {"[[storage.pools]]\nname = \"p\"\ntype = \"lvm\"\nvolume_group = \"vg\"\ntool_timeout_seconds = \"5\"\n",
            "storage.pools[0].tool_timeout_seconds"},
       }) {
    auto r = ParseConfigToml(c.toml);
    ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.toml;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.field)) << c.toml;
  }
}

namespace hvagent::config {
namespace {

TEST(ParseConfigToml, Reliability) {
  auto c = ParseConfigToml("[reliability]\nstate_dir = \"/var/lib/hvagent\"\nidempotency_window_seconds = 600\n"
                           "idempotency_max_entries = 50\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->state_dir, "/var/lib/hvagent");
  EXPECT_EQ(c->idempotency_window, std::chrono::seconds(600));
  EXPECT_EQ(c->idempotency_max_entries, 50u);
  EXPECT_TRUE(ParseConfigToml("").value().state_dir.empty()) << "in memory unless configured";
  for (const auto& [toml, field] : std::vector<std::pair<std::string, std::string>>{
           {"[reliability]\nstate_dir = \"relative/dir\"\n", "reliability.state_dir"},
           {"[reliability]\nidempotency_window_seconds = 1\n", "reliability.idempotency_window_seconds"},
           {"[reliability]\nidempotency_max_entries = 0\n", "reliability.idempotency_max_entries"},
           {"[reliability]\njournal = true\n", "reliability.journal"},
       }) {
    auto r = ParseConfigToml(toml);
    ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << toml;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(field)) << toml;
  }
}

TEST(ParseConfigToml, CapacityAndMetrics) {
  auto c = ParseConfigToml(R"(
[capacity]
cpu_allocation_ratio = 16.0
memory_allocation_ratio = 1
reserved_cpus = 2
reserved_memory_mib = 4096
[metrics]
max_age_ms = 5000
)", Config{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->cpu_allocation_ratio, 16.0);
  EXPECT_DOUBLE_EQ(c->memory_allocation_ratio, 1.0);  // an integer is accepted as a ratio
  EXPECT_EQ(c->reserved_cpus, 2u);
  EXPECT_EQ(c->reserved_memory_mib, 4096u);
  EXPECT_EQ(c->metrics_max_age, std::chrono::milliseconds(5000));
}

TEST(ParseConfigToml, BadCapacityValuesNameTheKey) {
  for (const auto& [text, key] : std::vector<std::pair<std::string, std::string>>{
           {"[capacity]\ncpu_allocation_ratio = 0.0", "capacity.cpu_allocation_ratio"},
           {"[capacity]\ncpu_allocation_ratio = -1.0", "capacity.cpu_allocation_ratio"},
           {"[capacity]\nmemory_allocation_ratio = nan", "capacity.memory_allocation_ratio"},
           {"[capacity]\nreserved_cpus = -1", "capacity.reserved_cpus"},
           {"[capacity]\nreserved_memory_mib = \"lots\"", "capacity.reserved_memory_mib"},
           {"[capacity]\ncpu_ratio = 2.0", "capacity.cpu_ratio"},
           {"[metrics]\nmax_age_ms = 10", "metrics.max_age_ms"}}) {
    auto c = ParseConfigToml(text, Config{});
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(std::string(c.status().message()), ::testing::HasSubstr(key)) << text;
  }
}

}  // namespace
}  // namespace hvagent::config

namespace hvagent::config {
namespace {

Config Tls() {
  Config c;
  c.tls_cert_file = "/etc/hvagent/tls/server.crt";
  c.tls_key_file = "/etc/hvagent/tls/server.key";
  c.tls_client_ca_file = "/etc/hvagent/tls/ca.crt";
  return c;
}

TEST(Security, TlsAllowsAnyAddressPlainTextOnlyLoopback) {
  Config c = Tls();
  c.grpc_listen = "0.0.0.0:50051";
  c.rest_listen = "[::]:8780";
  EXPECT_TRUE(Validate(c).ok()) << Validate(c);
  c.grpc_listen = "agent.example.com:50051";  // names could resolve anywhere: literals only
  EXPECT_THAT(std::string(Validate(c).message()), HasSubstr("grpc.listen"));

  Config dev;
  dev.plaintext_loopback = true;
  dev.rest_listen = "0.0.0.0:8780";
  absl::Status s = Validate(dev);
  EXPECT_THAT(std::string(s.message()), HasSubstr("rest.listen"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("plain text"));
}

TEST(Security, IncompleteOrContradictoryTlsIsRefusedNamingTheKey) {
  Config c = Tls();
  c.tls_client_ca_file.clear();
  EXPECT_THAT(std::string(Validate(c).message()), HasSubstr("tls.client_ca_file"));
  c = Tls();
  c.tls_key_file.clear();
  EXPECT_THAT(std::string(Validate(c).message()), HasSubstr("tls.key_file"));
  c = Tls();
  c.plaintext_loopback = true;
  EXPECT_THAT(std::string(Validate(c).message()), HasSubstr("security.plaintext_loopback"));
  Config dev;
  dev.plaintext_loopback = true;
  dev.rest_require_client_cert = true;
  EXPECT_THAT(std::string(Validate(dev).message()), HasSubstr("rest.require_client_cert"));
}

TEST(Security, RolesAndHashedTokens) {
  auto c = ParseConfigToml(R"(
[[auth.identities]]
name = "nova-compute"
role = "controller"
[[auth.tokens]]
name = "grafana"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
role = "monitor"
)", Config{});
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->auth_identities.size(), 1u);
  EXPECT_EQ(c->auth_identities[0].role, "controller");
  ASSERT_EQ(c->auth_tokens.size(), 1u);
  EXPECT_EQ(c->auth_tokens[0].name, "grafana");

  for (const auto& [text, key] : std::vector<std::pair<std::string, std::string>>{
           {"[[auth.identities]]\nname = \"a\"\nrole = \"root\"", "auth.identities[0].role"},
           {"[[auth.identities]]\nname = \"\"\nrole = \"monitor\"", "auth.identities[0].name"},
           {"[[auth.identities]]\nname = \"a\"\nrole = \"monitor\"\n[[auth.identities]]\nname = \"a\"\nrole = \"monitor\"",
            "auth.identities[1].name"},
           {"[[auth.tokens]]\nname = \"t\"\nsha256 = \"secret-token\"\nrole = \"monitor\"", "auth.tokens[0].sha256"},
           {"[[auth.tokens]]\nname = \"t\"\ntoken = \"x\"\nrole = \"monitor\"", "auth.tokens[0].token"}}) {
    auto bad = ParseConfigToml(text, Config{});
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(std::string(bad.status().message()), HasSubstr(key)) << text;
  }
}

TEST(Security, PlaintextFlag) {
  auto cli = ParseCommandLine({"--plaintext-loopback"});
  ASSERT_TRUE(cli.ok());
  EXPECT_TRUE(cli->plaintext_loopback);
  EXPECT_TRUE(Resolve(*cli).ok());
  EXPECT_FALSE(Resolve(CommandLine{}).ok());
}

}  // namespace
}  // namespace hvagent::config

namespace hvagent::config {
namespace {

// docs/configuration.md's TOML example names every key of the key table, and no other: the
// table drives parsing and unknown-key errors, and this holds the document to it.
TEST(ConfigKeysTest, TheDocumentedExampleListsExactlyTheKeyTable) {
  std::ifstream in(HVAGENT_SOURCE_DIR "/docs/configuration.md");
  ASSERT_TRUE(in.good());
  std::set<std::string> documented;
  std::string line, section;
  bool in_block = false, in_array = false;
  while (std::getline(in, line)) {
    if (line == "```toml") {
      in_block = true;
      continue;
    }
    if (in_block && line == "```") break;
    if (!in_block || line.empty() || line[0] == '#') continue;
    if (line.rfind("[[", 0) == 0) {
      std::string path = line.substr(2, line.find("]]") - 2);
      documented.insert(path);
      in_array = true;
    } else if (line[0] == '[') {
      section = line.substr(1, line.find(']') - 1);
      in_array = false;
    } else if (!in_array && line.find('=') != std::string::npos) {
      std::string key = line.substr(0, line.find_first_of(" ="));
      documented.insert(section + "." + key);
    }
  }
  std::vector<std::string> keys = ConfigKeys();
  EXPECT_EQ(documented, std::set<std::string>(keys.begin(), keys.end()));
  EXPECT_GE(keys.size(), 30u);
}

}  // namespace
}  // namespace hvagent::config

// The browser console listener: off by default; on loopback only in the development mode (it is
// plain text there, like REST); a wildcard address needs the host its URLs name.
TEST(Validate, ConsoleWsListenFollowsTheRestListenerRules) {
  EXPECT_TRUE(Dev().console_ws_listen.empty());
  Config c = Dev();
  c.console_ws_listen = "127.0.0.1:8781";
  EXPECT_TRUE(Validate(c).ok());
  c.console_ws_listen = "10.0.0.5:8781";
  EXPECT_THAT(Msg(Validate(c)), HasSubstr("console.ws_listen"));
  c.console_ws_listen = c.rest_listen;
  EXPECT_THAT(Msg(Validate(c)), HasSubstr("must differ"));
  c = Dev();
  c.console_ws_public_host = "console.example";
  EXPECT_THAT(Msg(Validate(c)), HasSubstr("needs console.ws_listen"));
  c.console_ws_listen = "127.0.0.1:8781";
  EXPECT_TRUE(Validate(c).ok());
  c.console_ws_public_host = "evil.example/x?";
  EXPECT_THAT(Msg(Validate(c)), HasSubstr("console.ws_public_host"));
}

}  // namespace
}  // namespace hvagent::config
