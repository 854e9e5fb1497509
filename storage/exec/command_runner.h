#pragma once
// CommandRunner: the one way hvagent runs external programs (lvm, parted, wipefs...).
// An argv vector goes straight to execve: no shell, so no quoting or injection. Every run has
// a timeout after which the child is killed, and its output is captured (bounded).
// Storage backends take a CommandRunner&; unit tests pass a fake; SubprocessRunner
// (subprocess_runner.h) is the real one. run_checked.h turns a run into a status.

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hvagent::storage {

struct Command {
  std::vector<std::string> argv;  // argv[0] is an absolute path
  std::chrono::milliseconds timeout{30000};
  std::map<std::string, std::string> env;  // the child's whole environment (LC_ALL=C by default)
  // Set: asked at least every kCancelPoll while the program runs; true kills its whole process
  // group and the run answers Cancelled (a caller gone, an operation cancelled).
  std::function<bool()> cancelled;
};

inline constexpr std::chrono::milliseconds kCancelPoll{100};

struct CommandResult {
  int exit_code = -1;  // -1 when killed by a signal
  std::string stdout_text;
  std::string stderr_text;
};

class CommandRunner {
 public:
  virtual ~CommandRunner() = default;
  // Ok with the exit code when the program ran to completion (any exit code);
  // DeadlineExceeded when it was killed for the timeout; Cancelled when it was killed because
  // `cancelled` said so; InvalidArgument for a bad argv;
  // Internal when it could not be started.
  virtual absl::StatusOr<CommandResult> Run(const Command& command) = 0;
};

}  // namespace hvagent::storage
