#include "agent/service/image_service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "agent/service/guest_quiescer.h"
#include "common/failpoint.h"
#include "common/log.h"
#include "storage/image/image_sources.h"
#include "storage/partition/gpt_layout.h"

namespace hvagent::service {
namespace {

namespace img = storage::image;

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("images");
  return logger;
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

const char* FormatName(ImageFormat f) { return f == ImageFormat::kQcow2 ? "qcow2" : "raw"; }

// The checksums the caller gave, computed over the source's bytes as they arrive.
class SourceDigests {
 public:
  absl::Status Init(const ImportRequest& r) {
    using Wanted = std::pair<const char*, const std::string*>;
    for (auto [algo, want] : {Wanted{"sha256", &r.sha256}, Wanted{"sha512", &r.sha512}}) {
      if (want->empty()) continue;
      auto d = img::Digest::Create(algo);
      if (!d.ok()) return d.status();
      checks_.push_back({algo, *want, std::move(*d)});
    }
    return absl::OkStatus();
  }
  void Update(absl::string_view bytes) {
    for (auto& c : checks_) c.digest->Update(bytes);
  }
  // FailedPrecondition naming the field when a digest differs.
  absl::Status Verify() {
    for (auto& c : checks_) {
      const std::string got = c.digest->HexFinal();
      if (got != c.want) {
        return absl::FailedPreconditionError(absl::StrCat(c.algo, ": the source's bytes hash to ", got, ", not ",
                                                          c.want, " (checksum mismatch; nothing was kept)"));
      }
    }
    return absl::OkStatus();
  }

 private:
  struct Check {
    std::string algo;
    std::string want;
    std::unique_ptr<img::Digest> digest;
  };
  std::vector<Check> checks_;
};

// A scratch file removed when it goes out of scope, whatever happened.
struct ScratchFile {
  std::string path;
  int fd = -1;
  ~ScratchFile() {
    if (fd >= 0) close(fd);
    if (!path.empty()) unlink(path.c_str());
  }
};

absl::Status WriteFd(int fd, absl::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t w = write(fd, bytes.data(), bytes.size());
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return absl::ResourceExhaustedError(absl::StrCat("scratch_dir: writing: ", std::strerror(errno)));
    bytes.remove_prefix(static_cast<size_t>(w));
  }
  return absl::OkStatus();
}

// A volume's bytes as an upload body: read with O_DIRECT in kBlockBytes blocks. The first read
// pauses the running domain it is attached to (when given); the end of the stream, or the
// body's end on a failure, resumes it. The pause is a step of the operation (Journalled),
// recorded before it is done and closed (`released`) once the guest runs again, so that a crash
// in between leaves a journal entry whose recovery resumes the guest (GuestQuiescer::Recover:
// the same step names).
class VolumeBody final : public UploadBody {
 public:
  VolumeBody(std::string path, uint64_t size, hv::Hypervisor* hv, std::string domain)
      : path_(std::move(path)), size_(size), hv_(hv), domain_(std::move(domain)) {}
  void Journalled(Journal* journal, uint64_t op) {
    journal_ = journal;
    op_ = op;
  }
  ~VolumeBody() override {
    (void)Resume();
    if (fd_ >= 0) close(fd_);
    std::free(buf_);
  }

  absl::StatusOr<bool> Next(std::string* chunk) override {
    if (fd_ < 0) {
      if (auto s = Open(); !s.ok()) return s;
    }
    if (done_ >= size_) {
      if (auto s = Resume(); !s.ok()) return s;
      return false;
    }
    if (done_ > 0) HVAGENT_FAILPOINT("image_from_volume.mid_copy");  // part of the image written
    const size_t want = static_cast<size_t>(std::min<uint64_t>(img::kBlockBytes, size_ - done_));
    ssize_t got = pread(fd_, buf_, (want + 4095) / 4096 * 4096, static_cast<off_t>(done_));
    if (got < static_cast<ssize_t>(want)) {
      return absl::DataLossError(absl::StrCat("volume: reading ", path_, " at ", done_, ": ",
                                              got < 0 ? std::strerror(errno) : "ended early"));
    }
    chunk->assign(buf_, want);
    done_ += want;
    return true;
  }

  void Ended() override { (void)Resume(); }
  bool paused() const { return was_paused_; }
  uint64_t paused_ms() const { return paused_ms_; }

 private:
  absl::Status Open() {
    void* v = nullptr;
    if (posix_memalign(&v, 4096, img::kBlockBytes) != 0) return absl::ResourceExhaustedError("no memory for a block");
    buf_ = static_cast<char*>(v);
    if (hv_ != nullptr && !domain_.empty()) {
      if (auto s = Step("pause"); !s.ok()) return s;  // before the pause: a crash during it is resumed too
      if (auto s = hv_->SuspendDomain(domain_); !s.ok()) {
        (void)Step("released");
        return absl::Status(s.code(), absl::StrCat("pausing domain '", domain_, "' for the copy: ", s.message()));
      }
      paused_at_ = std::chrono::steady_clock::now();
      was_paused_ = true;
      HVAGENT_FAILPOINT("image_from_volume.after_pause");
    }
    fd_ = open(path_.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd_ < 0) return absl::InternalError(absl::StrCat("volume: opening ", path_, ": ", std::strerror(errno)));
    return absl::OkStatus();
  }
  absl::Status Resume() {
    if (!paused_at_) return absl::OkStatus();
    auto s = hv_->ResumeDomain(domain_);
    paused_ms_ = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                           std::chrono::steady_clock::now() - *paused_at_)
                                           .count());
    paused_at_.reset();
    if (!s.ok()) {
      Log()->error("resuming domain '{}' after the copy of its volume failed: {}", domain_, s.message());
      return absl::Status(s.code(), absl::StrCat("resuming domain '", domain_, "': ", s.message()));
    }
    (void)Step("released");
    Log()->info("domain '{}' was paused {} ms for the copy of its volume", domain_, paused_ms_);
    return absl::OkStatus();
  }
  absl::Status Step(const char* name) {
    if (journal_ == nullptr) return absl::OkStatus();
    internal::JournalStep step;
    step.set_name(name);
    return journal_->Step(op_, step);
  }

  const std::string path_;
  const uint64_t size_;
  hv::Hypervisor* const hv_;
  const std::string domain_;
  Journal* journal_ = nullptr;
  uint64_t op_ = 0;
  int fd_ = -1;
  char* buf_ = nullptr;
  uint64_t done_ = 0;
  std::optional<std::chrono::steady_clock::time_point> paused_at_;
  uint64_t paused_ms_ = 0;
  bool was_paused_ = false;
};

}  // namespace

absl::Status CheckObjectName(const std::string& field, const std::string& name) {
  if (storage::gpt::IsVolumeName(name)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, ": '", name, "' must be 1-", storage::gpt::kMaxVolumeName,
                                                 " of [A-Za-z0-9._-], starting with a letter or digit"));
}

ImageService::ImageService(StorageService& storage, Journal& journal, storage::CommandRunner& runner, Options options)
    : storage_(storage), journal_(journal), runner_(runner), options_(std::move(options)) {}

ImageService::~ImageService() {
  {
    std::lock_guard lock(mu_);
    for (auto& [key, job] : running_) job->cancel = true;
    for (auto& [key, job] : copies_) job->cancel = true;
  }
  WaitForImports();
}

void ImageService::WaitForImports() {
  std::vector<std::pair<std::shared_ptr<Running>, std::thread>> threads;
  {
    std::unique_lock lock(mu_);
    idle_.wait(lock, [this] { return running_.empty() && copies_.empty(); });
    threads.swap(threads_);
  }
  for (auto& [job, t] : threads) t.join();
}

absl::StatusOr<ImportRequest> ImageService::CheckCommon(const ImportRequest& r) const {
  if (!storage::gpt::IsVolumeName(r.name)) {
    return absl::InvalidArgumentError(absl::StrCat("name: '", r.name, "' must be 1-", storage::gpt::kMaxVolumeName,
                                                   " of [A-Za-z0-9._-], starting with a letter or digit"));
  }
  if (r.format == ImageFormat::kUnspecified) {
    return absl::InvalidArgumentError("format: is required (IMAGE_FORMAT_RAW or IMAGE_FORMAT_QCOW2)");
  }
  ImportRequest req = r;
  if (!req.sha256.empty()) {
    auto h = img::NormalizeHex("sha256", req.sha256, 32);
    if (!h.ok()) return h.status();
    req.sha256 = *h;
  }
  if (!req.sha512.empty()) {
    auto h = img::NormalizeHex("sha512", req.sha512, 64);
    if (!h.ok()) return h.status();
    req.sha512 = *h;
  }
  return req;
}

absl::StatusOr<uint64_t> ImageService::Import(const ImportRequest& r) {
  auto checked = CheckCommon(r);
  if (!checked.ok()) return checked.status();
  ImportRequest req = std::move(*checked);
  req.upload = nullptr;  // a stream comes only through Upload()
  if (req.url.empty() == req.host_file.empty()) {
    return absl::InvalidArgumentError("source: give exactly one of url and host_file");
  }
  if (!req.url.empty()) {
    if (auto s = img::CheckUrl("url", req.url, options_.allowed_sources); !s.ok()) return s;
    if (req.sha256.empty() && req.sha512.empty()) {
      return absl::InvalidArgumentError("sha256: a URL source needs its sha256 or sha512");
    }
  } else {
    if (options_.import_dirs == nullptr) {
      return absl::PermissionDeniedError("host_file: no [images] import_dirs are configured");
    }
    if (auto s = options_.import_dirs->Check("host_file", req.host_file, HostPathKind::kImage); !s.ok()) return s;
  }
  if (req.format == ImageFormat::kQcow2 && options_.scratch_dir.empty()) {
    return absl::FailedPreconditionError("format: qcow2 needs [images] scratch_dir");
  }
  if (req.format == ImageFormat::kQcow2 && !req.host_file.empty()) {
    struct stat st {};
    if (stat(req.host_file.c_str(), &st) == 0) {
      auto room = CheckScratchRoom(static_cast<uint64_t>(st.st_size), absl::StrCat("the qcow2 file ", req.host_file));
      if (!room.ok()) return room;
    }
  }
  auto job = Begin(req);
  if (!job.ok()) return job.status();
  std::lock_guard lock(mu_);
  ReapEndedLocked();
  threads_.emplace_back(*job, std::thread([this, job = *job, req] { (void)Run(job, req); }));
  Log()->info("import of {}/{} started (operation {}, {} from {})", req.pool, req.name, (*job)->id,
              FormatName(req.format), req.url.empty() ? req.host_file : req.url);
  return (*job)->id;
}

void ImageService::ReapEndedLocked() {
  // Threads of ended imports and copies are past their last use of mu_: joining cannot block.
  std::erase_if(threads_, [](auto& entry) {
    if (!entry.first->finished) return false;
    entry.second.join();
    return true;
  });
}

absl::StatusOr<ImageStatus> ImageService::Upload(const UploadRequest& u, UploadBody& body) {
  ImportRequest r{.pool = u.pool, .name = u.name, .format = u.format, .sha256 = u.sha256, .sha512 = u.sha512};
  auto checked = CheckCommon(r);
  if (!checked.ok()) return checked.status();
  ImportRequest req = std::move(*checked);
  if (u.size_bytes == 0) return absl::InvalidArgumentError("size_bytes: the upload's length is required (over 0)");
  if (u.size_bytes > options_.max_virtual_size) {
    return absl::InvalidArgumentError(absl::StrCat("size_bytes: ", u.size_bytes,
                                                   " is over [images] max_virtual_size_mib (",
                                                   options_.max_virtual_size, " bytes)"));
  }
  if (req.format == ImageFormat::kQcow2 && options_.scratch_dir.empty()) {
    return absl::FailedPreconditionError("format: qcow2 needs [images] scratch_dir");
  }
  if (req.format == ImageFormat::kQcow2) {
    if (auto s = CheckScratchRoom(u.size_bytes, "the uploaded qcow2 file"); !s.ok()) return s;
  }
  req.upload = &body;
  req.upload_size = u.size_bytes;
  auto job = Begin(req);
  if (!job.ok()) return job.status();
  Log()->info("upload of {}/{} started (operation {}, {} bytes of {})", req.pool, req.name, (*job)->id,
              u.size_bytes, FormatName(req.format));
  if (auto s = Run(*job, req); !s.ok()) return s;
  return Get(req.pool, req.name);
}

absl::StatusOr<std::shared_ptr<ImageService::Running>> ImageService::Begin(const ImportRequest& req) {
  // Refused here rather than by the operation: an image of this name exists or is on its way.
  auto slots = storage_.WithBackend(req.pool, [](storage::StorageBackend& b) { return b.ListImageSlots(); });
  if (!slots.ok()) return slots.status();
  for (const auto& s : *slots) {
    if (s.name == req.name) {
      return absl::AlreadyExistsError(absl::StrCat("image '", req.name, "' already exists in pool '", req.pool, "'"));
    }
  }
  std::lock_guard lock(mu_);
  if (running_.contains(Key(req.pool, req.name))) {
    return absl::AlreadyExistsError(absl::StrCat("image '", req.name, "' is being imported into pool '", req.pool, "'"));
  }
  internal::JournalBegin begin;
  begin.set_type(req.from_volume.empty() ? v1::OPERATION_KIND_IMPORT_IMAGE : v1::OPERATION_KIND_IMAGE_FROM_VOLUME);
  begin.set_pool(req.pool);
  begin.set_image(req.name);
  begin.set_volume(req.from_volume);
  begin.set_snapshot(req.from_snapshot);
  begin.set_domain(req.pause_domain);  // whose pause, if the journal shows one, recovery ends
  auto id = journal_.Begin(begin);
  if (!id.ok()) return id.status();
  auto job = std::make_shared<Running>();
  job->id = *id;
  job->pool = req.pool;
  job->name = req.name;
  running_[Key(req.pool, req.name)] = job;
  return job;
}

absl::Status ImageService::StreamUpload(Running& job, const ImportRequest& r,
                                        const std::function<absl::Status(absl::string_view, int64_t)>& sink) {
  const uint64_t size = r.upload_size;
  job.total = size;
  std::string chunk;
  uint64_t got = 0;
  for (;;) {
    if (job.cancel) return absl::CancelledError("cancelled");
    auto more = r.upload->Next(&chunk);
    if (!more.ok()) return more.status();
    if (!*more) break;
    if (chunk.size() > size - got) {
      return absl::InvalidArgumentError(absl::StrCat("chunk: the upload holds more than the ", size,
                                                     " bytes its size_bytes announced"));
    }
    got += chunk.size();
    if (chunk.empty()) continue;
    if (auto s = sink(chunk, static_cast<int64_t>(size)); !s.ok()) return s;
  }
  if (got != size) {
    return absl::DataLossError(absl::StrCat("size_bytes: the upload ended after ", got, " of the ", size,
                                            " bytes announced (truncated; nothing was kept)"));
  }
  return absl::OkStatus();
}

absl::Status ImageService::StreamSource(Running& job, const ImportRequest& r,
                                        const std::function<absl::Status(absl::string_view, int64_t)>& sink) {
  if (r.upload != nullptr) return StreamUpload(job, r, sink);
  if (!r.url.empty()) return img::FetchUrl(r.url, sink, &job.cancel);
  // O_NOFOLLOW: the policy checked a path without links; a link put there since is refused.
  int fd = open(r.host_file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("host_file: ", r.host_file, ": ", std::strerror(errno)));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::PermissionDeniedError(absl::StrCat("host_file: ", r.host_file, " is not a regular file"));
  }
  std::unique_ptr<char[]> buf(new char[img::kBlockBytes]);
  absl::Status status;
  uint64_t left = static_cast<uint64_t>(st.st_size);
  while (status.ok() && left > 0) {
    if (job.cancel) {
      status = absl::CancelledError("cancelled");
      break;
    }
    ssize_t n = read(fd, buf.get(), img::kBlockBytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      status = absl::DataLossError(absl::StrCat("host_file: ", r.host_file, " ended early or failed: ",
                                                n < 0 ? std::strerror(errno) : "end of file"));
      break;
    }
    left -= std::min<uint64_t>(left, static_cast<uint64_t>(n));
    status = sink(absl::string_view(buf.get(), static_cast<size_t>(n)), st.st_size);
  }
  close(fd);
  return status;
}

absl::StatusOr<std::string> ImageService::RunSteps(Running& job, const ImportRequest& r,
                                                   std::optional<storage::ImageSlot>& slot, img::ImageRecord& record) {
  SourceDigests digests;
  if (auto s = digests.Init(r); !s.ok()) return s;
  auto new_slot = [&](uint64_t data_bytes) -> absl::Status {
    if (data_bytes > options_.max_virtual_size) {
      return absl::InvalidArgumentError(absl::StrCat("the image's virtual size, ", data_bytes,
                                                     " bytes, is over [images] max_virtual_size_mib (",
                                                     options_.max_virtual_size, " bytes)"));
    }
    internal::JournalStep step;
    step.set_name("create-slot");
    step.mutable_volume()->set_pool(r.pool);
    step.mutable_volume()->set_name(r.name);
    if (auto s = journal_.Step(job.id, step); !s.ok()) return s;
    auto made = storage_.WithBackend(r.pool, [&](storage::StorageBackend& b) {
      return b.CreateImageSlot(r.name, data_bytes + img::kRecordBytes);
    });
    if (!made.ok()) return made.status();
    slot = *made;
    return absl::OkStatus();
  };

  if (r.format == ImageFormat::kRaw) {
    // Raw bytes go straight onto the slot, sized by the announced length.
    std::unique_ptr<img::DeviceWriter> writer;
    // The record's sha256 is the source's: hashed once more only when the caller gave none.
    std::unique_ptr<img::Digest> sha256;
    if (r.sha256.empty()) sha256 = *img::Digest::Create("sha256");
    int64_t length = -1;
    auto sink = [&](absl::string_view chunk, int64_t content_length) -> absl::Status {
      if (!writer) {
        if (content_length <= 0) {
          return absl::FailedPreconditionError("url: the server announced no Content-Length; a raw image needs one");
        }
        length = content_length;
        job.total = static_cast<uint64_t>(length);
        if (auto s = new_slot(static_cast<uint64_t>(length)); !s.ok()) return s;
        auto w = img::DeviceWriter::Open(slot->path, static_cast<uint64_t>(length));
        if (!w.ok()) return w.status();
        writer = std::move(*w);
      }
      digests.Update(chunk);
      if (sha256) sha256->Update(chunk);
      if (auto s = writer->Write(chunk); !s.ok()) return s;
      SetDone(job, writer->written());
      return absl::OkStatus();
    };
    if (auto s = StreamSource(job, r, sink); !s.ok()) return s;
    if (!writer) return absl::InvalidArgumentError("source: the image is empty");
    if (writer->written() != static_cast<uint64_t>(length)) {
      return absl::DataLossError(absl::StrCat("source: ", writer->written(), " bytes arrived of the ", length,
                                              " announced (truncated)"));
    }
    if (auto s = writer->Finish(); !s.ok()) return s;
    if (auto s = digests.Verify(); !s.ok()) return s;
    record.virtual_size = static_cast<uint64_t>(length);
    return sha256 ? sha256->HexFinal() : r.sha256;
  }

  // qcow2: land it in the scratch directory (qemu-img seeks), check it, convert onto the slot.
  std::error_code ec;
  std::filesystem::create_directories(options_.scratch_dir, ec);
  std::filesystem::permissions(options_.scratch_dir, std::filesystem::perms::owner_all, ec);
  ScratchFile scratch;
  scratch.path = absl::StrCat(options_.scratch_dir, "/import-", job.id, ".qcow2");
  scratch.fd = open(scratch.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (scratch.fd < 0) {
    std::string why = std::strerror(errno);
    scratch.path.clear();  // not ours to remove
    return absl::FailedPreconditionError(absl::StrCat("scratch_dir: cannot create a file in ", options_.scratch_dir,
                                                      ": ", why));
  }
  uint64_t landed = 0;
  auto sink = [&](absl::string_view chunk, int64_t content_length) -> absl::Status {
    if (content_length > 0 && landed == 0 && !r.url.empty()) {  // a URL's size is known only now
      auto room = CheckScratchRoom(static_cast<uint64_t>(content_length), absl::StrCat("the qcow2 file at ", r.url));
      if (!room.ok()) return room;
    }
    if (content_length > 0) job.total = static_cast<uint64_t>(content_length);
    if (chunk.size() > options_.max_virtual_size - landed) {
      return absl::InvalidArgumentError(absl::StrCat("source: larger than [images] max_virtual_size_mib (",
                                                     options_.max_virtual_size, " bytes) allows a qcow2 file"));
    }
    digests.Update(chunk);
    landed += chunk.size();
    SetDone(job, landed);
    return WriteFd(scratch.fd, chunk);
  };
  if (auto s = StreamSource(job, r, sink); !s.ok()) return s;
  if (fsync(scratch.fd) != 0) return absl::InternalError(absl::StrCat("fsync of ", scratch.path, " failed"));
  if (auto s = digests.Verify(); !s.ok()) return s;
  img::QemuImg qemu(runner_, options_.qemu_img);
  auto info = qemu.Info(scratch.path);
  if (!info.ok()) return info.status();
  if (info->format != "qcow2") {
    return absl::InvalidArgumentError(absl::StrCat("format: the file is ", info->format, ", not qcow2"));
  }
  if (!info->backing_file.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("source: the qcow2 names a backing file ('", info->backing_file,
                                                   "'); only self-contained images are imported"));
  }
  if (!info->data_file.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("source: the qcow2 names an external data file ('",
                                                   info->data_file, "'); only self-contained images are imported"));
  }
  if (info->virtual_size == 0) return absl::InvalidArgumentError("source: the qcow2's virtual size is 0");
  if (auto s = new_slot(info->virtual_size); !s.ok()) return s;
  if (job.cancel) return absl::CancelledError("cancelled");
  // A cancel (DeleteImage) or a caller gone kills qemu-img; Run then removes the slot, and
  // `scratch` its file.
  auto cancelled = [&job, &r] { return job.cancel.load() || (r.upload != nullptr && r.upload->CallerGone()); };
  if (auto s = qemu.ConvertToRaw(scratch.path, slot->path, cancelled); !s.ok()) return s;
  record.virtual_size = info->virtual_size;
  job.total = info->virtual_size;
  SetDone(job, info->virtual_size);
  return img::HashFile(slot->path, info->virtual_size, &job.cancel);
}

absl::Status ImageService::Run(std::shared_ptr<Running> job, ImportRequest r) {
  std::optional<storage::ImageSlot> slot;
  img::ImageRecord record{.source_format = FormatName(r.format),
                          .source = !r.from_snapshot.empty()
                                        ? absl::StrCat("snapshot:", r.pool, "/", r.from_volume, "@", r.from_snapshot)
                                    : !r.from_volume.empty() ? absl::StrCat("volume:", r.pool, "/", r.from_volume)
                                    : r.upload != nullptr ? "upload"
                                    : r.url.empty()       ? r.host_file
                                                          : r.url,
                          .created_unix_ms = NowUnixMs()};
  auto sha = RunSteps(*job, r, slot, record);
  if (r.upload != nullptr) r.upload->Ended();
  absl::Status status = sha.status();
  if (status.ok() && job->cancel) status = absl::CancelledError("cancelled");
  if (status.ok()) {
    record.sha256 = *sha;
    status = img::WriteRecord(slot->path, slot->size_bytes - img::kRecordBytes, record);
  }
  if (status.ok()) {
    internal::JournalStep step;
    step.set_name("seal");
    (void)journal_.Step(job->id, step);
    status = storage_.WithBackend(r.pool, [&](storage::StorageBackend& b) { return b.SealImageSlot(r.name); });
  }
  v1::OperationState state = v1::OPERATION_STATE_SUCCEEDED;
  std::string message;
  if (!status.ok()) {
    state = absl::IsCancelled(status) ? v1::OPERATION_STATE_CANCELLED : v1::OPERATION_STATE_FAILED;
    message = std::string(status.message());
    if (slot) {
      if (auto s = DeleteSlot(r.pool, r.name); !s.ok()) {
        // The slot stays unsealed: Recover() removes it at the next start.
        message = absl::StrCat(message, "; removing the partial image failed: ", s.message());
      }
    }
    Log()->warn("import of {}/{} (operation {}) {}: {}", r.pool, r.name, job->id,
                state == v1::OPERATION_STATE_CANCELLED ? "cancelled" : "failed", message);
  } else {
    Log()->info("imported {}/{} ({} bytes, sha256 {})", r.pool, r.name, record.virtual_size, record.sha256);
  }
  (void)journal_.End(job->id, state, message);
  std::lock_guard lock(mu_);
  transfers_[job->id] = Transfer{job->done, job->total};
  while (transfers_.size() > Journal::kHistory) transfers_.erase(transfers_.begin());  // as ListOperations
  running_.erase(Key(r.pool, r.name));
  job->finished = true;
  idle_.notify_all();
  return status;
}

ImageStatus ImageService::StatusOf(const storage::ImageSlot& slot) {
  ImageStatus st{.pool = slot.pool, .name = slot.name, .ready = slot.ready, .path = slot.path};
  if (slot.ready) {
    auto rec = img::ReadRecord(slot.path, slot.size_bytes - img::kRecordBytes);
    if (rec.ok()) {
      st.record = *rec;
    } else {
      Log()->warn("image {}/{}: record unreadable: {}", slot.pool, slot.name, rec.status().message());
    }
  }
  std::lock_guard lock(mu_);
  if (auto it = running_.find(Key(slot.pool, slot.name)); it != running_.end()) st.operation_id = it->second->id;
  return st;
}

absl::Status ImageService::DeleteSlot(const std::string& pool, const std::string& name) {
  return storage_.DeleteImageSlot(pool, name);
}

absl::StatusOr<std::vector<ImageStatus>> ImageService::List(const std::string& pool) {
  auto slots = storage_.WithBackend(pool, [](storage::StorageBackend& b) { return b.ListImageSlots(); });
  if (!slots.ok()) return slots.status();
  std::vector<ImageStatus> out;
  for (const auto& s : *slots) out.push_back(StatusOf(s));
  return out;
}

absl::StatusOr<ImageStatus> ImageService::Get(const std::string& pool, const std::string& name) {
  auto all = List(pool);
  if (!all.ok()) return all.status();
  for (auto& s : *all) {
    if (s.name == name) return s;
  }
  return absl::NotFoundError(absl::StrCat("image '", name, "' not found in pool '", pool, "'"));
}

absl::StatusOr<ImageStatus> ImageService::Delete(const std::string& pool, const std::string& name) {
  auto image = Get(pool, name);
  if (!image.ok()) return image.status();
  {
    std::lock_guard lock(mu_);
    if (auto it = running_.find(Key(pool, name)); it != running_.end()) {
      it->second->cancel = true;  // the import's thread removes the slot
      Log()->info("import of {}/{} (operation {}) cancelled", pool, name, it->second->id);
      return *image;
    }
    if (copying_[Key(pool, name)] > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("image '", name, "' is being read (a copy onto a volume or an export runs); delete it afterwards"));
    }
    copying_.erase(Key(pool, name));
    // From here no copy starts from it (CreateVolumeFromImage checks this under the same lock).
    if (!deleting_.insert(Key(pool, name)).second) {
      return absl::FailedPreconditionError(absl::StrCat("image '", name, "' is being deleted"));
    }
  }
  absl::Status deleted = DeleteSlot(pool, name);
  {
    std::lock_guard lock(mu_);
    deleting_.erase(Key(pool, name));
  }
  if (!deleted.ok()) return deleted;
  Log()->info("deleted image {}/{}", pool, name);
  return *image;
}

absl::StatusOr<std::pair<ImageStatus, uint64_t>> ImageService::SourceImage(const std::string& pool,
                                                                            const std::string& image,
                                                                            uint64_t size_bytes,
                                                                            absl::string_view size_field) {
  auto src = Get(pool, image);
  if (!src.ok()) {
    if (absl::IsNotFound(src.status())) {
      return absl::NotFoundError(absl::StrCat("image: '", image, "' is no image of pool '", pool, "'"));
    }
    return src.status();
  }
  if (!src->ready || !src->record) {
    return absl::FailedPreconditionError(absl::StrCat("image: '", image, "' is not ready (its import is under way)"));
  }
  const uint64_t virtual_size = src->record->virtual_size;
  if (size_bytes == 0) size_bytes = virtual_size;
  if (size_bytes < virtual_size) {
    return absl::InvalidArgumentError(absl::StrCat(size_field, ": ", size_bytes, " is smaller than image '", image,
                                                   "' (", virtual_size, " bytes)"));
  }
  return std::make_pair(*std::move(src), size_bytes);
}

absl::StatusOr<VolumeStatus> ImageService::CreateVolumeFromImage(const std::string& pool, const std::string& name,
                                                                 uint64_t size_bytes, const std::string& image,
                                                                 const std::string& owner) {
  return MakeVolume(pool, name, size_bytes, image, owner, nullptr);
}

absl::StatusOr<VolumeStatus> ImageService::MakeVolume(const std::string& pool, const std::string& name,
                                                      uint64_t size_bytes, const std::string& image,
                                                      const std::string& owner, Running* job) {
  {
    std::lock_guard lock(mu_);
    if (deleting_.contains(Key(pool, image))) {
      return absl::FailedPreconditionError(absl::StrCat("image: '", image, "' is being deleted"));
    }
    ++copying_[Key(pool, image)];  // before the image is read: a delete now waits for the copy
  }
  struct Release {
    ImageService* self;
    std::string key;
    ~Release() {
      std::lock_guard lock(self->mu_);
      --self->copying_[key];
    }
  } release{this, Key(pool, image)};
  auto source = SourceImage(pool, image, size_bytes, owner.empty() ? "size_bytes" : "create_size_bytes");
  if (!source.ok()) return source.status();
  // Named, not a structured binding: clang 14 (the fuzz build) cannot capture those in a lambda.
  const ImageStatus& src = source->first;
  const uint64_t size = source->second;
  const uint64_t virtual_size = src.record->virtual_size;
  if (job != nullptr) job->total = virtual_size;
  // Journalled before the volume exists, so that recovery deletes one a crash leaves half written.
  auto journal_step = [&] {
    if (job == nullptr) return;
    internal::JournalStep step;
    step.set_name("create-volume");
    step.mutable_volume()->set_pool(pool);
    step.mutable_volume()->set_name(name);
    (void)journal_.Step(job->id, step);
  };
  journal_step();
  // A pool that shares blocks makes the volume a copy-on-write clone; the others copy.
  auto cloned = storage_.CreateVolumeCloned(pool, {name, size}, image, owner);
  if (!absl::IsUnimplemented(cloned.status())) {
    if (cloned.ok()) Log()->info("volume {}/{} created as a clone of image {}", pool, name, image);
    if (cloned.ok() && job != nullptr) SetDone(*job, virtual_size);
    return cloned;
  }
  img::ProgressFn progress = [&, job](uint64_t done) {
    if (job != nullptr) {
      SetDone(*job, done);
      HVAGENT_FAILPOINT("volume_from_image.mid_copy");  // tests: a crash, or a pause to cancel in
    }
    if (job == nullptr && !owner.empty() && options_.events != nullptr) {
      options_.events->DiskCopyProgress(owner, pool, image, name, done, virtual_size);
    }
    if (options_.on_copy_progress) {
      options_.on_copy_progress({.operation_id = job ? job->id : 0, .pool = pool, .image = image, .volume = name,
                                 .owner = owner, .done = done, .total = virtual_size});
    }
  };
  auto volume = storage_.CreateVolumeFilled(
      pool, {name, size}, absl::StrCat("image '", image, "'"),
      [&](const storage::VolumeInfo& v) -> absl::Status {
        auto copied = img::CopyDevice(src.path, v.path, virtual_size, progress, job ? &job->cancel : nullptr, false);
        if (copied.ok()) return absl::OkStatus();
        if (absl::IsCancelled(copied.status())) return absl::CancelledError("cancelled (the volume is deleted again)");
        return absl::Status(copied.status().code(),
                            absl::StrCat("copying image '", image, "' onto volume '", name,
                                         "': ", copied.status().message(), " (the volume is deleted again)"));
      },
      owner, job ? &job->cancel : nullptr);
  if (!volume.ok()) return volume.status();
  Log()->info("volume {}/{} created from image {} ({} bytes copied)", pool, name, image, virtual_size);
  return volume;
}

absl::StatusOr<uint64_t> ImageService::StartVolumeFromImage(const VolumeFromImageRequest& r) {
  if (auto s = CheckObjectName("volume", r.volume); !s.ok()) return s;
  if (r.image.empty()) return absl::InvalidArgumentError("image: is required");
  auto source = SourceImage(r.pool, r.image, r.size_bytes, "size_bytes");
  if (!source.ok()) return source.status();
  if (auto s = storage_.CheckRoomFor(r.pool, r.volume, source->second, "volume", "size_bytes"); !s.ok()) return s;
  std::lock_guard lock(mu_);
  if (copies_.contains(Key(r.pool, r.volume))) {
    return absl::AlreadyExistsError(absl::StrCat("volume: '", r.volume, "' is being made in pool '", r.pool, "'"));
  }
  internal::JournalBegin begin;
  begin.set_type(v1::OPERATION_KIND_VOLUME_FROM_IMAGE);
  begin.set_pool(r.pool);
  begin.set_image(r.image);
  auto* target = begin.add_volumes();
  target->set_pool(r.pool);
  target->set_name(r.volume);
  auto id = journal_.Begin(begin);
  if (!id.ok()) return id.status();
  auto job = std::make_shared<Running>();
  job->id = *id;
  job->pool = r.pool;
  job->name = r.volume;
  job->total = source->first.record->virtual_size;
  copies_[Key(r.pool, r.volume)] = job;
  ReapEndedLocked();
  threads_.emplace_back(job, std::thread([this, job, r] { RunVolumeFromImage(job, r); }));
  Log()->info("volume {}/{} from image {} started (operation {})", r.pool, r.volume, r.image, job->id);
  return job->id;
}

void ImageService::RunVolumeFromImage(std::shared_ptr<Running> job, VolumeFromImageRequest r) {
  auto made = MakeVolume(r.pool, r.volume, r.size_bytes, r.image, "", job.get());
  absl::Status status = made.status();
  v1::OperationState state = v1::OPERATION_STATE_SUCCEEDED;
  if (!status.ok()) {
    state = absl::IsCancelled(status) ? v1::OPERATION_STATE_CANCELLED : v1::OPERATION_STATE_FAILED;
    Log()->warn("volume {}/{} from image {} (operation {}): {}", r.pool, r.volume, r.image, job->id, status.message());
  }
  (void)journal_.End(job->id, state, std::string(status.message()));
  std::lock_guard lock(mu_);
  transfers_[job->id] = Transfer{job->done, job->total};
  while (transfers_.size() > Journal::kHistory) transfers_.erase(transfers_.begin());
  copies_.erase(Key(r.pool, r.volume));
  job->finished = true;
  idle_.notify_all();
}

void ImageService::SetDone(Running& job, uint64_t done) {
  job.done = done;
  if (options_.events != nullptr) options_.events->Progress(job.id, done, job.total);
}

std::optional<Transfer> ImageService::TransferOf(uint64_t id) const {
  std::lock_guard lock(mu_);
  for (const auto* jobs : {&running_, &copies_}) {
    for (const auto& [key, job] : *jobs) {
      if (job->id == id) return Transfer{job->done, job->total};
    }
  }
  if (auto it = transfers_.find(id); it != transfers_.end()) return it->second;
  return std::nullopt;
}

std::string ImageService::RecoverVolumeFromImage(const Journal::Operation& op) {
  std::string outcome = "nothing had been written";
  v1::OperationState state = v1::OPERATION_STATE_ROLLED_BACK;
  std::string pool, volume;
  for (const auto& step : op.steps) {
    if (step.name() != "create-volume") continue;
    pool = step.volume().pool();
    volume = step.volume().name();
  }
  if (!volume.empty()) {
    if (auto v = storage_.GetVolume(pool, volume); !v.ok()) {
      outcome = "the volume had not been made";
    } else if (auto d = storage_.DeleteVolume(pool, volume); d.ok()) {
      outcome = "the partial volume is wiped and deleted";
    } else {
      outcome = absl::StrCat("deleting the partial volume failed: ", d.status().message());
      state = v1::OPERATION_STATE_FAILED;
    }
  }
  (void)journal_.End(op.id, state, absl::StrCat("recovery: ", outcome));
  return absl::StrCat("volume from image ", op.begin.pool(), "/", op.begin.image(), " (operation ", op.id,
                      "): ", outcome);
}

std::vector<std::string> ImageService::Recover() {
  std::vector<std::string> done = RemoveExportLeftovers();
  for (const Journal::Operation& op : journal_.Unfinished()) {
    if (op.begin.type() == v1::OPERATION_KIND_VOLUME_FROM_IMAGE) {
      done.push_back(RecoverVolumeFromImage(op));
      continue;
    }
    if (op.begin.type() != v1::OPERATION_KIND_IMPORT_IMAGE &&
        op.begin.type() != v1::OPERATION_KIND_IMAGE_FROM_VOLUME) {
      continue;
    }
    const std::string& pool = op.begin.pool();
    const std::string& name = op.begin.image();
    std::string outcome = "nothing had been written";
    v1::OperationState state = v1::OPERATION_STATE_ROLLED_BACK;
    // A guest paused for the copy runs again first: it matters more than the image.
    std::string guest;
    if (!op.begin.domain().empty() && options_.hypervisor != nullptr) {
      guest = absl::StrCat("; ", GuestQuiescer::Recover(*options_.hypervisor, op));
    }
    {
      auto slots = storage_.WithBackend(pool, [](storage::StorageBackend& b) { return b.ListImageSlots(); });
      for (const auto& s : slots.ok() ? *slots : std::vector<storage::ImageSlot>{}) {
        if (s.name != name) continue;
        if (s.ready) {
          state = v1::OPERATION_STATE_RECOVERED;
          outcome = "the image had been sealed";
        } else if (auto d = DeleteSlot(pool, name); d.ok()) {
          outcome = "the partial image was wiped and removed";
        } else {
          outcome = absl::StrCat("removing the partial image failed: ", d.message());
          state = v1::OPERATION_STATE_FAILED;
        }
      }
    }
    (void)journal_.End(op.id, state, absl::StrCat("recovery: ", outcome, guest));
    done.push_back(absl::StrCat("import of ", pool, "/", name, " (operation ", op.id, "): ", outcome, guest));
  }
  // Unsealed slots no journal names (a crash with no state_dir): no import runs yet, so none
  // of them can be finished.
  for (const std::string& pool : storage_.PoolNames()) {
    auto slots = storage_.WithBackend(pool, [](storage::StorageBackend& b) { return b.ListImageSlots(); });
    if (!slots.ok()) continue;
    for (const auto& s : *slots) {
      if (s.ready) continue;
      auto d = DeleteSlot(pool, s.name);
      done.push_back(absl::StrCat("unfinished image ", pool, "/", s.name, ": ",
                                  d.ok() ? "wiped and removed" : std::string(d.message())));
    }
  }
  return done;
}

}  // namespace hvagent::service

namespace hvagent::service {

bool ImageService::DomainRuns(const std::string& domain) const {
  if (options_.hypervisor == nullptr) return true;
  auto info = options_.hypervisor->GetDomain(domain);
  if (!info.ok()) return !absl::IsNotFound(info.status());
  return hv::IsActive(info->state) && info->state != hv::DomainState::kPaused;
}

absl::StatusOr<FromVolumeResult> ImageService::CreateFromVolume(const std::string& pool, const std::string& volume,
                                                                const std::string& name, const std::string& snapshot) {
  if (auto s = CheckObjectName("volume", volume); !s.ok()) return s;
  auto vol = storage_.GetVolume(pool, volume);
  if (!vol.ok()) {
    if (absl::IsNotFound(vol.status())) return absl::NotFoundError(absl::StrCat("volume: ", vol.status().message()));
    return vol.status();
  }
  if (auto s = storage_.RefuseBusy(pool, volume); !s.ok()) return s;
  std::pair<std::string, uint64_t> source{vol->volume.path, vol->volume.size_bytes};
  if (!snapshot.empty()) {
    auto snap = SnapshotSource({.pool = pool, .name = volume, .snapshot = snapshot});
    if (!snap.ok()) return snap.status();
    source = *snap;
  }
  const std::string& domain = vol->volume.attached_to;
  const bool pause = snapshot.empty() && !domain.empty() && options_.hypervisor != nullptr && DomainRuns(domain);
  VolumeBody body(source.first, source.second, pause ? options_.hypervisor : nullptr, pause ? domain : "");
  ImportRequest r{.pool = pool,
                  .name = name,
                  .format = ImageFormat::kRaw,
                  .from_volume = volume,
                  .from_snapshot = snapshot,
                  .pause_domain = pause ? domain : ""};
  auto checked = CheckCommon(r);
  if (!checked.ok()) return checked.status();
  checked->upload = &body;
  checked->upload_size = source.second;
  auto job = Begin(*checked);
  if (!job.ok()) return job.status();
  const uint64_t id = (*job)->id;
  body.Journalled(&journal_, id);
  Log()->info("image {}/{} from volume {}{} started (operation {}, {} bytes{})", pool, name, volume,
              snapshot.empty() ? "" : absl::StrCat(" snapshot ", snapshot), id, source.second,
              pause ? absl::StrCat(", domain '", domain, "' paused meanwhile") : "");
  if (auto s = Run(*job, *checked); !s.ok()) return s;
  auto image = Get(pool, name);
  if (!image.ok()) return image.status();
  return FromVolumeResult{.image = *image, .paused = body.paused(), .paused_ms = body.paused_ms(), .operation_id = id};
}

}  // namespace hvagent::service
