#pragma once
// `sfdisk --json` output captured from util-linux 2.38.1 on this machine's loop devices
// (parted-made GPTs). Kept byte for byte; tests derive other states with SfdiskJson().

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace hvagent::testing::sfdisk {

// A 128 MiB loop device right after `parted -s /dev/loop0 mklabel gpt`.
inline const char kEmptyGpt[] = R"({
   "partitiontable": {
      "label": "gpt",
      "id": "A2863E29-37C4-4C2E-BA3A-D45B5A571A85",
      "device": "/dev/loop0",
      "unit": "sectors",
      "firstlba": 34,
      "lastlba": 262110,
      "sectorsize": 512
   }
}
)";

// The same disk with two hvagent volumes (one attached), a foreign partition and an unnamed one
// that is not 1 MiB-aligned (sectors 110000-120000).
inline const char kMixed[] = R"({
   "partitiontable": {
      "label": "gpt",
      "id": "A2863E29-37C4-4C2E-BA3A-D45B5A571A85",
      "device": "/dev/loop0",
      "unit": "sectors",
      "firstlba": 34,
      "lastlba": 262110,
      "sectorsize": 512,
      "partitions": [
         {
            "node": "/dev/loop0p1",
            "start": 2048,
            "size": 20480,
            "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "uuid": "91C6BFC1-9897-43C1-ADBF-EE115577D5FF",
            "name": "hvagent:db1"
         },{
            "node": "/dev/loop0p2",
            "start": 22528,
            "size": 20480,
            "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "uuid": "55281F26-4910-42FA-B380-376C936105B4",
            "name": "foreign"
         },{
            "node": "/dev/loop0p3",
            "start": 63488,
            "size": 40960,
            "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "uuid": "3B650DA5-1DBE-41D6-89AE-87E810735CF7",
            "name": "hvagent:web@i-2-10-VM"
         },{
            "node": "/dev/loop0p4",
            "start": 110000,
            "size": 10001,
            "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "uuid": "B3C1C39F-19B1-40AC-A279-285DDD049FFF"
         }
      ]
   }
}
)";

// A 64 MiB loop device with 4096-byte sectors (losetup --sector-size 4096).
inline const char k4kSectors[] = R"({
   "partitiontable": {
      "label": "gpt",
      "id": "F1AF1DDD-3020-4E0E-AD70-118D1F1BB8B8",
      "device": "/dev/loop0",
      "unit": "sectors",
      "firstlba": 6,
      "lastlba": 16378,
      "sectorsize": 4096,
      "partitions": [
         {
            "node": "/dev/loop0p1",
            "start": 256,
            "size": 2560,
            "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "uuid": "3970B3AC-90C7-40B9-911F-9A8B5EE12C6C",
            "name": "hvagent:big"
         }
      ]
   }
}
)";

// After `parted -s /dev/loop0 mklabel msdos`.
inline const char kDos[] = R"({
   "partitiontable": {
      "label": "dos",
      "id": "0x18a725fe",
      "device": "/dev/loop0",
      "unit": "sectors",
      "sectorsize": 512
   }
}
)";

// sfdisk's words (stderr, exit 1) for a disk without any partition table.
inline const char kNoTableStderr[] = "sfdisk: /dev/loop0: does not contain a recognized partition table\n";

struct Part {
  uint32_t number;
  uint64_t start;
  uint64_t size;
  std::string name;  // omitted from the JSON when empty, as sfdisk does
};

// Renders a 512-byte-sector, 128 MiB GPT of /dev/loop0 in sfdisk's format.
inline std::string SfdiskJson(const std::vector<Part>& parts) {
  std::string out = R"({
   "partitiontable": {
      "label": "gpt",
      "id": "A2863E29-37C4-4C2E-BA3A-D45B5A571A85",
      "device": "/dev/loop0",
      "unit": "sectors",
      "firstlba": 34,
      "lastlba": 262110,
      "sectorsize": 512)";
  if (!parts.empty()) {
    out += ",\n      \"partitions\": [\n";
    for (size_t i = 0; i < parts.size(); ++i) {
      const Part& p = parts[i];
      absl::StrAppend(&out, i == 0 ? "         {\n" : ",{\n", "            \"node\": \"/dev/loop0p", p.number,
                      "\",\n            \"start\": ", p.start, ",\n            \"size\": ", p.size,
                      ",\n            \"type\": \"0FC63DAF-8483-4772-8E79-3D69D8477DE4\",\n            \"uuid\": "
                      "\"91C6BFC1-9897-43C1-ADBF-EE115577D5FF\"",
                      p.name.empty() ? "" : absl::StrCat(",\n            \"name\": \"", p.name, "\""), "\n         }");
    }
    out += "\n      ]";
  }
  out += "\n   }\n}\n";
  return out;
}

// kMixed as parts, to derive later states from.
inline std::vector<Part> MixedParts() {
  return {{1, 2048, 20480, "hvagent:db1"},
          {2, 22528, 20480, "foreign"},
          {3, 63488, 40960, "hvagent:web@i-2-10-VM"},
          {4, 110000, 10001, ""}};
}

}  // namespace hvagent::testing::sfdisk
