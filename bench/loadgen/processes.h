#pragma once
// The processes a benchmark runs against: hvagentd on free loopback ports, and a private
// libvirtd that hosts libvirt's test driver so that the agent and the benchmark see the same
// domains (test:///default is private to each process; test+unix:///default through one
// daemon is shared by every client of that daemon). Everything is started with fork + execve
// from an argv vector (no shell) and stopped by its pid.

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hvagent::bench {

// A loopback TCP port nobody listens on right now.
int FreePort();

// What /proc says about a process.
struct ProcFacts {
  uint64_t rss_kib = 0;
  uint64_t anon_rss_kib = 0;  // the process's own memory; the rest of RSS is mostly shared library text
  uint64_t pss_kib = 0;       // shared pages divided among the processes that map them
  uint64_t peak_rss_kib = 0;
  int threads = 0;
  int fds = 0;
};
ProcFacts ReadProcFacts(pid_t pid);

// utime + stime of a process so far, in seconds (clock-tick resolution).
double CpuSeconds(pid_t pid);

class ChildProcess {
 public:
  struct Options {
    std::vector<std::string> argv;  // argv[0]: absolute path
    std::vector<std::string> env;   // "K=V"; empty: inherit
    std::string output_file;        // stdout and stderr; empty: /dev/null
    std::optional<uid_t> uid;       // drop to this user (and gid) before exec
    std::optional<gid_t> gid;
  };
  static absl::StatusOr<ChildProcess> Spawn(const Options& options);

  ChildProcess() = default;
  ChildProcess(ChildProcess&& other) noexcept : pid_(other.pid_) { other.pid_ = -1; }
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() { Stop(); }

  pid_t pid() const { return pid_; }
  bool Running();
  // SIGTERM, then SIGKILL after `grace`; returns the exit status as waitpid reports it.
  int Stop(std::chrono::milliseconds grace = std::chrono::seconds(10));

 private:
  explicit ChildProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_ = -1;
};

// hvagentd in --plaintext-loopback mode on free ports. Ready means GET /healthz answered 200.
class AgentProcess {
 public:
  struct Options {
    std::string binary;
    std::string hypervisor_uri = "test:///default";
    std::string config_toml;  // optional extra config (written to a temporary file)
    std::string log_level = "info";
    std::chrono::milliseconds ready_timeout{20000};
  };
  static absl::StatusOr<AgentProcess> Start(const Options& options);

  AgentProcess() = default;
  AgentProcess(AgentProcess&&) = default;
  AgentProcess& operator=(AgentProcess&&) = default;
  ~AgentProcess();

  std::string grpc_address() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  int rest_port() const { return rest_port_; }
  pid_t pid() const { return process_.pid(); }
  // From the fork to the first 200 from /healthz.
  std::chrono::steady_clock::duration exec_to_ready() const { return exec_to_ready_; }
  int Stop() { return process_.Stop(); }

 private:
  // An agent that failed to start keeps its log (the error names it); others remove it.
  absl::Status KeepLog(absl::Status why) {
    log_file_.clear();
    return why;
  }

  ChildProcess process_;
  int grpc_port_ = 0;
  int rest_port_ = 0;
  std::chrono::steady_clock::duration exec_to_ready_{};
  std::string log_file_;
  std::string config_file_;
};

// libvirtd in session mode, in a directory of its own; as root it runs as `nobody` (a second
// privileged libvirtd would fight the system one over /run/libvirt). Only the test driver is
// used through it: uri() is test+unix:///default on its socket.
class PrivateLibvirtd {
 public:
  static absl::StatusOr<PrivateLibvirtd> Start(std::chrono::milliseconds timeout = std::chrono::seconds(20));

  PrivateLibvirtd() = default;
  PrivateLibvirtd(PrivateLibvirtd&&) = default;
  PrivateLibvirtd& operator=(PrivateLibvirtd&&) = default;
  ~PrivateLibvirtd();

  const std::string& uri() const { return uri_; }
  pid_t pid() const { return process_.pid(); }

 private:
  ChildProcess process_;
  std::string dir_;
  std::string uri_;
};

}  // namespace hvagent::bench
