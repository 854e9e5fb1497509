// libFuzzer target: arbitrary text as `lvm fullreport --reportformat json` output. The parser
// must never crash, and what it accepts must be self-consistent: the VG it returns is the one
// asked for, and every LV has a name (lvm2's JSON is input the agent does not control when a
// disk or an lvm2 upgrade misbehaves).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "storage/lvm/lvm_report.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string json(reinterpret_cast<const char*>(data), size);
  auto report = hvagent::storage::lvm::ParseFullReport(json, "vg0");
  if (!report.ok()) return 0;
  if (report->vg.name != "vg0") {
    fprintf(stderr, "property violated: report for another VG accepted\n");
    abort();
  }
  for (const auto& lv : report->lvs) {
    if (lv.name.empty()) {
      fprintf(stderr, "property violated: an LV without a name\n");
      abort();
    }
  }
  return 0;
}
