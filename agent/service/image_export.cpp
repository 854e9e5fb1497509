// ImageService::Export: a volume, a snapshot or a ready image streamed out, raw or as qcow2.
// Kept apart from image_service.cpp (imports and copies): an export writes nothing in a pool,
// only, for qcow2, one scratch file that never outlives the call.

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/service/image_service.h"
#include "common/log.h"
#include "storage/image/image_sources.h"

namespace hvagent::service {
namespace {

namespace img = storage::image;

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("images");
  return logger;
}

constexpr absl::string_view kScratchPrefix = "export-";

// The qcow2 file an export streams, removed when the export ends, whatever happened.
struct ScratchExport {
  std::string path;
  ~ScratchExport() {
    if (!path.empty()) unlink(path.c_str());
  }
};

// Where an export reads from: a device (O_DIRECT) or a scratch file (page cache).
struct ExportFrom {
  std::string path;
  uint64_t size = 0;
  bool direct = true;
};

}  // namespace

absl::StatusOr<std::pair<std::string, uint64_t>> ImageService::SnapshotSource(const ExportRequest& r) {
  if (auto s = CheckObjectName("snapshot", r.snapshot); !s.ok()) return s;
  auto snaps = storage_.ListSnapshots(r.pool, r.name);
  if (!snaps.ok()) return snaps.status();
  for (const storage::SnapshotInfo& snap : *snaps) {
    if (snap.name != r.snapshot) continue;
    if (!snap.valid) {
      return absl::FailedPreconditionError(absl::StrCat(
          "snapshot: '", r.snapshot, "' is invalid (its copy-on-write reserve overflowed); it holds no content"));
    }
    if (snap.path.empty()) return absl::InternalError(absl::StrCat("snapshot '", r.snapshot, "' has no device"));
    return std::make_pair(snap.path, snap.size_bytes);
  }
  return absl::NotFoundError(absl::StrCat("snapshot: volume '", r.name, "' has no snapshot '", r.snapshot, "'"));
}

absl::StatusOr<std::pair<std::string, uint64_t>> ImageService::ExportSource(const ExportRequest& r,
                                                                             std::string* held) {
  if (auto s = CheckObjectName("name", r.name); !s.ok()) return s;
  if (r.image) {
    {
      std::lock_guard lock(mu_);
      if (deleting_.contains(Key(r.pool, r.name))) {
        return absl::FailedPreconditionError(absl::StrCat("name: image '", r.name, "' is being deleted"));
      }
      ++copying_[Key(r.pool, r.name)];  // a delete now waits for the export
      *held = Key(r.pool, r.name);
    }
    auto image = Get(r.pool, r.name);
    if (!image.ok()) return image.status();
    if (!image->ready || !image->record) {
      return absl::FailedPreconditionError(absl::StrCat("name: image '", r.name, "' is not ready (importing)"));
    }
    return std::make_pair(image->path, image->record->virtual_size);
  }
  if (!r.snapshot.empty()) return SnapshotSource(r);
  auto volume = storage_.GetVolume(r.pool, r.name);
  if (!volume.ok()) return volume.status();
  if (auto s = storage_.RefuseBusy(r.pool, r.name); !s.ok()) return s;
  const std::string& domain = volume->volume.attached_to;
  if (!domain.empty() && !r.domain_quiesced && DomainRuns(domain)) {
    return absl::FailedPreconditionError(
        absl::StrCat("name: volume '", r.name, "' is attached to running domain '", domain,
                     "'; pause or freeze it and set domain_quiesced, snapshot it and export the snapshot, or "
                     "make an image of it (CreateImageFromVolume pauses it for the copy) and export that"));
  }
  return std::make_pair(volume->volume.path, volume->volume.size_bytes);
}

namespace {

absl::StatusOr<uint64_t> StatvfsFree(const std::string& dir) {
  // The directory may not exist yet (it is made on first use): its nearest existing parent is on
  // the filesystem it will be made on.
  std::filesystem::path at = std::filesystem::absolute(dir);
  struct statvfs st {};
  while (statvfs(at.c_str(), &st) != 0) {
    if (errno != ENOENT || !at.has_parent_path() || at == at.parent_path()) {
      return absl::FailedPreconditionError(
          absl::StrCat("[images] scratch_dir: statvfs of ", at.string(), ": ", std::strerror(errno)));
    }
    at = at.parent_path();
  }
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

}  // namespace

absl::Status ImageService::CheckScratchRoom(uint64_t need, const std::string& what) const {
  auto free = options_.free_space ? options_.free_space(options_.scratch_dir) : StatvfsFree(options_.scratch_dir);
  if (!free.ok()) return free.status();
  if (*free >= need) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat("[images] scratch_dir: ", options_.scratch_dir, " has ", *free,
                                                   " bytes free; ", what, " needs up to ", need));
}

std::vector<std::string> ImageService::RemoveExportLeftovers() {
  std::vector<std::string> done;
  if (options_.scratch_dir.empty()) return done;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(options_.scratch_dir, ec)) {
    const std::string file = entry.path().filename().string();
    if (!absl::StartsWith(file, kScratchPrefix) || !absl::EndsWith(file, ".qcow2")) continue;
    std::error_code rm;
    std::filesystem::remove(entry.path(), rm);
    done.push_back(absl::StrCat("export scratch file ", entry.path().string(), " left by a crash: ",
                                rm ? rm.message() : "removed"));
  }
  return done;
}

namespace {

// Converts `from` into a new qcow2 file of `scratch_dir` (named in `file`, which removes it);
// `cancelled` true stops qemu-img (killed) and answers Cancelled.
absl::StatusOr<ExportFrom> ConvertForExport(const img::QemuImg& qemu, const std::string& scratch_dir,
                                            uint64_t seq, const std::string& from, ScratchExport& file,
                                            std::function<bool()> cancelled) {
  if (scratch_dir.empty()) return absl::FailedPreconditionError("format: qcow2 needs [images] scratch_dir");
  std::error_code ec;
  std::filesystem::create_directories(scratch_dir, ec);
  std::filesystem::permissions(scratch_dir, std::filesystem::perms::owner_all, ec);
  const std::string path = absl::StrCat(scratch_dir, "/", kScratchPrefix, getpid(), "-", seq, ".qcow2");
  unlink(path.c_str());  // a leftover of a dead agent whose pid this one reuses
  file.path = path;
  if (auto s = qemu.ConvertToQcow2(from, path, std::move(cancelled)); !s.ok()) return s;  // ENOSPC included
  struct stat st {};
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::InternalError(absl::StrCat("qemu-img convert made no file ", path));
  }
  return ExportFrom{.path = path, .size = static_cast<uint64_t>(st.st_size), .direct = false};
}

}  // namespace

absl::StatusOr<img::ExportResult> ImageService::Export(const ExportRequest& r, img::ExportSink& sink,
                                                       const std::function<absl::Status(const ExportStart&)>& on_start,
                                                       const img::CancelFlag* cancel) {
  std::string held;
  struct Release {
    ImageService* self;
    std::string* key;
    ~Release() {
      if (key->empty()) return;
      std::lock_guard lock(self->mu_);
      --self->copying_[*key];
    }
  } release{this, &held};
  if (r.format != ImageFormat::kRaw && r.format != ImageFormat::kQcow2) {
    return absl::InvalidArgumentError("format: IMAGE_FORMAT_RAW or IMAGE_FORMAT_QCOW2");
  }
  if (r.format == ImageFormat::kQcow2 && options_.scratch_dir.empty()) {
    return absl::FailedPreconditionError("format: qcow2 needs [images] scratch_dir");
  }
  auto source = ExportSource(r, &held);
  if (!source.ok()) return source.status();
  const std::string what = absl::StrCat(r.image ? "image " : "volume ", r.pool, "/", r.name,
                                        r.snapshot.empty() ? "" : absl::StrCat(" snapshot ", r.snapshot));
  ExportFrom from{.path = source->first, .size = source->second, .direct = true};
  ScratchExport scratch;
  if (r.format == ImageFormat::kQcow2) {
    if (auto s = CheckScratchRoom(Qcow2Bound(from.size), absl::StrCat("a qcow2 export of ", what)); !s.ok()) {
      return s;
    }
    auto cancelled = [&sink, cancel] { return (cancel != nullptr && cancel->load()) || sink.CallerGone(); };
    auto converted = ConvertForExport(img::QemuImg(runner_, options_.qemu_img), options_.scratch_dir,
                                      ++export_seq_, from.path, scratch, cancelled);
    if (!converted.ok()) {
      Log()->warn("export of {} stopped while converting to qcow2: {}", what, converted.status().message());
      return converted.status();
    }
    from = *converted;
  }
  ExportStart start{.size_bytes = from.size};
  if (r.digest_first) {
    auto digest = img::HashFile(from.path, from.size, cancel);
    if (!digest.ok()) return digest.status();
    start.sha256 = *digest;
  }
  if (auto s = on_start(start); !s.ok()) return s;
  Log()->info("export of {} started ({} bytes{})", what, from.size, r.format == ImageFormat::kQcow2 ? " of qcow2" : "");
  auto result = img::ExportDevice(from.path, from.size, sink, cancel, from.direct);
  if (result.ok() && r.digest_first && result->sha256 != start.sha256) {
    result = absl::DataLossError(absl::StrCat("the content of ", what, " changed during the export (sha256 ",
                                              result->sha256, ", announced ", start.sha256, ")"));
  }
  if (!result.ok()) {
    Log()->warn("export of {} stopped: {}", what, result.status().message());
    return result.status();
  }
  Log()->info("exported {}: {} bytes ({} as zero runs), sha256 {}", what, result->bytes, result->zero_bytes,
              result->sha256);
  return result;
}

}  // namespace hvagent::service
