// libFuzzer target: arbitrary text as the agent's TOML config. Never a crash (toml++ throws on
// syntax errors; the parser must turn every one into a status), and an accepted config passes
// or fails Validate without crashing; accepted pool device paths are under /dev/ with no "..";
// accepted [security] host-file directories are absolute, not /, with no ".." component.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "agent/config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto c = hvagent::config::ParseConfigToml(text);
  if (!c.ok()) return 0;
  (void)hvagent::config::Validate(*c);
  for (const auto& pool : c->storage_pools) {
    for (const std::string& dev : pool.physical_volumes) {
      if (dev.rfind("/dev/", 0) != 0 || dev.find("..") != std::string::npos) {
        fprintf(stderr, "property violated: physical volume %s accepted\n", dev.c_str());
        abort();
      }
    }
    if (!pool.disk.empty() && (pool.disk.rfind("/dev/", 0) != 0 || pool.disk.find("..") != std::string::npos)) {
      fprintf(stderr, "property violated: disk %s accepted\n", pool.disk.c_str());
      abort();
    }
  }
  for (const auto* dirs : {&c->image_dirs, &c->kernel_dirs, &c->firmware_dirs}) {
    for (const std::string& dir : *dirs) {
      if (dir.size() < 2 || dir[0] != '/' || dir.find("/../") != std::string::npos || dir.ends_with("/..")) {
        fprintf(stderr, "property violated: host-file directory %s accepted\n", dir.c_str());
        abort();
      }
    }
  }
  return 0;
}
