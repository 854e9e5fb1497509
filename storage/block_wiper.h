#pragma once
// BlockWiper: clears a block device's data before its volume is removed, so a deleted volume's
// data never reaches the next tenant. DeviceWiper is the real one (zero-fill with BLKZEROOUT or
// writes, or BLKDISCARD); unit tests use a fake.

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "storage/model.h"

namespace hvagent::storage {

class BlockWiper {
 public:
  using ProgressFn = std::function<void(const WipeProgress&)>;
  virtual ~BlockWiper() = default;
  // kNone returns at once. Reports progress at least every 64 MiB for kZero.
  virtual absl::Status Wipe(const std::string& device, WipeMode mode, const ProgressFn& progress) = 0;
};

}  // namespace hvagent::storage
