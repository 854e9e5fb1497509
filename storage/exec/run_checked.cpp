#include "storage/exec/run_checked.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace hvagent::storage {
namespace {

constexpr size_t kMaxWords = 1000;

std::string Seconds(std::chrono::milliseconds ms) {
  if (ms.count() % 1000 == 0) return absl::StrCat(ms.count() / 1000);
  return absl::StrCat(static_cast<double>(ms.count()) / 1000.0);
}

bool IsNoise(absl::string_view line, const ToolErrors& errors) {
  for (const std::string& n : errors.noise) {
    if (absl::StrContains(line, n)) return true;
  }
  return false;
}

}  // namespace

std::string ToolWords(const CommandResult& result, const ToolErrors& errors) {
  for (const std::string* text : {&result.stderr_text, &result.stdout_text}) {
    std::vector<absl::string_view> lines;
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      line = absl::StripAsciiWhitespace(line);
      if (!line.empty() && !IsNoise(line, errors)) lines.push_back(line);
    }
    std::string words = absl::StrJoin(lines, " ");
    if (words.size() > kMaxWords) words = absl::StrCat(words.substr(0, kMaxWords), "...");
    if (!words.empty()) return words;
  }
  return "(no output)";
}

absl::Status ToolFailed(absl::string_view label, const CommandResult& result, const ToolErrors& errors) {
  std::string words = ToolWords(result, errors);
  absl::StatusCode code =
      errors.classify != nullptr ? errors.classify(absl::AsciiStrToLower(words)) : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrCat(label, " failed (exit ", result.exit_code, "): ", words));
}

absl::StatusOr<CommandResult> RunTool(CommandRunner& runner, const Command& command, absl::string_view label) {
  auto r = runner.Run(command);
  if (r.ok()) return r;
  if (absl::IsDeadlineExceeded(r.status())) {
    return absl::DeadlineExceededError(
        absl::StrCat(label, " hung for ", Seconds(command.timeout), " s and was killed"));
  }
  return absl::Status(r.status().code(), absl::StrCat(label, ": ", r.status().message()));
}

absl::Status RunChecked(CommandRunner& runner, const Command& command, absl::string_view label,
                        const ToolErrors& errors) {
  auto r = RunTool(runner, command, label);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) return ToolFailed(label, *r, errors);
  return absl::OkStatus();
}

}  // namespace hvagent::storage
