#include "storage/device_wiper.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/log.h"

namespace hvagent::storage {
namespace {

constexpr size_t kWriteBuffer = 1 << 20;

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

absl::Status Errno(const std::string& what, const std::string& device, int err) {
  return absl::InternalError(absl::StrCat(what, " ", device, ": ", std::strerror(err)));
}

bool Unsupported(int err) { return err == EOPNOTSUPP || err == ENOTTY || err == EINVAL; }

absl::Status Sync(int fd, const std::string& device) {
  while (fdatasync(fd) != 0) {
    if (errno != EINTR) return Errno("fdatasync", device, errno);
  }
  return absl::OkStatus();
}

// Writes zeros over [offset, total), reporting after every chunk.
absl::Status WriteZeros(int fd, const std::string& device, uint64_t offset, uint64_t total, uint64_t chunk,
                        const BlockWiper::ProgressFn& progress) {
  std::unique_ptr<void, decltype(&std::free)> buffer(std::aligned_alloc(4096, kWriteBuffer), &std::free);
  if (!buffer) return absl::ResourceExhaustedError("cannot allocate the zero buffer");
  std::memset(buffer.get(), 0, kWriteBuffer);
  int logical_block = 512;
  if (ioctl(fd, BLKSSZGET, &logical_block) != 0 || logical_block <= 0) logical_block = 512;
  const int flags = fcntl(fd, F_GETFL);
  // O_DIRECT keeps a whole-device wipe out of the page cache; it needs block-aligned I/O.
  bool direct = flags >= 0 && offset % static_cast<uint64_t>(logical_block) == 0 &&
                total % static_cast<uint64_t>(logical_block) == 0 && fcntl(fd, F_SETFL, flags | O_DIRECT) == 0;
  while (offset < total) {
    const uint64_t chunk_end = offset + std::min(chunk, total - offset);
    while (offset < chunk_end) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(kWriteBuffer, chunk_end - offset));
      ssize_t w = pwrite(fd, buffer.get(), n, static_cast<off_t>(offset));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && errno == EINVAL && direct) {
        // The device refused direct I/O at this offset or size: finish with buffered writes.
        direct = false;
        if (fcntl(fd, F_SETFL, flags) != 0) return Errno("fcntl", device, errno);
        continue;
      }
      if (w < 0) return Errno(absl::StrCat("write at offset ", offset, " to"), device, errno);
      if (w == 0) return absl::InternalError(absl::StrCat("write at offset ", offset, " to ", device, " wrote nothing"));
      offset += static_cast<uint64_t>(w);  // a short write continues where it stopped
    }
    if (!direct) {
      if (auto s = Sync(fd, device); !s.ok()) return s;
    }
    if (progress) progress({offset, total});
  }
  return absl::OkStatus();
}

// Runs a range ioctl (BLKZEROOUT / BLKDISCARD) chunk by chunk. Returns the offset reached;
// `unsupported` is set when the device refused the ioctl there.
absl::StatusOr<uint64_t> RangeIoctl(int fd, const std::string& device, unsigned long request, const char* name,
                                    uint64_t total, uint64_t chunk, const BlockWiper::ProgressFn& progress,
                                    bool& unsupported) {
  uint64_t offset = 0;
  unsupported = false;
  while (offset < total) {
    uint64_t range[2] = {offset, std::min(chunk, total - offset)};
    int rc;
    do {
      rc = ioctl(fd, request, range);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      if (Unsupported(errno)) {
        unsupported = true;
        return offset;
      }
      return Errno(absl::StrCat(name, " at offset ", offset, " on"), device, errno);
    }
    offset += range[1];
    if (progress) progress({offset, total});
  }
  return offset;
}

bool IsUnderDev(const std::string& path) {
  if (!absl::StartsWith(path, "/dev/") || path.size() <= 5 || path.find('\0') != std::string::npos) return false;
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") return false;
  }
  return true;
}

}  // namespace

absl::Status DeviceWiper::Wipe(const std::string& device, WipeMode mode, const ProgressFn& progress) {
  if (!IsUnderDev(device)) return absl::InvalidArgumentError(absl::StrCat("device: '", device, "' is not a path under /dev/"));
  if (mode == WipeMode::kNone) return absl::OkStatus();
  struct stat st {};
  if (stat(device.c_str(), &st) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(device, " is not a block device: ", std::strerror(errno)));
  }
  if (!S_ISBLK(st.st_mode)) return absl::FailedPreconditionError(absl::StrCat(device, " is not a block device"));
  // O_EXCL: the kernel refuses a device that is mounted or claimed; O_NONBLOCK: never hang on a
  // node swapped for a FIFO between stat and open (checked again with fstat below).
  Fd f;
  f.fd = open(device.c_str(), O_WRONLY | O_CLOEXEC | O_EXCL | O_NONBLOCK);
  if (f.fd < 0) {
    if (errno == EBUSY) return absl::FailedPreconditionError(absl::StrCat(device, " is in use (mounted or claimed)"));
    return Errno("open", device, errno);
  }
  if (fstat(f.fd, &st) != 0 || !S_ISBLK(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(device, " is not a block device"));
  }
  int flags = fcntl(f.fd, F_GETFL);
  if (flags < 0 || fcntl(f.fd, F_SETFL, flags & ~O_NONBLOCK) != 0) return Errno("fcntl", device, errno);
  uint64_t total = 0;
  if (ioctl(f.fd, BLKGETSIZE64, &total) != 0) return Errno("BLKGETSIZE64", device, errno);
  const uint64_t chunk = std::max<uint64_t>(options_.chunk_bytes, 4096);
  if (progress) progress({0, total});

  uint64_t done = 0;
  bool unsupported = true;
  if (mode == WipeMode::kDiscard) {
    auto reached = RangeIoctl(f.fd, device, BLKDISCARD, "BLKDISCARD", total, chunk, progress, unsupported);
    if (!reached.ok()) return reached.status();
    done = *reached;
    if (unsupported) {
      log::ComponentLogger("storage.wipe")
          ->warn("{}: discard is not supported; zero-filling from offset {} instead", device, done);
    }
  } else if (options_.use_zeroout_ioctl) {
    auto reached = RangeIoctl(f.fd, device, BLKZEROOUT, "BLKZEROOUT", total, chunk, progress, unsupported);
    if (!reached.ok()) return reached.status();
    done = *reached;
  }
  if (unsupported) {
    if (auto s = WriteZeros(f.fd, device, done, total, chunk, progress); !s.ok()) return s;
  }
  return Sync(f.fd, device);
}

}  // namespace hvagent::storage
