#pragma once
// A directory of the test's own under the temp dir, made by mkdtemp and removed when the test
// process exits. A name built from the pid is not enough: pids wrap (pid_max is 32768 on small
// machines, and a build spawns tens of thousands of processes), so a later run can meet an earlier
// run's files under the same name and read them as its own.

#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace hvagent::testing {

inline std::string FreshTempDir(const std::string& prefix) {
  struct RemovedAtExit {
    std::vector<std::string> dirs;
    ~RemovedAtExit() {
      for (const std::string& d : dirs) {
        std::error_code ec;
        std::filesystem::remove_all(d, ec);
      }
    }
  };
  static RemovedAtExit made;
  std::string path = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  if (mkdtemp(path.data()) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  made.dirs.push_back(path);
  return path;
}

}  // namespace hvagent::testing
