#include "hypervisor/domain_spec_validator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace hvagent::hv {
namespace {

using ::testing::HasSubstr;

DomainSpec Valid() {
  DomainSpec s;
  s.name = "web-1.example_A";
  s.vcpus = 2;
  s.memory_mib = 512;
  return s;
}

// Expects InvalidArgument whose message names `field`.
void ExpectRejected(const DomainSpec& s, const std::string& field) {
  absl::Status st = ValidateDomainSpec(s);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr(field));
}

TEST(DomainSpecValidatorTest, AcceptsMinimalSpec) { EXPECT_TRUE(ValidateDomainSpec(Valid()).ok()); }

TEST(DomainSpecValidatorTest, AcceptsFullSpec) {
  DomainSpec s = Valid();
  s.uuid = "6695eb01-f6a4-8304-79aa-97f2502e193f";
  s.arch = "aarch64";
  s.machine = "virt-7.2";
  s.boot = DirectKernelBoot{"/var/lib/hvagent/vmlinuz", "/var/lib/hvagent/initrd.img", "console=hvc0 root=/dev/xvda"};
  s.disks.push_back({"/dev/vg0/web1-root", DiskType::kBlock, "xvda", "", false, ""});
  s.disks.push_back({"/var/lib/images/seed.img", DiskType::kFile, "xvdb", "xen", true, "raw"});
  s.nics.push_back({"52:54:00:12:34:56", "", "br0", "netfront"});
  s.nics.push_back({"", "default", "", ""});
  EXPECT_TRUE(ValidateDomainSpec(s).ok()) << ValidateDomainSpec(s);
}

TEST(DomainSpecValidatorTest, RejectsShellAndMarkupCharactersInPaths) {
  for (const char* path : {"/tmp/a'b", "/tmp/a\"b", "/tmp/<disk>", "/tmp/a&b", "/tmp/a;reboot", "/tmp/a|b",
                           "/tmp/$(id)", "/tmp/`id`", "/tmp/a\\b", "/tmp/*", "/tmp/a?"}) {
    DomainSpec s = Valid();
    s.disks.push_back({.source_path = path, .target = "vda"});
    absl::Status st = ValidateDomainSpec(s);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << path;
    EXPECT_THAT(std::string(st.message()), HasSubstr("spec.disks[0].source_path")) << path;
  }
  DomainSpec ok = Valid();
  ok.disks.push_back({.source_path = "/var/lib/hvagent/images/web 1+2@v=3.raw", .target = "vda"});
  EXPECT_TRUE(ValidateDomainSpec(ok).ok()) << ValidateDomainSpec(ok);
}

TEST(DomainSpecValidatorTest, RejectsBadNames) {
  for (std::string name : std::vector<std::string>{"", "bad name", "-leading", ".hidden", "a'/><devices>", "x/y", "ünicode",
                           std::string(65, 'a'), std::string("nul\0byte", 8)}) {
    DomainSpec s = Valid();
    s.name = name;
    ExpectRejected(s, "spec.name");
  }
  DomainSpec s = Valid();
  s.name = std::string(64, 'a');
  EXPECT_TRUE(ValidateDomainSpec(s).ok());
}

TEST(DomainSpecValidatorTest, RejectsVcpusOutOfRange) {
  for (uint32_t v : {0u, kMaxVcpus + 1, 100000u}) {
    DomainSpec s = Valid();
    s.vcpus = v;
    ExpectRejected(s, "spec.vcpus");
  }
}

TEST(DomainSpecValidatorTest, RejectsMemoryOutOfRange) {
  for (uint64_t m : {uint64_t{0}, kMinMemoryMib - 1, kMaxMemoryMib + 1, uint64_t{1} << 40}) {
    DomainSpec s = Valid();
    s.memory_mib = m;
    ExpectRejected(s, "spec.memory_mib");
  }
}

TEST(DomainSpecValidatorTest, RejectsMalformedUuid) {
  for (std::string u : std::vector<std::string>{"123", "6695eb01f6a4830479aa97f2502e193f", "6695eb01-f6a4-8304-79aa-97f2502e193g"}) {
    DomainSpec s = Valid();
    s.uuid = u;
    ExpectRejected(s, "spec.uuid");
  }
}

TEST(DomainSpecValidatorTest, RejectsUnknownArchAndMachine) {
  DomainSpec s = Valid();
  s.arch = "sparc";
  ExpectRejected(s, "spec.arch");
  s = Valid();
  s.machine = "pc'><x";
  ExpectRejected(s, "spec.machine");
}

TEST(DomainSpecValidatorTest, RejectsUnsafePaths) {
  for (std::string p : std::vector<std::string>{"relative/vmlinuz", "/boot/../etc/shadow", "/dev/vg0/a,b", "/x:y", "/a\nb", ""}) {
    DomainSpec s = Valid();
    s.boot = DirectKernelBoot{p, "", ""};
    ExpectRejected(s, "spec.kernel.kernel_path");
    s = Valid();
    s.disks.push_back({p, DiskType::kFile, "vda", "", false, ""});
    ExpectRejected(s, "spec.disks[0].source_path");
  }
}

// Found by the fuzzer: bytes that are not UTF-8 made the builder emit a document XML parsers
// (libvirt's included) refuse.
TEST(DomainSpecValidatorTest, RejectsPathsThatAreNotUtf8) {
  for (std::string p : std::vector<std::string>{"/img/\xff", "/img/\xc3", "/img/\xc0\xaf", "/img/\xed\xa0\x80",
                                                "/img/\xef\xbf\xbf"}) {
    DomainSpec s = Valid();
    s.disks.push_back({p, DiskType::kFile, "vda", "", false, ""});
    ExpectRejected(s, "spec.disks[0].source_path");
  }
  DomainSpec s = Valid();
  s.disks.push_back({"/img/caf\xc3\xa9-\xe2\x82\xac.raw", DiskType::kFile, "vda", "", false, ""});
  EXPECT_TRUE(ValidateDomainSpec(s).ok()) << "real UTF-8 paths are fine";
}

TEST(DomainSpecValidatorTest, RejectsNonPrintableKernelCmdline) {
  DomainSpec s = Valid();
  s.boot = DirectKernelBoot{"/boot/vmlinuz", "", "console=hvc0\n"};
  ExpectRejected(s, "spec.kernel.cmdline");
}

TEST(DomainSpecValidatorTest, RejectsBadDiskTargetsBusesFormats) {
  DomainSpec s = Valid();
  s.disks.push_back({"/img/a", DiskType::kFile, "vda", "", false, ""});
  s.disks.push_back({"/img/b", DiskType::kFile, "vda", "", false, ""});
  ExpectRejected(s, "spec.disks[1].target");
  for (std::string t : std::vector<std::string>{"", "da", "vd", "vdabc", "nvme0n1", "vdA"}) {
    s = Valid();
    s.disks.push_back({"/img/a", DiskType::kFile, t, "", false, ""});
    ExpectRejected(s, "spec.disks[0].target");
  }
  s = Valid();
  s.disks.push_back({"/img/a", DiskType::kFile, "vda", "floppy", false, ""});
  ExpectRejected(s, "spec.disks[0].bus");
  s = Valid();
  s.disks.push_back({"/img/a", DiskType::kFile, "vda", "", false, "vmdk"});
  ExpectRejected(s, "spec.disks[0].format");
  s = Valid();
  s.disks.push_back({"/dev/vg0/lv", DiskType::kBlock, "vda", "", false, "qcow2"});
  ExpectRejected(s, "spec.disks[0].format");
}

TEST(DomainSpecValidatorTest, RejectsBadNics) {
  DomainSpec s = Valid();
  s.nics.push_back({"01:00:5e:00:00:01", "default", "", ""});  // multicast
  ExpectRejected(s, "spec.nics[0].mac");
  s = Valid();
  s.nics.push_back({"52:54:00:12:34", "default", "", ""});
  ExpectRejected(s, "spec.nics[0].mac");
  s = Valid();
  s.nics.push_back({"", "", "", ""});
  ExpectRejected(s, "spec.nics[0]");
  s = Valid();
  s.nics.push_back({"", "default", "br0", ""});
  ExpectRejected(s, "spec.nics[0]");
  s = Valid();
  s.nics.push_back({"", "", "bridge-name-too-long", ""});
  ExpectRejected(s, "spec.nics[0].bridge");
  s = Valid();
  s.nics.push_back({"", "", "br0", "pcnet'"});
  ExpectRejected(s, "spec.nics[0].model");
  s = Valid();
  s.nics.push_back({"52:54:00:12:34:56", "default", "", ""});
  s.nics.push_back({"52:54:00:12:34:56", "default", "", ""});
  ExpectRejected(s, "spec.nics[1].mac");
}

}  // namespace
}  // namespace hvagent::hv

namespace hvagent::hv {
namespace {

DomainSpec WithLabels(std::map<std::string, std::string> labels) {
  DomainSpec s = Valid();
  s.labels = std::move(labels);
  return s;
}

TEST(DomainSpecLabelsTest, AcceptsTheLimits) {
  std::map<std::string, std::string> labels;
  for (int i = 0; i < 16; ++i) labels["k" + std::to_string(i)] = "v";
  labels["k0"] = std::string(256, 'x');
  labels["k1"] = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 <&>\"'";  // UTF-8 and markup: escaped later
  labels["k2"] = "";
  labels.erase("k3");
  labels[std::string("a") + std::string(62, '.')] = "63-byte key";
  EXPECT_TRUE(ValidateDomainSpec(WithLabels(labels)).ok()) << ValidateDomainSpec(WithLabels(labels));
  EXPECT_TRUE(ValidateDomainSpec(WithLabels({{"cloudstack.instance", "i-2-100-VM"}, {"0_a-b.c", "x"}})).ok());
}

TEST(DomainSpecLabelsTest, RejectsTooManyLabels) {
  std::map<std::string, std::string> labels;
  for (int i = 0; i < 17; ++i) labels["k" + std::to_string(i)] = "v";
  ExpectRejected(WithLabels(labels), "spec.labels: at most 16 labels, got 17");
}

TEST(DomainSpecLabelsTest, RejectsBadKeysNamingThem) {
  for (const std::string key : {"Upper", "-lead", ".lead", "_lead", "sp ace", "a/b", "a:b", "\xc3\xa9"}) {
    ExpectRejected(WithLabels({{key, "v"}}), "spec.labels[\"");
  }
  ExpectRejected(WithLabels({{"Upper", "v"}}), "spec.labels[\"Upper\"]: key must match");
  ExpectRejected(WithLabels({{"", "v"}}), "spec.labels[\"\"]");
  ExpectRejected(WithLabels({{std::string("a") + std::string(63, 'b'), "v"}}), "key must match");
  // A key that is itself not printable is not echoed back.
  auto st = ValidateDomainSpec(WithLabels({{std::string("a\nb"), "v"}}));
  EXPECT_EQ(std::string(st.message()), "spec.labels[\"?\"]: key must match [a-z0-9][a-z0-9._-]{0,62}");
}

TEST(DomainSpecLabelsTest, RejectsBadValuesNamingTheKey) {
  ExpectRejected(WithLabels({{"big", std::string(257, 'x')}}), "spec.labels[\"big\"]: value must be at most 256");
  for (const std::string& value :
       {std::string("a\nb"), std::string("tab\t"), std::string(1, '\0'), std::string("del\x7f"),
        std::string("\xc2\x85"),        // C1 control (NEL)
        std::string("\xc3"),            // truncated sequence
        std::string("\xc0\xaf"),        // overlong '/'
        std::string("\xed\xa0\x80"),    // UTF-16 surrogate
        std::string("\xf4\x90\x80\x80"),  // beyond U+10FFFF
        std::string("\xff")}) {
    ExpectRejected(WithLabels({{"v", value}}), "spec.labels[\"v\"]: value must be UTF-8 text without control");
  }
}

}  // namespace
}  // namespace hvagent::hv
