// PartitionBackend and DeviceWiper against real GPT partitions on a loop device (root only).
// Each test gets a fresh sparse 128 MiB file attached with `losetup --find --show --partscan`;
// TearDown always detaches it and deletes the file. Partition nodes come from devtmpfs.

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "storage/exec/subprocess_runner.h"
#include "storage/device_wiper.h"
#include "storage/partition/partition_backend.h"

namespace hvagent::storage {
namespace {

constexpr uint64_t MiB = 1 << 20;

struct AlignedBuffer {
  explicit AlignedBuffer(size_t n) : size(n), data(static_cast<unsigned char*>(std::aligned_alloc(4096, n))) {}
  ~AlignedBuffer() { std::free(data); }
  size_t size;
  unsigned char* data;
};

// Direct I/O, so reads come from the device and not from a page cache the wipe might miss.
bool WriteAt(const std::string& dev, uint64_t offset, unsigned char byte, size_t len) {
  int fd = open(dev.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return false;
  AlignedBuffer buf(len);
  std::memset(buf.data, byte, len);
  bool ok = pwrite(fd, buf.data, len, static_cast<off_t>(offset)) == static_cast<ssize_t>(len) && fsync(fd) == 0;
  close(fd);
  return ok;
}

// Number of bytes in [offset, offset+len) that differ from `byte`; -1 on an I/O error.
int64_t CountNot(const std::string& dev, uint64_t offset, unsigned char byte, size_t len) {
  int fd = open(dev.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return -1;
  AlignedBuffer buf(len);
  ssize_t got = pread(fd, buf.data, len, static_cast<off_t>(offset));
  close(fd);
  if (got != static_cast<ssize_t>(len)) return -1;
  int64_t n = 0;
  for (size_t i = 0; i < len; ++i) n += buf.data[i] != byte;
  return n;
}

uint64_t DeviceSize(const std::string& dev) {
  int fd = open(dev.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  uint64_t size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) != 0) size = 0;
  close(fd);
  return size;
}

bool IsBlockDevice(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode);
}

// The kernel's start sector of /dev/loopNpM.
uint64_t SysfsStart(const std::string& part) {
  std::ifstream in(absl::StrCat("/sys/class/block/", part.substr(part.rfind('/') + 1), "/start"));
  uint64_t start = 0;
  in >> start;
  return start;
}

class PartitionIntegration : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (losetup, partition tables)";
    char tmpl[] = "/var/tmp/hvagent-partition-XXXXXX";
    int fd = mkstemp(tmpl);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    image_ = tmpl;
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(128 * MiB)), 0);
    close(fd);
    auto r = Run({"/usr/sbin/losetup", "--find", "--show", "--partscan", image_});
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->exit_code, 0) << r->stderr_text;
    loop_ = std::string(absl::StripAsciiWhitespace(r->stdout_text));
    ASSERT_TRUE(IsBlockDevice(loop_)) << loop_;
    config_.name = "gpt-it";
    config_.type = PoolType::kPartition;
    config_.disk = loop_;
    config_.wipe = WipeMode::kZero;
    backend_ = std::make_unique<PartitionBackend>(config_, runner_, wiper_);
  }
  void TearDown() override {
    backend_.reset();
    if (!loop_.empty()) {
      auto r = Run({"/usr/sbin/losetup", "-d", loop_});
      EXPECT_TRUE(r.ok() && r->exit_code == 0) << "could not detach " << loop_;
    }
    if (!image_.empty()) unlink(image_.c_str());
  }
  absl::StatusOr<CommandResult> Run(std::vector<std::string> argv) {
    return runner_.Run(Command{.argv = std::move(argv), .timeout = std::chrono::seconds(60)});
  }
  size_t PartitionCount() {
    auto r = Run({"/usr/sbin/sfdisk", "--json", loop_});
    if (!r.ok() || r->exit_code != 0) return 9999;
    size_t n = 0;
    for (size_t at = r->stdout_text.find("\"node\""); at != std::string::npos;
         at = r->stdout_text.find("\"node\"", at + 1)) {
      ++n;
    }
    return n;
  }

  SubprocessRunner runner_;
  DeviceWiper wiper_{DeviceWiper::Options{.chunk_bytes = 4 * MiB}};
  PoolConfig config_;
  std::string image_;
  std::string loop_;
  std::unique_ptr<PartitionBackend> backend_;
};

TEST_F(PartitionIntegration, PrepareCreatesGptOnceAndKeepsIt) {
  EXPECT_EQ(backend_->GetPool().status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(backend_->Prepare().ok());
  auto r = Run({"/usr/sbin/sfdisk", "--json", loop_});
  ASSERT_TRUE(r.ok());
  EXPECT_NE(r->stdout_text.find("\"label\": \"gpt\""), std::string::npos) << r->stdout_text;
  auto pool = backend_->GetPool();
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(pool->capacity_bytes, 126 * MiB);  // 1 MiB head, the backup GPT at the end
  EXPECT_EQ(pool->free_bytes, 126 * MiB);
  EXPECT_EQ(pool->volume_count, 0u);
  ASSERT_TRUE(backend_->CreateVolume({"keep", MiB}).ok());
  ASSERT_TRUE(backend_->Prepare().ok());  // idempotent: the volume survives
  EXPECT_TRUE(backend_->GetVolume("keep").ok());
}

TEST_F(PartitionIntegration, PrepareRefusesDosLabelAndFilesystem) {
  auto r = Run({"/usr/sbin/parted", "-s", loop_, "mklabel", "msdos"});
  ASSERT_TRUE(r.ok() && r->exit_code == 0);
  EXPECT_EQ(backend_->Prepare().code(), absl::StatusCode::kFailedPrecondition);
  r = Run({"/usr/sbin/wipefs", "-a", loop_});
  ASSERT_TRUE(r.ok() && r->exit_code == 0);
  if (access("/usr/sbin/mkfs.ext4", X_OK) == 0) {
    r = Run({"/usr/sbin/mkfs.ext4", "-q", "-F", loop_});
    ASSERT_TRUE(r.ok() && r->exit_code == 0) << (r.ok() ? r->stderr_text : r.status().ToString());
    auto s = backend_->Prepare();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(s.message().find("ext4"), std::string::npos) << s;
    r = Run({"/usr/sbin/blkid", "-p", "-o", "value", "-s", "TYPE", loop_});
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(absl::StripAsciiWhitespace(r->stdout_text), "ext4");  // untouched
  }
}

TEST_F(PartitionIntegration, CreateWriteDeleteRecreateReadsZeros) {
  ASSERT_TRUE(backend_->Prepare().ok());
  auto a = backend_->CreateVolume({"a", 10 * MiB});
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = backend_->CreateVolume({"b", 20 * MiB - 5});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->path, loop_ + "p1");
  EXPECT_EQ(b->path, loop_ + "p2");
  ASSERT_TRUE(IsBlockDevice(a->path));
  ASSERT_TRUE(IsBlockDevice(b->path));
  EXPECT_EQ(DeviceSize(a->path), 10 * MiB);
  EXPECT_EQ(DeviceSize(b->path), 20 * MiB);
  EXPECT_EQ(b->size_bytes, 20 * MiB);
  EXPECT_EQ(SysfsStart(a->path) * 512, 1 * MiB);
  EXPECT_EQ(SysfsStart(b->path) * 512, 11 * MiB);
  const uint64_t a_start = SysfsStart(a->path);

  ASSERT_TRUE(WriteAt(a->path, 0, 0xA5, MiB));
  ASSERT_TRUE(WriteAt(a->path, 9 * MiB, 0xA5, MiB));
  ASSERT_TRUE(WriteAt(b->path, 0, 0x5A, MiB));
  ASSERT_EQ(CountNot(a->path, 0, 0xA5, MiB), 0);
  ASSERT_EQ(CountNot(a->path, 9 * MiB, 0xA5, MiB), 0);

  std::vector<WipeProgress> progress;
  auto del = backend_->DeleteVolume("a", [&](const WipeProgress& p) { progress.push_back(p); });
  ASSERT_TRUE(del.ok()) << del;
  ASSERT_GE(progress.size(), 3u);  // 0, then every 4 MiB chunk
  for (size_t i = 1; i < progress.size(); ++i) {
    EXPECT_GE(progress[i].done_bytes, progress[i - 1].done_bytes);
    EXPECT_EQ(progress[i].total_bytes, 10 * MiB);
  }
  EXPECT_EQ(progress.back().done_bytes, 10 * MiB);
  EXPECT_FALSE(IsBlockDevice(loop_ + "p1"));
  EXPECT_EQ(backend_->GetVolume("a").status().code(), absl::StatusCode::kNotFound);

  auto c = backend_->CreateVolume({"c", 10 * MiB});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->path, loop_ + "p1");
  EXPECT_EQ(SysfsStart(c->path), a_start);  // the very same blocks
  EXPECT_EQ(CountNot(c->path, 0, 0x00, MiB), 0) << "first MiB of the old volume survived the wipe";
  EXPECT_EQ(CountNot(c->path, 9 * MiB, 0x00, MiB), 0) << "last MiB of the old volume survived the wipe";
  EXPECT_EQ(CountNot(b->path, 0, 0x5A, MiB), 0) << "the neighbour was touched";
}

TEST_F(PartitionIntegration, HandMadePartitionIsInvisibleAndKept) {
  ASSERT_TRUE(backend_->Prepare().ok());
  auto r = Run({"/usr/sbin/parted", "-s", "-a", "none", loop_, "unit", "MiB", "mkpart", "foreign", "1", "21"});
  ASSERT_TRUE(r.ok() && r->exit_code == 0) << (r.ok() ? r->stderr_text : r.status().ToString());
  auto list = backend_->ListVolumes();
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_TRUE(list->empty());
  auto pool = backend_->GetPool();
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ(pool->free_bytes, 106 * MiB);
  EXPECT_EQ(backend_->DeleteVolume("foreign", nullptr).code(), absl::StatusCode::kNotFound);
  auto v = backend_->CreateVolume({"mine", 5 * MiB});
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(SysfsStart(v->path) * 512, 21 * MiB);  // placed after the foreign partition
  EXPECT_EQ(PartitionCount(), 2u);
  EXPECT_TRUE(IsBlockDevice(loop_ + "p1"));
}

TEST_F(PartitionIntegration, PoolFullCreatesNothing) {
  ASSERT_TRUE(backend_->Prepare().ok());
  ASSERT_TRUE(backend_->CreateVolume({"big", 100 * MiB}).ok());
  auto c = backend_->CreateVolume({"more", 30 * MiB});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted) << c.status();
  EXPECT_EQ(PartitionCount(), 1u);
  EXPECT_FALSE(IsBlockDevice(loop_ + "p2"));
  EXPECT_TRUE(backend_->CreateVolume({"fits", 26 * MiB}).ok());
}

TEST_F(PartitionIntegration, AttachResizeAndDeleteRules) {
  ASSERT_TRUE(backend_->Prepare().ok());
  ASSERT_TRUE(backend_->CreateVolume({"disk0", 8 * MiB}).ok());
  ASSERT_TRUE(backend_->SetAttachment("disk0", "instance-0000001a", Ownership::kBorrowed).ok());
  auto v = backend_->GetVolume("disk0");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->attached_to, "instance-0000001a");
  EXPECT_EQ(backend_->DeleteVolume("disk0", nullptr).code(), absl::StatusCode::kFailedPrecondition);

  // Grows in place while attached, and the kernel sees the new size.
  auto grown = backend_->ResizeVolume("disk0", 12 * MiB);
  ASSERT_TRUE(grown.ok()) << grown.status();
  EXPECT_EQ(DeviceSize(grown->path), 12 * MiB);
  EXPECT_EQ(grown->attached_to, "instance-0000001a");
  EXPECT_EQ(backend_->ResizeVolume("disk0", 4 * MiB).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(backend_->CreateVolume({"next", MiB}).ok());
  EXPECT_EQ(backend_->ResizeVolume("disk0", 13 * MiB).status().code(), absl::StatusCode::kResourceExhausted);

  ASSERT_TRUE(backend_->SetAttachment("disk0", "", Ownership::kNone).ok());
  EXPECT_TRUE(backend_->DeleteVolume("disk0", nullptr).ok());
}

TEST_F(PartitionIntegration, DeleteOfOpenPartitionKeepsIt) {
  ASSERT_TRUE(backend_->Prepare().ok());
  auto v = backend_->CreateVolume({"busy", 4 * MiB});
  ASSERT_TRUE(v.ok());
  int fd = open(v->path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  auto s = backend_->DeleteVolume("busy", nullptr);
  close(fd);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(backend_->GetVolume("busy").ok());
  EXPECT_TRUE(IsBlockDevice(v->path));
  EXPECT_TRUE(backend_->DeleteVolume("busy", nullptr).ok());  // closed now
  EXPECT_EQ(PartitionCount(), 0u);
}

// ---- DeviceWiper on its own ----

class PartitionDeviceWiperIntegration : public PartitionIntegration {
 protected:
  void SetUp() override {
    PartitionIntegration::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_TRUE(backend_->Prepare().ok());
    auto v = backend_->CreateVolume({"w", 16 * MiB});
    ASSERT_TRUE(v.ok()) << v.status();
    part_ = v->path;
    auto n = backend_->CreateVolume({"neighbour", MiB});
    ASSERT_TRUE(n.ok());
    neighbour_ = n->path;
    ASSERT_TRUE(WriteAt(neighbour_, 0, 0x77, MiB));
  }
  void Fill() {
    for (uint64_t off = 0; off < 16 * MiB; off += MiB) ASSERT_TRUE(WriteAt(part_, off, 0xA5, MiB));
    ASSERT_EQ(CountNot(part_, 15 * MiB, 0xA5, MiB), 0);
  }
  void ExpectZeros() {
    for (uint64_t off = 0; off < 16 * MiB; off += MiB) EXPECT_EQ(CountNot(part_, off, 0, MiB), 0) << "at " << off;
    EXPECT_EQ(CountNot(neighbour_, 0, 0x77, MiB), 0) << "the wipe ran past the partition";
  }
  std::string part_, neighbour_;
};

TEST_F(PartitionDeviceWiperIntegration, ZeroWithIoctl) {
  Fill();
  std::vector<WipeProgress> seen;
  DeviceWiper w(DeviceWiper::Options{.chunk_bytes = 4 * MiB});
  ASSERT_TRUE(w.Wipe(part_, WipeMode::kZero, [&](const WipeProgress& p) { seen.push_back(p); }).ok());
  ExpectZeros();
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen[0].done_bytes, 0u);
  EXPECT_EQ(seen[4].done_bytes, 16 * MiB);
}

TEST_F(PartitionDeviceWiperIntegration, ZeroWithWrites) {
  Fill();
  std::vector<WipeProgress> seen;
  DeviceWiper w(DeviceWiper::Options{.chunk_bytes = 3 * MiB, .use_zeroout_ioctl = false});
  ASSERT_TRUE(w.Wipe(part_, WipeMode::kZero, [&](const WipeProgress& p) { seen.push_back(p); }).ok());
  ExpectZeros();
  ASSERT_EQ(seen.size(), 7u);  // 0, 3, 6, 9, 12, 15, 16 MiB
  EXPECT_EQ(seen.back().done_bytes, 16 * MiB);
}

TEST_F(PartitionDeviceWiperIntegration, Discard) {
  Fill();
  DeviceWiper w;
  ASSERT_TRUE(w.Wipe(part_, WipeMode::kDiscard, nullptr).ok());
  ExpectZeros();  // a loop device punches holes into its file: discarded blocks read as zeros
}

TEST_F(PartitionDeviceWiperIntegration, RefusesADeviceClaimedExclusively) {
  Fill();
  int fd = open(part_.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  DeviceWiper w;
  auto s = w.Wipe(part_, WipeMode::kZero, nullptr);
  close(fd);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(CountNot(part_, 0, 0xA5, MiB), 0);
}

}  // namespace
}  // namespace hvagent::storage
