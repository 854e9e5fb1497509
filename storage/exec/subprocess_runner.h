#pragma once
// SubprocessRunner: the real CommandRunner. posix_spawn of argv[0] (an absolute path) with the
// given environment plus LC_ALL=C and a fixed PATH, stdin empty, stdout and stderr captured up
// to kMaxCapture each; on timeout the child's whole process group is killed and reaped.

#include "storage/exec/command_runner.h"

namespace hvagent::storage {

class SubprocessRunner final : public CommandRunner {
 public:
  static constexpr size_t kMaxCapture = 4 << 20;  // per stream
  absl::StatusOr<CommandResult> Run(const Command& command) override;
};

}  // namespace hvagent::storage
