#include "common/host_path_policy.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/log.h"

namespace hvagent {
namespace {

struct KindInfo {
  const char* what;
  const char* key;
};
constexpr KindInfo kKinds[] = {
    {"disk images", "security.image_dirs"},
    {"kernels and initrds", "security.kernel_dirs"},
    {"firmware images", "security.firmware_dirs"},
};
constexpr int kKindCount = 3;

const KindInfo& Info(HostPathKind kind) { return kKinds[static_cast<int>(kind)]; }

class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) close(fd_);
  }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      if (fd_ >= 0) close(fd_);
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// One component below `dirfd`: a plain name, so RESOLVE_BENEATH keeps it there; a symbolic
// link (even as the last component) fails with ELOOP instead of being followed.
int OpenBeneath(int dirfd, const std::string& name, bool directory) {
  open_how how{};
  how.flags = O_PATH | O_CLOEXEC | (directory ? O_DIRECTORY : 0);
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  long fd;
  do {
    fd = syscall(SYS_openat2, dirfd, name.c_str(), &how, sizeof how);
  } while (fd < 0 && errno == EINTR);
  if (fd >= 0 || errno != ENOSYS) return static_cast<int>(fd);
  // No openat2 (kernels before 5.6; qemu-user, which runs the arm64 unit tests): the same
  // guarantee for one plain component by hand. O_NOFOLLOW with O_PATH opens a symbolic link
  // itself instead of following it, and fstat tells it apart: ELOOP, as openat2 answers.
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
    errno = EINVAL;
    return -1;
  }
  UniqueFd one(openat(dirfd, name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (one.get() < 0) return -1;
  struct stat st {};
  if (fstat(one.get(), &st) != 0) return -1;
  if (S_ISLNK(st.st_mode)) {
    errno = ELOOP;
    return -1;
  }
  if (directory && !S_ISDIR(st.st_mode)) {
    errno = ENOTDIR;
    return -1;
  }
  return one.release();
}

// The components of an absolute path written canonically ("/a/b"): no empty, "." or ".."
// component and no trailing '/'. False (with the reason) otherwise.
bool SplitCanonical(absl::string_view path, std::vector<std::string>* parts, std::string* why) {
  parts->clear();
  if (path.empty() || path[0] != '/') {
    *why = "must be an absolute path";
    return false;
  }
  if (path.find('\0') != absl::string_view::npos) {
    *why = "must not contain NUL";
    return false;
  }
  if (path == "/") return true;
  for (absl::string_view part : absl::StrSplit(path.substr(1), '/')) {
    if (part == "..") {
      *why = "must not contain '..'";
      return false;
    }
    if (part.empty() || part == ".") {
      *why = "must be written canonically (no '//', '/./' or trailing '/')";
      return false;
    }
    parts->emplace_back(part);
  }
  return true;
}

bool UnderKernelTree(const std::vector<std::string>& parts) {
  return !parts.empty() && (parts[0] == "dev" || parts[0] == "proc" || parts[0] == "sys");
}

std::string Prefix(const std::vector<std::string>& parts, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) absl::StrAppend(&out, "/", parts[i]);
  return out.empty() ? "/" : out;
}

std::string Mode(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// Empty when a directory may anchor host paths: owned by root (or the trusted owner) and
// writable by its owner alone. `above`: a directory above an allowed one may also be a
// root-owned sticky directory like /tmp, where nobody but root can rename or remove the
// entries root (or the trusted owner) owns.
std::string UnsafeDirectory(const struct stat& st, uid_t trusted_owner, bool above) {
  if (!S_ISDIR(st.st_mode)) return "is not a directory";
  if (st.st_uid != 0 && st.st_uid != trusted_owner) return absl::StrCat("is owned by uid ", st.st_uid, ", not root");
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) == 0) return "";
  if (above && st.st_uid == 0 && (st.st_mode & S_ISVTX) != 0) return "";
  return absl::StrCat("is writable by group or others (mode ", Mode(st.st_mode), ")");
}

bool OnKernelFileSystem(int fd) {
  struct statfs fs {};
  if (fstatfs(fd, &fs) != 0) return false;
  return fs.f_type == PROC_SUPER_MAGIC || fs.f_type == SYSFS_MAGIC;
}

std::string OpenError(int err, const std::string& where) {
  switch (err) {
    case ENOENT: return absl::StrCat(where, " does not exist");
    case ELOOP: return absl::StrCat(where, " is a symbolic link (name what it points to instead)");
    case ENOTDIR: return absl::StrCat(where, " is not a directory");
    case EXDEV: return absl::StrCat(where, " leaves the allowed directory");
    case ENOSYS: return "this kernel has no openat2 (Linux 5.6 or later is needed)";
    default: return absl::StrCat(where, ": ", std::strerror(err));
  }
}

// Opens an allowed directory from / one component at a time, checking each directory on the
// way. NotFound when it does not exist; FailedPrecondition with the reason otherwise.
absl::StatusOr<UniqueFd> OpenTrustedDirectory(const std::string& dir, uid_t trusted_owner) {
  std::vector<std::string> parts;
  std::string why;
  if (!SplitCanonical(dir, &parts, &why)) return absl::FailedPreconditionError(why);
  if (parts.empty()) return absl::FailedPreconditionError("/ would allow every file on the host");
  if (UnderKernelTree(parts)) {
    return absl::FailedPreconditionError(
        "/dev, /proc and /sys are never handed to a guest (block devices only as pool volumes)");
  }
  UniqueFd cur(open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (cur.get() < 0) return absl::FailedPreconditionError(absl::StrCat("/: ", std::strerror(errno)));
  for (size_t i = 0; i <= parts.size(); ++i) {
    if (i > 0) {
      UniqueFd next(OpenBeneath(cur.get(), parts[i - 1], true));
      if (next.get() < 0) {
        const int err = errno;
        if (err == ENOENT) return absl::NotFoundError(OpenError(err, Prefix(parts, i)));
        return absl::FailedPreconditionError(OpenError(err, Prefix(parts, i)));
      }
      cur = std::move(next);
    }
    struct stat st {};
    if (fstat(cur.get(), &st) != 0) {
      return absl::FailedPreconditionError(absl::StrCat(Prefix(parts, i), ": ", std::strerror(errno)));
    }
    const bool above = i < parts.size();
    if (std::string unsafe = UnsafeDirectory(st, trusted_owner, above); !unsafe.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat(above ? "the directory above it, " : "", Prefix(parts, i), " ", unsafe));
    }
  }
  if (OnKernelFileSystem(cur.get())) return absl::FailedPreconditionError("is on proc or sysfs");
  return cur;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HostPathPolicy>> HostPathPolicy::Open(const Options& options) {
  std::unique_ptr<HostPathPolicy> policy(new HostPathPolicy);
  policy->trusted_owner_ = options.trusted_owner;
  const std::vector<std::string>* lists[kKindCount] = {&options.image_dirs, &options.kernel_dirs,
                                                       &options.firmware_dirs};
  for (int k = 0; k < kKindCount; ++k) {
    for (const std::string& dir : *lists[k]) {
      auto fd = OpenTrustedDirectory(dir, options.trusted_owner);
      if (absl::IsNotFound(fd.status())) {
        log::ComponentLogger("security")->warn("{}: {} does not exist; nothing is allowed from it until the agent is "
                                               "restarted after it is created", kKinds[k].key, dir);
        continue;
      }
      if (!fd.ok()) {
        return absl::FailedPreconditionError(absl::StrCat(
            kKinds[k].key, ": ", dir, ": ", fd.status().message(),
            ". The agent allows host files only from directories that root alone can change, under directories "
            "root alone can change, so that what it checks is what libvirt later opens"));
      }
      policy->dirs_[k].push_back({dir, fd->release()});
    }
  }
  return policy;
}

std::unique_ptr<HostPathPolicy> HostPathPolicy::AllowNothing() {
  return std::unique_ptr<HostPathPolicy>(new HostPathPolicy);
}

HostPathPolicy::~HostPathPolicy() {
  for (auto& list : dirs_) {
    for (auto& d : list) close(d.fd);
  }
}

std::vector<std::string> HostPathPolicy::Directories(HostPathKind kind) const {
  std::vector<std::string> out;
  for (const auto& d : dirs_[static_cast<int>(kind)]) out.push_back(d.path);
  return out;
}

absl::Status HostPathPolicy::Check(absl::string_view field, absl::string_view path, HostPathKind kind) const {
  const KindInfo& info = Info(kind);
  const std::vector<std::string> allowed = Directories(kind);
  const std::string where =
      allowed.empty()
          ? absl::StrCat("no directory is allowed for ", info.what, " (", info.key, " is empty)")
          : absl::StrCat("allowed for ", info.what, ": ", absl::StrJoin(allowed, ", "), " (", info.key, ")");
  auto deny = [&](absl::string_view why) {
    return absl::PermissionDeniedError(absl::StrCat(field, ": ", why, "; ", where));
  };
  auto outside = [&] {
    return absl::PermissionDeniedError(
        absl::StrCat(field, ": ", path, allowed.empty() ? ": " : " is outside the directories ", where));
  };
  std::vector<std::string> parts;
  std::string why;
  if (!SplitCanonical(path, &parts, &why)) return deny(why);
  if (UnderKernelTree(parts)) {
    return deny(absl::StrCat(
        path, ": nothing under /dev, /proc or /sys is handed to a guest",
        kind == HostPathKind::kImage ? " (block devices only as pool volumes: give the disk a volume)" : ""));
  }
  for (const Directory& dir : dirs_[static_cast<int>(kind)]) {
    std::vector<std::string> dir_parts;
    SplitCanonical(dir.path, &dir_parts, &why);
    if (parts.size() <= dir_parts.size() || !std::equal(dir_parts.begin(), dir_parts.end(), parts.begin())) continue;
    std::vector<std::string> rest(parts.begin() + static_cast<std::ptrdiff_t>(dir_parts.size()), parts.end());
    if (auto s = CheckInside(path, rest, dir); !s.ok()) return deny(s.message());
    return absl::OkStatus();
  }
  return outside();
}

// `rest`: the path's components below `dir`. The reason (as the status message) when refused.
absl::Status HostPathPolicy::CheckInside(absl::string_view path, const std::vector<std::string>& rest,
                                         const Directory& dir) const {
  // The directory itself, again: still the one opened at start, still root's alone.
  struct stat st {}, now {};
  if (fstat(dir.fd, &st) != 0) return absl::InternalError(absl::StrCat(dir.path, ": ", std::strerror(errno)));
  if (std::string unsafe = UnsafeDirectory(st, trusted_owner_, false); !unsafe.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("the allowed directory ", dir.path, " ", unsafe, " now"));
  }
  if (lstat(dir.path.c_str(), &now) != 0 || now.st_dev != st.st_dev || now.st_ino != st.st_ino) {
    return absl::FailedPreconditionError(
        absl::StrCat("the allowed directory ", dir.path, " was replaced since the agent started; restart it"));
  }
  int cur = dir.fd;
  UniqueFd held;
  std::string walked = dir.path;
  for (size_t i = 0; i < rest.size(); ++i) {
    const bool last = i + 1 == rest.size();
    absl::StrAppend(&walked, "/", rest[i]);
    UniqueFd next(OpenBeneath(cur, rest[i], !last));
    if (next.get() < 0) return absl::FailedPreconditionError(OpenError(errno, walked));
    if (fstat(next.get(), &st) != 0) return absl::InternalError(absl::StrCat(walked, ": ", std::strerror(errno)));
    if (!last) {
      // A subdirectory others could write would let them swap the file after this check.
      if (std::string unsafe = UnsafeDirectory(st, trusted_owner_, false); !unsafe.empty()) {
        return absl::FailedPreconditionError(absl::StrCat(walked, " ", unsafe));
      }
    } else if (!S_ISREG(st.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, S_ISBLK(st.st_mode) || S_ISCHR(st.st_mode)
                                 ? " is a device (block devices reach a guest only as pool volumes)"
                                 : " is not a regular file"));
    } else if (OnKernelFileSystem(next.get())) {
      return absl::FailedPreconditionError(absl::StrCat(path, " is on proc or sysfs"));
    }
    held = std::move(next);
    cur = held.get();
  }
  return absl::OkStatus();
}

}  // namespace hvagent
