// Specification of storage/exec SubprocessRunner: argv straight to execve, no shell, an exact
// environment, separate bounded capture of stdout and stderr, and a timeout that kills.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <signal.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "storage/exec/subprocess_runner.h"

namespace hvagent::storage {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::UnorderedElementsAre;

using Clock = std::chrono::steady_clock;

Command Cmd(std::vector<std::string> argv) {
  Command c;
  c.argv = std::move(argv);
  return c;
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    out.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  return out;
}

TEST(SubprocessRunner, CapturesStdoutAndExitCodeZero) {
  SubprocessRunner runner;
  auto r = runner.Run(Cmd({"/bin/echo", "hello", "world"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(r->stdout_text, "hello world\n");
  EXPECT_EQ(r->stderr_text, "");
}

TEST(SubprocessRunner, CapturesOutputWithoutTrailingNewlineExactly) {
  SubprocessRunner runner;
  auto r = runner.Run(Cmd({"/usr/bin/printf", "a%sb", "-x-"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout_text, "a-x-b");
}

TEST(SubprocessRunner, CapturesStderrSeparatelyAndReportsNonZeroExitAsOk) {
  SubprocessRunner runner;
  auto r = runner.Run(Cmd({"/bin/ls", "/nonexistent-hvagent-test-path"}));
  ASSERT_TRUE(r.ok()) << r.status();  // the program ran to completion: any exit code is Ok
  EXPECT_NE(r->exit_code, 0);
  EXPECT_EQ(r->stdout_text, "");
  EXPECT_THAT(r->stderr_text, HasSubstr("/nonexistent-hvagent-test-path"));
}

TEST(SubprocessRunner, CapturesBothStreamsOfOneRun) {
  SubprocessRunner runner;
  auto r = runner.Run(Cmd({"/bin/ls", "-d", "/", "/nonexistent-hvagent-test-path"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NE(r->exit_code, 0);
  EXPECT_EQ(r->stdout_text, "/\n");
  EXPECT_THAT(r->stderr_text, HasSubstr("/nonexistent-hvagent-test-path"));
  EXPECT_THAT(r->stderr_text, Not(HasSubstr("/\n/")));
}

TEST(SubprocessRunner, ReportsExitCodeOfFalse) {
  SubprocessRunner runner;
  auto r = runner.Run(Cmd({"/bin/false"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 1);
}

TEST(SubprocessRunner, EnvironmentIsExactlyTheGivenOnePlusLcAllAndPath) {
  // A variable set in the test's own environment must not leak into the child.
  ASSERT_EQ(setenv("HVAGENT_TEST_LEAK", "leaked", 1), 0);
  SubprocessRunner runner;
  Command c = Cmd({"/usr/bin/env"});
  c.env = {{"FOO", "bar baz"}, {"EMPTY", ""}};
  auto r = runner.Run(c);
  unsetenv("HVAGENT_TEST_LEAK");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 0);
  std::vector<std::string> lines = Lines(r->stdout_text);
  ASSERT_EQ(lines.size(), 4u) << r->stdout_text;
  EXPECT_THAT(lines, UnorderedElementsAre("FOO=bar baz", "EMPTY=", "LC_ALL=C", ::testing::StartsWith("PATH=")));
}

TEST(SubprocessRunner, EmptyEnvironmentStillGetsLcAllC) {
  SubprocessRunner runner;
  auto r = runner.Run(Cmd({"/usr/bin/env"}));
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<std::string> lines = Lines(r->stdout_text);
  EXPECT_THAT(lines, UnorderedElementsAre("LC_ALL=C", ::testing::StartsWith("PATH=")));
  for (const auto& l : lines) {
    if (l.starts_with("PATH=")) {
      EXPECT_THAT(l, HasSubstr("/usr/bin"));
      EXPECT_THAT(l, HasSubstr("/usr/sbin"));  // lvm and parted live in sbin
    }
  }
}

TEST(SubprocessRunner, CallerCanOverrideLcAllAndPath) {
  SubprocessRunner runner;
  Command c = Cmd({"/usr/bin/env"});
  c.env = {{"LC_ALL", "POSIX"}, {"PATH", "/opt/x"}};
  auto r = runner.Run(c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(Lines(r->stdout_text), UnorderedElementsAre("LC_ALL=POSIX", "PATH=/opt/x"));
}

TEST(SubprocessRunner, PassesArgvVerbatimWithoutShellInterpretation) {
  const std::string marker = ::testing::TempDir() + "hvagent_runner_injection_" + std::to_string(getpid());
  unlink(marker.c_str());
  const std::string evil = "$(touch " + marker + "); ;|& `touch " + marker + "` > " + marker + " *";
  SubprocessRunner runner;
  auto r = runner.Run(Cmd({"/bin/echo", evil, "'quoted'", "\"dq\"", "two  spaces"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(r->stdout_text, evil + " 'quoted' \"dq\" two  spaces\n");
  EXPECT_FALSE(Exists(marker)) << "a shell ran: " << marker << " was created";
  unlink(marker.c_str());
}

TEST(SubprocessRunner, PassesEmptyArgumentsAsArguments) {
  SubprocessRunner runner;
  // printf "[%s]" with an empty argument prints "[]"; were it dropped nothing would be printed
  // for it and the format would be reused fewer times.
  auto r = runner.Run(Cmd({"/usr/bin/printf", "[%s]", "", "x", ""}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout_text, "[][x][]");
}

TEST(SubprocessRunner, StdinIsEmptySoReadersDoNotHang) {
  SubprocessRunner runner;
  Command c = Cmd({"/bin/cat"});
  c.timeout = std::chrono::milliseconds(5000);
  auto r = runner.Run(c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(r->stdout_text, "");
}

TEST(SubprocessRunner, RejectsRelativeProgramPath) {
  SubprocessRunner runner;
  for (const char* prog : {"echo", "bin/echo", "./echo", ""}) {
    auto r = runner.Run(Cmd({prog, "x"}));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << "'" << prog << "'";
  }
}

TEST(SubprocessRunner, RejectsEmptyArgv) {
  SubprocessRunner runner;
  auto r = runner.Run(Cmd({}));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SubprocessRunner, NonexistentProgramIsAnErrorNamingIt) {
  SubprocessRunner runner;
  auto r = runner.Run(Cmd({"/nonexistent/hvagent-no-such-program", "x"}));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("/nonexistent/hvagent-no-such-program"));
}

TEST(SubprocessRunner, NonExecutableFileIsAnError) {
  if (!Exists("/etc/hostname")) GTEST_SKIP() << "/etc/hostname missing";
  SubprocessRunner runner;
  auto r = runner.Run(Cmd({"/etc/hostname"}));
  EXPECT_FALSE(r.ok()) << "exit " << r->exit_code;
}

TEST(SubprocessRunner, TimeoutKillsTheProgramAndReturnsDeadlineExceeded) {
  SubprocessRunner runner;
  Command c = Cmd({"/bin/sleep", "30"});
  c.timeout = std::chrono::milliseconds(300);
  auto start = Clock::now();
  auto r = runner.Run(c);
  auto elapsed = Clock::now() - start;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_GE(elapsed, std::chrono::milliseconds(250));
  EXPECT_LT(elapsed, std::chrono::seconds(10));
}

TEST(SubprocessRunner, TimeoutAppliesEvenWhenTheProgramClosesItsOutput) {
  // A program may close stdout/stderr (or daemonise) and keep running; the timeout must still
  // kill it rather than waiting for it to exit on its own.
  if (!Exists("/usr/bin/python3")) GTEST_SKIP() << "needs /usr/bin/python3";
  SubprocessRunner runner;
  Command c = Cmd({"/usr/bin/python3", "-c", "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(8)\n"});
  c.timeout = std::chrono::milliseconds(500);
  auto start = Clock::now();
  auto r = runner.Run(c);
  auto elapsed = Clock::now() - start;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_LT(elapsed, std::chrono::seconds(5));
}

TEST(SubprocessRunner, CancelKillsTheRunningProgramAndItsGroupAndReturnsCancelled) {
  // A qemu-img convert whose caller went away: the runner asks `cancelled` while it waits and
  // kills the program's whole process group (here python and a child it started).
  if (!Exists("/usr/bin/python3")) GTEST_SKIP() << "needs /usr/bin/python3";
  char tmpl[] = "/tmp/hvagent-cancel-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string pids = std::string(tmpl) + "/pids";
  SubprocessRunner runner;
  Command c = Cmd({"/usr/bin/python3", "-c",
                   "import os, subprocess, sys, time\n"
                   "child = subprocess.Popen(['/bin/sleep', '30'])\n"
                   "open(sys.argv[1], 'w').write('%d %d' % (os.getpid(), child.pid))\n"
                   "time.sleep(30)\n",
                   pids});
  c.timeout = std::chrono::milliseconds(60000);
  auto start = Clock::now();
  int asked = 0;
  c.cancelled = [&] {
    ++asked;
    return Exists(pids) && Clock::now() - start > std::chrono::milliseconds(300);
  };
  auto r = runner.Run(c);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("cancelled"));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
  EXPECT_GT(asked, 1);
  int parent = 0, child = 0;
  FILE* f = fopen(pids.c_str(), "r");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(fscanf(f, "%d %d", &parent, &child), 2);
  fclose(f);
  EXPECT_NE(kill(parent, 0), 0);  // killed and reaped
  // The grandchild got SIGKILL with the group: gone, or a zombie waiting for init to reap it.
  auto child_state = [&] {
    std::ifstream stat("/proc/" + std::to_string(child) + "/stat");
    std::string pid, comm, state;
    stat >> pid >> comm >> state;
    return state;
  };
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (child_state() != "" && child_state() != "Z" && Clock::now() < deadline) usleep(10000);
  EXPECT_THAT(child_state(), ::testing::AnyOf("", "Z"));
  unlink(pids.c_str());
  rmdir(tmpl);
}

TEST(SubprocessRunner, ACancelThatNeverComesChangesNothing) {
  SubprocessRunner runner;
  Command c = Cmd({"/bin/echo", "done"});
  c.cancelled = [] { return false; };
  auto r = runner.Run(c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout_text, "done\n");
}

TEST(SubprocessRunner, FastProgramIsNotAffectedByALongTimeout) {
  SubprocessRunner runner;
  Command c = Cmd({"/bin/echo", "quick"});
  c.timeout = std::chrono::milliseconds(60000);
  auto start = Clock::now();
  auto r = runner.Run(c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout_text, "quick\n");
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
}

TEST(SubprocessRunner, CapsCapturedStdoutAtMaxCaptureAndStillCompletes) {
  SubprocessRunner runner;
  Command c = Cmd({"/usr/bin/head", "-c", "5000000", "/dev/zero"});
  c.timeout = std::chrono::milliseconds(20000);
  auto r = runner.Run(c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 0);  // the rest was drained, so head was not blocked or killed
  EXPECT_EQ(r->stdout_text.size(), SubprocessRunner::kMaxCapture);
  EXPECT_EQ(r->stdout_text.find_first_not_of('\0'), std::string::npos);
  EXPECT_EQ(r->stderr_text, "");
}

TEST(SubprocessRunner, OutputBelowTheCapIsCapturedInFull) {
  SubprocessRunner runner;
  auto r = runner.Run(Cmd({"/usr/bin/head", "-c", "100000", "/dev/zero"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout_text.size(), 100000u);
}

TEST(SubprocessRunner, RunsRepeatedlyWithoutLeakingDescriptors) {
  SubprocessRunner runner;
  auto count_fds = [] {
    int n = 0;
    for (int fd = 0; fd < 1024; ++fd) {
      if (fcntl(fd, F_GETFD) != -1) ++n;
    }
    return n;
  };
  int before = count_fds();
  for (int i = 0; i < 20; ++i) {
    auto r = runner.Run(Cmd({"/bin/ls", "/nonexistent-hvagent-test-path"}));
    ASSERT_TRUE(r.ok()) << r.status();
  }
  Command slow = Cmd({"/bin/sleep", "5"});
  slow.timeout = std::chrono::milliseconds(50);
  EXPECT_EQ(runner.Run(slow).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(count_fds(), before);
}

}  // namespace
}  // namespace hvagent::storage
