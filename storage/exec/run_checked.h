#pragma once
// One way for every backend to run a tool and turn the run into a status, so every tool's
// failures read alike: "<label> failed (exit N): <the tool's own words>", "<label> hung for N s
// and was killed". The label names the run for a person: "lvm2 lvcreate", "parted -s /dev/sdb
// rm 3".

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "storage/exec/command_runner.h"

namespace hvagent::storage {

// How one tool's failures read.
struct ToolErrors {
  // Lines of its output that contain any of these are left out of its words (lvm2's
  // "Activation disabled", parted's complaints about udevadm).
  std::vector<std::string> noise;
  // The status code its words (lower-cased) call for; null: Internal.
  absl::StatusCode (*classify)(absl::string_view lower_words) = nullptr;
};

// The tool's own words: stderr, else stdout, without noise lines, on one line, at most 1000
// characters; "(no output)" when it said nothing.
std::string ToolWords(const CommandResult& result, const ToolErrors& errors);

// The status of a run that exited non-zero: "<label> failed (exit N): <words>".
absl::Status ToolFailed(absl::string_view label, const CommandResult& result, const ToolErrors& errors);

// Runs the command, whatever its exit code, for callers that read a failure's words themselves.
// Errors: DeadlineExceeded "<label> hung for N s and was killed"; otherwise the runner's own
// error (InvalidArgument, Internal) led by the label.
absl::StatusOr<CommandResult> RunTool(CommandRunner& runner, const Command& command, absl::string_view label);

// RunTool, and a non-zero exit is ToolFailed.
absl::Status RunChecked(CommandRunner& runner, const Command& command, absl::string_view label,
                        const ToolErrors& errors);

}  // namespace hvagent::storage
