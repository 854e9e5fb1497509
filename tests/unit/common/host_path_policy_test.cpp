// Specification of HostPathPolicy: which host files a guest may be given by path. Runs as any
// user: the directories it builds are its own (trusted_owner = its uid), under the system's
// temporary directory (root's, sticky).
#include "common/host_path_policy.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace hvagent {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

class HostPathPolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "hvagent-paths-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    base_ = tmpl;  // 0700, ours
    images_ = base_ + "/images";
    kernels_ = base_ + "/kernels";
    fs::create_directory(images_);
    fs::create_directory(kernels_);
    chmod(images_.c_str(), 0755);
    chmod(kernels_.c_str(), 0755);
    Touch(images_ + "/web1.raw");
    Touch(kernels_ + "/vmlinuz");
    Touch(base_ + "/outside.raw");
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(base_, fs::perms::owner_all, ec);
    fs::remove_all(base_, ec);
  }
  static void Touch(const std::string& path) { std::ofstream(path) << "data"; }

  HostPathPolicy::Options Options() const {
    return {.image_dirs = {images_}, .kernel_dirs = {kernels_}, .firmware_dirs = {}, .trusted_owner = geteuid()};
  }
  std::unique_ptr<HostPathPolicy> Policy() {
    auto p = HostPathPolicy::Open(Options());
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? std::move(*p) : HostPathPolicy::AllowNothing();
  }
  absl::Status Image(const HostPathPolicy& p, const std::string& path) {
    return p.Check("spec.disks[0].source_path", path, HostPathKind::kImage);
  }
  void ExpectRefused(const HostPathPolicy& p, const std::string& path, const std::string& why) {
    absl::Status s = Image(p, path);
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << path << ": " << s;
    EXPECT_THAT(Msg(s), StartsWith("spec.disks[0].source_path: ")) << path;
    EXPECT_THAT(Msg(s), HasSubstr(why)) << path;
    EXPECT_THAT(Msg(s), HasSubstr("allowed for disk images: " + images_ + " (security.image_dirs)")) << path;
  }

  std::string base_, images_, kernels_;
};

TEST_F(HostPathPolicyTest, RegularFileInsideAnAllowedDirectoryIsAccepted) {
  auto p = Policy();
  EXPECT_TRUE(Image(*p, images_ + "/web1.raw").ok());
  fs::create_directory(images_ + "/tenant");
  chmod((images_ + "/tenant").c_str(), 0755);
  Touch(images_ + "/tenant/db.qcow2");
  EXPECT_TRUE(Image(*p, images_ + "/tenant/db.qcow2").ok());
  EXPECT_TRUE(p->Check("spec.kernel.kernel_path", kernels_ + "/vmlinuz", HostPathKind::kKernel).ok());
}

TEST_F(HostPathPolicyTest, HostFilesOutsideAreRefused) {
  auto p = Policy();
  ExpectRefused(*p, "/etc/shadow", "/etc/shadow is outside the directories allowed for disk images: ");
  ExpectRefused(*p, base_ + "/outside.raw", "outside.raw is outside the directories allowed");
  ExpectRefused(*p, images_, "is outside the directories allowed");  // the directory itself
  ExpectRefused(*p, images_ + "x/web1.raw", "is outside the directories allowed");  // a prefix is not a parent
}

TEST_F(HostPathPolicyTest, DevProcAndSysAreRefusedWhateverIsAllowed) {
  auto p = Policy();
  ExpectRefused(*p, "/dev/vda", "block devices only as pool volumes");
  ExpectRefused(*p, "/dev/loop0", "block devices only as pool volumes");
  ExpectRefused(*p, "/proc/self/root/etc/shadow", "nothing under /dev, /proc or /sys");
  ExpectRefused(*p, "/sys/firmware/efi/efivars", "nothing under /dev, /proc or /sys");
}

TEST_F(HostPathPolicyTest, SymbolicLinksAreNeverFollowed) {
  fs::create_symlink("/etc/shadow", images_ + "/shadow.raw");
  fs::create_symlink("../outside.raw", images_ + "/up.raw");
  fs::create_symlink("web1.raw", images_ + "/alias.raw");  // even one that stays inside
  fs::create_directory_symlink(base_, images_ + "/base");
  auto p = Policy();
  ExpectRefused(*p, images_ + "/shadow.raw", images_ + "/shadow.raw is a symbolic link");
  ExpectRefused(*p, images_ + "/up.raw", "is a symbolic link");
  ExpectRefused(*p, images_ + "/alias.raw", "is a symbolic link");
  ExpectRefused(*p, images_ + "/base/outside.raw", images_ + "/base is a symbolic link");
}

TEST_F(HostPathPolicyTest, OnlyCanonicalPathsAreAccepted) {
  auto p = Policy();
  ExpectRefused(*p, images_ + "/../outside.raw", "must not contain '..'");
  ExpectRefused(*p, images_ + "/x/../web1.raw", "must not contain '..'");
  ExpectRefused(*p, images_ + "//web1.raw", "written canonically");
  ExpectRefused(*p, images_ + "/./web1.raw", "written canonically");
  ExpectRefused(*p, images_ + "/web1.raw/", "written canonically");
  ExpectRefused(*p, "web1.raw", "must be an absolute path");
  ExpectRefused(*p, "", "must be an absolute path");
}

TEST_F(HostPathPolicyTest, OnlyRegularFilesAreAccepted) {
  ASSERT_EQ(mkfifo((images_ + "/pipe.raw").c_str(), 0600), 0);
  fs::create_directory(images_ + "/dir.raw");
  auto p = Policy();
  ExpectRefused(*p, images_ + "/pipe.raw", "is not a regular file");
  ExpectRefused(*p, images_ + "/dir.raw", "is not a regular file");
  ExpectRefused(*p, images_ + "/missing.raw", images_ + "/missing.raw does not exist");
  ExpectRefused(*p, images_ + "/web1.raw/x", "is not a directory");
  if (geteuid() == 0) {
    ASSERT_EQ(mknod((images_ + "/sda.raw").c_str(), S_IFBLK | 0600, makedev(8, 0)), 0);
    ExpectRefused(*p, images_ + "/sda.raw", "is a device (block devices reach a guest only as pool volumes)");
  }
}

TEST_F(HostPathPolicyTest, SubdirectoriesOthersCanWriteAreRefused) {
  fs::create_directory(images_ + "/shared");
  chmod((images_ + "/shared").c_str(), 01777);  // sticky or not: only the allowed tree's top may be above
  Touch(images_ + "/shared/x.raw");
  auto p = Policy();
  ExpectRefused(*p, images_ + "/shared/x.raw", images_ + "/shared is writable by group or others (mode 1777)");
}

TEST_F(HostPathPolicyTest, EachKindHasItsOwnDirectories) {
  auto p = Policy();
  auto s = p->Check("spec.kernel.kernel_path", images_ + "/web1.raw", HostPathKind::kKernel);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(s), HasSubstr("allowed for kernels and initrds: " + kernels_ + " (security.kernel_dirs)"));
  s = p->Check("spec.firmware.loader_path", kernels_ + "/vmlinuz", HostPathKind::kFirmware);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(s), HasSubstr("no directory is allowed for firmware images (security.firmware_dirs is empty)"));
  ExpectRefused(*p, kernels_ + "/vmlinuz", "is outside the directories allowed for disk images");
}

TEST_F(HostPathPolicyTest, AllowNothingRefusesEveryPath) {
  auto p = HostPathPolicy::AllowNothing();
  auto s = Image(*p, images_ + "/web1.raw");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(s), HasSubstr("security.image_dirs is empty"));
}

// ---- at start: what may be allowed at all ----------------------------------------------------

absl::Status OpenImages(const std::string& dir) {
  auto p = HostPathPolicy::Open({.image_dirs = {dir}, .trusted_owner = geteuid()});
  return p.status();
}

TEST_F(HostPathPolicyTest, Open_RefusesDirectoriesOthersCanWrite) {
  chmod(images_.c_str(), 0777);
  auto s = OpenImages(images_);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Msg(s), StartsWith("security.image_dirs: " + images_ + ": " + images_ +
                                 " is writable by group or others (mode 0777)"));
  chmod(images_.c_str(), 0775);
  EXPECT_THAT(Msg(OpenImages(images_)), HasSubstr("(mode 0775)"));
  chmod(images_.c_str(), 01777);  // sticky is no help for the allowed directory itself
  EXPECT_THAT(Msg(OpenImages(images_)), HasSubstr("(mode 1777)"));
}

TEST_F(HostPathPolicyTest, Open_RefusesADirectoryBelowOneOthersCanWrite) {
  chmod(base_.c_str(), 0777);
  auto s = OpenImages(images_);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Msg(s), HasSubstr("the directory above it, " + base_ + " is writable by group or others (mode 0777)"));
  chmod(base_.c_str(), 0700);
}

TEST_F(HostPathPolicyTest, Open_AcceptsARootOwnedStickyDirectoryAbove) {
  // The base lives in the system's temporary directory (root's, mode 1777): there nobody but
  // root can rename or remove what another user owns.
  struct stat st {};
  ASSERT_EQ(stat(fs::temp_directory_path().c_str(), &st), 0);
  if (st.st_uid != 0 || (st.st_mode & S_ISVTX) == 0) GTEST_SKIP() << "temp directory is not root's and sticky";
  EXPECT_TRUE(OpenImages(images_).ok());
}

TEST_F(HostPathPolicyTest, Open_RefusesDirectoriesOfAnotherOwner) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give the directory away";
  ASSERT_EQ(chown(images_.c_str(), 65534, 65534), 0);
  auto s = HostPathPolicy::Open({.image_dirs = {images_}});
  EXPECT_THAT(Msg(s.status()), HasSubstr(images_ + " is owned by uid 65534, not root"));
}

TEST_F(HostPathPolicyTest, Open_RefusesSymlinkedSpecialAndNonCanonicalDirectories) {
  fs::create_directory_symlink(images_, base_ + "/link");
  EXPECT_THAT(Msg(OpenImages(base_ + "/link")), HasSubstr(base_ + "/link is a symbolic link"));
  EXPECT_THAT(Msg(OpenImages("/")), HasSubstr("would allow every file"));
  for (const char* dir : {"/dev", "/dev/mapper", "/proc", "/sys/block"}) {
    EXPECT_THAT(Msg(OpenImages(dir)), HasSubstr("never handed to a guest")) << dir;
  }
  EXPECT_THAT(Msg(OpenImages(images_ + "/")), HasSubstr("written canonically"));
  EXPECT_THAT(Msg(OpenImages(base_ + "/./images")), HasSubstr("written canonically"));
  EXPECT_THAT(Msg(OpenImages("images")), HasSubstr("absolute"));
}

TEST_F(HostPathPolicyTest, Open_LeavesOutDirectoriesThatDoNotExist) {
  auto p = HostPathPolicy::Open({.image_dirs = {base_ + "/none", images_}, .trusted_owner = geteuid()});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->Directories(HostPathKind::kImage), std::vector<std::string>{images_});
}

TEST_F(HostPathPolicyTest, ADirectoryChangedAfterStartIsNoLongerTrusted) {
  auto p = Policy();
  chmod(images_.c_str(), 0777);
  ExpectRefused(*p, images_ + "/web1.raw", "the allowed directory " + images_ + " is writable by group or others");
  chmod(images_.c_str(), 0755);
  EXPECT_TRUE(Image(*p, images_ + "/web1.raw").ok());
  // Replaced by another directory of the same name: not the one checked at start.
  fs::rename(images_, base_ + "/old");
  fs::create_directory(images_);
  chmod(images_.c_str(), 0755);
  Touch(images_ + "/web1.raw");
  ExpectRefused(*p, images_ + "/web1.raw", "was replaced since the agent started");
}

}  // namespace
}  // namespace hvagent
