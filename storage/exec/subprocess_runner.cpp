#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "storage/exec/subprocess_runner.h"

namespace hvagent::storage {
namespace {

struct Pipe {
  int fd[2] = {-1, -1};
  ~Pipe() {
    for (int f : fd) {
      if (f >= 0) close(f);
    }
  }
};

}  // namespace

// One function on purpose: the pipes, the spawn attributes, the poll loop and the kill on timeout
// share their file descriptors and process group, and every early return must close and reap
// them; split up, that ownership would cross function boundaries.
absl::StatusOr<CommandResult> SubprocessRunner::Run(const Command& command) {
  if (command.argv.empty() || command.argv[0].empty() || command.argv[0][0] != '/') {
    return absl::InvalidArgumentError("argv[0] must be an absolute path");
  }
  std::vector<char*> argv;
  for (const auto& a : command.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::map<std::string, std::string> env_map = command.env;
  env_map.emplace("LC_ALL", "C");
  env_map.emplace("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : env_map) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  Pipe out, err;
  if (pipe2(out.fd, O_CLOEXEC) != 0 || pipe2(err.fd, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out.fd[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err.fd[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Own process group, so a timeout kills the program's children too.
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0], &actions, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return absl::InternalError(absl::StrCat("cannot run ", argv[0], ": ", std::strerror(rc)));
  close(out.fd[1]);
  out.fd[1] = -1;
  close(err.fd[1]);
  err.fd[1] = -1;

  CommandResult result;
  const auto deadline = std::chrono::steady_clock::now() + command.timeout;
  bool timed_out = false;
  bool cancelled = false;
  // Kills the group when the caller cancelled; true then.
  auto cancel_now = [&] {
    if (cancelled || !command.cancelled || !command.cancelled()) return cancelled;
    cancelled = true;
    kill(-pid, SIGKILL);
    return true;
  };
  pollfd fds[2] = {{out.fd[0], POLLIN, 0}, {err.fd[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.stdout_text, &result.stderr_text};
  int open_streams = 2;
  char buf[8192];
  while (open_streams > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      kill(-pid, SIGKILL);
      break;
    }
    if (cancel_now()) break;
    if (command.cancelled) left = std::min(left, std::chrono::duration_cast<std::chrono::milliseconds>(kCancelPoll));
    int n = poll(fds, 2, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t got = read(fds[i].fd, buf, sizeof buf);
      if (got <= 0) {
        fds[i].fd = -1;
        --open_streams;
      } else if (sinks[i]->size() < kMaxCapture) {
        sinks[i]->append(buf, std::min<size_t>(got, kMaxCapture - sinks[i]->size()));
      }
    }
  }
  // The program may close its output and keep running: the deadline still applies.
  int status = 0;
  while (true) {
    pid_t done = waitpid(pid, &status, timed_out || cancelled ? 0 : WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) break;
    if (timed_out || cancel_now()) continue;
    if (std::chrono::steady_clock::now() >= deadline) {
      timed_out = true;
      kill(-pid, SIGKILL);
      continue;
    }
    usleep(5000);
  }
  if (cancelled) return absl::CancelledError(absl::StrCat(argv[0], " was cancelled and killed"));
  if (timed_out) {
    return absl::DeadlineExceededError(
        absl::StrCat(argv[0], " did not finish within ", command.timeout.count(), " ms and was killed"));
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

}  // namespace hvagent::storage
