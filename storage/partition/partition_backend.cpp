#include "storage/partition/partition_backend.h"

#include <sys/stat.h>

#include <algorithm>
#include <limits>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/log.h"
#include "storage/exec/run_checked.h"

namespace hvagent::storage {
namespace {

constexpr char kNoTable[] = "does not contain a recognized partition table";

std::shared_ptr<spdlog::logger> Log() { return log::ComponentLogger("storage.partition"); }

std::string Basename(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// parted complains on every run where udevadm is missing (containers); not the tool's words.
const ToolErrors kToolErrors{.noise = {"udevadm"}};

std::string Describe(const std::vector<std::string>& argv) {
  std::vector<std::string> shown = argv;
  if (!shown.empty()) shown[0] = Basename(shown[0]);
  return absl::StrJoin(shown, " ");
}

absl::Status ToolFailed(const std::vector<std::string>& argv, const CommandResult& r) {
  return storage::ToolFailed(Describe(argv), r, kToolErrors);
}

bool DefaultNodeReady(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode);
}

constexpr uint64_t kMaxSize = std::numeric_limits<uint64_t>::max() - (gpt::kAlign - 1);
uint64_t RoundUp(uint64_t v) { return (v + gpt::kAlign - 1) / gpt::kAlign * gpt::kAlign; }

absl::Status CheckSize(const char* field, uint64_t size) {
  if (size == 0) return absl::InvalidArgumentError(absl::StrCat(field, ": must be greater than 0"));
  if (size > kMaxSize) return absl::InvalidArgumentError(absl::StrCat(field, ": ", size, " bytes is too large"));
  return absl::OkStatus();
}

absl::Status CheckName(const std::string& name) {
  if (gpt::IsVolumeName(name)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("name: '", absl::CHexEscape(name), "' must be 1-", gpt::kMaxVolumeName,
                                                 " of [A-Za-z0-9._-], starting with a letter or digit ",
                                                 "(GPT partition names are short)"));
}

std::string Sectors(uint64_t s) { return absl::StrCat(s, "s"); }

}  // namespace

PartitionBackend::PartitionBackend(PoolConfig config, CommandRunner& runner, BlockWiper& wiper, Options options)
    : config_(std::move(config)), runner_(runner), wiper_(wiper), options_(std::move(options)) {
  if (!options_.node_ready) options_.node_ready = DefaultNodeReady;
}

absl::Status PartitionBackend::CheckConfig() const {
  if (config_.type != PoolType::kPartition) {
    return absl::InvalidArgumentError(absl::StrCat("pool '", config_.name, "' is not a partition pool"));
  }
  if (!gpt::IsDiskPath(config_.disk)) {
    return absl::InvalidArgumentError(
        absl::StrCat("disk: '", absl::CHexEscape(config_.disk), "' is not a plain device path under /dev/"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CommandResult> PartitionBackend::RunTool(std::vector<std::string> argv) const {
  const std::string label = Describe(argv);
  return storage::RunTool(runner_, Command{.argv = std::move(argv), .timeout = options_.timeout}, label);
}

absl::Status PartitionBackend::RunChecked(std::vector<std::string> argv) const {
  const std::string label = Describe(argv);
  return storage::RunChecked(runner_, Command{.argv = std::move(argv), .timeout = options_.timeout}, label,
                             kToolErrors);
}

absl::StatusOr<gpt::Table> PartitionBackend::ReadTable() const {
  std::vector<std::string> argv = {options_.sfdisk, "--json", config_.disk};
  auto r = RunTool(argv);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    if (absl::StrContains(r->stderr_text, kNoTable)) {
      return absl::FailedPreconditionError(
          absl::StrCat("pool '", config_.name, "': disk ", config_.disk, " has no partition table (not prepared)"));
    }
    return ToolFailed(argv, *r);
  }
  auto table = gpt::ParseSfdiskJson(r->stdout_text, config_.disk);
  if (!table.ok()) return table.status();
  if (table->label != "gpt") {
    return absl::FailedPreconditionError(absl::StrCat("pool '", config_.name, "': disk ", config_.disk, " has a '",
                                                      table->label, "' partition table, not GPT"));
  }
  if (gpt::kAlign % table->sector_size != 0) {
    return absl::FailedPreconditionError(absl::StrCat("disk ", config_.disk, ": sector size ", table->sector_size,
                                                      " does not divide 1 MiB"));
  }
  return table;
}

absl::StatusOr<PartitionBackend::Found> PartitionBackend::FindVolume(const std::string& name) const {
  auto table = ReadTable();
  if (!table.ok()) return table.status();
  Found found;
  int matches = 0;
  for (const auto& p : table->partitions) {
    auto label = gpt::ParseLabel(p.name);
    if (!label || label->volume != name) continue;
    ++matches;
    found.partition = p;
    found.label = *label;
  }
  if (matches == 0) {
    return absl::NotFoundError(absl::StrCat("volume '", name, "' not found in pool '", config_.name, "'"));
  }
  if (matches > 1) {
    return absl::FailedPreconditionError(absl::StrCat("pool '", config_.name, "': ", matches,
                                                      " partitions claim volume '", name, "'; resolve by hand"));
  }
  found.table = *std::move(table);
  return found;
}

VolumeInfo PartitionBackend::Info(const gpt::Table& table, const gpt::Partition& p,
                                  const gpt::VolumeLabel& label) const {
  return VolumeInfo{.pool = config_.name,
                    .name = label.volume,
                    .path = gpt::PartitionPath(config_.disk, p.number),
                    .size_bytes = p.size * table.sector_size,
                    .attached_to = label.domain,
                    .ownership = label.domain.empty() ? Ownership::kNone
                                 : label.owned        ? Ownership::kOwned
                                                      : Ownership::kBorrowed};
}

bool PartitionBackend::WaitForNode(const std::string& path) const {
  const auto deadline = std::chrono::steady_clock::now() + options_.node_wait;
  while (true) {
    if (options_.node_ready(path)) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

absl::Status PartitionBackend::Prepare() {
  if (auto s = CheckConfig(); !s.ok()) return s;
  auto table = ReadTable();
  if (table.ok() || !absl::IsFailedPrecondition(table.status()) ||
      !absl::StrContains(table.status().message(), "no partition table")) {
    return table.status();  // already GPT (idempotent), another label, or a tool failure
  }
  // No partition table: label the disk only if nothing at all is on it.
  std::vector<std::string> probe = {options_.blkid, "-p", "-o", "export", config_.disk};
  auto r = RunTool(probe);
  if (!r.ok()) return r.status();
  if (r->exit_code == 0) {
    std::vector<std::string> found;
    for (absl::string_view line : absl::StrSplit(r->stdout_text, '\n')) {
      if (absl::StartsWith(line, "TYPE=") || absl::StartsWith(line, "PTTYPE=") || absl::StartsWith(line, "USAGE=")) {
        found.emplace_back(line);
      }
    }
    return absl::FailedPreconditionError(absl::StrCat("pool '", config_.name, "': disk ", config_.disk,
                                                      " is not empty (blkid: ", absl::StrJoin(found, " "),
                                                      "); refusing to label it"));
  }
  if (r->exit_code != 2) return ToolFailed(probe, *r);  // 2: nothing identifiable on the disk
  if (auto s = RunChecked({options_.parted, "-s", config_.disk, "mklabel", "gpt"}); !s.ok()) return s;
  Log()->info("pool {}: created an empty GPT on {}", config_.name, config_.disk);
  return ReadTable().status();
}

absl::StatusOr<PoolInfo> PartitionBackend::GetPool() {
  if (auto s = CheckConfig(); !s.ok()) return s;
  auto table = ReadTable();
  if (!table.ok()) return table.status();
  PoolInfo info{.name = config_.name, .type = PoolType::kPartition, .wipe = config_.wipe};
  info.capacity_bytes = table->UsableEnd() - table->UsableBegin();
  for (const auto& r : gpt::FreeRegions(*table)) info.free_bytes += r.size();
  for (const auto& p : table->partitions) {
    if (gpt::ParseLabel(p.name)) ++info.volume_count;
  }
  return info;
}

absl::StatusOr<std::vector<VolumeInfo>> PartitionBackend::ListVolumes() {
  if (auto s = CheckConfig(); !s.ok()) return s;
  auto table = ReadTable();
  if (!table.ok()) return table.status();
  std::vector<VolumeInfo> out;
  for (const auto& p : table->partitions) {
    if (auto label = gpt::ParseLabel(p.name)) out.push_back(Info(*table, p, *label));
  }
  std::sort(out.begin(), out.end(), [](const VolumeInfo& a, const VolumeInfo& b) { return a.name < b.name; });
  return out;
}

absl::StatusOr<VolumeInfo> PartitionBackend::GetVolume(const std::string& name) {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (auto s = CheckName(name); !s.ok()) return s;
  auto found = FindVolume(name);
  if (!found.ok()) return found.status();
  return Info(found->table, found->partition, found->label);
}

void PartitionBackend::RollBackCreate(const std::string& label) {
  auto table = ReadTable();
  if (!table.ok()) {
    Log()->error("pool {}: rollback of '{}': {}", config_.name, label, table.status().message());
    return;
  }
  for (const auto& p : table->partitions) {
    if (p.name != label) continue;
    std::string nr = absl::StrCat(p.number);
    if (auto s = RunChecked({options_.partx, "-d", "--nr", nr, config_.disk}); !s.ok()) {
      Log()->warn("pool {}: rollback: {}", config_.name, s.message());
    }
    if (auto s = RunChecked({options_.parted, "-s", config_.disk, "rm", nr}); !s.ok()) {
      Log()->error("pool {}: rollback of partition {} ('{}') failed: {}", config_.name, nr, label, s.message());
    }
  }
}

absl::StatusOr<VolumeInfo> PartitionBackend::CreateVolume(const VolumeSpec& spec) {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (auto s = CheckName(spec.name); !s.ok()) return s;
  if (auto s = CheckSize("size_bytes", spec.size_bytes); !s.ok()) return s;
  auto table = ReadTable();
  if (!table.ok()) return table.status();
  for (const auto& p : table->partitions) {
    auto label = gpt::ParseLabel(p.name);
    if (label && label->volume == spec.name) {
      return absl::AlreadyExistsError(absl::StrCat("volume '", spec.name, "' already exists in pool '", config_.name, "'"));
    }
  }
  auto made = CreatePartition(*table, gpt::MakeLabel(spec.name, ""), spec.size_bytes);
  if (!made.ok()) return made.status();
  Log()->info("pool {}: created volume {} as {} ({} bytes)", config_.name, spec.name,
              gpt::PartitionPath(config_.disk, made->second.number), made->second.size * made->first.sector_size);
  return Info(made->first, made->second, gpt::VolumeLabel{spec.name, ""});
}

// Takes the first free region of at least `requested` bytes (rounded up to 1 MiB) for a
// partition named `label`, and waits for its node. Nothing is left when it fails.
absl::StatusOr<std::pair<gpt::Table, gpt::Partition>> PartitionBackend::CreatePartition(const gpt::Table& table,
                                                                                       const std::string& label,
                                                                                       uint64_t requested) {
  const uint64_t size = RoundUp(requested);
  std::optional<gpt::Region> region;
  uint64_t total_free = 0, largest = 0;
  for (const auto& r : gpt::FreeRegions(table)) {
    total_free += r.size();
    largest = std::max(largest, r.size());
    if (!region && r.size() >= size) region = r;
  }
  if (!region) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "pool '", config_.name, "' is full: requested ", size, " bytes (", requested,
        " rounded up to 1 MiB), largest contiguous free region ", largest, " bytes, total free ", total_free, " bytes"));
  }
  const uint64_t ss = table.sector_size;
  const uint64_t first = region->begin / ss;
  const uint64_t last = (region->begin + size) / ss - 1;
  std::vector<std::string> argv = {options_.parted, "-s", "-a", "none", config_.disk, "unit", "s",
                                   "mkpart",        label, Sectors(first), Sectors(last)};
  if (auto s = RunChecked(argv); !s.ok()) {
    RollBackCreate(label);  // parted may have written the table before failing to tell the kernel
    return s;
  }
  auto after = ReadTable();
  if (!after.ok()) {
    RollBackCreate(label);
    return after.status();
  }
  const gpt::Partition* created = nullptr;
  for (const auto& p : after->partitions) {
    if (p.name == label && p.start == first && p.size == last - first + 1) created = &p;
  }
  if (created == nullptr) {
    RollBackCreate(label);
    return absl::InternalError(absl::StrCat(Describe(argv), " reported success but the table shows no partition '",
                                            label, "' at sectors ", first, "-", last));
  }
  const std::string path = gpt::PartitionPath(config_.disk, created->number);
  if (!WaitForNode(path)) {
    // The kernel may have missed the change: ask once more, then give up.
    (void)RunTool({options_.partx, "-a", "--nr", absl::StrCat(created->number), config_.disk});
    if (!WaitForNode(path)) {
      RollBackCreate(label);
      return absl::UnavailableError(absl::StrCat("partition ", path, " was created but its device node did not appear within ",
                                                 options_.node_wait.count(), " ms; rolled back"));
    }
  }
  gpt::Partition p = *created;
  return std::make_pair(*std::move(after), std::move(p));
}

absl::StatusOr<VolumeInfo> PartitionBackend::ResizeVolume(const std::string& name, uint64_t new_size_bytes) {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (auto s = CheckName(name); !s.ok()) return s;
  if (auto s = CheckSize("new_size_bytes", new_size_bytes); !s.ok()) return s;
  const uint64_t size = RoundUp(new_size_bytes);
  auto found = FindVolume(name);
  if (!found.ok()) return found.status();
  const gpt::Table& table = found->table;
  const gpt::Partition& p = found->partition;
  const uint64_t current = p.size * table.sector_size;
  if (new_size_bytes < current) {
    return absl::InvalidArgumentError(absl::StrCat("new_size_bytes: ", new_size_bytes, " is smaller than volume '",
                                                   name, "' (", current, " bytes); shrinking is refused"));
  }
  if (size <= current) return Info(table, p, found->label);
  const uint64_t start = table.StartBytes(p);
  uint64_t limit = table.UsableEnd();
  std::string limited_by = "the end of the disk";
  for (const auto& other : table.partitions) {
    if (other.start > p.start && table.StartBytes(other) < limit) {
      limit = table.StartBytes(other);
      limited_by = absl::StrCat("partition ", other.number);
    }
  }
  if (limit < start || size > limit - start) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot grow volume '", name, "' in place to ", size,
                                                     " bytes: ", limit > start ? limit - start : 0, " bytes up to ",
                                                     limited_by));
  }
  const uint64_t last = (start + size) / table.sector_size - 1;
  std::vector<std::string> argv = {options_.parted, "-s",        "-a", "none", config_.disk, "unit", "s",
                                   "resizepart",    absl::StrCat(p.number), Sectors(last)};
  if (auto s = RunChecked(argv); !s.ok()) return s;
  auto after = FindVolume(name);
  if (!after.ok()) return after.status();
  if (after->partition.size * after->table.sector_size != size) {
    return absl::InternalError(absl::StrCat(Describe(argv), " reported success but volume '", name, "' has ",
                                            after->partition.size * after->table.sector_size, " bytes"));
  }
  Log()->info("pool {}: grew volume {} to {} bytes", config_.name, name, size);
  return Info(after->table, after->partition, after->label);
}

absl::StatusOr<DeletePlan> PartitionBackend::BeginDelete(const std::string& name) {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (auto s = CheckName(name); !s.ok()) return s;
  auto found = FindVolume(name);
  if (!found.ok()) return found.status();
  if (!found->label.domain.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("volume '", name, "' is attached to domain '", found->label.domain, "'; detach it first"));
  }
  return DeletePlan{.volume = Info(found->table, found->partition, found->label),
                    .partition_number = found->partition.number};
}

// Every pool wipes, whatever its mode: once the partition leaves the table its blocks are free
// for the next tenant (kNone returns at once).
absl::Status PartitionBackend::WipeForDelete(const DeletePlan& plan, const ProgressFn& progress) {
  absl::Status s = wiper_.Wipe(plan.volume.path, config_.wipe, progress);
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat("wiping ", plan.image ? "image" : "volume", " '", plan.volume.name, "' (",
                                             plan.volume.path, "): ", s.message()));
}

absl::Status PartitionBackend::FinishDelete(const DeletePlan& plan) {
  const std::string what = absl::StrCat(plan.image ? "image '" : "volume '", plan.volume.name, "'");
  if (auto s = RemovePartition(what, plan.volume.path, plan.partition_number); !s.ok()) return s;
  Log()->info("pool {}: deleted {} ({}, wiped)", config_.name, what, plan.volume.path);
  return absl::OkStatus();
}

absl::Status PartitionBackend::RemovePartition(const std::string& what, const std::string& path, uint32_t number) {
  const std::string nr = absl::StrCat(number);
  // Drop it from the kernel first: this fails while the partition is open, leaving the table as is.
  std::vector<std::string> drop = {options_.partx, "-d", "--nr", nr, config_.disk};
  auto r = RunTool(drop);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " (", path, ") is wiped but still in use, not removed: ", ToolWords(*r, kToolErrors)));
  }
  if (auto s = RunChecked({options_.parted, "-s", config_.disk, "rm", nr}); !s.ok()) {
    if (auto undo = RunChecked({options_.partx, "-a", "--nr", nr, config_.disk}); !undo.ok()) {
      Log()->error("pool {}: re-adding partition {} after a failed rm: {}", config_.name, nr, undo.message());
    }
    return s;
  }
  return absl::OkStatus();
}

absl::Status PartitionBackend::SetAttachment(const std::string& name, const std::string& domain,
                                             Ownership ownership) {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (auto s = CheckName(name); !s.ok()) return s;
  if (domain.empty() != (ownership == Ownership::kNone)) {
    return absl::InvalidArgumentError(absl::StrCat("ownership: '", OwnershipName(ownership), "' does not go with ",
                                                   domain.empty() ? "no domain" : "a domain"));
  }
  const bool owned = ownership == Ownership::kOwned;
  if (!domain.empty()) {
    if (!gpt::IsDomainName(domain)) {
      return absl::InvalidArgumentError(absl::StrCat("domain: '", absl::CHexEscape(domain),
                                                     "' must be [A-Za-z0-9][A-Za-z0-9._+-]* to be recorded in a GPT ",
                                                     "partition name"));
    }
    if (name.size() + domain.size() > gpt::kMaxVolumeAndDomain) {
      return absl::InvalidArgumentError(absl::StrCat(
          "domain: '", domain, "' (", domain.size(), " characters) does not fit beside volume '", name, "' (",
          name.size(), ") in a GPT partition name: at most ", gpt::kMaxVolumeAndDomain, " together"));
    }
  }
  auto found = FindVolume(name);
  if (!found.ok()) return found.status();
  if (found->label.domain == domain && (domain.empty() || found->label.owned == owned)) return absl::OkStatus();
  if (!domain.empty() && !found->label.domain.empty() && found->label.domain != domain) {
    return absl::FailedPreconditionError(
        absl::StrCat("volume '", name, "' is already attached to domain '", found->label.domain, "'"));
  }
  return RunChecked({options_.parted, "-s", config_.disk, "name", absl::StrCat(found->partition.number),
                     gpt::MakeLabel(name, domain, owned)});
}

// ---- golden images (gpt_layout.h: "hvimage:" / "hvimage~" partitions) ----

ImageSlot PartitionBackend::Slot(const gpt::Table& table, const gpt::Partition& p, const gpt::ImageLabel& label) const {
  return ImageSlot{.pool = config_.name,
                   .name = label.image,
                   .path = gpt::PartitionPath(config_.disk, p.number),
                   .size_bytes = p.size * table.sector_size,
                   .ready = label.ready};
}

absl::StatusOr<std::pair<gpt::Table, gpt::Partition>> PartitionBackend::FindImage(const std::string& name) const {
  auto table = ReadTable();
  if (!table.ok()) return table.status();
  std::optional<gpt::Partition> found;
  for (const auto& p : table->partitions) {
    auto label = gpt::ParseImageLabel(p.name);
    if (!label || label->image != name) continue;
    if (found) {
      return absl::FailedPreconditionError(
          absl::StrCat("pool '", config_.name, "': two partitions claim image '", name, "'; resolve by hand"));
    }
    found = p;
  }
  if (!found) return absl::NotFoundError(absl::StrCat("image '", name, "' not found in pool '", config_.name, "'"));
  return std::make_pair(*std::move(table), *found);
}

absl::StatusOr<std::vector<ImageSlot>> PartitionBackend::ListImageSlots() {
  if (auto s = CheckConfig(); !s.ok()) return s;
  auto table = ReadTable();
  if (!table.ok()) return table.status();
  std::vector<ImageSlot> out;
  for (const auto& p : table->partitions) {
    if (auto label = gpt::ParseImageLabel(p.name)) out.push_back(Slot(*table, p, *label));
  }
  std::sort(out.begin(), out.end(), [](const ImageSlot& a, const ImageSlot& b) { return a.name < b.name; });
  return out;
}

absl::StatusOr<ImageSlot> PartitionBackend::CreateImageSlot(const std::string& name, uint64_t size_bytes) {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (auto s = CheckName(name); !s.ok()) return s;
  if (auto s = CheckSize("size_bytes", size_bytes); !s.ok()) return s;
  auto table = ReadTable();
  if (!table.ok()) return table.status();
  for (const auto& p : table->partitions) {
    auto label = gpt::ParseImageLabel(p.name);
    if (label && label->image == name) {
      return absl::AlreadyExistsError(absl::StrCat("image '", name, "' already exists in pool '", config_.name, "'"));
    }
  }
  auto made = CreatePartition(*table, gpt::MakeImageLabel(name, false), size_bytes);
  if (!made.ok()) return made.status();
  Log()->info("pool {}: image slot {} created ({} bytes)", config_.name, name, made->second.size * made->first.sector_size);
  return Slot(made->first, made->second, gpt::ImageLabel{name, false});
}

absl::Status PartitionBackend::SealImageSlot(const std::string& name) {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (auto s = CheckName(name); !s.ok()) return s;
  auto found = FindImage(name);
  if (!found.ok()) return found.status();
  if (found->second.name == gpt::MakeImageLabel(name, true)) return absl::OkStatus();
  return RunChecked({options_.parted, "-s", config_.disk, "name", absl::StrCat(found->second.number),
                     gpt::MakeImageLabel(name, true)});
}

absl::StatusOr<DeletePlan> PartitionBackend::BeginDeleteImageSlot(const std::string& name) {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (auto s = CheckName(name); !s.ok()) return s;
  auto found = FindImage(name);
  if (!found.ok()) return found.status();
  const auto& [table, partition] = *found;
  if (partition.name != gpt::MakeImageLabel(name, false)) {
    if (auto s = RunChecked({options_.parted, "-s", config_.disk, "name", absl::StrCat(partition.number),
                             gpt::MakeImageLabel(name, false)});
        !s.ok()) {
      return s;
    }
  }
  VolumeInfo slot{.pool = config_.name, .name = name, .path = gpt::PartitionPath(config_.disk, partition.number),
                  .size_bytes = partition.size * table.sector_size};
  return DeletePlan{.volume = std::move(slot), .partition_number = partition.number, .image = true};
}

}  // namespace hvagent::storage
