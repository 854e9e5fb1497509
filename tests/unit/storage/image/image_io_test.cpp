// Specs of the image pieces that need no device: the record, checksums, URL policy and what
// qemu-img is asked and answers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iterator>

#include "storage/image/image_io.h"
#include "storage/image/image_sources.h"
#include "tests/fakes/fake_command_runner.h"

namespace hvagent::storage::image {
namespace {

using hvagent::testing::FakeCommandRunner;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(ImageRecordTest, RoundTripsInOneBlock) {
  ImageRecord r{.source_format = "qcow2",
                .virtual_size = 12345,
                .sha256 = std::string(64, 'a'),
                .source = "https://images.example.org/deb12.qcow2",
                .created_unix_ms = 99};
  auto block = EncodeRecord(r);
  ASSERT_TRUE(block.ok());
  EXPECT_EQ(block->size(), kRecordBytes);
  auto back = DecodeRecord(*block);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->source_format, "qcow2");
  EXPECT_EQ(back->virtual_size, 12345u);
  EXPECT_EQ(back->sha256, r.sha256);
  EXPECT_EQ(back->source, r.source);
  EXPECT_EQ(back->created_unix_ms, 99);
}

TEST(ImageRecordTest, ZerosAreNoRecordAndANewlineCannotForgeAKey) {
  EXPECT_EQ(DecodeRecord(std::string(kRecordBytes, '\0')).status().code(), absl::StatusCode::kNotFound);
  ImageRecord r{.source_format = "raw", .sha256 = std::string(64, 'b'), .source = "http://x/\nsha256=evil"};
  EXPECT_EQ(EncodeRecord(r).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DigestTest, Sha256AndSha512OfAbc) {
  auto d = Digest::Create("sha256");
  ASSERT_TRUE(d.ok());
  (*d)->Update("a");
  (*d)->Update("bc");  // in pieces, as bytes arrive
  EXPECT_EQ((*d)->HexFinal(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto e = Digest::Create("sha512");
  ASSERT_TRUE(e.ok());
  (*e)->Update("abc");
  EXPECT_THAT((*e)->HexFinal(), ::testing::StartsWith("ddaf35a193617aba"));
  EXPECT_FALSE(Digest::Create("md5").ok());
}

TEST(DigestTest, NormalizeHexLowercasesAndNamesTheField) {
  auto ok = NormalizeHex("sha256", std::string(64, 'F'), 32);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, std::string(64, 'f'));
  auto short_one = NormalizeHex("sha256", "abc", 32);
  EXPECT_EQ(short_one.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(short_one.status().message(), HasSubstr("sha256: must be 64 hex digits"));
  EXPECT_FALSE(NormalizeHex("sha512", std::string(128, 'g'), 64).ok());
}

TEST(CheckUrlTest, OnlyUnderAnAllowedPrefix) {
  const std::vector<std::string> allowed = {"http://127.0.0.1:8000/images/", "https://mirror.example.org/"};
  EXPECT_TRUE(CheckUrl("url", "http://127.0.0.1:8000/images/a.raw", allowed).ok());
  EXPECT_TRUE(CheckUrl("url", "https://mirror.example.org/x/y.qcow2", allowed).ok());
  auto outside = CheckUrl("url", "http://127.0.0.1:8000/etc/a.raw", allowed);
  EXPECT_EQ(outside.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(outside.message(), HasSubstr("url: "));
  EXPECT_THAT(outside.message(), HasSubstr("allowed_sources"));
  // A prefix match that a userinfo part would turn into another host.
  EXPECT_EQ(CheckUrl("url", "https://mirror.example.org/@evil.example/x", allowed).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckUrl("url", "file:///etc/shadow", allowed).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckUrl("url", "ftp://mirror.example.org/x", allowed).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckUrl("url", "http://127.0.0.1:8000/images/a b", allowed).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckUrl("url", "http://127.0.0.1:8000/images/a.raw", {}).code(), absl::StatusCode::kPermissionDenied);
}

TEST(QemuImgInfoTest, ReadsSizeBackingFileAndDataFile) {
  auto plain = ParseQemuImgInfo(R"({"virtual-size": 1048576, "filename": "x", "format": "qcow2",
                                    "format-specific": {"type": "qcow2", "data": {"compat": "1.1"}}})");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->virtual_size, 1048576u);
  EXPECT_EQ(plain->backing_file, "");
  EXPECT_EQ(plain->data_file, "");
  auto backed = ParseQemuImgInfo(R"({"virtual-size": 1, "format": "qcow2", "backing-filename": "/etc/shadow"})");
  ASSERT_TRUE(backed.ok());
  EXPECT_EQ(backed->backing_file, "/etc/shadow");
  auto external = ParseQemuImgInfo(
      R"({"virtual-size": 1, "format": "qcow2", "format-specific": {"data": {"data-file": "/dev/sda"}}})");
  ASSERT_TRUE(external.ok());
  EXPECT_EQ(external->data_file, "/dev/sda");
  EXPECT_FALSE(ParseQemuImgInfo("not json").ok());
  EXPECT_FALSE(ParseQemuImgInfo(R"({"format": "qcow2"})").ok());
}

TEST(QemuImgTest, InfoNeverOpensABackingChainAndConvertWritesEveryBlockOfTheDevice) {
  FakeCommandRunner runner;
  runner.Expect({"/usr/bin/qemu-img", "info"}, FakeCommandRunner::Ok(R"({"virtual-size": 4096, "format": "qcow2"})"));
  runner.Expect({"/usr/bin/qemu-img", "convert"}, FakeCommandRunner::Ok());
  QemuImg q(runner);
  auto info = q.Info("/scratch/import-1.qcow2");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_TRUE(q.ConvertToRaw("/scratch/import-1.qcow2", "/dev/loop0p1").ok());
  const auto calls = runner.calls();
  EXPECT_EQ(calls[0], (std::vector<std::string>{"/usr/bin/qemu-img", "info", "-U", "-f", "qcow2", "--output=json",
                                                "/scratch/import-1.qcow2"}));
  EXPECT_THAT(calls[0], Not(Contains("--backing-chain")));
  EXPECT_EQ(calls[1], (std::vector<std::string>{"/usr/bin/qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw",
                                                "-n", "-t", "none", "/scratch/import-1.qcow2", "/dev/loop0p1"}));
}

TEST(QemuImgTest, AFileQemuImgCannotReadIsInvalidArgumentNamingFormat) {
  FakeCommandRunner runner;
  runner.Expect({"/usr/bin/qemu-img"}, FakeCommandRunner::Fail(1, "qemu-img: Image is not in qcow2 format"));
  auto info = QemuImg(runner).Info("/scratch/x");
  EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(info.status().message(), HasSubstr("format: "));
}

// ---- export ----

// Records what an export hands over, and stops it when told to.
class RecordingSink final : public ExportSink {
 public:
  absl::Status Data(absl::string_view b) override {
    pieces.push_back(b.size());
    max_data = std::max(max_data, b.size());
    out.append(b.data(), b.size());
    return ++calls == stop_after ? absl::CancelledError("caller gone") : absl::OkStatus();
  }
  absl::Status Zeros(uint64_t n) override {
    zero_runs.push_back(n);
    out.append(n, '\0');
    return ++calls == stop_after ? absl::CancelledError("caller gone") : absl::OkStatus();
  }
  std::string out;
  std::vector<size_t> pieces;
  std::vector<uint64_t> zero_runs;
  size_t max_data = 0;
  int calls = 0;
  int stop_after = -1;
};

class ExportDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/var/tmp/hvagent-export-XXXXXX";  // ext4, not tmpfs: O_DIRECT reads work
    int fd = mkstemp(tmpl);
    ASSERT_GE(fd, 0);
    close(fd);
    path_ = tmpl;
  }
  void TearDown() override { unlink(path_.c_str()); }
  void Write(const std::string& data) {
    std::ofstream(path_, std::ios::binary | std::ios::trunc).write(data.data(), data.size());
  }
  static std::string Bytes(size_t n, char seed) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 7 + 1) | 1;  // never zero
    return s;
  }
  static std::string Sha(const std::string& b) {
    auto d = *Digest::Create("sha256");
    d->Update(b);
    return d->HexFinal();
  }
  std::string path_;
};

TEST_F(ExportDeviceTest, ZeroRunsGoApartJoinedAcrossBlocksAndTheHashCoversEverything) {
  // 3 MiB of data, 6 MiB of zeros straddling the 4 MiB block boundary, data ending off 4 KiB.
  const std::string data = Bytes(3 << 20, 1) + std::string(6 << 20, '\0') + Bytes((2 << 20) + 1234, 2);
  Write(data);
  RecordingSink sink;
  auto r = ExportDevice(path_, data.size(), sink, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(sink.out == data) << "the pieces do not rebuild the device";
  EXPECT_EQ(r->bytes, data.size());
  EXPECT_EQ(r->sha256, Sha(data));
  EXPECT_EQ(sink.zero_runs, std::vector<uint64_t>{6u << 20});  // one run, not one per block
  EXPECT_EQ(r->zero_bytes, 6u << 20);
  EXPECT_LE(sink.max_data, kExportChunkBytes);
}

TEST_F(ExportDeviceTest, AGranuleWithOneNonZeroByteIsSentAsData) {
  std::string data(1 << 20, '\0');
  data[700000] = 'x';
  Write(data);
  RecordingSink sink;
  auto r = ExportDevice(path_, data.size(), sink, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(sink.out == data);
  EXPECT_EQ(r->zero_bytes, (1u << 20) - kZeroGranuleBytes);
  EXPECT_EQ(sink.pieces, std::vector<size_t>{kZeroGranuleBytes});
}

TEST_F(ExportDeviceTest, ASinkErrorStopsTheReadingAndIsReturned) {
  Write(Bytes(12 << 20, 3));
  RecordingSink sink;
  sink.stop_after = 2;
  auto r = ExportDevice(path_, 12 << 20, sink, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(sink.calls, 2);
  CancelFlag cancel{true};
  RecordingSink other;
  EXPECT_EQ(ExportDevice(path_, 12 << 20, other, &cancel).status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(other.calls, 0);
}

TEST_F(ExportDeviceTest, ADeviceShorterThanAskedIsDataLoss) {
  Write(Bytes(1 << 20, 4));
  RecordingSink sink;
  EXPECT_EQ(ExportDevice(path_, 2 << 20, sink, nullptr).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(ExportDeviceTest, DeviceWriterLandsEveryBlockInOrderWhileTheNextFillsAndPadsTheTail) {
  // Blocks go to the device behind the caller (one in flight): 2.5 blocks in uneven pieces must
  // read back in order, the tail padded with zeros to 4 KiB, and nothing past the limit.
  Write(std::string(12 << 20, '\x55'));  // old bytes the writer must overwrite
  const std::string data = Bytes((10 << 20) + 1234, 5);
  auto w = DeviceWriter::Open(path_, data.size());
  ASSERT_TRUE(w.ok()) << w.status();
  for (size_t at = 0, piece = 1; at < data.size(); at += piece, piece = piece * 3 % 1000003 + 1) {
    ASSERT_TRUE((*w)->Write(absl::string_view(data).substr(at, piece)).ok());
  }
  EXPECT_EQ((*w)->Write("x").code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE((*w)->Finish().ok());
  w->reset();
  std::ifstream in(path_, std::ios::binary);
  const std::string back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(back.size(), size_t{12} << 20);
  EXPECT_TRUE(back.compare(0, data.size(), data) == 0) << "the blocks did not land in order";
  const size_t padded = (data.size() + 4095) / 4096 * 4096;
  EXPECT_EQ(back.substr(data.size(), padded - data.size()), std::string(padded - data.size(), '\0'));
  EXPECT_EQ(back.substr(padded), std::string(back.size() - padded, '\x55'));
}

TEST_F(ExportDeviceTest, AHashingDeviceWriterDigestsWhatItWroteWithoutThePadding) {
  // Blocks are hashed on the writer's thread, one at a time: the digest must be the bytes given,
  // in order, and not the zeros padding the tail. A writer without `hash` has no digest.
  const std::string data = Bytes((9 << 20) + 777, 6);
  auto w = DeviceWriter::Open(path_, data.size(), /*hash=*/true);
  ASSERT_TRUE(w.ok()) << w.status();
  for (size_t at = 0, piece = 5; at < data.size(); at += piece, piece = piece * 7 % 900001 + 1) {
    ASSERT_TRUE((*w)->Write(absl::string_view(data).substr(at, piece)).ok());
  }
  ASSERT_TRUE((*w)->Finish().ok());
  EXPECT_EQ((*w)->HexDigest(), Sha(data));
  auto plain = DeviceWriter::Open(path_, 4096);
  ASSERT_TRUE(plain.ok());
  ASSERT_TRUE((*plain)->Write(std::string(4096, 'a')).ok());
  ASSERT_TRUE((*plain)->Finish().ok());
  EXPECT_EQ((*plain)->HexDigest(), "");
}

}  // namespace
}  // namespace hvagent::storage::image
