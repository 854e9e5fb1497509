#pragma once
// DeviceWiper: the real BlockWiper. Clears a whole block device under /dev/.
//   kZero:    BLKZEROOUT in chunks; where the device does not support it (EOPNOTSUPP, ENOTTY,
//             EINVAL), writes zeros instead: O_DIRECT when the device allows it, else buffered
//             writes with fdatasync after every chunk, so progress means data is on the device.
//   kDiscard: BLKDISCARD in chunks; where unsupported it zero-fills instead (a wipe is never
//             silently skipped). Note a discard only guarantees zeros on devices that read
//             discarded blocks back as zero (loop files, most thin/NVMe with DRAT/RZAT); pools
//             on other disks should use kZero.
//   kNone:    returns at once.
// Progress is reported once with 0 done, then after every chunk (at most chunk_bytes apart).
// Errors: InvalidArgument (path not under /dev/), FailedPrecondition (not a block device, or in
// use: opened with O_EXCL, so a mounted or otherwise claimed device is refused), Internal (I/O).

#include <cstdint>
#include <string>

#include "storage/block_wiper.h"

namespace hvagent::storage {

class DeviceWiper final : public BlockWiper {
 public:
  struct Options {
    uint64_t chunk_bytes = 64ull << 20;
    // Tests turn this off to exercise the write path on devices that support BLKZEROOUT.
    bool use_zeroout_ioctl = true;
  };
  DeviceWiper() : DeviceWiper(Options{}) {}
  explicit DeviceWiper(Options options) : options_(options) {}

  absl::Status Wipe(const std::string& device, WipeMode mode, const ProgressFn& progress) override;

 private:
  Options options_;
};

}  // namespace hvagent::storage
