#include "common/failpoint.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <thread>
#include <cstring>
#include <string>

namespace hvagent::failpoint {

bool CompiledIn() {
#if HVAGENT_FAILPOINTS_ENABLED
  return true;
#else
  return false;
#endif
}

void Hit(const char* name) {
  const char* armed = std::getenv("HVAGENT_FAILPOINTS");
  if (armed == nullptr || *armed == '\0') return;
  std::string list = std::string(",") + armed + ",";
  const std::string sleep = std::string(",") + name + "=sleep:";
  if (size_t at = list.find(sleep); at != std::string::npos) {
    long ms = std::strtol(list.c_str() + at + sleep.size(), nullptr, 10);
    std::string line = std::string("hvagentd: failpoint ") + name + " reached: sleeping " + std::to_string(ms) + " ms\n";
    ssize_t ignored = write(STDERR_FILENO, line.data(), line.size());
    (void)ignored;
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return;
  }
  if (list.find(std::string(",") + name + ",") == std::string::npos) return;
  // Straight to stderr with write(2): no logger buffers, nothing that could run after this.
  std::string line = std::string("hvagentd: failpoint ") + name + " reached: SIGKILL\n";
  ssize_t ignored = write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
  kill(getpid(), SIGKILL);
}

bool Fails(const char* name) {
  const char* armed = std::getenv("HVAGENT_FAILPOINTS");
  if (armed == nullptr || *armed == '\0') return false;
  std::string list = std::string(",") + armed + ",";
  if (list.find(std::string(",") + name + "=fail,") == std::string::npos) return false;
  std::string line = std::string("hvagentd: failpoint ") + name + " reached: failing\n";
  ssize_t ignored = write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
  return true;
}

}  // namespace hvagent::failpoint
