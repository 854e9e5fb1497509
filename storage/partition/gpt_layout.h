#pragma once
// GPT layout helpers for PartitionBackend, free of I/O so unit tests can check them directly:
// parsing `sfdisk --json` output, the partition node path rule, the 1 MiB-aligned free regions,
// and the partition-name encoding that marks a partition as an hvagent volume.
//
// Partition name encoding (GPT names hold at most 36 UTF-16 code units; only ASCII is used):
//   "hvagent:<volume>"            a free volume
//   "hvagent:<volume>@<domain>"   a volume attached to <domain>, borrowed by it
//   "hvagent:<volume>=<domain>"   a volume attached to <domain> and owned by it (created with
//                                 it; see Ownership in storage/model.h)
// One `parted name` changes attachment and ownership together. Labels written before ownership
// existed use '@' and so read as borrowed (never deleted with their domain); an agent that
// predates ownership does not parse '=' and leaves owned partitions alone entirely.
// <volume> is [A-Za-z0-9][A-Za-z0-9._-]{0,19} (at most 20 characters in partition pools), and
// <domain> is [A-Za-z0-9][A-Za-z0-9._+-]*; together they must fit the 27 characters left after
// the prefix and the '@' (e.g. a 10-character volume leaves 17 for Nova's "instance-0000001a").
// A partition whose name does not parse exactly this way is not ours: it is never listed,
// changed or removed, but its space is never handed out either.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hvagent::storage::gpt {

inline constexpr uint64_t kAlign = 1ull << 20;  // partitions start and end on 1 MiB boundaries
inline constexpr size_t kMaxGptName = 36;
inline constexpr char kNamePrefix[] = "hvagent:";
inline constexpr size_t kPrefixLength = sizeof(kNamePrefix) - 1;
inline constexpr size_t kMaxVolumeName = 20;
// Room for "<volume>@<domain>" (or '=') after the prefix.
inline constexpr size_t kMaxVolumeAndDomain = kMaxGptName - kPrefixLength - 1;

struct Partition {
  uint32_t number = 0;  // as the kernel and parted number it (from the node's suffix)
  std::string node;     // as sfdisk reports it, e.g. /dev/loop3p2
  uint64_t start = 0;   // sectors
  uint64_t size = 0;    // sectors
  std::string name;     // GPT partition name ("" when unnamed)
  std::string type;     // type GUID
};

struct Table {
  std::string label;  // "gpt", "dos", ...
  uint64_t sector_size = 0;
  uint64_t first_lba = 0;
  uint64_t last_lba = 0;
  std::vector<Partition> partitions;

  uint64_t StartBytes(const Partition& p) const { return p.start * sector_size; }
  uint64_t EndBytes(const Partition& p) const { return (p.start + p.size) * sector_size; }
  // The 1 MiB-aligned span usable for partitions: [UsableBegin, UsableEnd).
  uint64_t UsableBegin() const;
  uint64_t UsableEnd() const;
};

struct Region {
  uint64_t begin = 0;  // bytes, 1 MiB-aligned
  uint64_t end = 0;    // bytes, 1 MiB-aligned, exclusive
  uint64_t size() const { return end - begin; }
};

// Parses `sfdisk --json <disk>` output. Partitions whose node does not belong to `disk` are
// rejected (Internal), as are missing fields, negative or overflowing numbers.
absl::StatusOr<Table> ParseSfdiskJson(const std::string& json, const std::string& disk);

// /dev/sdb + 3 -> /dev/sdb3; /dev/nvme0n1 + 3 -> /dev/nvme0n1p3; /dev/loop3 + 3 -> /dev/loop3p3;
// /dev/disk/by-id/X + 3 -> /dev/disk/by-id/X-part3 (the rule libfdisk and udev follow).
std::string PartitionPath(const std::string& disk, uint32_t number);
// The inverse for `disk`; nullopt when `node` is not one of its partitions.
std::optional<uint32_t> PartitionNumber(const std::string& disk, const std::string& node);

// Free, 1 MiB-aligned regions between all partitions (ours and others), in disk order.
std::vector<Region> FreeRegions(const Table& table);

bool IsVolumeName(const std::string& name);
bool IsDomainName(const std::string& name);
// A disk path the backend will pass to tools: /dev/ + [A-Za-z0-9._+:/-], no "..", no "//".
bool IsDiskPath(const std::string& path);

struct VolumeLabel {
  std::string volume;
  std::string domain;  // empty when free
  bool owned = false;  // '=' rather than '@'
};
// nullopt when the partition name is not an hvagent volume label.
std::optional<VolumeLabel> ParseLabel(const std::string& partition_name);
// Caller validates volume and domain (and their combined length) first. `owned` needs a domain.
std::string MakeLabel(const std::string& volume, const std::string& domain, bool owned = false);

// Golden images (storage/image) are partitions named "hvimage:<image>" once ready and
// "hvimage~<image>" while their import runs; <image> follows the volume name rule. They are no
// volumes (ParseLabel refuses them): never listed, attached or handed out as volumes.
inline constexpr char kImagePrefix[] = "hvimage:";
inline constexpr char kImportingPrefix[] = "hvimage~";
struct ImageLabel {
  std::string image;
  bool ready = false;
};
std::optional<ImageLabel> ParseImageLabel(const std::string& partition_name);
// Caller validates the name (IsVolumeName) first.
std::string MakeImageLabel(const std::string& image, bool ready);

}  // namespace hvagent::storage::gpt
