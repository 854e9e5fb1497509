// DomainService::Create with host paths: the policy is applied to every path a caller names
// before anything is touched, never to the pool volumes the agent fills in; on libvirt's test
// driver an allowed image is defined with libvirt told never to chown it.
#include "agent/service/host_paths.h"

#include <libvirt/libvirt.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/service/domain_service.h"
#include "hypervisor/libvirt/libvirt_hypervisor.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"

namespace hvagent::service {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::StartsWith;

class HostPathsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "hvagent-hostpaths-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    images_ = tmpl;
    image_ = images_ + "/web1.raw";
    std::ofstream(image_) << "disk";
    chmod(image_.c_str(), 0640);
    auto p = HostPathPolicy::Open({.image_dirs = {images_}, .trusted_owner = geteuid()});
    ASSERT_TRUE(p.ok()) << p.status();
    policy_ = std::move(*p);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(images_, ec);
  }

  static hv::DomainSpec Spec(const std::string& name) {
    return hv::DomainSpec{.name = name, .vcpus = 1, .memory_mib = 64};
  }
  static std::pair<uid_t, mode_t> OwnerAndMode(const std::string& path) {
    struct stat st {};
    if (lstat(path.c_str(), &st) != 0) return {~0u, 0};
    return {st.st_uid, st.st_mode};
  }

  std::string images_, image_;
  std::unique_ptr<HostPathPolicy> policy_;
  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
};

TEST_F(HostPathsTest, Create_RefusesHostPathsBeforeTouchingTheHypervisor) {
  DomainService svc(hv_, clock_, {.host_paths = policy_.get()});
  struct Case {
    hv::DomainSpec spec;
    std::string field;
  };
  std::vector<Case> cases;
  auto with_disk = [](std::string path, hv::DiskType type = hv::DiskType::kFile) {
    hv::DomainSpec s = Spec("steal");
    s.disks.push_back({.source_path = std::move(path), .type = type, .target = "vda"});
    return s;
  };
  cases.push_back({with_disk("/dev/vda", hv::DiskType::kBlock), "spec.disks[0].source_path"});
  cases.push_back({with_disk("/etc/shadow"), "spec.disks[0].source_path"});
  cases.push_back({with_disk("/proc/self/root/etc/shadow"), "spec.disks[0].source_path"});
  cases.push_back({with_disk(image_, hv::DiskType::kBlock), "spec.disks[0].type"});
  hv::DomainSpec second = with_disk(image_);
  second.disks.push_back({.source_path = "/etc/shadow", .target = "vdb"});
  cases.push_back({second, "spec.disks[1].source_path"});
  hv::DomainSpec kernel = Spec("steal");
  kernel.boot = hv::DirectKernelBoot{image_, "", ""};  // an image dir is not a kernel dir
  cases.push_back({kernel, "spec.kernel.kernel_path"});
  hv::DomainSpec loader = Spec("steal");
  loader.boot = hv::FirmwareBoot{hv::FirmwareType::kUefi, "/etc/shadow"};
  cases.push_back({loader, "spec.firmware.loader_path"});
  for (const Case& c : cases) {
    auto d = svc.Create(c.spec, /*start=*/true);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kPermissionDenied) << c.field << ": " << d.status();
    EXPECT_THAT(std::string(d.status().message()), StartsWith(c.field + ": "));
  }
  EXPECT_TRUE(hv_.calls.empty()) << "a refused path must not reach the hypervisor";
}

TEST_F(HostPathsTest, Create_WithoutAPolicyAllowsNoHostPath) {
  DomainService svc(hv_, clock_, {});
  hv::DomainSpec s = Spec("web1");
  s.disks.push_back({.source_path = image_, .target = "vda"});
  auto d = svc.Create(s, false);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("security.image_dirs is empty"));
  EXPECT_TRUE(svc.Create(Spec("diskless"), false).ok());
}

TEST_F(HostPathsTest, PoolVolumeDisksAreNotCheckedAsPaths) {
  hv::DomainSpec s = Spec("web1");
  s.disks.push_back({.source_path = "", .target = "vda"});  // a volume: the agent fills the path in
  s.disks.push_back({.source_path = image_, .target = "vdb"});
  EXPECT_TRUE(CheckHostPaths(policy_.get(), s, {0}).ok());
  auto st = CheckHostPaths(policy_.get(), s, {});
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(st.message()), StartsWith("spec.disks[0].source_path: "));
}

// On libvirt's test driver: the refusals leave the files as they were, and an allowed image is
// defined with a per-source DAC label that forbids relabelling.
TEST_F(HostPathsTest, TestDriver_AllowedImageIsNeverRelabelledAndHostilePathsNeverDefined) {
  static std::atomic<int> n{0};
  const std::string name = "hostpaths-" + std::to_string(getpid()) + "-" + std::to_string(n++);
  hv::LibvirtHypervisor hv({.uri = "test:///default"});
  DomainService svc(hv, clock_, {.host_paths = policy_.get()});
  const auto image_before = OwnerAndMode(image_);
  const auto shadow_before = OwnerAndMode("/etc/shadow");

  hv::DomainSpec steal = Spec(name);
  steal.disks.push_back({.source_path = "/etc/shadow", .target = "vda"});
  EXPECT_EQ(svc.Create(steal, true).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::IsNotFound(hv.GetDomain(name).status()));

  hv::DomainSpec s = Spec(name);
  s.disks.push_back({.source_path = image_, .target = "vda"});
  auto d = svc.Create(s, true);
  ASSERT_TRUE(d.ok()) << d.status();

  virConnectPtr conn = virConnectOpen("test:///default");
  ASSERT_NE(conn, nullptr);
  virDomainPtr dom = virDomainLookupByName(conn, name.c_str());
  ASSERT_NE(dom, nullptr);
  char* xml = virDomainGetXMLDesc(dom, 0);
  ASSERT_NE(xml, nullptr);
  const std::string text(xml);
  free(xml);
  virDomainFree(dom);
  virConnectClose(conn);
  EXPECT_THAT(text, HasSubstr("<source file='" + image_ + "'>"));
  EXPECT_THAT(text, HasSubstr("<seclabel model='dac' relabel='no'/>"));
  EXPECT_THAT(text, HasSubstr("<backingStore/>"));

  EXPECT_TRUE(svc.Delete(name, /*force=*/true).ok());
  EXPECT_EQ(OwnerAndMode(image_), image_before);
  EXPECT_EQ(OwnerAndMode("/etc/shadow"), shadow_before);
}

}  // namespace
}  // namespace hvagent::service
