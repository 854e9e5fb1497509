// Specification of storage/exec/run_checked.h: how every backend's tool runs read as statuses.

#include "storage/exec/run_checked.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "tests/fakes/fake_command_runner.h"

namespace hvagent::storage {
namespace {

using ::testing::HasSubstr;
using testing::FakeCommandRunner;

const Command kCmd{.argv = {"/usr/sbin/tool", "arg"}, .timeout = std::chrono::milliseconds(2500)};

absl::StatusCode FullMeansExhausted(absl::string_view lower) {
  return absl::StrContains(lower, "no space") ? absl::StatusCode::kResourceExhausted : absl::StatusCode::kInternal;
}

TEST(ToolWords, PrefersStderrDropsNoiseAndJoinsLines) {
  CommandResult r{1, "out\n", "  Activation disabled, skipping\n first line \n\n second line\n"};
  EXPECT_EQ(ToolWords(r, {.noise = {"Activation disabled"}}), "first line second line");
}

TEST(ToolWords, FallsBackToStdoutThenToNoOutput) {
  EXPECT_EQ(ToolWords({1, "only stdout\n", "udevadm missing\n"}, {.noise = {"udevadm"}}), "only stdout");
  EXPECT_EQ(ToolWords({1, "", ""}, {}), "(no output)");
}

TEST(ToolWords, CapsLongOutput) {
  std::string words = ToolWords({1, "", std::string(5000, 'x')}, {});
  EXPECT_EQ(words.size(), 1003u);
  EXPECT_THAT(words, ::testing::EndsWith("..."));
}

TEST(RunChecked, ExitZeroIsOk) {
  FakeCommandRunner runner;
  runner.Expect({"/usr/sbin/tool"}, FakeCommandRunner::Ok("fine"));
  EXPECT_TRUE(RunChecked(runner, kCmd, "tool arg", {}).ok());
}

TEST(RunChecked, NonZeroExitQuotesTheToolWithTheClassifiedCode) {
  FakeCommandRunner runner;
  runner.Expect({"/usr/sbin/tool"}, FakeCommandRunner::Fail(5, "No space left on device\n"));
  auto s = RunChecked(runner, kCmd, "tool arg", {.classify = FullMeansExhausted});
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "tool arg failed (exit 5): No space left on device");
}

TEST(RunChecked, WithoutAClassifierAFailureIsInternal) {
  FakeCommandRunner runner;
  runner.Expect({"/usr/sbin/tool"}, FakeCommandRunner::Fail(1, "No space left on device"));
  EXPECT_EQ(RunChecked(runner, kCmd, "tool arg", {}).code(), absl::StatusCode::kInternal);
}

TEST(RunTool, AHangNamesTheLabelAndTheDeadline) {
  FakeCommandRunner runner;
  runner.Expect({"/usr/sbin/tool"}, absl::DeadlineExceededError("killed after 2500 ms"));
  auto r = RunTool(runner, kCmd, "tool arg");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(r.status().message(), "tool arg hung for 2.5 s and was killed");
}

TEST(RunTool, ARunnerErrorKeepsItsCodeLedByTheLabel) {
  FakeCommandRunner runner;
  runner.Expect({"/usr/sbin/tool"}, absl::InternalError("spawn: No such file or directory"));
  auto r = RunTool(runner, kCmd, "tool arg");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(r.status().message(), HasSubstr("tool arg: spawn: No such file"));
}

TEST(RunTool, AFailedExitIsStillAResult) {
  FakeCommandRunner runner;
  runner.Expect({"/usr/sbin/tool"}, FakeCommandRunner::Fail(2, "words"));
  auto r = RunTool(runner, kCmd, "tool arg");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exit_code, 2);
}

}  // namespace
}  // namespace hvagent::storage
