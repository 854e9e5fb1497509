#include "storage/lvm/lvm_backend.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/log.h"
#include "storage/exec/run_checked.h"
#include "storage/lvm/lvm_names.h"

namespace hvagent::storage {
namespace {

constexpr char kNoActivation[] = "global{activation=0}";

std::shared_ptr<spdlog::logger> Log() { return log::ComponentLogger("storage.lvm"); }

absl::StatusCode LvmCode(absl::string_view lower) {
  if (absl::StrContains(lower, "insufficient free") || absl::StrContains(lower, "insufficient suitable")) {
    return absl::StatusCode::kResourceExhausted;
  }
  if (absl::StrContains(lower, "already exists")) return absl::StatusCode::kAlreadyExists;
  if (absl::StrContains(lower, "in use") || absl::StrContains(lower, "open logical volume") ||
      absl::StrContains(lower, "aborted wiping") || absl::StrContains(lower, "signature left") ||
      absl::StrContains(lower, "can't initialize physical volume")) {
    return absl::StatusCode::kFailedPrecondition;
  }
  if (absl::StrContains(lower, "not found") || absl::StrContains(lower, "failed to find")) {
    return absl::StatusCode::kNotFound;
  }
  return absl::StatusCode::kInternal;
}

// lvm2's own words, without the noise every call prints when activation is disabled or a
// descriptor leaks into it; the status code follows what lvm2 said.
const ToolErrors kLvmErrors{.noise = {"Activation disabled", "leaked on lvm invocation"}, .classify = LvmCode};

std::string Label(const std::string& subcommand) { return absl::StrCat("lvm2 ", subcommand); }

std::string Bytes(uint64_t n) { return absl::StrCat(n, "b"); }

bool IsActive(const lvm::LvRow& lv) { return lv.attr.size() > 4 && lv.attr[4] == 'a'; }

// Tags of `lv` that start with `prefix` and name something after it.
std::vector<std::string> TagsWith(const lvm::LvRow& lv, const char* prefix) {
  std::vector<std::string> out;
  for (const std::string& t : lv.tags) {
    if (absl::StartsWith(t, prefix) && t.size() > strlen(prefix)) out.push_back(t);
  }
  return out;
}

// Ours, and not a revert's temporary LV (a '+' is never in a volume's name).
bool IsVolumeLv(const lvm::LvRow& lv) {
  return lv.HasTag(LvmBackend::kOwnerTag) && lv.name.find('+') == std::string::npos;
}

std::vector<std::string> VmTags(const lvm::LvRow& lv) { return TagsWith(lv, LvmBackend::kVmTagPrefix); }

absl::Status CheckSize(uint64_t size) {
  if (size == 0) return absl::InvalidArgumentError("size_bytes: must be greater than 0");
  if (size > LvmBackend::kMaxVolumeBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("size_bytes: ", size, " bytes is too large (at most ", LvmBackend::kMaxVolumeBytes, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

bool LvmBackend::ProbeDeviceMapper() {
  int fd = ::open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

LvmBackend::LvmBackend(PoolConfig config, CommandRunner& runner, BlockWiper& wiper, Options options)
    : config_(std::move(config)), runner_(runner), wiper_(wiper), options_(std::move(options)) {
  if (options_.clock == nullptr) {
    own_clock_ = std::make_unique<SystemClock>();
    clock_ = own_clock_.get();
  } else {
    clock_ = options_.clock;
  }
  dm_available_ = options_.device_mapper_available ? options_.device_mapper_available() : ProbeDeviceMapper();
  if (!dm_available_) {
    Log()->info("pool '{}': device-mapper unavailable, lvm2 runs with activation disabled", config_.name);
  }
}

absl::Status LvmBackend::CheckConfig() const {
  if (config_.type != PoolType::kLvm) {
    return absl::InvalidArgumentError(absl::StrCat("pool '", config_.name, "' is not an LVM pool"));
  }
  if (!lvm::IsLvmVgName(config_.volume_group)) {
    return absl::InvalidArgumentError(
        absl::StrCat("volume_group: '", config_.volume_group, "' is not a valid LVM volume group name"));
  }
  if (!config_.thin_pool.empty() && !lvm::IsLvmLvName(config_.thin_pool)) {
    return absl::InvalidArgumentError(
        absl::StrCat("thin_pool: '", config_.thin_pool, "' is not a valid LVM logical volume name"));
  }
  return absl::OkStatus();
}

std::vector<std::string> LvmBackend::Argv(const std::string& subcommand, std::vector<std::string> args) const {
  std::vector<std::string> argv = {options_.lvm, subcommand};
  if (!dm_available_) {
    argv.push_back("--config");
    argv.push_back(kNoActivation);
  }
  argv.insert(argv.end(), std::make_move_iterator(args.begin()), std::make_move_iterator(args.end()));
  return argv;
}

Command LvmBackend::LvmCommand(const std::string& subcommand, std::vector<std::string> args) const {
  Command cmd{.argv = Argv(subcommand, std::move(args)),
              .timeout = options_.timeout,
              .env = {{"LVM_SUPPRESS_FD_WARNINGS", "1"}}};
  Log()->debug("pool '{}': {}", config_.name, absl::StrJoin(cmd.argv, " "));
  return cmd;
}

absl::Status LvmBackend::RunLvmChecked(const std::string& subcommand, std::vector<std::string> args) {
  absl::Status s = RunChecked(runner_, LvmCommand(subcommand, std::move(args)), Label(subcommand), kLvmErrors);
  Invalidate();
  return s;
}

absl::Status LvmBackend::VgMissing() const {
  return absl::FailedPreconditionError(absl::StrCat("pool '", config_.name, "': volume group '", config_.volume_group,
                                                    "' does not exist (the pool is not prepared)"));
}

absl::StatusOr<std::optional<lvm::Report>> LvmBackend::FetchReport() const {
  auto r = RunTool(runner_, LvmCommand("fullreport", {"--reportformat", "json", "--units", "b", "--nosuffix",
                                 "--configreport", "vg", "-o", lvm::kVgFields,
                                 "--configreport", "lv", "-o", lvm::kLvFields,
                                 "--configreport", "pv", "-o", "pv_name",
                                 "--configreport", "pvseg", "-o", "pvseg_start", "-S", "pvseg_start<0",
                                 "--configreport", "seg", "-o", "seg_start", "-S", "seg_start<0",
                                 config_.volume_group}), Label("fullreport"));
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    if (absl::StrContains(r->stderr_text, absl::StrCat("Volume group \"", config_.volume_group, "\" not found"))) {
      return std::optional<lvm::Report>();
    }
    return ToolFailed(Label("fullreport"), *r, kLvmErrors);
  }
  auto report = lvm::ParseFullReport(r->stdout_text, config_.volume_group);
  if (absl::IsNotFound(report.status())) return std::optional<lvm::Report>();
  if (!report.ok()) return report.status();
  return std::optional<lvm::Report>(std::move(*report));
}

absl::StatusOr<const lvm::Report*> LvmBackend::Report(bool fresh) {
  if (!fresh && cache_ && clock_->Now() - cache_->fetched_at < options_.cache_ttl) return &cache_->report;
  Invalidate();
  auto report = FetchReport();
  if (!report.ok()) return report.status();
  if (!report->has_value()) return VgMissing();
  cache_ = Cached{std::move(**report), clock_->Now()};
  return &cache_->report;
}

absl::StatusOr<lvm::LvRow> LvmBackend::FindOurs(const std::string& name) {
  auto report = Report();
  if (!report.ok()) return report.status();
  for (const lvm::LvRow& lv : (*report)->lvs) {
    if (lv.name == name && lv.HasTag(kOwnerTag)) return lv;
  }
  return absl::NotFoundError(absl::StrCat("volume '", name, "' not found in pool '", config_.name, "'"));
}

VolumeInfo LvmBackend::ToVolume(const lvm::LvRow& lv) const {
  VolumeInfo v{.pool = config_.name,
               .name = lv.name,
               .path = lv.path.empty() ? LvPath(lv.name) : lv.path,
               .size_bytes = lv.size_bytes};
  auto vm = VmTags(lv);
  if (!vm.empty()) {
    v.attached_to = vm.front().substr(sizeof(kVmTagPrefix) - 1);
    v.ownership = lv.HasTag(absl::StrCat(kOwnedByTagPrefix, v.attached_to)) ? Ownership::kOwned : Ownership::kBorrowed;
  }
  return v;
}

const lvm::LvRow* LvmBackend::ThinPool(const lvm::Report& report) const {
  for (const lvm::LvRow& lv : report.lvs) {
    if (lv.name == config_.thin_pool && !lv.attr.empty() && lv.attr[0] == 't') return &lv;
  }
  return nullptr;
}

absl::StatusOr<uint64_t> LvmBackend::RoundSize(uint64_t size, uint64_t extent) const {
  if (extent == 0) return absl::InternalError("lvm2 reported an extent size of 0");
  // size <= 2^62 and lvm2's extent sizes are far below 2^62: no overflow.
  uint64_t rounded = (size + extent - 1) / extent * extent;
  if (rounded > kMaxVolumeBytes) {
    return absl::InvalidArgumentError(absl::StrCat("size_bytes: ", size, " bytes rounded up to the ", extent,
                                                   "-byte extent size is too large"));
  }
  return rounded;
}

absl::Status LvmBackend::Prepare() {
  if (auto s = CheckConfig(); !s.ok()) return s;
  for (const std::string& pv : config_.physical_volumes) {
    if (auto s = lvm::CheckPvPath(pv); !s.ok()) return s;
  }
  Invalidate();
  auto fetched = FetchReport();
  if (!fetched.ok()) return fetched.status();
  if (!fetched->has_value()) {
    if (config_.physical_volumes.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("pool '", config_.name, "': volume group '",
                                                        config_.volume_group,
                                                        "' does not exist and no physical_volumes are configured"));
    }
    // vgcreate initializes the PVs itself (no separate pvcreate to undo when it fails) and
    // refuses a device that holds a filesystem signature or belongs to another VG.
    std::vector<std::string> args = {config_.volume_group};
    args.insert(args.end(), config_.physical_volumes.begin(), config_.physical_volumes.end());
    if (auto s = RunLvmChecked("vgcreate", std::move(args)); !s.ok()) return s;
    Log()->info("pool '{}': created volume group {} on {}", config_.name, config_.volume_group,
                absl::StrJoin(config_.physical_volumes, ", "));
    if (config_.thin_pool.empty()) return absl::OkStatus();
  } else {
    cache_ = Cached{std::move(**fetched), clock_->Now()};
  }
  auto report = Report();
  if (config_.thin_pool.empty() || ThinPool(**report) != nullptr) return absl::OkStatus();
  for (const lvm::LvRow& lv : (*report)->lvs) {
    if (lv.name == config_.thin_pool) {
      return absl::FailedPreconditionError(absl::StrCat("pool '", config_.name, "': LV ", LvId(lv.name),
                                                        " exists but is not a thin pool (lv_attr ", lv.attr, ")"));
    }
  }
  if (!dm_available_) {
    return absl::FailedPreconditionError(absl::StrCat("pool '", config_.name, "': cannot create thin pool ",
                                                      LvId(config_.thin_pool),
                                                      ": device-mapper unavailable on this host"));
  }
  if (auto s = RunLvmChecked("lvcreate", {"--yes", "--type", "thin-pool", "-l", "90%FREE", "-n", config_.thin_pool,
                                          config_.volume_group});
      !s.ok()) {
    return s;
  }
  Log()->info("pool '{}': created thin pool {}", config_.name, LvId(config_.thin_pool));
  return absl::OkStatus();
}

absl::StatusOr<PoolInfo> LvmBackend::GetPool() {
  if (auto s = CheckConfig(); !s.ok()) return s;
  auto report = Report();
  if (!report.ok()) return report.status();
  const lvm::Report& r = **report;
  PoolInfo info{.name = config_.name, .type = PoolType::kLvm, .wipe = config_.wipe};
  if (config_.thin_pool.empty()) {
    info.capacity_bytes = r.vg.size_bytes;
    info.free_bytes = r.vg.free_bytes;
  } else {
    const lvm::LvRow* tp = ThinPool(r);
    if (tp == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat("pool '", config_.name, "': thin pool ",
                                                        LvId(config_.thin_pool), " does not exist (not prepared)"));
    }
    info.capacity_bytes = tp->size_bytes;
    double used = static_cast<double>(tp->size_bytes) * tp->data_percent.value_or(0.0) / 100.0;
    info.free_bytes = tp->size_bytes - std::min(tp->size_bytes, static_cast<uint64_t>(used));
    info.thin_data_percent = tp->data_percent.value_or(0.0);
    info.thin_metadata_percent = tp->metadata_percent.value_or(0.0);
  }
  for (const lvm::LvRow& lv : r.lvs) {
    if (IsVolumeLv(lv)) ++info.volume_count;
  }
  AddSnapshotUsage(r, info);
  return info;
}

absl::StatusOr<std::vector<VolumeInfo>> LvmBackend::ListVolumes() {
  if (auto s = CheckConfig(); !s.ok()) return s;
  auto report = Report();
  if (!report.ok()) return report.status();
  std::vector<VolumeInfo> out;
  for (const lvm::LvRow& lv : (*report)->lvs) {
    if (IsVolumeLv(lv)) out.push_back(ToVolume(lv));
  }
  std::sort(out.begin(), out.end(), [](const VolumeInfo& a, const VolumeInfo& b) { return a.name < b.name; });
  return out;
}

absl::StatusOr<VolumeInfo> LvmBackend::GetVolume(const std::string& name) {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (auto s = lvm::CheckVolumeName(name); !s.ok()) return s;
  auto lv = FindOurs(name);
  if (!lv.ok()) return lv.status();
  return ToVolume(*lv);
}

absl::StatusOr<VolumeInfo> LvmBackend::CreateVolume(const VolumeSpec& spec) {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (auto s = lvm::CheckVolumeName(spec.name); !s.ok()) return s;
  if (auto s = CheckSize(spec.size_bytes); !s.ok()) return s;
  auto report = Report();
  if (!report.ok()) return report.status();
  const lvm::Report& r = **report;
  for (const lvm::LvRow& lv : r.lvs) {
    if (lv.name != spec.name) continue;
    if (lv.HasTag(kOwnerTag)) {
      return absl::AlreadyExistsError(absl::StrCat("volume '", spec.name, "' already exists in pool '", config_.name, "'"));
    }
    return absl::AlreadyExistsError(absl::StrCat("pool '", config_.name, "': the name '", spec.name,
                                                 "' is taken by a logical volume the agent does not manage"));
  }
  auto size = RoundSize(spec.size_bytes, r.vg.extent_size);
  if (!size.ok()) return size.status();

  std::vector<std::string> args;
  if (!dm_available_) args.push_back("-an");
  if (config_.thin_pool.empty()) {
    if (*size > r.vg.free_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "pool '", config_.name, "' is full: volume '", spec.name, "' needs ", *size, " bytes (", spec.size_bytes,
          " rounded up to the ", r.vg.extent_size, "-byte extent size), volume group '", config_.volume_group,
          "' has ", r.vg.free_bytes, " bytes free"));
    }
    if (!dm_available_) args.push_back("-Zn");
    for (const char* a : {"--yes", "-n"}) args.emplace_back(a);
    args.push_back(spec.name);
    for (std::string a : {std::string("-L"), Bytes(*size), std::string("--addtag"), std::string(kOwnerTag),
                          config_.volume_group}) {
      args.push_back(std::move(a));
    }
  } else {
    if (ThinPool(r) == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat("pool '", config_.name, "': thin pool ",
                                                        LvId(config_.thin_pool), " does not exist (not prepared)"));
    }
    for (std::string a : {std::string("--yes"), std::string("-n"), spec.name, std::string("-V"), Bytes(*size),
                          std::string("--addtag"), std::string(kOwnerTag), std::string("--thin"),
                          LvId(config_.thin_pool)}) {
      args.push_back(std::move(a));
    }
  }

  absl::Status status = RunLvmChecked("lvcreate", std::move(args));
  if (status.ok()) {
    Log()->info("pool '{}': created volume {} ({} bytes)", config_.name, spec.name, *size);
    return VolumeInfo{.pool = config_.name, .name = spec.name, .path = LvPath(spec.name), .size_bytes = *size};
  }
  // lvm2 refuses these before it writes any metadata: nothing to undo (and an LV of that name
  // that appeared meanwhile is not ours to remove).
  if (absl::IsResourceExhausted(status) || absl::IsAlreadyExists(status) || absl::IsInvalidArgument(status)) {
    return status;
  }
  return RemoveLeftover(spec.name, kOwnerTag, status);
}

absl::Status LvmBackend::RemoveLeftover(const std::string& lv, const std::string& tag, absl::Status status) {
  // Killed or failed midway: lvm2 commits metadata atomically, so the LV exists fully or not at
  // all. Look, and remove it if it is there.
  auto fresh = Report(/*fresh=*/true);
  if (!fresh.ok()) {
    return absl::Status(status.code(), absl::StrCat(status.message(), "; could not check for a partly created LV: ",
                                                    fresh.status().message()));
  }
  bool left = std::any_of((*fresh)->lvs.begin(), (*fresh)->lvs.end(),
                          [&](const lvm::LvRow& row) { return row.name == lv && row.HasTag(tag); });
  if (!left) return status;
  absl::Status cleanup = RunLvmChecked("lvremove", {"--yes", LvId(lv)});
  if (!cleanup.ok()) {
    Log()->error("pool '{}': could not remove partly created {}: {}", config_.name, LvId(lv), cleanup.message());
    return absl::Status(status.code(), absl::StrCat(status.message(), "; removing the partly created LV ", LvId(lv),
                                                    " failed too: ", cleanup.message()));
  }
  return absl::Status(status.code(), absl::StrCat(status.message(), "; the partly created LV was removed"));
}

absl::StatusOr<VolumeInfo> LvmBackend::ResizeVolume(const std::string& name, uint64_t new_size_bytes) {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (auto s = lvm::CheckVolumeName(name); !s.ok()) return s;
  if (auto s = CheckSize(new_size_bytes); !s.ok()) return s;
  auto lv = FindOurs(name);
  if (!lv.ok()) return lv.status();
  const lvm::Report& r = cache_->report;  // FindOurs just filled the cache
  auto size = RoundSize(new_size_bytes, r.vg.extent_size);
  if (!size.ok()) return size.status();
  if (*size < lv->size_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("size_bytes: volume '", name, "' is ", lv->size_bytes,
                                                   " bytes; shrinking it to ", *size,
                                                   " is refused (it would cut the guest's filesystem)"));
  }
  if (*size == lv->size_bytes) return ToVolume(*lv);
  if (config_.thin_pool.empty() && *size - lv->size_bytes > r.vg.free_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("pool '", config_.name, "' is full: growing volume '", name,
                                                     "' to ", *size, " bytes needs ", *size - lv->size_bytes,
                                                     " more, volume group '", config_.volume_group, "' has ",
                                                     r.vg.free_bytes, " bytes free"));
  }
  VolumeInfo grown = ToVolume(*lv);
  if (auto s = RunLvmChecked("lvextend", {"-L", Bytes(*size), LvId(name)}); !s.ok()) return s;
  Log()->info("pool '{}': grew volume {} from {} to {} bytes", config_.name, name, lv->size_bytes, *size);
  grown.size_bytes = *size;
  return grown;
}

absl::StatusOr<DeletePlan> LvmBackend::BeginDelete(const std::string& name) {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (auto s = lvm::CheckVolumeName(name); !s.ok()) return s;
  auto lv = FindOurs(name);
  if (!lv.ok()) return lv.status();
  VolumeInfo volume = ToVolume(*lv);
  if (!volume.attached_to.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("volume '", name, "' is attached to domain '",
                                                      volume.attached_to, "'; detach it first"));
  }
  if (config_.wipe != WipeMode::kNone) {
    if (!dm_available_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot wipe volume '", name, "' in pool '", config_.name,
          "': device-mapper unavailable, so the LV cannot be activated; the volume was kept (a pool with wipe "
          "'none' deletes without wiping)"));
    }
    if (!IsActive(*lv)) {
      if (auto s = RunLvmChecked("lvchange", {"-ay", LvId(name)}); !s.ok()) return s;
    }
  }
  return DeletePlan{.volume = std::move(volume)};
}

absl::Status LvmBackend::WipeForDelete(const DeletePlan& plan, const ProgressFn& progress) {
  if (config_.wipe == WipeMode::kNone) return absl::OkStatus();
  absl::Status wiped = wiper_.Wipe(plan.volume.path, config_.wipe, progress);
  if (wiped.ok()) return wiped;
  return absl::Status(wiped.code(), absl::StrCat("wiping ", plan.image ? "image" : "volume", " '", plan.volume.name,
                                                 "' failed, the volume was kept: ", wiped.message()));
}

absl::Status LvmBackend::FinishDelete(const DeletePlan& plan) {
  const std::string lv = plan.image ? ImageLv(plan.volume.name) : plan.volume.name;
  if (auto s = RunLvmChecked("lvremove", {"--yes", LvId(lv)}); !s.ok()) return s;
  Log()->info("pool '{}': deleted {} {}", config_.name, plan.image ? "image" : "volume", plan.volume.name);
  return absl::OkStatus();
}

absl::Status LvmBackend::SetAttachment(const std::string& name, const std::string& domain, Ownership ownership) {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (auto s = lvm::CheckVolumeName(name); !s.ok()) return s;
  if (domain.empty() != (ownership == Ownership::kNone)) {
    return absl::InvalidArgumentError(absl::StrCat("ownership: '", OwnershipName(ownership), "' does not go with ",
                                                   domain.empty() ? "no domain" : "a domain"));
  }
  if (!domain.empty()) {
    if (auto s = lvm::CheckDomainName(domain); !s.ok()) return s;
  }
  auto lv = FindOurs(name);
  if (!lv.ok()) return lv.status();
  std::vector<std::string> current = VmTags(*lv);
  for (std::string& t : TagsWith(*lv, kOwnedByTagPrefix)) current.push_back(std::move(t));
  std::vector<std::string> wanted;
  if (!domain.empty()) {
    const std::string vm_tag = absl::StrCat(kVmTagPrefix, domain);
    for (const std::string& t : VmTags(*lv)) {
      if (t != vm_tag) {
        return absl::FailedPreconditionError(absl::StrCat("volume '", name, "' is attached to domain '",
                                                          ToVolume(*lv).attached_to, "'; detach it first"));
      }
    }
    wanted.push_back(vm_tag);
    if (ownership == Ownership::kOwned) wanted.push_back(absl::StrCat(kOwnedByTagPrefix, domain));
  }
  std::vector<std::string> args;
  for (const std::string& t : current) {
    if (std::find(wanted.begin(), wanted.end(), t) == wanted.end()) args.insert(args.end(), {"--deltag", t});
  }
  for (const std::string& t : wanted) {
    if (!lv->HasTag(t)) args.insert(args.end(), {"--addtag", t});
  }
  if (args.empty()) return absl::OkStatus();  // the tags already say so
  args.push_back(LvId(name));
  if (auto s = RunLvmChecked("lvchange", std::move(args)); !s.ok()) return s;
  Log()->info("pool '{}': volume {} {}", config_.name, name,
              domain.empty() ? std::string("detached")
                             : absl::StrCat("attached to ", domain, " (", OwnershipName(ownership), ")"));
  return absl::OkStatus();
}

// --- golden images -------------------------------------------------------------------------

absl::Status LvmBackend::CheckImageCall(const std::string& name) const {
  if (auto s = CheckConfig(); !s.ok()) return s;
  if (!dm_available_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pool: '", config_.name,
        "' cannot hold images on this host: device-mapper is unavailable, so an image LV could be neither written "
        "nor read"));
  }
  if (name.empty()) return absl::OkStatus();  // listing
  if (auto s = lvm::CheckVolumeName(name); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("image: '", name, "' is not a valid image name"));
  }
  return absl::OkStatus();
}

ImageSlot LvmBackend::Slot(const std::string& name, const lvm::LvRow& lv) const {
  return ImageSlot{.pool = config_.name,
                   .name = name,
                   .path = lv.path.empty() ? LvPath(lv.name) : lv.path,
                   .size_bytes = lv.size_bytes,
                   .ready = lv.HasTag(kImageTag) && !lv.HasTag(kImportingTag)};
}

absl::StatusOr<lvm::LvRow> LvmBackend::FindImage(const std::string& name) {
  auto report = Report();
  if (!report.ok()) return report.status();
  const std::string lv_name = ImageLv(name);
  for (const lvm::LvRow& lv : (*report)->lvs) {
    if (lv.name == lv_name && (lv.HasTag(kImageTag) || lv.HasTag(kImportingTag))) return lv;
  }
  return absl::NotFoundError(absl::StrCat("image '", name, "' not found in pool '", config_.name, "'"));
}

absl::StatusOr<std::vector<ImageSlot>> LvmBackend::ListImageSlots() {
  if (auto s = CheckImageCall(""); !s.ok()) return s;
  auto report = Report();
  if (!report.ok()) return report.status();
  std::vector<ImageSlot> out;
  for (const lvm::LvRow& lv : (*report)->lvs) {
    if (!absl::StartsWith(lv.name, kImageLvPrefix)) continue;
    if (!lv.HasTag(kImageTag) && !lv.HasTag(kImportingTag)) continue;
    out.push_back(Slot(lv.name.substr(sizeof(kImageLvPrefix) - 1), lv));
  }
  std::sort(out.begin(), out.end(), [](const ImageSlot& a, const ImageSlot& b) { return a.name < b.name; });
  return out;
}

absl::StatusOr<ImageSlot> LvmBackend::CreateImageSlot(const std::string& name, uint64_t size_bytes) {
  if (auto s = CheckImageCall(name); !s.ok()) return s;
  if (auto s = CheckSize(size_bytes); !s.ok()) return s;
  auto report = Report();
  if (!report.ok()) return report.status();
  const lvm::Report& r = **report;
  const std::string lv = ImageLv(name);
  for (const lvm::LvRow& row : r.lvs) {
    if (row.name == lv) {
      return absl::AlreadyExistsError(absl::StrCat("image '", name, "' already exists in pool '", config_.name, "'"));
    }
  }
  auto size = RoundSize(size_bytes, r.vg.extent_size);
  if (!size.ok()) return size.status();
  std::vector<std::string> args = {"--yes", "-n", lv, "--addtag", kImportingTag};
  if (config_.thin_pool.empty()) {
    if (*size > r.vg.free_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("pool '", config_.name, "' is full: image '", name, "' needs ",
                                                       *size, " bytes, volume group '", config_.volume_group,
                                                       "' has ", r.vg.free_bytes, " bytes free"));
    }
    for (std::string a : {std::string("-L"), Bytes(*size), config_.volume_group}) args.push_back(std::move(a));
  } else {
    if (ThinPool(r) == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat("pool '", config_.name, "': thin pool ",
                                                        LvId(config_.thin_pool), " does not exist (not prepared)"));
    }
    for (std::string a : {std::string("-V"), Bytes(*size), std::string("--thin"), LvId(config_.thin_pool)}) {
      args.push_back(std::move(a));
    }
  }
  absl::Status status = RunLvmChecked("lvcreate", std::move(args));
  if (!status.ok()) {
    if (absl::IsResourceExhausted(status) || absl::IsAlreadyExists(status)) return status;
    return RemoveLeftover(lv, kImportingTag, status);
  }
  Log()->info("pool '{}': created image LV {} ({} bytes) for an import", config_.name, LvId(lv), *size);
  return ImageSlot{.pool = config_.name, .name = name, .path = LvPath(lv), .size_bytes = *size, .ready = false};
}

absl::Status LvmBackend::SealImageSlot(const std::string& name) {
  if (auto s = CheckImageCall(name); !s.ok()) return s;
  auto lv = FindImage(name);
  if (!lv.ok()) return lv.status();
  if (Slot(name, *lv).ready) return absl::OkStatus();
  std::vector<std::string> args = {"--permission", "r", "--deltag", kImportingTag, "--addtag", kImageTag,
                                   LvId(lv->name)};
  if (auto s = RunLvmChecked("lvchange", std::move(args)); !s.ok()) return s;
  Log()->info("pool '{}': image {} is ready (read-only)", config_.name, name);
  return absl::OkStatus();
}

absl::StatusOr<DeletePlan> LvmBackend::BeginDeleteImageSlot(const std::string& name) {
  if (auto s = CheckImageCall(name); !s.ok()) return s;
  auto lv = FindImage(name);
  if (!lv.ok()) return lv.status();
  // Writable (the wipe writes it) and importing again (a crash from here leaves an unfinished
  // image, which recovery removes), in one metadata change; then active for the wipe.
  std::vector<std::string> args;
  if (lv->HasTag(kImageTag)) args.insert(args.end(), {"--deltag", kImageTag});
  if (!lv->HasTag(kImportingTag)) args.insert(args.end(), {"--addtag", kImportingTag});
  if (lv->attr.size() > 1 && lv->attr[1] == 'r') args.insert(args.end(), {"--permission", "rw"});
  if (!args.empty()) {
    args.push_back(LvId(lv->name));
    if (auto s = RunLvmChecked("lvchange", std::move(args)); !s.ok()) return s;
  }
  if (config_.wipe != WipeMode::kNone && !IsActive(*lv)) {
    if (auto s = RunLvmChecked("lvchange", {"-ay", "-K", LvId(lv->name)}); !s.ok()) return s;
  }
  VolumeInfo slot{.pool = config_.name, .name = name, .path = Slot(name, *lv).path, .size_bytes = lv->size_bytes};
  return DeletePlan{.volume = std::move(slot), .image = true};
}

absl::StatusOr<VolumeInfo> LvmBackend::CloneImageSlot(const std::string& image, const VolumeSpec& spec) {
  if (config_.thin_pool.empty()) {
    return absl::UnimplementedError(absl::StrCat("pool '", config_.name, "' has no thin pool: images are copied"));
  }
  if (auto s = CheckImageCall(image); !s.ok()) return s;
  if (auto s = lvm::CheckVolumeName(spec.name); !s.ok()) return s;
  if (auto s = CheckSize(spec.size_bytes); !s.ok()) return s;
  auto lv = FindImage(image);
  if (!lv.ok()) return lv.status();
  if (!Slot(image, *lv).ready) {
    return absl::FailedPreconditionError(absl::StrCat("image: '", image, "' is not ready (its import is under way)"));
  }
  const lvm::Report& r = cache_->report;  // FindImage just filled the cache
  for (const lvm::LvRow& row : r.lvs) {
    if (row.name == spec.name) {
      return absl::AlreadyExistsError(absl::StrCat("volume '", spec.name, "' already exists in pool '", config_.name,
                                                   "' (or the name is taken by an LV the agent does not manage)"));
    }
  }
  auto size = RoundSize(spec.size_bytes, r.vg.extent_size);
  if (!size.ok()) return size.status();
  // A thin snapshot: no size (it shares the origin's blocks), activation skip off so it activates
  // and reactivates as any volume does, writable although its origin is read-only.
  absl::Status status = RunLvmChecked("lvcreate", {"--yes", "-s", "--setactivationskip", "n", "--permission", "rw",
                                                   "-n", spec.name, "--addtag", kOwnerTag, LvId(lv->name)});
  if (!status.ok()) {
    if (absl::IsResourceExhausted(status) || absl::IsAlreadyExists(status)) return status;
    return RemoveLeftover(spec.name, kOwnerTag, status);
  }
  uint64_t have = lv->size_bytes;
  if (*size > have) {
    if (auto s = RunLvmChecked("lvextend", {"-L", Bytes(*size), LvId(spec.name)}); !s.ok()) {
      return RemoveLeftover(spec.name, kOwnerTag, absl::Status(s.code(), absl::StrCat("growing clone '", spec.name,
                                                                                      "': ", s.message())));
    }
    have = *size;
  }
  Log()->info("pool '{}': volume {} is a thin snapshot of image {} ({} bytes)", config_.name, spec.name, image, have);
  return VolumeInfo{.pool = config_.name, .name = spec.name, .path = LvPath(spec.name), .size_bytes = have};
}


}  // namespace hvagent::storage
