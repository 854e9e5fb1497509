#include "bench/loadgen/processes.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "bench/loadgen/http_client.h"

extern char** environ;

namespace hvagent::bench {
namespace {

using Clock = std::chrono::steady_clock;

std::string MakeTempDir(const char* prefix) {
  std::string templ = absl::StrCat("/tmp/", prefix, "XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) return "";
  return templ;
}

}  // namespace

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

namespace {

// "Key:   123 kB" -> 123
std::optional<uint64_t> KibField(const std::string& line, absl::string_view key) {
  absl::string_view l = line;
  if (!absl::ConsumePrefix(&l, key)) return std::nullopt;
  l = absl::StripAsciiWhitespace(l);
  absl::ConsumeSuffix(&l, " kB");
  uint64_t v = 0;
  if (!absl::SimpleAtoi(l, &v)) return std::nullopt;
  return v;
}

}  // namespace

double CpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return 0;
  std::vector<std::string> f = absl::StrSplit(stat.substr(paren + 2), ' ');
  if (f.size() < 13) return 0;  // utime and stime are fields 14 and 15 of stat(5)
  return (std::stod(f[11]) + std::stod(f[12])) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

ProcFacts ReadProcFacts(pid_t pid) {
  ProcFacts f;
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (auto v = KibField(line, "RssAnon:")) f.anon_rss_kib = *v;
    if (auto v = KibField(line, "VmRSS:")) f.rss_kib = *v;
    if (auto v = KibField(line, "VmHWM:")) f.peak_rss_kib = *v;
    if (auto v = KibField(line, "Threads:")) f.threads = static_cast<int>(*v);
  }
  std::ifstream rollup(absl::StrCat("/proc/", pid, "/smaps_rollup"));
  while (std::getline(rollup, line)) {
    if (auto v = KibField(line, "Pss:")) f.pss_kib = *v;
  }
  if (DIR* d = opendir(absl::StrCat("/proc/", pid, "/fd").c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') ++f.fds;
    }
    closedir(d);
  }
  return f;
}

absl::StatusOr<ChildProcess> ChildProcess::Spawn(const Options& o) {
  if (o.argv.empty()) return absl::InvalidArgumentError("empty argv");
  // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
  std::vector<char*> argv, envp;
  for (const std::string& a : o.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const std::string& e : o.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  char* const* env = o.env.empty() ? environ : envp.data();
  const std::string out = o.output_file.empty() ? "/dev/null" : o.output_file;
  int out_fd = open(out.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (out_fd < 0) return absl::InternalError(absl::StrCat("open ", out, ": ", strerror(errno)));
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t pid = fork();
  if (pid < 0) {
    close(out_fd);
    close(null_fd);
    return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  }
  if (pid == 0) {
    dup2(null_fd, 0);
    dup2(out_fd, 1);
    dup2(out_fd, 2);
    if (o.gid) {
      if (setgroups(0, nullptr) != 0 || setgid(*o.gid) != 0) _exit(126);
    }
    if (o.uid && setuid(*o.uid) != 0) _exit(126);
    // After setuid, which clears it: the child goes when the benchmark does, even on a crash.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execve(argv[0], argv.data(), env);
    _exit(127);
  }
  close(out_fd);
  close(null_fd);
  return ChildProcess(pid);
}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    Stop();
    pid_ = other.pid_;
    other.pid_ = -1;
  }
  return *this;
}

bool ChildProcess::Running() {
  if (pid_ <= 0) return false;
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

int ChildProcess::Stop(std::chrono::milliseconds grace) {
  if (pid_ <= 0) return 0;
  kill(pid_, SIGTERM);
  int status = 0;
  const auto deadline = Clock::now() + grace;
  while (true) {
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_ || r < 0) break;
    if (Clock::now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  pid_ = -1;
  return status;
}

absl::StatusOr<AgentProcess> AgentProcess::Start(const Options& o) {
  AgentProcess a;
  a.grpc_port_ = FreePort();
  a.rest_port_ = FreePort();
  a.log_file_ = absl::StrCat("/tmp/hvagent-bench-agent-", getpid(), "-", a.grpc_port_, ".log");
  std::vector<std::string> argv = {o.binary,
                                   "--hypervisor-uri",
                                   o.hypervisor_uri,
                                   "--grpc-listen",
                                   a.grpc_address(),
                                   "--rest-listen",
                                   absl::StrCat("127.0.0.1:", a.rest_port_),
                                   "--log-level",
                                   o.log_level,
                                   "--plaintext-loopback"};
  if (!o.config_toml.empty()) {
    a.config_file_ = absl::StrCat("/tmp/hvagent-bench-", getpid(), "-", a.grpc_port_, ".toml");
    std::ofstream(a.config_file_) << o.config_toml;
    argv.push_back("--config");
    argv.push_back(a.config_file_);
  }
  unlink(a.log_file_.c_str());
  const auto t0 = Clock::now();
  auto child = ChildProcess::Spawn({.argv = argv, .output_file = a.log_file_});
  if (!child.ok()) return child.status();
  a.process_ = std::move(*child);
  const auto deadline = t0 + o.ready_timeout;
  while (Clock::now() < deadline) {
    if (!a.process_.Running()) {
      return a.KeepLog(absl::InternalError(absl::StrCat("hvagentd exited before it was ready; see ", a.log_file_)));
    }
    if (auto conn = HttpConnection::Connect(a.rest_port_); conn.ok()) {
      auto r = conn->Get("/healthz");
      if (r.ok() && r->status == 200) {
        a.exec_to_ready_ = Clock::now() - t0;
        return a;
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  return a.KeepLog(absl::DeadlineExceededError(absl::StrCat("hvagentd not healthy in time; see ", a.log_file_)));
}

AgentProcess::~AgentProcess() {
  process_.Stop();
  if (!config_file_.empty()) unlink(config_file_.c_str());
  if (!log_file_.empty()) unlink(log_file_.c_str());
}

absl::StatusOr<PrivateLibvirtd> PrivateLibvirtd::Start(std::chrono::milliseconds timeout) {
  PrivateLibvirtd d;
  d.dir_ = MakeTempDir("hvagent-bench-libvirtd-");
  if (d.dir_.empty()) return absl::InternalError("mkdtemp failed");
  const std::string home = d.dir_ + "/home", run = d.dir_ + "/run";
  mkdir(home.c_str(), 0700);
  mkdir(run.c_str(), 0700);
  ChildProcess::Options o{.argv = {"/usr/sbin/libvirtd"},
                          .env = {"HOME=" + home, "XDG_RUNTIME_DIR=" + run, "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                                  "LIBVIRT_LOG_OUTPUTS=3:stderr"},
                          .output_file = d.dir_ + "/libvirtd.log"};
  if (access(o.argv[0].c_str(), X_OK) != 0) return absl::FailedPreconditionError("/usr/sbin/libvirtd not installed");
  if (geteuid() == 0) {
    passwd* nobody = getpwnam("nobody");
    if (nobody == nullptr) return absl::FailedPreconditionError("no user 'nobody' to run a session libvirtd as");
    o.uid = nobody->pw_uid;
    o.gid = nobody->pw_gid;
    for (const std::string& p : {d.dir_, home, run}) {
      if (chown(p.c_str(), nobody->pw_uid, nobody->pw_gid) != 0) {
        return absl::InternalError(absl::StrCat("chown ", p, ": ", strerror(errno)));
      }
    }
  }
  auto child = ChildProcess::Spawn(o);
  if (!child.ok()) return child.status();
  d.process_ = std::move(*child);
  d.uri_ = absl::StrCat("test+unix:///default?socket=", run, "/libvirt/libvirt-sock");
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (!d.process_.Running()) {
      return absl::InternalError(absl::StrCat("libvirtd exited; see ", d.dir_, "/libvirtd.log"));
    }
    if (access((run + "/libvirt/libvirt-sock").c_str(), F_OK) == 0) {
      if (virConnectPtr c = virConnectOpen(d.uri_.c_str())) {
        virConnectClose(c);
        return d;
      }
      virResetLastError();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat("libvirtd did not answer; see ", d.dir_, "/libvirtd.log"));
}

PrivateLibvirtd::~PrivateLibvirtd() {
  process_.Stop();
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

}  // namespace hvagent::bench
