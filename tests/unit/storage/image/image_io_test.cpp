// Specs of the image pieces that need no device: the record, checksums, URL policy and what
// qemu-img is asked and answers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace hvagent::storage::image
