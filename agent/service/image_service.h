#pragma once
// ImageService: golden images in the storage pools, and volumes made from them.
//
// An import is an operation (Journal, kind IMPORT_IMAGE) that returns its id at once and runs
// on a thread of its own: the bytes stream from the source (an allowed URL, or a file under
// [images] import_dirs) into a new image slot of the pool, its checksum computed as they flow;
// a qcow2 first lands in [images] scratch_dir (qemu-img needs to seek), is checked by
// `qemu-img info` (no backing file, no external data file, a capped virtual size) and is
// converted onto the slot. Only once the checksum matched is the image's record written and
// the slot sealed (ready, read-only from then on). Any failure or a cancel (DeleteImage while
// importing) wipes and removes the slot and the scratch file: nothing is left. A crash leaves an
// unfinished journal entry and an unsealed slot, which Recover() removes at the next start.
//
// Upload is the same import with the caller's stream as its source, run on the caller's thread
// (the gRPC or REST handler that reads the stream): it answers once the image is ready or the
// import has failed and cleaned up.
//
// Export streams a volume or a ready image out (storage::image::ExportDevice: O_DIRECT, zero
// runs apart, sha256 of the whole); it changes nothing on the host. CreateFromVolume is an
// upload whose body is a volume of the same pool read with O_DIRECT: the same operation,
// checks and cleanup; a running domain the volume is attached to is paused while it is read.
//
// CreateVolumeFromImage makes a volume from a ready image: a copy-on-write clone where the pool
// can share blocks (thin LVM pools), otherwise a copy (O_DIRECT, 4 MiB blocks, every block
// written); an image is not deleted while a copy from it runs.

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/service/journal.h"
#include "agent/service/operation_events.h"
#include "agent/service/storage_service.h"
#include "hypervisor/hypervisor.h"
#include "common/host_path_policy.h"
#include "storage/exec/command_runner.h"
#include "storage/image/image_io.h"

namespace hvagent::service {

enum class ImageFormat { kUnspecified, kRaw, kQcow2 };

// The bytes of an upload, as the caller sends them (gRPC chunks, a REST body).
class UploadBody {
 public:
  virtual ~UploadBody() = default;
  // Puts the next chunk in *chunk; false at the end of the stream. An error when the caller went
  // away (Cancelled) or sent something that is no chunk (InvalidArgument naming the field).
  virtual absl::StatusOr<bool> Next(std::string* chunk) = 0;
  // Whether the caller has gone away (asked once the body has been read, while qemu-img
  // converts it). False when the transport cannot tell.
  virtual bool CallerGone() const { return false; }
  // The import reads no more (it succeeded or failed); called before its operation ends, so
  // that what the body holds (a paused guest) is let go within the operation.
  virtual void Ended() {}
};

struct ImportRequest {
  std::string pool;
  std::string name;
  ImageFormat format = ImageFormat::kUnspecified;
  std::string url;        // one of url and host_file
  std::string host_file;
  std::string sha256;     // of the source's bytes; one of them required for a URL
  std::string sha512;
  std::string from_volume;  // CreateFromVolume: the volume read (recorded as the source)
  std::string from_snapshot;  // ... and the snapshot of it read instead, when set
  std::string pause_domain;   // ... and the running domain paused while it is read (journalled)
  // Upload only (Upload() sets them): the caller's stream and the exact length it announced.
  UploadBody* upload = nullptr;
  uint64_t upload_size = 0;
};

struct UploadRequest {
  std::string pool;
  std::string name;
  ImageFormat format = ImageFormat::kUnspecified;
  uint64_t size_bytes = 0;  // exactly what the body holds; at most max_virtual_size
  std::string sha256;       // optional, of the body's bytes
  std::string sha512;
};

struct ImageStatus {
  std::string pool;
  std::string name;
  bool ready = false;
  std::string path;
  std::optional<storage::image::ImageRecord> record;  // when ready
  uint64_t operation_id = 0;                          // the import, while importing
};

struct ExportRequest {
  std::string pool;
  std::string name;
  bool image = false;            // name is an image, not a volume
  bool domain_quiesced = false;  // the caller paused or froze the volume's running domain
  std::string snapshot;          // set: that snapshot of volume `name` instead of the volume
  ImageFormat format = ImageFormat::kRaw;  // kQcow2: converted through [images] scratch_dir
  // The sha256 is computed (one more read of the source) before the first byte, for a
  // transport that must announce it up front (REST's Repr-Digest header, which cpprestsdk
  // cannot send as a trailer); the stream is then failed (DataLoss) if its bytes differ.
  bool digest_first = false;
};

// What an export tells its transport before the first byte.
struct ExportStart {
  uint64_t size_bytes = 0;  // what the data and zero runs add up to
  std::string sha256;       // digest_first only: of those bytes
};

// InvalidArgument naming `field` unless `name` is a volume name (no path characters).
absl::Status CheckObjectName(const std::string& field, const std::string& name);

struct FromVolumeResult {
  ImageStatus image;
  bool paused = false;
  uint64_t paused_ms = 0;
  uint64_t operation_id = 0;
};

// ImageService::StartVolumeFromImage: a new volume `volume` of `pool` from its ready `image`.
struct VolumeFromImageRequest {
  std::string pool;
  std::string image;
  std::string volume;
  uint64_t size_bytes = 0;  // 0: the image's size
};

// One step of a copy of an image onto a volume (ImageService::Options::on_copy_progress).
struct CopyProgress {
  uint64_t operation_id = 0;  // StartVolumeFromImage's operation; 0: a synchronous copy
  std::string pool;
  std::string image;
  std::string volume;
  std::string owner;  // the domain the volume is made for (a disk of CreateDomain); else empty
  uint64_t done = 0;
  uint64_t total = 0;
};

// How far an import is (for OperationService).
struct Transfer {
  uint64_t done = 0;
  uint64_t total = 0;
};

class ImageService {
 public:
  struct Options {
    std::vector<std::string> allowed_sources;        // URL prefixes
    const HostPathPolicy* import_dirs = nullptr;     // null: no host file may be imported
    std::string scratch_dir;                         // qcow2 landing place; made 0700
    uint64_t max_virtual_size = 64ull << 30;         // bytes; also bounds a scratch file
    std::string qemu_img = "/usr/bin/qemu-img";
    // To pause a running domain while its volume is copied (CreateFromVolume) and to refuse an
    // export of a running domain's volume. Null: every attached volume counts as running.
    hv::Hypervisor* hypervisor = nullptr;
    // Told how far each copy of an image onto a volume is (CreateVolumeFromImage, and so a
    // domain's disk, and StartVolumeFromImage, whose operation id it gets; 0 for the others),
    // after every block, on the copying thread. It must not block for long. Null: nobody.
    std::function<void(const CopyProgress&)> on_copy_progress;
    // The bytes free for an unprivileged writer on the filesystem of a directory (statvfs of it,
    // or of its nearest existing parent). Null: statvfs. Tests inject their own.
    std::function<absl::StatusOr<uint64_t>(const std::string& dir)> free_space;
    // Told bytes done of every import and copy, for the event stream. Null: nobody.
    OperationEvents* events = nullptr;
  };

  // What a qcow2 file of a `size`-byte disk can take at most: every cluster allocated, plus its
  // L2 and refcount metadata (under 1/4096 of the size with 64 KiB clusters), header and tables.
  static uint64_t Qcow2Bound(uint64_t size) { return size + size / 4096 + (4ull << 20); }

  ImageService(StorageService& storage, Journal& journal, storage::CommandRunner& runner, Options options);
  ~ImageService();  // cancels imports under way and waits for them (each cleans up after itself)

  // Validates everything it can before anything starts (InvalidArgument / PermissionDenied
  // naming the field, NotFound for the pool, AlreadyExists), then returns the operation's id.
  absl::StatusOr<uint64_t> Import(const ImportRequest& request);
  // Imports the caller's `body` on this thread: the same checks as Import (and size_bytes: 1 to
  // max_virtual_size), the same operation and journal entry, the same cleanup. Returns the ready
  // image, or the import's error with nothing left: DataLoss for a body shorter than size_bytes,
  // InvalidArgument for a longer one, FailedPrecondition for a checksum mismatch, Cancelled when
  // the caller went away or the upload was deleted.
  absl::StatusOr<ImageStatus> Upload(const UploadRequest& request, UploadBody& body);
  absl::StatusOr<ImageStatus> Get(const std::string& pool, const std::string& name);
  absl::StatusOr<std::vector<ImageStatus>> List(const std::string& pool);
  // A ready image is wiped and removed (FailedPrecondition while a copy from it runs); an
  // import under way is cancelled (answered as it was; it cleans up on its own thread).
  absl::StatusOr<ImageStatus> Delete(const std::string& pool, const std::string& name);
  // A new volume holding the image's bytes: size_bytes 0 takes the image's size; smaller than
  // the image is InvalidArgument. Fails with nothing left (the volume is deleted again).
  // `owner` not empty (DomainService, DiskVolume.image): the volume is owned by that domain from
  // its creation on (StorageService::CreateVolumeFilled), and a size refusal names create_size_bytes.
  absl::StatusOr<VolumeStatus> CreateVolumeFromImage(const std::string& pool, const std::string& name,
                                                     uint64_t size_bytes, const std::string& image,
                                                     const std::string& owner = "");

  // The same volume as an operation (OPERATION_KIND_VOLUME_FROM_IMAGE) on a thread of its own:
  // everything CreateVolumeFromImage would refuse (and a volume name in use, a pool too full) is
  // refused here, naming the request's field, before the operation's id is returned. Progress
  // through TransferOf; DeleteVolume of the volume cancels it; a failed or cancelled copy deletes
  // the volume; Recover() deletes one a crash cut short.
  absl::StatusOr<uint64_t> StartVolumeFromImage(const VolumeFromImageRequest& request);

  // Streams the volume, snapshot or ready image `r` names into `sink` (image_export.cpp);
  // `on_start` is told its size (and digest) before the first byte. NotFound for an unknown
  // pool, volume, snapshot or image; InvalidArgument naming `name` / `snapshot` for a name with
  // path characters; FailedPrecondition for an image still importing, a volume being deleted or
  // written, a volume of a running domain without domain_quiesced, an invalid (overflowed)
  // snapshot, qcow2 without a scratch_dir. An image is not deleted while an export of it runs.
  // qcow2: `qemu-img convert` into a scratch file first, which is removed whatever happens.
  absl::StatusOr<storage::image::ExportResult> Export(const ExportRequest& r, storage::image::ExportSink& sink,
                                                      const std::function<absl::Status(const ExportStart&)>& on_start,
                                                      const storage::image::CancelFlag* cancel);
  // A ready image `name` holding the bytes of volume `volume` of the same pool (see above), or,
  // with `snapshot`, of that snapshot of it (no guest paused: a snapshot never changes).
  absl::StatusOr<FromVolumeResult> CreateFromVolume(const std::string& pool, const std::string& volume,
                                                    const std::string& name, const std::string& snapshot = "");

  // Bytes done of total for operation `id`, while this agent runs it or ran it.
  std::optional<Transfer> TransferOf(uint64_t id) const;
  // At start, before serving: imports a crash cut short are rolled back (their slots removed).
  // Returns one line per thing done, for the log.
  std::vector<std::string> Recover();
  // Blocks until every import has ended (tests).
  void WaitForImports();

 private:
  struct Running {
    uint64_t id = 0;
    std::string pool;
    std::string name;
    storage::image::CancelFlag cancel{false};
    std::atomic<uint64_t> done{0};
    std::atomic<uint64_t> total{0};
    std::atomic<bool> finished{false};
  };

  // Records how far `job` is and tells options_.events.
  void SetDone(Running& job, uint64_t done);
  // CreateVolumeFromImage's work; `job` not null: its progress, cancel flag and journal entry.
  absl::StatusOr<VolumeStatus> MakeVolume(const std::string& pool, const std::string& name, uint64_t size_bytes,
                                          const std::string& image, const std::string& owner, Running* job);
  // The ready image a volume is to be made from and the volume's size (0: the image's);
  // InvalidArgument naming `size_field` when smaller than the image.
  absl::StatusOr<std::pair<ImageStatus, uint64_t>> SourceImage(const std::string& pool, const std::string& image,
                                                               uint64_t size_bytes, absl::string_view size_field);
  // The copy StartVolumeFromImage started, from start to end; its outcome in the journal.
  void RunVolumeFromImage(std::shared_ptr<Running> job, VolumeFromImageRequest r);
  // At start: deletes the volume an interrupted StartVolumeFromImage made; a line for the log.
  std::string RecoverVolumeFromImage(const Journal::Operation& op);
  // Joins the threads of ended imports and copies; called with mu_ held.
  void ReapEndedLocked();
  // Name, format and checksums (normalized), shared by Import and Upload.
  absl::StatusOr<ImportRequest> CheckCommon(const ImportRequest& request) const;
  // Refuses an existing name, journals the operation and registers it as running.
  absl::StatusOr<std::shared_ptr<Running>> Begin(const ImportRequest& request);
  // The import from start to end (cleanup included); its outcome, also recorded in the journal.
  absl::Status Run(std::shared_ptr<Running> job, ImportRequest request);
  // Wipes and removes an image slot (under the pool's lock, StorageService::WithBackend).
  absl::Status DeleteSlot(const std::string& pool, const std::string& name);
  absl::StatusOr<std::string> RunSteps(Running& job, const ImportRequest& request,
                                       std::optional<storage::ImageSlot>& slot, storage::image::ImageRecord& record);
  absl::Status StreamSource(Running& job, const ImportRequest& request,
                            const std::function<absl::Status(absl::string_view, int64_t)>& sink);
  absl::Status StreamUpload(Running& job, const ImportRequest& request,
                            const std::function<absl::Status(absl::string_view, int64_t)>& sink);
  ImageStatus StatusOf(const storage::ImageSlot& slot);
  std::string Key(const std::string& pool, const std::string& name) const { return pool + "/" + name; }
  // Whether `domain` has a guest that runs (not paused). True when it cannot be told.
  bool DomainRuns(const std::string& domain) const;
  // The device and size of what an export reads, with an image held against deletes (`held`).
  absl::StatusOr<std::pair<std::string, uint64_t>> ExportSource(const ExportRequest& r, std::string* held);
  absl::StatusOr<std::pair<std::string, uint64_t>> SnapshotSource(const ExportRequest& r);
  // ResourceExhausted naming [images] scratch_dir unless it has `need` bytes free for `what`.
  absl::Status CheckScratchRoom(uint64_t need, const std::string& what) const;
  // Removes export-*.qcow2 files a crash left in scratch_dir; a line per file, for the log.
  std::vector<std::string> RemoveExportLeftovers();

  StorageService& storage_;
  Journal& journal_;
  storage::CommandRunner& runner_;
  const Options options_;

  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Running>> running_;   // by pool/name
  std::map<std::string, std::shared_ptr<Running>> copies_;    // volumes being made, by pool/volume
  std::map<uint64_t, Transfer> transfers_;                    // the last Journal::kHistory ended ones
  std::map<std::string, int> copying_;                        // copies from pool/image under way
  std::set<std::string> deleting_;                            // pool/image being wiped and removed
  // Import and copy threads; an ended one is joined by the next start (or WaitForImports).
  std::vector<std::pair<std::shared_ptr<Running>, std::thread>> threads_;
  std::condition_variable idle_;
  std::atomic<uint64_t> export_seq_{0};  // names qcow2 export scratch files
};

}  // namespace hvagent::service
