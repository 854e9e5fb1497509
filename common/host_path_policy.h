#pragma once
// HostPathPolicy: which host files a guest may be given by path. Every disk image, kernel,
// initrd and firmware image named by a caller must be a regular file inside one of the
// directories the operator allowed for that kind ([security] image_dirs, kernel_dirs,
// firmware_dirs). Block devices never qualify: they reach a guest only as pool volumes.
//
// The directories are opened (O_PATH) and checked once, at start: they and every directory
// above them must be owned by root and writable by root alone, so that nobody but root can
// swap what is checked now for something else before libvirt opens the same path later. A
// path is resolved from the directory's descriptor one component at a time with openat2
// (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS): no "..", no symbolic links, no /proc magic links.
//
// Called by agent/service before anything is touched; knows nothing of proto or DomainSpec.

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hvagent {

enum class HostPathKind { kImage, kKernel, kFirmware };

class HostPathPolicy {
 public:
  struct Options {
    std::vector<std::string> image_dirs;
    std::vector<std::string> kernel_dirs;
    std::vector<std::string> firmware_dirs;
    // Besides root, who may own the directories. Root (0) in the agent; unit tests, which run
    // as whoever runs them, pass their own uid.
    uid_t trusted_owner = 0;
  };

  // Opens and checks every directory. A directory that does not exist is left out (and
  // logged): the default firmware directories exist only where OVMF/AAVMF are installed.
  // FailedPrecondition naming the config key and the directory when one is not safe: owned by
  // someone else, writable by group or others (or anything above it is), reached through a
  // symbolic link, not canonical, or /, /dev, /proc, /sys or below them.
  static absl::StatusOr<std::unique_ptr<HostPathPolicy>> Open(const Options& options);

  // A policy that allows no host path at all.
  static std::unique_ptr<HostPathPolicy> AllowNothing();

  ~HostPathPolicy();
  HostPathPolicy(const HostPathPolicy&) = delete;
  HostPathPolicy& operator=(const HostPathPolicy&) = delete;

  // Ok when `path` is a regular file inside one of the directories allowed for `kind`.
  // PermissionDenied otherwise, starting with `field` ("spec.disks[1].source_path: ...") and
  // naming the allowed directories.
  absl::Status Check(absl::string_view field, absl::string_view path, HostPathKind kind) const;

  // The directories in force for `kind` (those that existed at start).
  std::vector<std::string> Directories(HostPathKind kind) const;

 private:
  struct Directory {
    std::string path;
    int fd = -1;  // O_PATH
  };
  HostPathPolicy() = default;
  absl::Status CheckInside(absl::string_view field, const std::vector<std::string>& parts,
                           const Directory& dir) const;

  std::vector<Directory> dirs_[3];
  uid_t trusted_owner_ = 0;
};

}  // namespace hvagent
