#include "agent/cli/hvctl_volume_export.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <memory>

#include "common/digest.h"

namespace hvagent::cli {
namespace {

// Where the bytes go (a file, sparse; or stdout, every byte written) and the hash of them.
class ExportFile {
 public:
  explicit ExportFile(const std::string& path) : path_(path), md_(*Digest::Create("sha256")) {
    if (path == "-") {
      fd_ = STDOUT_FILENO;
      stream_ = true;
      return;
    }
    fd_ = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  }
  ~ExportFile() {
    if (stream_) return;
    if (fd_ >= 0) close(fd_);
    if (!kept_) unlink(path_.c_str());
  }
  bool ok() const { return fd_ >= 0; }
  bool Data(absl::string_view b) {
    md_->Update(b);
    if (!Write(b)) return false;
    offset_ += b.size();
    return true;
  }
  bool Zeros(uint64_t n) {
    static const std::string kZeros(64 << 10, '\0');
    for (uint64_t left = n; left > 0;) {
      const size_t k = static_cast<size_t>(std::min<uint64_t>(left, kZeros.size()));
      const absl::string_view run(kZeros.data(), k);
      md_->Update(run);
      if (stream_ && !Write(run)) return false;  // a pipe has no holes
      if (stream_) offset_ += k;
      left -= k;
    }
    if (!stream_) offset_ += n;  // a hole: nothing written
    return true;
  }
  // A file: sets the length (a trailing zero run is a hole too), syncs and keeps it.
  bool Keep() {
    if (stream_) return true;
    if (ftruncate(fd_, static_cast<off_t>(offset_)) != 0 || fsync(fd_) != 0) return false;
    kept_ = true;
    return true;
  }
  std::string HexFinal() { return md_->HexFinal(); }
  uint64_t offset() const { return offset_; }

 private:
  bool Write(absl::string_view b) {
    for (size_t at = 0; at < b.size();) {
      ssize_t w = stream_ ? write(fd_, b.data() + at, b.size() - at)
                          : pwrite(fd_, b.data() + at, b.size() - at, static_cast<off_t>(offset_ + at));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      at += static_cast<size_t>(w);
    }
    return true;
  }

  std::string path_;
  std::unique_ptr<Digest> md_;
  int fd_ = -1;
  bool stream_ = false;
  uint64_t offset_ = 0;
  bool kept_ = false;
};

void DrawProgress(uint64_t done, uint64_t size) {
  if (size == 0) return;
  const int width = 40;
  const int filled = static_cast<int>(width * std::min(done, size) / size);
  std::cerr << "\r[" << std::string(filled, '#') << std::string(width - filled, '.') << "] " << done << " of "
            << size << " bytes" << std::flush;
}

grpc::Status Bad(const std::string& why) { return grpc::Status(grpc::StatusCode::DATA_LOSS, why); }

// What became of the bytes written when the export turned out bad.
std::string Dropped(const ExportArgs& args) {
  return ToStdout(args) ? "the bytes already on stdout are not to be used" : "file removed";
}

}  // namespace

grpc::Status ExportVolume(v1::StorageService::Stub& stub, grpc::ClientContext& ctx, const ExportArgs& args,
                          v1::ExportTrailer* out, uint64_t* received) {
  ExportFile file(args.file);
  if (!file.ok()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "FILE: cannot create " + args.file + ": " + std::strerror(errno));
  }
  v1::ExportVolumeRequest req;
  req.set_pool(args.pool);
  req.set_name(args.name);
  req.set_image(args.image);
  req.set_domain_quiesced(args.domain_quiesced);
  req.set_snapshot(args.snapshot);
  req.set_format(args.format);
  auto reader = stub.ExportVolume(&ctx, req);
  v1::ExportVolumeChunk chunk;
  uint64_t size = 0;
  bool trailer = false;
  *received = 0;
  while (reader->Read(&chunk)) {
    if (chunk.has_header()) size = chunk.header().size_bytes();
    bool written = true;
    if (chunk.part_case() == v1::ExportVolumeChunk::kData) {
      *received += chunk.data().size();
      written = file.Data(chunk.data());
    }
    if (chunk.part_case() == v1::ExportVolumeChunk::kZeros) written = file.Zeros(chunk.zeros());
    if (!written) {
      const std::string why = std::strerror(errno);
      ctx.TryCancel();
      reader->Finish();
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "FILE: writing " + args.file + " failed: " + why);
    }
    if (chunk.has_trailer()) {
      *out = chunk.trailer();
      trailer = true;
    }
    if (args.progress) DrawProgress(file.offset(), size);
  }
  if (args.progress) std::cerr << "\n";
  grpc::Status s = reader->Finish();
  if (!s.ok()) return s;
  if (!trailer) return Bad("the stream ended without its sha256 trailer (" + Dropped(args) + ")");
  if (file.offset() != size || out->size_bytes() != size) {
    return Bad("the stream carried " + std::to_string(file.offset()) + " of " + std::to_string(size) +
               " bytes (" + Dropped(args) + ")");
  }
  const std::string got = file.HexFinal();
  if (got != out->sha256()) {
    return Bad("sha256 mismatch: wrote " + got + ", agent sent " + out->sha256() + " (" + Dropped(args) + ")");
  }
  if (!file.Keep()) return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "FILE: finishing " + args.file + " failed");
  return grpc::Status::OK;
}

}  // namespace hvagent::cli
