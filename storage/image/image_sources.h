#pragma once
// Where image bytes come from, and what qemu-img says about a qcow2, for ImageService.
// HTTP(S) through libcurl (no redirects, http and https only, a stalled transfer times out);
// the bytes are handed on as they arrive, never gathered. qemu-img runs through CommandRunner
// (argv only) with -U (--force-share) and an explicit format, so it neither probes nor locks.

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "storage/exec/command_runner.h"
#include "storage/image/image_io.h"

namespace hvagent::storage::image {

// Whether `url` is http(s) and starts with one of `prefixes` (each itself an http(s) URL).
// PermissionDenied naming `field` and the prefixes otherwise; InvalidArgument for a URL that is
// not http(s) or holds characters a URL does not (spaces, controls, a '@' userinfo, '#').
absl::Status CheckUrl(absl::string_view field, const std::string& url, const std::vector<std::string>& prefixes);

// Called with each chunk as it arrives and the length the server announced (-1 unknown).
using ChunkFn = std::function<absl::Status(absl::string_view chunk, int64_t content_length)>;

struct FetchOptions {
  std::chrono::seconds connect_timeout{30};
  std::chrono::seconds stall_timeout{60};  // less than 1 byte/s for this long: give up
};
// GETs `url`, handing every chunk to `on_chunk`. The first error (its own, the server's status
// >= 400, a body cut short of its Content-Length, a cancel) ends the transfer and is returned.
absl::Status FetchUrl(const std::string& url, const ChunkFn& on_chunk, const CancelFlag* cancel,
                      const FetchOptions& options = {});

// `qemu-img info --output=json` of a qcow2.
struct QcowInfo {
  std::string format;
  uint64_t virtual_size = 0;
  std::string backing_file;  // non-empty: refused
  std::string data_file;     // non-empty: refused
};
absl::StatusOr<QcowInfo> ParseQemuImgInfo(const std::string& json);

class QemuImg {
 public:
  QemuImg(CommandRunner& runner, std::string binary = "/usr/bin/qemu-img",
          std::chrono::milliseconds timeout = std::chrono::hours(6))
      : runner_(runner), binary_(std::move(binary)), timeout_(timeout) {}
  // Reads only the file's own header: -U, -f qcow2, and no --backing-chain, so a backing file
  // it names is never opened.
  absl::StatusOr<QcowInfo> Info(const std::string& file) const;
  // Writes the raw disk of `file` onto the existing `device` (-n: no create; every block written).
  // `cancelled` (optional, Command::cancelled): true kills qemu-img and answers Cancelled.
  absl::Status ConvertToRaw(const std::string& file, const std::string& device,
                            std::function<bool()> cancelled = {}) const;
  // Writes `device`'s first bytes as a new qcow2 file `file` (which must not exist; qemu-img
  // makes it). -U: a volume a paused guest holds open is read without taking its lock.
  absl::Status ConvertToQcow2(const std::string& device, const std::string& file,
                              std::function<bool()> cancelled = {}) const;

 private:
  CommandRunner& runner_;
  std::string binary_;
  std::chrono::milliseconds timeout_;
};

}  // namespace hvagent::storage::image
