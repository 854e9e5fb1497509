#pragma once
// Image I/O for golden images (agent/service/image_service.h), free of proto and of the pools:
// checksums computed while bytes flow (OpenSSL EVP), the image record kept in a slot's last
// 4 KiB, and block-device writes and copies with O_DIRECT in large aligned blocks. Nothing here
// holds a whole image in memory: every path holds at most two 4 MiB blocks (a device write or
// read in flight on one while the caller works on the other).

#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>

#include "common/digest.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hvagent::storage::image {

// The record of a ready image, written in the last kRecordBytes of its slot. Text, one
// "key=value" a line after a magic first line, so that `tail -c 4096 /dev/...` shows it.
inline constexpr uint64_t kRecordBytes = 4096;
inline constexpr size_t kBlockBytes = 4 << 20;  // the unit of every read and write

struct ImageRecord {
  std::string source_format;  // "raw" or "qcow2"
  uint64_t virtual_size = 0;  // bytes of raw disk at the slot's start
  std::string sha256;         // of those bytes, lowercase hex
  std::string source;         // URL or host file
  int64_t created_unix_ms = 0;
};
// kRecordBytes of text, zero padded. InvalidArgument when a value holds a newline or the
// record does not fit.
absl::StatusOr<std::string> EncodeRecord(const ImageRecord& r);
// NotFound when the block holds no record (an image whose import never finished).
absl::StatusOr<ImageRecord> DecodeRecord(absl::string_view block);

// A running digest: "sha256" or "sha512" (common/digest.h; hvctl checks exports with it too).
using Digest = ::hvagent::Digest;

// A whole hex digest of `algorithm`'s length, case-insensitively; lowercased. InvalidArgument
// naming `field` otherwise.
absl::StatusOr<std::string> NormalizeHex(absl::string_view field, absl::string_view hex, size_t digest_bytes);

using CancelFlag = std::atomic<bool>;
using ProgressFn = std::function<void(uint64_t done)>;

// Writes a stream onto a block device from offset 0 with O_DIRECT, in kBlockBytes blocks
// (the last one padded with zeros up to the 4 KiB boundary). Writes past `limit` bytes fail.
// A full block goes to the device on a thread of its own while the caller fills the next one
// (one block in flight at most); a failed block write is the answer of the next Write or of
// Finish. With `hash`, that thread also takes the sha256 of each block it writes (the padding
// left out), so the caller's thread, which takes bytes off a network stream, does not.
class DeviceWriter {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceWriter>> Open(const std::string& device, uint64_t limit,
                                                            bool hash = false);
  ~DeviceWriter();
  absl::Status Write(absl::string_view bytes);
  // Flushes the partial block, waits for every block and fsyncs.
  absl::Status Finish();
  uint64_t written() const { return written_; }
  // After a successful Finish of a writer opened with `hash`: the sha256 of every byte written.
  std::string HexDigest() const { return sha256_; }

 private:
  DeviceWriter() = default;
  // Sends the first `bytes` of the buffer (`useful` of them the caller's, the rest padding).
  absl::Status Flush(size_t bytes, size_t useful);
  absl::Status WaitForBlock();
  int fd_ = -1;
  uint64_t limit_ = 0;
  uint64_t written_ = 0;   // bytes accepted
  uint64_t offset_ = 0;    // bytes on the device or on their way
  char* buf_ = nullptr;    // aligned, kBlockBytes: being filled
  char* spare_ = nullptr;  // aligned, kBlockBytes: the block in flight, if any
  size_t fill_ = 0;
  std::future<absl::Status> in_flight_;
  std::unique_ptr<Digest> digest_;  // used by the block in flight only, one at a time
  std::string sha256_;
};

// Copies the first `bytes` of `from` onto `to` (offset 0) with O_DIRECT reads and writes in
// kBlockBytes blocks, every block written (zero blocks too: the target is never assumed zero),
// then fsyncs. Cancelled when *cancel turns true. Returns the sha256 of the bytes copied when
// `hash` is set.
absl::StatusOr<std::string> CopyDevice(const std::string& from, const std::string& to, uint64_t bytes,
                                       const ProgressFn& progress, const CancelFlag* cancel, bool hash);
// sha256 of the first `bytes` of a file or device (read in kBlockBytes blocks).
absl::StatusOr<std::string> HashFile(const std::string& path, uint64_t bytes, const CancelFlag* cancel);
// Where an export's bytes go, in order (ExportDevice). An error (Cancelled when the caller
// went away) stops the export.
class ExportSink {
 public:
  virtual ~ExportSink() = default;
  virtual absl::Status Data(absl::string_view bytes) = 0;  // at most kExportChunkBytes
  virtual absl::Status Zeros(uint64_t bytes) = 0;          // a run of zero bytes
  // Whether the caller has gone away before any byte was handed over (asked while a qcow2
  // conversion runs, so that it is stopped). False when the transport cannot tell.
  virtual bool CallerGone() const { return false; }
};
inline constexpr size_t kZeroGranuleBytes = 64 << 10;  // the unit a zero run is made of
inline constexpr size_t kExportChunkBytes = 1 << 20;   // the largest Data piece
struct ExportResult {
  uint64_t bytes = 0;
  uint64_t zero_bytes = 0;  // handed over as Zeros
  std::string sha256;       // of all the bytes, zeros included
};
// Reads the first `bytes` of `path` with O_DIRECT in kBlockBytes blocks and hands them to
// `sink` (the next block is read, and hashed, on a thread while the sink takes the current one):
// each run of all-zero granules as one Zeros (runs join across blocks), the rest as Data pieces.
// Cancelled when *cancel turns true. `direct` false: through the page cache (a scratch file on a
// filesystem that refuses O_DIRECT, such as tmpfs).
absl::StatusOr<ExportResult> ExportDevice(const std::string& path, uint64_t bytes, ExportSink& sink,
                                          const CancelFlag* cancel, bool direct = true);

// Writes / reads the record block at `offset` (the slot's size minus kRecordBytes).
absl::Status WriteRecord(const std::string& device, uint64_t offset, const ImageRecord& r);
absl::StatusOr<ImageRecord> ReadRecord(const std::string& device, uint64_t offset);

}  // namespace hvagent::storage::image
