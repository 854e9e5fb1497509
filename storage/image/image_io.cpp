#include "storage/image/image_io.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <future>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace hvagent::storage::image {
namespace {

constexpr char kMagic[] = "hvagent-image 1";
constexpr size_t kAlign = 4096;  // O_DIRECT: buffer, offset and length

absl::Status Errno(const std::string& what) { return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno))); }

// An aligned block buffer, freed with the scope.
struct AlignedBuffer {
  char* p = nullptr;
  explicit AlignedBuffer(size_t n) {
    void* v = nullptr;
    if (posix_memalign(&v, kAlign, n) == 0) p = static_cast<char*>(v);
  }
  ~AlignedBuffer() { std::free(p); }
};

uint64_t AlignUp(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

absl::Status WriteAll(int fd, const char* p, size_t n, uint64_t offset, const std::string& what) {
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, static_cast<off_t>(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return Errno(absl::StrCat("writing ", what, " at ", offset));
    p += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> ReadFull(int fd, char* p, size_t n, uint64_t offset, const std::string& what) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = pread(fd, p + got, n - got, static_cast<off_t>(offset + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Errno(absl::StrCat("reading ", what, " at ", offset + got));
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return got;
}

bool Cancelled(const CancelFlag* c) { return c != nullptr && c->load(); }

}  // namespace

// ---- record ----

absl::StatusOr<std::string> EncodeRecord(const ImageRecord& r) {
  for (const std::string* v : {&r.source_format, &r.sha256, &r.source}) {
    if (v->find_first_of(std::string("\n\0", 2)) != std::string::npos) {
      return absl::InvalidArgumentError("image record: a value holds a newline or NUL");
    }
  }
  std::string text = absl::StrCat(kMagic, "\nformat=", r.source_format, "\nvirtual_size=", r.virtual_size,
                                  "\nsha256=", r.sha256, "\ncreated_unix_ms=", r.created_unix_ms,
                                  "\nsource=", r.source, "\n");
  if (text.size() >= kRecordBytes) return absl::InvalidArgumentError("image record: source too long");
  text.resize(kRecordBytes, '\0');
  return text;
}

absl::StatusOr<ImageRecord> DecodeRecord(absl::string_view block) {
  block = block.substr(0, block.find('\0'));
  std::vector<absl::string_view> lines = absl::StrSplit(block, '\n');
  if (lines.empty() || lines[0] != kMagic) return absl::NotFoundError("no image record");
  ImageRecord r;
  bool have_size = false;
  for (size_t i = 1; i < lines.size(); ++i) {
    if (lines[i].empty()) continue;
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(lines[i], absl::MaxSplits('=', 1));
    if (kv.first == "format") r.source_format = std::string(kv.second);
    if (kv.first == "sha256") r.sha256 = std::string(kv.second);
    if (kv.first == "source") r.source = std::string(kv.second);
    if (kv.first == "virtual_size") have_size = absl::SimpleAtoi(kv.second, &r.virtual_size);
    if (kv.first == "created_unix_ms") (void)absl::SimpleAtoi(kv.second, &r.created_unix_ms);
  }
  if (!have_size || r.sha256.size() != 64) return absl::DataLossError("image record: virtual_size or sha256 unreadable");
  return r;
}

// ---- digest ----

absl::StatusOr<std::string> NormalizeHex(absl::string_view field, absl::string_view hex, size_t digest_bytes) {
  std::string out = absl::AsciiStrToLower(hex);
  if (out.size() != digest_bytes * 2 || out.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": must be ", digest_bytes * 2, " hex digits, got ", hex.size(), " characters"));
  }
  return out;
}

// ---- device writer ----

absl::StatusOr<std::unique_ptr<DeviceWriter>> DeviceWriter::Open(const std::string& device, uint64_t limit,
                                                                  bool hash) {
  std::unique_ptr<DeviceWriter> w(new DeviceWriter());
  if (hash) w->digest_ = *Digest::Create("sha256");
  w->fd_ = open(device.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC | O_EXCL);
  if (w->fd_ < 0) return Errno(absl::StrCat("opening ", device));
  for (char** buf : {&w->buf_, &w->spare_}) {
    void* v = nullptr;
    if (posix_memalign(&v, kAlign, kBlockBytes) != 0) return absl::ResourceExhaustedError("no memory for a block buffer");
    *buf = static_cast<char*>(v);
  }
  w->limit_ = limit;
  return w;
}

DeviceWriter::~DeviceWriter() {
  if (in_flight_.valid()) in_flight_.wait();  // never free a buffer or close the fd under a write
  if (fd_ >= 0) close(fd_);
  std::free(buf_);
  std::free(spare_);
}

absl::Status DeviceWriter::WaitForBlock() {
  return in_flight_.valid() ? in_flight_.get() : absl::OkStatus();
}

// Why a thread: a synchronous O_DIRECT write stops the caller, who would otherwise be taking
// the next bytes off a network stream (an incoming migration, an upload) meanwhile; dd in a pipe
// gets that overlap from the pipe.
absl::Status DeviceWriter::Flush(size_t bytes, size_t useful) {
  if (auto s = WaitForBlock(); !s.ok()) return s;
  in_flight_ = std::async(std::launch::async, [fd = fd_, p = buf_, bytes, useful, at = offset_, d = digest_.get()] {
    if (d != nullptr) d->Update(absl::string_view(p, useful));
    return WriteAll(fd, p, bytes, at, "image");
  });
  std::swap(buf_, spare_);
  offset_ += bytes;
  fill_ = 0;
  return absl::OkStatus();
}

absl::Status DeviceWriter::Write(absl::string_view bytes) {
  if (bytes.size() > limit_ - written_) {
    return absl::ResourceExhaustedError(absl::StrCat("image: more than the ", limit_, " bytes its slot holds"));
  }
  written_ += bytes.size();
  while (!bytes.empty()) {
    size_t n = std::min(bytes.size(), kBlockBytes - fill_);
    std::memcpy(buf_ + fill_, bytes.data(), n);
    fill_ += n;
    bytes.remove_prefix(n);
    if (fill_ == kBlockBytes) {
      if (auto s = Flush(kBlockBytes, kBlockBytes); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

absl::Status DeviceWriter::Finish() {
  if (fill_ > 0) {
    size_t padded = AlignUp(fill_);
    std::memset(buf_ + fill_, 0, padded - fill_);
    if (auto s = Flush(padded, fill_); !s.ok()) return s;
  }
  if (auto s = WaitForBlock(); !s.ok()) return s;
  if (fsync(fd_) != 0) return Errno("fsync of the image");
  if (digest_ != nullptr) sha256_ = digest_->HexFinal();
  return absl::OkStatus();
}

// ---- copy and hash ----

absl::StatusOr<std::string> CopyDevice(const std::string& from, const std::string& to, uint64_t bytes,
                                       const ProgressFn& progress, const CancelFlag* cancel, bool hash) {
  int in = open(from.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (in < 0) return Errno(absl::StrCat("opening ", from));
  int out = open(to.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC | O_EXCL);
  if (out < 0) {
    close(in);
    return Errno(absl::StrCat("opening ", to));
  }
  AlignedBuffer buf(kBlockBytes);
  std::unique_ptr<Digest> digest;
  if (hash) digest = *Digest::Create("sha256");
  absl::Status status = buf.p == nullptr ? absl::ResourceExhaustedError("no memory for a block buffer") : absl::OkStatus();
  uint64_t done = 0;
  while (status.ok() && done < bytes) {
    if (Cancelled(cancel)) {
      status = absl::CancelledError("cancelled");
      break;
    }
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kBlockBytes, AlignUp(bytes - done)));
    auto got = ReadFull(in, buf.p, want, done, from);
    if (!got.ok()) {
      status = got.status();
      break;
    }
    if (*got < want) {
      status = absl::DataLossError(absl::StrCat(from, " ends at ", done + *got, " bytes, before ", bytes));
      break;
    }
    const uint64_t useful = std::min<uint64_t>(want, bytes - done);
    if (digest) digest->Update(absl::string_view(buf.p, useful));
    status = WriteAll(out, buf.p, want, done, to);
    done += useful;
    if (progress) progress(done);
  }
  if (status.ok() && fsync(out) != 0) status = Errno(absl::StrCat("fsync of ", to));
  close(in);
  close(out);
  if (!status.ok()) return status;
  return digest ? digest->HexFinal() : std::string();
}

absl::StatusOr<std::string> HashFile(const std::string& path, uint64_t bytes, const CancelFlag* cancel) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno(absl::StrCat("opening ", path));
  AlignedBuffer buf(kBlockBytes);
  auto digest = *Digest::Create("sha256");
  absl::Status status;
  uint64_t done = 0;
  while (done < bytes) {
    if (Cancelled(cancel)) {
      status = absl::CancelledError("cancelled");
      break;
    }
    size_t want = static_cast<size_t>(std::min<uint64_t>(kBlockBytes, bytes - done));
    auto got = ReadFull(fd, buf.p, want, done, path);
    if (!got.ok() || *got < want) {
      status = got.ok() ? absl::DataLossError(absl::StrCat(path, " is shorter than ", bytes, " bytes")) : got.status();
      break;
    }
    digest->Update(absl::string_view(buf.p, want));
    done += want;
  }
  close(fd);
  if (!status.ok()) return status;
  return digest->HexFinal();
}

namespace {

bool AllZero(const char* p, size_t n) {
  // The first byte zero and the buffer equal to itself shifted by one: all bytes equal to it.
  return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0);
}

// Splits blocks into zero runs and data pieces for an ExportSink (ExportDevice hashes them).
class ExportSplitter {
 public:
  explicit ExportSplitter(ExportSink& sink) : sink_(sink) {}

  absl::Status Block(const char* p, size_t n) {
    size_t data_start = 0;
    for (size_t at = 0; at < n; at += kZeroGranuleBytes) {
      const size_t len = std::min(kZeroGranuleBytes, n - at);
      if (!AllZero(p + at, len)) continue;
      if (auto s = SendData(p + data_start, at - data_start); !s.ok()) return s;
      pending_zeros_ += len;
      data_start = at + len;
    }
    return SendData(p + data_start, n - data_start);
  }

  absl::StatusOr<ExportResult> Finish() {
    if (auto s = FlushZeros(); !s.ok()) return s;
    return result_;
  }

 private:
  absl::Status SendData(const char* p, size_t n) {
    if (n == 0) return absl::OkStatus();
    if (auto s = FlushZeros(); !s.ok()) return s;
    result_.bytes += n;
    for (size_t at = 0; at < n; at += kExportChunkBytes) {
      if (auto s = sink_.Data(absl::string_view(p + at, std::min(kExportChunkBytes, n - at))); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  absl::Status FlushZeros() {
    if (pending_zeros_ == 0) return absl::OkStatus();
    result_.bytes += pending_zeros_;
    result_.zero_bytes += pending_zeros_;
    const uint64_t run = pending_zeros_;
    pending_zeros_ = 0;
    return sink_.Zeros(run);
  }

  ExportSink& sink_;
  uint64_t pending_zeros_ = 0;
  ExportResult result_;
};

}  // namespace

absl::StatusOr<ExportResult> ExportDevice(const std::string& path, uint64_t bytes, ExportSink& sink,
                                          const CancelFlag* cancel, bool direct) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
  if (fd < 0) return Errno(absl::StrCat("opening ", path));
  AlignedBuffer first(kBlockBytes), second(kBlockBytes);
  char* buf[2] = {first.p, second.p};
  ExportSplitter splitter(sink);
  auto digest = *Digest::Create("sha256");
  absl::Status status = buf[0] == nullptr || buf[1] == nullptr ? absl::ResourceExhaustedError("no memory for a block buffer")
                                                               : absl::OkStatus();
  // Why a thread: the sink sends (a migration, an export over HTTP) while the next block comes
  // off the device and is hashed, as the two ends of `dd | nc` overlap; a synchronous read would
  // stall both, and hashing on the sink's thread would slow the sending. One read at a time, in
  // order, so the digest sees the blocks in order.
  auto read_ahead = [&](int slot, uint64_t at) {
    return std::async(std::launch::async, [&, slot, at]() -> absl::StatusOr<size_t> {
      auto got = ReadFull(fd, buf[slot], static_cast<size_t>(std::min<uint64_t>(kBlockBytes, AlignUp(bytes - at))), at, path);
      const size_t useful = static_cast<size_t>(std::min<uint64_t>(kBlockBytes, bytes - at));
      if (got.ok() && *got >= useful) digest->Update(absl::string_view(buf[slot], useful));
      return got;
    });
  };
  std::future<absl::StatusOr<size_t>> next;
  if (status.ok() && bytes > 0) next = read_ahead(0, 0);
  for (uint64_t done = 0, slot = 0; status.ok() && done < bytes; slot ^= 1) {
    auto got = next.get();
    const size_t useful = static_cast<size_t>(std::min<uint64_t>(kBlockBytes, bytes - done));
    if (Cancelled(cancel)) {
      status = absl::CancelledError("cancelled");
    } else if (!got.ok()) {
      status = got.status();
    } else if (*got < useful) {
      status = absl::DataLossError(absl::StrCat(path, " ends at ", done + *got, " bytes, before ", bytes));
    } else {
      if (done + useful < bytes) next = read_ahead(static_cast<int>(slot ^ 1), done + useful);
      status = splitter.Block(buf[slot], useful);
      done += useful;
    }
  }
  if (next.valid()) next.wait();  // never close the fd or free a buffer under a read
  close(fd);
  if (!status.ok()) return status;
  auto result = splitter.Finish();
  if (result.ok()) result->sha256 = digest->HexFinal();
  return result;
}

absl::Status WriteRecord(const std::string& device, uint64_t offset, const ImageRecord& r) {
  auto text = EncodeRecord(r);
  if (!text.ok()) return text.status();
  int fd = open(device.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return Errno(absl::StrCat("opening ", device));
  AlignedBuffer buf(kRecordBytes);
  std::memcpy(buf.p, text->data(), kRecordBytes);
  absl::Status s = WriteAll(fd, buf.p, kRecordBytes, offset, "the image record");
  if (s.ok() && fsync(fd) != 0) s = Errno("fsync of the image record");
  close(fd);
  return s;
}

absl::StatusOr<ImageRecord> ReadRecord(const std::string& device, uint64_t offset) {
  int fd = open(device.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return Errno(absl::StrCat("opening ", device));
  AlignedBuffer buf(kRecordBytes);
  auto got = ReadFull(fd, buf.p, kRecordBytes, offset, "the image record");
  close(fd);
  if (!got.ok()) return got.status();
  return DecodeRecord(absl::string_view(buf.p, *got));
}

}  // namespace hvagent::storage::image
