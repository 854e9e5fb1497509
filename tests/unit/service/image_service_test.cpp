// ImageService's refusals: everything a request can get wrong is answered before an operation
// starts, naming the field, with nothing journalled and no backend change.
#include "agent/service/image_service.h"

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/failpoint.h"
#include "tests/fakes/fake_command_runner.h"
#include "tests/fakes/fake_hypervisor.h"
#include "tests/fakes/fake_storage_backend.h"
#include "tests/fakes/test_bytes.h"

namespace hvagent::service {
namespace {

using ::testing::HasSubstr;

class ImageServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto b = std::make_unique<testing::FakeStorageBackend>(storage::PoolConfig{.name = "vg0"});
    backend_ = b.get();
    std::vector<std::unique_ptr<storage::StorageBackend>> backends;
    backends.push_back(std::move(b));
    storage_ = std::make_unique<StorageService>(hv_, std::move(backends));
    journal_ = *Journal::Open("");
    images_ = std::make_unique<ImageService>(
        *storage_, *journal_, runner_,
        ImageService::Options{.allowed_sources = {"http://127.0.0.1:8000/images/"}, .scratch_dir = "/nonexistent"});
  }
  ImportRequest Url(std::string url) {
    return ImportRequest{.pool = "vg0", .name = "deb12", .format = ImageFormat::kRaw, .url = std::move(url),
                         .sha256 = std::string(64, 'a')};
  }
  void ExpectNothingStarted() {
    EXPECT_TRUE(journal_->Unfinished().empty());
    EXPECT_TRUE(journal_->Recent().empty());
    EXPECT_TRUE(runner_.calls().empty());
  }

  testing::FakeHypervisor hv_;
  testing::FakeCommandRunner runner_;
  testing::FakeStorageBackend* backend_ = nullptr;
  std::unique_ptr<StorageService> storage_;
  std::unique_ptr<Journal> journal_;
  std::unique_ptr<ImageService> images_;
};

TEST_F(ImageServiceTest, UrlOutsideAllowedSourcesIsPermissionDeniedAndStartsNothing) {
  auto r = images_->Import(Url("http://127.0.0.1:8000/etc/shadow"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(r.status().message(), HasSubstr("url: "));
  ExpectNothingStarted();
}

TEST_F(ImageServiceTest, UrlWithoutChecksumOrWithABadOneIsInvalidArgumentNamingTheField) {
  ImportRequest no_sum = Url("http://127.0.0.1:8000/images/a.raw");
  no_sum.sha256.clear();
  auto r = images_->Import(no_sum);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("sha256: a URL source needs"));
  ImportRequest bad = Url("http://127.0.0.1:8000/images/a.raw");
  bad.sha512 = "xyz";
  r = images_->Import(bad);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("sha512: "));
  ExpectNothingStarted();
}

TEST_F(ImageServiceTest, NameFormatAndSourceAreCheckedFirst) {
  ImportRequest r = Url("http://127.0.0.1:8000/images/a.raw");
  r.name = "../x";
  EXPECT_THAT(images_->Import(r).status().message(), HasSubstr("name: "));
  r = Url("http://127.0.0.1:8000/images/a.raw");
  r.format = ImageFormat::kUnspecified;
  EXPECT_THAT(images_->Import(r).status().message(), HasSubstr("format: is required"));
  r = Url("http://127.0.0.1:8000/images/a.raw");
  r.host_file = "/var/lib/images/a.raw";
  EXPECT_THAT(images_->Import(r).status().message(), HasSubstr("source: give exactly one"));
  r = Url("");
  r.host_file = "/etc/shadow";
  auto denied = images_->Import(r);
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);  // no import_dirs configured
  EXPECT_THAT(denied.status().message(), HasSubstr("host_file: "));
  r = Url("http://127.0.0.1:8000/images/a.raw");
  r.pool = "nope";
  EXPECT_EQ(images_->Import(r).status().code(), absl::StatusCode::kNotFound);
  ExpectNothingStarted();
}

TEST_F(ImageServiceTest, APoolThatCannotHoldImagesIsFailedPrecondition) {
  auto r = images_->Import(Url("http://127.0.0.1:8000/images/a.raw"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("cannot hold images"));
  ExpectNothingStarted();
}

TEST_F(ImageServiceTest, VolumeFromAMissingImageIsRefusedAndCreatesNoVolume) {
  auto v = images_->CreateVolumeFromImage("vg0", "web1-root", 0, "deb12");
  EXPECT_FALSE(v.ok());
  auto volumes = storage_->ListVolumes("vg0");
  ASSERT_TRUE(volumes.ok());
  EXPECT_TRUE(volumes->empty());
}

// ---- Upload: the caller's stream through the same import, on a pool whose slots are files ----

// The chunks a caller sends, then how its stream ends (OK: it closed; an error: it went away).
class ChunksBody final : public UploadBody {
 public:
  explicit ChunksBody(std::vector<std::string> chunks, absl::Status end = absl::OkStatus())
      : chunks_(std::move(chunks)), end_(std::move(end)) {}
  absl::StatusOr<bool> Next(std::string* chunk) override {
    if (before_chunk) before_chunk(next_);
    if (next_ < chunks_.size()) {
      *chunk = chunks_[next_++];
      return true;
    }
    if (!end_.ok()) return end_;
    return false;
  }
  bool CallerGone() const override { return caller_gone && caller_gone(); }
  std::function<void(size_t)> before_chunk;
  std::function<bool()> caller_gone;

 private:
  std::vector<std::string> chunks_;
  absl::Status end_;
  size_t next_ = 0;
};


std::string Sha256(absl::string_view bytes) {
  auto d = *storage::image::Digest::Create("sha256");
  d->Update(bytes);
  return d->HexFinal();
}

class ImageUploadTest : public ImageServiceTest {
 protected:
  void SetUp() override {
    ImageServiceTest::SetUp();
    char tmpl[] = "/var/tmp/hvagent-upload-XXXXXX";  // ext4 here, not tmpfs: O_DIRECT works
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    backend_->image_dir = dir_;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  UploadRequest Header(uint64_t size) {
    return UploadRequest{.pool = "vg0", .name = "up1", .format = ImageFormat::kRaw, .size_bytes = size};
  }
  // A failed upload leaves no slot, no file, and its operation ended as `state` with `why`.
  void ExpectNothingLeft(v1::OperationState state, const std::string& why) {
    auto slots = images_->List("vg0");
    ASSERT_TRUE(slots.ok());
    EXPECT_TRUE(slots->empty());
    EXPECT_TRUE(std::filesystem::is_empty(dir_));
    EXPECT_TRUE(journal_->Unfinished().empty());
    auto ended = journal_->Recent();
    ASSERT_EQ(ended.size(), 1u);
    EXPECT_EQ(ended[0].state, state);
    EXPECT_THAT(ended[0].message, HasSubstr(why));
  }
  std::string dir_;
};

TEST_F(ImageUploadTest, RawUploadLandsByteForByteAndIsReadyWithItsSha256) {
  // Chunks of odd sizes that straddle the writer's 4 MiB blocks and end off a 4 KiB boundary.
  const std::string data = testing::PseudoRandomBytes((5 << 20) + 12345, 7);
  std::vector<std::string> chunks = {data.substr(0, 1000), data.substr(1000, 4 << 20), data.substr(1000 + (4 << 20))};
  ChunksBody body(chunks);
  UploadRequest h = Header(data.size());
  h.sha256 = Sha256(data);
  std::transform(h.sha256.begin(), h.sha256.end(), h.sha256.begin(), ::toupper);  // either case is accepted
  auto image = images_->Upload(h, body);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_TRUE(image->ready);
  ASSERT_TRUE(image->record.has_value());
  EXPECT_EQ(image->record->sha256, Sha256(data));
  EXPECT_EQ(image->record->virtual_size, data.size());
  EXPECT_EQ(image->record->source, "upload");
  std::ifstream in(image->path, std::ios::binary);
  std::string on_disk(data.size(), '\0');
  in.read(on_disk.data(), static_cast<std::streamsize>(on_disk.size()));
  EXPECT_TRUE(on_disk == data) << "the slot's bytes differ from the upload";
  auto ended = journal_->Recent();
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0].state, v1::OPERATION_STATE_SUCCEEDED);
  EXPECT_EQ(ended[0].op.begin.type(), v1::OPERATION_KIND_IMPORT_IMAGE);
  auto transfer = images_->TransferOf(ended[0].op.id);
  ASSERT_TRUE(transfer.has_value());
  EXPECT_EQ(transfer->done, data.size());
  EXPECT_EQ(transfer->total, data.size());
}

TEST_F(ImageUploadTest, AStreamEndingShortOfSizeBytesIsDataLossAndLeavesNothing) {
  ChunksBody body({testing::PseudoRandomBytes(300000, 1)});
  auto image = images_->Upload(Header(1 << 20), body);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(image.status().message(), HasSubstr("size_bytes: the upload ended after 300000 of the 1048576"));
  ExpectNothingLeft(v1::OPERATION_STATE_FAILED, "truncated");
}

TEST_F(ImageUploadTest, MoreBytesThanSizeBytesIsInvalidArgumentAndLeavesNothing) {
  ChunksBody body({testing::PseudoRandomBytes(600000, 1), testing::PseudoRandomBytes(600000, 2)});
  auto image = images_->Upload(Header(1 << 20), body);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("chunk: the upload holds more than the 1048576 bytes"));
  ExpectNothingLeft(v1::OPERATION_STATE_FAILED, "more than");
}

TEST_F(ImageUploadTest, AChecksumMismatchIsFailedPreconditionAndLeavesNothing) {
  const std::string data = testing::PseudoRandomBytes(200000, 3);
  ChunksBody body({data});
  UploadRequest h = Header(data.size());
  h.sha256 = Sha256(data + "x");
  auto image = images_->Upload(h, body);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(image.status().message(), HasSubstr("checksum mismatch"));
  ExpectNothingLeft(v1::OPERATION_STATE_FAILED, "checksum mismatch");
}

TEST_F(ImageUploadTest, ACallerGoneMidStreamIsCancelledAndLeavesNothing) {
  ChunksBody body({testing::PseudoRandomBytes(100000, 4)}, absl::CancelledError("the caller cancelled the upload"));
  auto image = images_->Upload(Header(1 << 20), body);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kCancelled);
  ExpectNothingLeft(v1::OPERATION_STATE_CANCELLED, "the caller cancelled");
}

TEST_F(ImageUploadTest, DeletingTheImageWhileItUploadsCancelsIt) {
  ChunksBody body({testing::PseudoRandomBytes(100000, 5), testing::PseudoRandomBytes(100000, 6), testing::PseudoRandomBytes(100000, 7)});
  body.before_chunk = [&](size_t i) {
    if (i != 2) return;
    auto st = images_->Get("vg0", "up1");
    ASSERT_TRUE(st.ok());
    EXPECT_FALSE(st->ready);
    EXPECT_NE(st->operation_id, 0u);  // an operation a caller can follow
    ASSERT_TRUE(images_->Delete("vg0", "up1").ok());
  };
  auto image = images_->Upload(Header(300000), body);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kCancelled);
  ExpectNothingLeft(v1::OPERATION_STATE_CANCELLED, "cancelled");
}

TEST_F(ImageUploadTest, SizeBytesIsRequiredAndCappedAndNothingStartsWithoutIt) {
  ChunksBody body({"abc"});
  auto zero = images_->Upload(Header(0), body);
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(zero.status().message(), HasSubstr("size_bytes"));
  auto huge = images_->Upload(Header((64ull << 30) + 1), body);
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(huge.status().message(), HasSubstr("size_bytes: 68719476737 is over [images] max_virtual_size_mib"));
  UploadRequest bad = Header(3);
  bad.sha256 = "xyz";
  EXPECT_THAT(images_->Upload(bad, body).status().message(), HasSubstr("sha256"));
  bad = Header(3);
  bad.name = "../etc";
  EXPECT_THAT(images_->Upload(bad, body).status().message(), HasSubstr("name"));
  ExpectNothingStarted();
  EXPECT_TRUE(backend_->calls.empty());
}

TEST_F(ImageUploadTest, AnExistingImageNameIsAlreadyExistsAndTheBodyIsNotRead) {
  const std::string data = testing::PseudoRandomBytes(5000, 8);
  ChunksBody first({data});
  ASSERT_TRUE(images_->Upload(Header(data.size()), first).ok());
  bool read = false;
  ChunksBody second({data});
  second.before_chunk = [&](size_t) { read = true; };
  auto again = images_->Upload(Header(data.size()), second);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_FALSE(read);
}

TEST_F(ImageUploadTest, APoolThatSharesBlocksClonesTheImageAndCopiesNothing) {
  const std::string data = testing::PseudoRandomBytes(5000, 9);
  ChunksBody body({data});
  ASSERT_TRUE(images_->Upload(Header(data.size()), body).ok());
  backend_->can_clone = true;
  backend_->calls.clear();
  auto v = images_->CreateVolumeFromImage("vg0", "web1-root", 64 << 20, "up1");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->volume.name, "web1-root");
  EXPECT_EQ(v->volume.size_bytes, 64u << 20);
  // One backend call made the volume: no create-then-copy (a copy onto /dev/fake/... would fail).
  EXPECT_EQ(backend_->calls, std::vector<std::string>{"clone-image up1 web1-root"});
  auto small = images_->CreateVolumeFromImage("vg0", "web2-root", 100, "up1");
  EXPECT_EQ(small.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(small.status().message(), HasSubstr("size_bytes: "));
  EXPECT_EQ(backend_->calls.size(), 1u);
}

TEST_F(ImageUploadTest, APoolThatCannotShareBlocksCopiesTheImage) {
  const std::string data = testing::PseudoRandomBytes(5000, 10);
  ChunksBody body({data});
  ASSERT_TRUE(images_->Upload(Header(data.size()), body).ok());
  backend_->calls.clear();
  // The fake's volumes are files beside its image slots: the copy is real.
  auto v = images_->CreateVolumeFromImage("vg0", "web1-root", 0, "up1");
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_FALSE(backend_->calls.empty());
  EXPECT_EQ(backend_->calls[0], "create web1-root");
  EXPECT_EQ(std::count(backend_->calls.begin(), backend_->calls.end(), "clone-image up1 web1-root"), 0);
  std::ifstream copied(v->volume.path, std::ios::binary);
  std::string got((std::istreambuf_iterator<char>(copied)), std::istreambuf_iterator<char>());
  EXPECT_EQ(got.substr(0, data.size()), data);
}

// StartVolumeFromImage: the same volume as CreateVolumeFromImage, as an operation.
class VolumeFromImageTest : public ImageUploadTest {
 protected:
  void SetUp() override {
    ImageUploadTest::SetUp();
    data_ = testing::PseudoRandomBytes((9 << 20) + 4321, 11);  // three 4 MiB blocks of the copy, the last one short
    ChunksBody body({data_});
    ASSERT_TRUE(images_->Upload(Header(data_.size()), body).ok());
    backend_->calls.clear();
  }
  // The operation's end as the journal recorded it (the upload's comes after it, newest first).
  Journal::Ended EndOf(uint64_t id) {
    for (const auto& e : journal_->Recent()) {
      if (e.op.id == id) return e;
    }
    ADD_FAILURE() << "operation " << id << " has not ended";
    return {};
  }
  std::string data_;
};

TEST_F(VolumeFromImageTest, ACopyRunsAsAnOperationAndEndsWithTheImagesBytesOnTheVolume) {
  auto id = images_->StartVolumeFromImage({.pool = "vg0", .image = "up1", .volume = "web1-root"});
  ASSERT_TRUE(id.ok()) << id.status();
  images_->WaitForImports();
  Journal::Ended ended = EndOf(*id);
  EXPECT_EQ(ended.state, v1::OPERATION_STATE_SUCCEEDED) << ended.message;
  EXPECT_EQ(ended.op.begin.type(), v1::OPERATION_KIND_VOLUME_FROM_IMAGE);
  EXPECT_EQ(ended.op.begin.image(), "up1");
  ASSERT_EQ(ended.op.steps.size(), 1u);
  EXPECT_EQ(ended.op.steps[0].name(), "create-volume");
  EXPECT_EQ(ended.op.steps[0].volume().name(), "web1-root");
  auto transfer = images_->TransferOf(*id);
  ASSERT_TRUE(transfer.has_value());
  EXPECT_EQ(transfer->done, data_.size());
  EXPECT_EQ(transfer->total, data_.size());
  auto v = storage_->GetVolume("vg0", "web1-root");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->state, VolumeState::kAvailable);
  std::ifstream copied(v->volume.path, std::ios::binary);
  std::string got((std::istreambuf_iterator<char>(copied)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(got.substr(0, data_.size()) == data_) << "the volume's bytes differ from the image's";
}

TEST_F(VolumeFromImageTest, BadRequestsAreRefusedNamingTheFieldBeforeAnythingStarts) {
  ASSERT_TRUE(storage_->CreateVolume("vg0", {"taken", 1 << 20}).ok());
  backend_->calls.clear();
  const size_t journalled = journal_->Recent().size();
  struct Case {
    VolumeFromImageRequest r;
    absl::StatusCode code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{.pool = "vg0", .image = "nope", .volume = "v1"}, absl::StatusCode::kNotFound, "image: 'nope'"},
      {{.pool = "vg0", .image = "", .volume = "v1"}, absl::StatusCode::kInvalidArgument, "image: is required"},
      {{.pool = "vg0", .image = "up1", .volume = "../v1"}, absl::StatusCode::kInvalidArgument, "volume: '../v1'"},
      {{.pool = "vg0", .image = "up1", .volume = "taken"}, absl::StatusCode::kAlreadyExists, "volume: volume 'taken'"},
      {{.pool = "vg0", .image = "up1", .volume = "v1", .size_bytes = 4096}, absl::StatusCode::kInvalidArgument,
       "size_bytes: 4096 is smaller than image 'up1'"},
      {{.pool = "nopool", .image = "up1", .volume = "v1"}, absl::StatusCode::kNotFound, "nopool"},
  };
  for (const Case& c : cases) {
    auto id = images_->StartVolumeFromImage(c.r);
    EXPECT_EQ(id.status().code(), c.code) << c.says << ": " << id.status();
    EXPECT_THAT(id.status().message(), HasSubstr(c.says));
  }
  EXPECT_TRUE(journal_->Unfinished().empty());
  EXPECT_EQ(journal_->Recent().size(), journalled);
  for (const std::string& call : backend_->calls) EXPECT_EQ(call.rfind("create", 0), std::string::npos) << call;
}

TEST_F(VolumeFromImageTest, ACloneEndsAtOnceWithNothingCopied) {
  backend_->can_clone = true;
  auto id = images_->StartVolumeFromImage({.pool = "vg0", .image = "up1", .volume = "web2-root", .size_bytes = 64 << 20});
  ASSERT_TRUE(id.ok()) << id.status();
  images_->WaitForImports();
  EXPECT_EQ(EndOf(*id).state, v1::OPERATION_STATE_SUCCEEDED);
  EXPECT_EQ(backend_->calls, std::vector<std::string>{"clone-image up1 web2-root"});
  EXPECT_EQ(images_->TransferOf(*id)->done, data_.size());
}

TEST_F(VolumeFromImageTest, RecoveryDeletesTheVolumeACrashLeftHalfWritten) {
  // What a crash mid-copy leaves: the operation begun, its volume made, no end.
  internal::JournalBegin begin;
  begin.set_type(v1::OPERATION_KIND_VOLUME_FROM_IMAGE);
  begin.set_pool("vg0");
  begin.set_image("up1");
  auto id = journal_->Begin(begin);
  ASSERT_TRUE(id.ok());
  internal::JournalStep step;
  step.set_name("create-volume");
  step.mutable_volume()->set_pool("vg0");
  step.mutable_volume()->set_name("half");
  ASSERT_TRUE(journal_->Step(*id, step).ok());
  ASSERT_TRUE(storage_->CreateVolume("vg0", {"half", 16 << 20}).ok());
  ASSERT_TRUE(storage_->CreateVolume("vg0", {"other", 1 << 20}).ok());
  auto lines = images_->Recover();
  storage_->WaitForDeletes();
  ASSERT_FALSE(lines.empty());
  EXPECT_THAT(lines[0], HasSubstr("the partial volume is wiped and deleted"));
  EXPECT_EQ(storage_->GetVolume("vg0", "half").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(storage_->GetVolume("vg0", "other").ok()) << "recovery deleted a volume it did not make";
  EXPECT_TRUE(journal_->Unfinished().empty());
  EXPECT_EQ(EndOf(*id).state, v1::OPERATION_STATE_ROLLED_BACK);
}

TEST_F(VolumeFromImageTest, DeletingAVolumeWhileItIsFilledCancelsTheFillAndTheVolumeGoes) {
  std::atomic<bool> cancel{false};
  bool deleting_seen = false;
  auto v = storage_->CreateVolumeFilled(
      "vg0", {"filling", 1 << 20}, "a test",
      [&](const storage::VolumeInfo&) -> absl::Status {
        auto d = storage_->DeleteVolume("vg0", "filling");
        EXPECT_TRUE(d.ok()) << d.status();
        deleting_seen = d.ok() && d->state == VolumeState::kDeleting;
        return cancel ? absl::CancelledError("cancelled") : absl::OkStatus();
      },
      "", &cancel);
  EXPECT_TRUE(deleting_seen);
  EXPECT_EQ(v.status().code(), absl::StatusCode::kCancelled);
  storage_->WaitForDeletes();
  EXPECT_EQ(storage_->GetVolume("vg0", "filling").status().code(), absl::StatusCode::kNotFound);
  // Without a cancel flag a delete during the fill is refused, as before.
  auto kept = storage_->CreateVolumeFilled("vg0", {"filling2", 1 << 20}, "a test", [&](const storage::VolumeInfo&) {
    EXPECT_EQ(storage_->DeleteVolume("vg0", "filling2").status().code(), absl::StatusCode::kFailedPrecondition);
    return absl::OkStatus();
  });
  EXPECT_TRUE(kept.ok()) << kept.status();
}

// Export and CreateFromVolume read volumes: here sparse files of their own directory.
class VolumeExportTest : public ImageUploadTest {
 protected:
  void SetUp() override {
    ImageUploadTest::SetUp();
    char tmpl[] = "/var/tmp/hvagent-vols-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    vol_dir_ = tmpl;
    backend_->volume_dir = vol_dir_;
    images_ = std::make_unique<ImageService>(*storage_, *journal_, runner_,
                                             ImageService::Options{.scratch_dir = "/nonexistent", .hypervisor = &hv_});
  }
  void TearDown() override {
    std::filesystem::remove_all(vol_dir_);
    ImageUploadTest::TearDown();
  }
  // A volume of `data` (its size a multiple of 4 KiB), attached to `domain` when given.
  void MakeVolume(const std::string& name, const std::string& data, const std::string& domain = "") {
    auto v = storage_->CreateVolume("vg0", {name, data.size()});
    ASSERT_TRUE(v.ok()) << v.status();
    std::ofstream(v->volume.path, std::ios::binary | std::ios::in | std::ios::out).write(data.data(), data.size());
    if (!domain.empty()) {
      ASSERT_TRUE(backend_->SetAttachment(name, domain, storage::Ownership::kBorrowed).ok());
    }
  }
  void RunningDomain(const std::string& name) {
    ASSERT_TRUE(hv_.DefineDomain(hv::DomainSpec{.name = name, .vcpus = 1, .memory_mib = 64}).ok());
    ASSERT_TRUE(hv_.StartDomain(name).ok());
  }
  std::string vol_dir_;
};

// Collects an export as the caller would rebuild it.
class StringSink final : public storage::image::ExportSink {
 public:
  absl::Status Data(absl::string_view b) override {
    out.append(b.data(), b.size());
    return absl::OkStatus();
  }
  absl::Status Zeros(uint64_t n) override {
    out.append(n, '\0');
    return absl::OkStatus();
  }
  std::string out;
};

absl::StatusOr<storage::image::ExportResult> ExportOf(ImageService& images, ExportRequest r, StringSink& sink,
                                                      uint64_t* size = nullptr) {
  return images.Export(
      r, sink,
      [&](const ExportStart& start) {
        if (size != nullptr) *size = start.size_bytes;
        return absl::OkStatus();
      },
      nullptr);
}

// The files of a directory (none left by a qcow2 export).
std::vector<std::string> FilesIn(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

TEST_F(VolumeExportTest, ExportOfAFreeVolumeRebuildsItsBytesAndHashesThem) {
  std::string data = testing::PseudoRandomBytes(1 << 20, 3) + std::string(6 << 20, '\0') + testing::PseudoRandomBytes(1 << 20, 4);
  MakeVolume("data1", data);
  StringSink sink;
  uint64_t size = 0;
  auto r = ExportOf(*images_, {.pool = "vg0", .name = "data1"}, sink, &size);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(size, data.size());
  EXPECT_TRUE(sink.out == data);
  EXPECT_EQ(r->sha256, Sha256(data));
  EXPECT_EQ(r->zero_bytes, 6u << 20);
}

TEST_F(VolumeExportTest, ExportOfARunningDomainsVolumeIsRefusedUnlessTheCallerQuiescedIt) {
  RunningDomain("web1");
  MakeVolume("root1", testing::PseudoRandomBytes(64 << 10, 5), "web1");
  StringSink sink;
  auto r = ExportOf(*images_, {.pool = "vg0", .name = "root1"}, sink);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("running domain 'web1'"));
  EXPECT_TRUE(sink.out.empty());
  auto quiesced = ExportOf(*images_, {.pool = "vg0", .name = "root1", .domain_quiesced = true}, sink);
  EXPECT_TRUE(quiesced.ok()) << quiesced.status();
  // A paused domain's volume needs no promise.
  ASSERT_TRUE(hv_.SuspendDomain("web1").ok());
  StringSink again;
  EXPECT_TRUE(ExportOf(*images_, {.pool = "vg0", .name = "root1"}, again).ok());
}

TEST_F(VolumeExportTest, UnknownNamesAndPathCharactersAreClearErrorsBeforeAnyRead) {
  StringSink sink;
  auto r = ExportOf(*images_, {.pool = "vg0", .name = "../../etc/shadow"}, sink);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("name: '../../etc/shadow'"));
  r = ExportOf(*images_, {.pool = "vg0", .name = "nosuch"}, sink);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  r = ExportOf(*images_, {.pool = "vg0", .name = "nosuch", .image = true}, sink);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  r = ExportOf(*images_, {.pool = "nopool", .name = "x"}, sink);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(sink.out.empty());
}

TEST_F(VolumeExportTest, ImageFromARunningDomainsVolumePausesItForTheCopyAndResumesIt) {
  RunningDomain("web1");
  const std::string data = testing::PseudoRandomBytes(3 << 20, 9) + std::string(2 << 20, '\0');
  MakeVolume("root1", data, "web1");
  hv_.calls.clear();
  auto r = images_->CreateFromVolume("vg0", "root1", "tmpl1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->paused);
  EXPECT_THAT(hv_.calls, ::testing::ElementsAre("suspend web1", "resume web1"));
  EXPECT_EQ(hv_.GetDomain("web1")->state, hv::DomainState::kRunning);
  EXPECT_TRUE(r->image.ready);
  ASSERT_TRUE(r->image.record.has_value());
  EXPECT_EQ(r->image.record->sha256, Sha256(data));
  EXPECT_EQ(r->image.record->source, "volume:vg0/root1");
  auto ended = journal_->Recent();
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0].op.begin.type(), v1::OPERATION_KIND_IMAGE_FROM_VOLUME);
  // The image exports to the same bytes.
  StringSink sink;
  auto out = ExportOf(*images_, {.pool = "vg0", .name = "tmpl1", .image = true}, sink);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(sink.out == data);
}

TEST_F(VolumeExportTest, ImageFromARunningDomainsVolumeJournalsThePauseBeforeItAndItsReleaseAfter) {
  RunningDomain("web1");
  MakeVolume("root1", testing::PseudoRandomBytes(5 << 20, 28), "web1");
  auto r = images_->CreateFromVolume("vg0", "root1", "tmpl1");
  ASSERT_TRUE(r.ok()) << r.status();
  auto ended = journal_->Recent();
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0].op.begin.domain(), "web1");
  EXPECT_EQ(ended[0].op.begin.volume(), "root1");
  std::vector<std::string> steps;
  for (const auto& step : ended[0].op.steps) steps.push_back(step.name());
  EXPECT_THAT(steps, ::testing::ElementsAre("pause", "create-slot", "released", "seal"));
  // From a free volume nothing is paused, nothing journalled about a guest.
  MakeVolume("data1", testing::PseudoRandomBytes(1 << 20, 29));
  ASSERT_TRUE(images_->CreateFromVolume("vg0", "data1", "img2").ok());
  EXPECT_EQ(journal_->Recent().front().op.begin.domain(), "");
  EXPECT_THAT(journal_->Recent().front().op.steps, ::testing::SizeIs(2));  // create-slot, seal
}

// What a crash between the pause and the resume leaves, and what recovery does with it: the
// journal's open entry (pause journalled, no release), the guest still paused in the
// hypervisor, the partial image unsealed in the pool.
TEST_F(VolumeExportTest, RecoveryResumesTheGuestACrashLeftPausedForAnImageAndRemovesThePartialImage) {
  RunningDomain("web1");
  internal::JournalBegin b;
  b.set_type(v1::OPERATION_KIND_IMAGE_FROM_VOLUME);
  b.set_pool("vg0");
  b.set_image("tmpl1");
  b.set_volume("root1");
  b.set_domain("web1");
  uint64_t op = *journal_->Begin(b);
  for (const char* name : {"pause", "create-slot"}) {
    internal::JournalStep step;
    step.set_name(name);
    ASSERT_TRUE(journal_->Step(op, step).ok());
  }
  ASSERT_TRUE(hv_.SuspendDomain("web1").ok());
  ASSERT_TRUE(backend_->CreateImageSlot("tmpl1", 5 << 20).ok());
  auto lines = images_->Recover();
  EXPECT_THAT(lines, ::testing::Contains(::testing::AllOf(HasSubstr("tmpl1"), HasSubstr("resumed"),
                                                          HasSubstr("partial image was wiped and removed"))));
  EXPECT_EQ(hv_.GetDomain("web1")->state, hv::DomainState::kRunning);
  EXPECT_TRUE(images_->List("vg0")->empty());
  EXPECT_TRUE(journal_->Unfinished().empty());
  EXPECT_EQ(journal_->Recent().front().state, v1::OPERATION_STATE_ROLLED_BACK);
  // A guest someone else paused meanwhile, or that runs again, is left as it is.
  uint64_t again = *journal_->Begin(b);
  internal::JournalStep pause;
  pause.set_name("pause");
  ASSERT_TRUE(journal_->Step(again, pause).ok());
  hv_.calls.clear();
  images_->Recover();
  EXPECT_THAT(hv_.calls, ::testing::Not(::testing::Contains("resume web1")));
}

// The same crash for real: a child process runs the copy with the failpoint armed and is
// SIGKILLed half-way (the journal is a file, as in the agent). The pool and the hypervisor
// outlive the agent; here they are fakes in the test's memory, so the test puts in them what
// the dead child left there (the guest paused, the slot unsealed) before recovering.
TEST_F(VolumeExportTest, AnAgentKilledMidCopyLeavesAJournalWhoseRecoveryResumesTheGuest) {
  if (!failpoint::CompiledIn()) GTEST_SKIP() << "needs -DHVAGENT_FAILPOINTS=ON (the unit tier's build has them)";
  RunningDomain("web1");
  MakeVolume("root1", testing::PseudoRandomBytes(6 << 20, 30), "web1");  // two blocks: the failpoint is between them
  const std::string path = vol_dir_ + "/journal";
  {
    auto file_journal = Journal::Open(path);
    ASSERT_TRUE(file_journal.ok());
    ImageService agent(*storage_, **file_journal, runner_, ImageService::Options{.hypervisor = &hv_});
    EXPECT_EXIT(
        {
          setenv("HVAGENT_FAILPOINTS", "image_from_volume.mid_copy", 1);
          (void)agent.CreateFromVolume("vg0", "root1", "tmpl1");
          _exit(0);
        },
        ::testing::KilledBySignal(SIGKILL), "failpoint image_from_volume.mid_copy reached");
  }
  ASSERT_TRUE(hv_.SuspendDomain("web1").ok());
  ASSERT_TRUE(backend_->CreateImageSlot("tmpl1", 6 << 20).ok());
  auto reopened = Journal::Open(path);
  ASSERT_TRUE(reopened.ok());
  auto open_ops = (*reopened)->Unfinished();
  ASSERT_EQ(open_ops.size(), 1u);
  std::vector<std::string> steps;
  for (const auto& step : open_ops[0].steps) steps.push_back(step.name());
  EXPECT_THAT(steps, ::testing::ElementsAre("pause", "create-slot"));  // no release
  ImageService restarted(*storage_, **reopened, runner_, ImageService::Options{.hypervisor = &hv_});
  auto lines = restarted.Recover();
  EXPECT_THAT(lines, ::testing::Contains(HasSubstr("resumed")));
  EXPECT_EQ(hv_.GetDomain("web1")->state, hv::DomainState::kRunning);
  EXPECT_TRUE(restarted.List("vg0")->empty());
  EXPECT_TRUE((*reopened)->Unfinished().empty());
}

TEST_F(VolumeExportTest, ImageFromAFreeVolumePausesNothingAndAFailedOneLeavesNoImage) {
  RunningDomain("web1");
  MakeVolume("data1", testing::PseudoRandomBytes(1 << 20, 2));
  hv_.calls.clear();
  auto r = images_->CreateFromVolume("vg0", "data1", "img1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->paused);
  EXPECT_TRUE(hv_.calls.empty());
  // The same name again: refused before anything is read; an unknown volume names the field.
  EXPECT_EQ(images_->CreateFromVolume("vg0", "data1", "img1").status().code(), absl::StatusCode::kAlreadyExists);
  auto missing = images_->CreateFromVolume("vg0", "nosuch", "img2");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("volume: "));
  // A volume shorter on disk than recorded: the read fails, the partial image is removed.
  MakeVolume("short1", testing::PseudoRandomBytes(1 << 20, 6));
  ASSERT_EQ(truncate((vol_dir_ + "/vol-short1").c_str(), 4096), 0);
  auto failed = images_->CreateFromVolume("vg0", "short1", "img3");
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kDataLoss);
  auto all = images_->List("vg0");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].name, "img1");
}

TEST_F(VolumeExportTest, SnapshotExportSendsTheSnapshotsBytesNotTheVolumesLaterOnes) {
  backend_->snapshots = true;
  const std::string before = testing::PseudoRandomBytes(2 << 20, 11);
  MakeVolume("data1", before);
  ASSERT_TRUE(storage_->CreateSnapshot("vg0", "data1", "s1").ok());
  std::ofstream(vol_dir_ + "/vol-data1", std::ios::binary | std::ios::in | std::ios::out).write("changed", 7);
  StringSink sink;
  auto r = ExportOf(*images_, {.pool = "vg0", .name = "data1", .snapshot = "s1"}, sink);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(sink.out == before);
  EXPECT_EQ(r->sha256, Sha256(before));
  // Unknown and malformed snapshot names name the field; nothing is sent.
  StringSink none;
  auto missing = ExportOf(*images_, {.pool = "vg0", .name = "data1", .snapshot = "s2"}, none);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("snapshot: "));
  auto bad = ExportOf(*images_, {.pool = "vg0", .name = "data1", .snapshot = "../s1"}, none);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("snapshot: '../s1'"));
  EXPECT_TRUE(none.out.empty());
}

TEST_F(VolumeExportTest, DigestFirstAnnouncesTheSha256AndFailsAStreamWhoseBytesChanged) {
  // Three 4 MiB blocks of the reader, the last one short: while the first block is sent the
  // second is being read ahead, so only a change in the third is sure to be read back.
  const std::string data = testing::PseudoRandomBytes(9 << 20, 12);
  MakeVolume("data1", data);
  std::string announced;
  StringSink sink;
  auto ok = images_->Export({.pool = "vg0", .name = "data1", .digest_first = true}, sink,
                            [&](const ExportStart& s) {
                              announced = s.sha256;
                              return absl::OkStatus();
                            },
                            nullptr);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(announced, Sha256(data));
  // A writer changes the volume's last block once the first piece has gone out (the third block
  // is read only after the first has been sent): the bytes sent no longer match what was
  // announced, and the export fails rather than end as if whole.
  class ChangingSink final : public storage::image::ExportSink {
   public:
    explicit ChangingSink(std::string path) : path_(std::move(path)) {}
    absl::Status Data(absl::string_view) override {
      if (!changed_) std::ofstream(path_, std::ios::binary | std::ios::in | std::ios::out).seekp((9 << 20) - 10).write("x", 1);
      changed_ = true;
      return absl::OkStatus();
    }
    absl::Status Zeros(uint64_t) override { return absl::OkStatus(); }

   private:
    std::string path_;
    bool changed_ = false;
  } changing(vol_dir_ + "/vol-data1");
  auto r = images_->Export({.pool = "vg0", .name = "data1", .digest_first = true}, changing,
                           [](const ExportStart&) { return absl::OkStatus(); }, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(r.status().message(), HasSubstr("changed during the export"));
}

class Qcow2ExportTest : public VolumeExportTest {
 protected:
  void SetUp() override {
    VolumeExportTest::SetUp();
    scratch_ = vol_dir_ + "/scratch";
    images_ = std::make_unique<ImageService>(*storage_, *journal_, runner_,
                                             ImageService::Options{.scratch_dir = scratch_, .hypervisor = &hv_});
  }
  // qemu-img convert, played by a copy of the source with a marker in front of it.
  void ConvertWrites(const std::string& marker) {
    runner_.Always({"/usr/bin/qemu-img", "convert"}, [marker](const storage::Command& c) {
      std::ifstream in(c.argv[c.argv.size() - 2], std::ios::binary);
      std::ofstream out(c.argv.back(), std::ios::binary);
      out << marker << in.rdbuf();
      return testing::FakeCommandRunner::Ok();
    });
  }
  std::string scratch_;
};

TEST_F(Qcow2ExportTest, Qcow2IsConvertedIntoScratchStreamedAndTheFileRemoved) {
  const std::string data = testing::PseudoRandomBytes(1 << 20, 13);
  MakeVolume("data1", data);
  ConvertWrites("QFI\xfb");
  StringSink sink;
  uint64_t size = 0;
  auto r = ExportOf(*images_, {.pool = "vg0", .name = "data1", .format = ImageFormat::kQcow2}, sink, &size);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(sink.out == "QFI\xfb" + data);  // the converted file's bytes, not the volume's
  EXPECT_EQ(size, data.size() + 4);
  EXPECT_EQ(r->sha256, Sha256(sink.out));
  auto calls = runner_.calls();
  ASSERT_EQ(calls.size(), 1u);
  const std::vector<std::string> head = {"/usr/bin/qemu-img", "convert", "-U", "-f", "raw", "-T", "none", "-O", "qcow2",
                                         vol_dir_ + "/vol-data1"};
  EXPECT_EQ(std::vector<std::string>(calls[0].begin(), calls[0].end() - 1), head);
  EXPECT_EQ(calls[0].back().rfind(scratch_ + "/export-", 0), 0u) << calls[0].back();
  EXPECT_TRUE(FilesIn(scratch_).empty());
}

TEST_F(Qcow2ExportTest, AFailedConversionOrACallerGoneLeavesNothingInScratch) {
  MakeVolume("data1", testing::PseudoRandomBytes(3 << 20, 14));
  runner_.Expect({"/usr/bin/qemu-img", "convert"}, testing::FakeCommandRunner::Fail(1, "No space left on device"));
  StringSink sink;
  auto failed = ExportOf(*images_, {.pool = "vg0", .name = "data1", .format = ImageFormat::kQcow2}, sink);
  EXPECT_FALSE(failed.ok());
  EXPECT_THAT(failed.status().message(), HasSubstr("No space left"));
  EXPECT_TRUE(sink.out.empty());
  EXPECT_TRUE(FilesIn(scratch_).empty());
  // The caller goes away after the first piece: the export stops, the file goes.
  ConvertWrites("");
  class GoneSink final : public storage::image::ExportSink {
   public:
    absl::Status Data(absl::string_view) override { return absl::CancelledError("the caller went away"); }
    absl::Status Zeros(uint64_t) override { return absl::CancelledError("the caller went away"); }
  } gone;
  auto r = images_->Export({.pool = "vg0", .name = "data1", .format = ImageFormat::kQcow2}, gone,
                           [](const ExportStart&) { return absl::OkStatus(); }, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(FilesIn(scratch_).empty());
  // A file a crash left is removed at the next start.
  std::ofstream(scratch_ + "/export-999-1.qcow2") << "left";
  auto lines = images_->Recover();
  EXPECT_THAT(lines, ::testing::Contains(HasSubstr("export-999-1.qcow2")));
  EXPECT_TRUE(FilesIn(scratch_).empty());
}

// qemu-img convert, played by a program that writes part of its file and then runs until the
// runner's `cancelled` says stop (as SubprocessRunner kills it then), or 10 s.
void ConvertRunsUntilCancelled(testing::FakeCommandRunner& runner, std::atomic<bool>& converting) {
  runner.Always({"/usr/bin/qemu-img", "convert"}, [&converting](const storage::Command& c)
                                                       -> absl::StatusOr<storage::CommandResult> {
    std::ofstream(c.argv.back(), std::ios::binary) << std::string(1 << 20, 'q');
    converting = true;
    for (int i = 0; i < 1000; ++i) {
      if (c.cancelled && c.cancelled()) return absl::CancelledError("qemu-img was cancelled and killed");
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return testing::FakeCommandRunner::Ok();
  });
}

TEST_F(Qcow2ExportTest, ACallerGoneWhileQemuImgConvertsStopsItAndLeavesNothing) {
  MakeVolume("data1", testing::PseudoRandomBytes(3 << 20, 21));
  std::atomic<bool> converting{false};
  ConvertRunsUntilCancelled(runner_, converting);
  class LeavingSink final : public storage::image::ExportSink {
   public:
    explicit LeavingSink(std::atomic<bool>& converting) : converting_(converting) {}
    absl::Status Data(absl::string_view) override { return absl::OkStatus(); }
    absl::Status Zeros(uint64_t) override { return absl::OkStatus(); }
    bool CallerGone() const override { return converting_.load(); }  // gone once the convert runs

   private:
    std::atomic<bool>& converting_;
  } leaving(converting);
  bool started = false;
  const auto t0 = std::chrono::steady_clock::now();
  auto r = images_->Export({.pool = "vg0", .name = "data1", .format = ImageFormat::kQcow2}, leaving,
                           [&](const ExportStart&) {
                             started = true;
                             return absl::OkStatus();
                           },
                           nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));  // not the convert's 10 s
  EXPECT_FALSE(started);
  EXPECT_TRUE(FilesIn(scratch_).empty());  // the partial qcow2 file removed
  // The caller's own cancel flag stops it the same way.
  converting = false;
  StringSink sink;
  storage::image::CancelFlag cancel{false};
  std::thread canceller([&] {
    while (!converting) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    cancel = true;
  });
  auto cancelled = images_->Export({.pool = "vg0", .name = "data1", .format = ImageFormat::kQcow2}, sink,
                                   [](const ExportStart&) { return absl::OkStatus(); }, &cancel);
  canceller.join();
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(FilesIn(scratch_).empty());
}

TEST_F(Qcow2ExportTest, TooLittleFreeSpaceInScratchIsResourceExhaustedBeforeQemuImgRuns) {
  MakeVolume("data1", testing::PseudoRandomBytes(4 << 20, 22));
  std::string probed;
  uint64_t free_bytes = (4 << 20) + (4 << 20);  // the volume plus 4 MiB: short of the bound by its 1/4096
  images_ = std::make_unique<ImageService>(
      *storage_, *journal_, runner_,
      ImageService::Options{.scratch_dir = scratch_, .hypervisor = &hv_,
                            .free_space = [&](const std::string& dir) -> absl::StatusOr<uint64_t> {
                              probed = dir;
                              return free_bytes;
                            }});
  EXPECT_EQ(ImageService::Qcow2Bound(4 << 20), (4u << 20) + 1024 + (4u << 20));
  StringSink sink;
  auto r = ExportOf(*images_, {.pool = "vg0", .name = "data1", .format = ImageFormat::kQcow2}, sink);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("[images] scratch_dir: " + scratch_));
  EXPECT_THAT(r.status().message(), HasSubstr("needs up to 8389632"));
  EXPECT_EQ(probed, scratch_);
  EXPECT_TRUE(runner_.calls().empty());
  EXPECT_TRUE(sink.out.empty());
  // Raw needs no scratch room; enough room lets the qcow2 export run.
  EXPECT_TRUE(ExportOf(*images_, {.pool = "vg0", .name = "data1"}, sink).ok());
  free_bytes = ImageService::Qcow2Bound(4 << 20);
  ConvertWrites("QFI\xfb");
  StringSink again;
  EXPECT_TRUE(ExportOf(*images_, {.pool = "vg0", .name = "data1", .format = ImageFormat::kQcow2}, again).ok());
}

TEST_F(Qcow2ExportTest, TheRealProbeReadsTheFilesystemOfTheNearestExistingDirectory) {
  // scratch_ does not exist yet (made on first use): its parent's filesystem answers.
  ASSERT_FALSE(std::filesystem::exists(scratch_ + "/not/yet"));
  ImageService probe(*storage_, *journal_, runner_,
                     ImageService::Options{.scratch_dir = scratch_ + "/not/yet", .hypervisor = &hv_});
  MakeVolume("data1", testing::PseudoRandomBytes(1 << 20, 23));
  ConvertWrites("QFI\xfb");
  StringSink sink;
  EXPECT_TRUE(ExportOf(probe, {.pool = "vg0", .name = "data1", .format = ImageFormat::kQcow2}, sink).ok());
}

// The qcow2 an upload lands: `qemu-img info` describes it, `convert` is played as above.
class Qcow2UploadTest : public ImageUploadTest {
 protected:
  void SetUp() override {
    ImageUploadTest::SetUp();
    scratch_ = dir_ + "-scratch";
    images_ = std::make_unique<ImageService>(
        *storage_, *journal_, runner_,
        ImageService::Options{.scratch_dir = scratch_, .free_space = [this](const std::string&) { return free_; }});
    runner_.Always({"/usr/bin/qemu-img", "info"}, [](const storage::Command&) {
      return testing::FakeCommandRunner::Ok(R"({"format": "qcow2", "virtual-size": 2097152})");
    });
  }
  void TearDown() override {
    std::filesystem::remove_all(scratch_);
    ImageUploadTest::TearDown();
  }
  UploadRequest Qcow2(uint64_t size) {
    UploadRequest h = Header(size);
    h.format = ImageFormat::kQcow2;
    return h;
  }
  std::string scratch_;
  uint64_t free_ = 1ull << 40;
};

TEST_F(Qcow2UploadTest, ACallerGoneWhileQemuImgConvertsStopsItAndLeavesNothing) {
  std::atomic<bool> converting{false};
  ConvertRunsUntilCancelled(runner_, converting);
  ChunksBody body({testing::PseudoRandomBytes(64 << 10, 24)});
  body.caller_gone = [&] { return converting.load(); };
  auto r = images_->Upload(Qcow2(64 << 10), body);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  ExpectNothingLeft(v1::OPERATION_STATE_CANCELLED, "cancelled");
  EXPECT_FALSE(std::filesystem::exists(scratch_) && !std::filesystem::is_empty(scratch_));
}

TEST_F(Qcow2UploadTest, DeletingTheImageWhileQemuImgConvertsStopsItAndLeavesNothing) {
  std::atomic<bool> converting{false};
  ConvertRunsUntilCancelled(runner_, converting);
  std::thread deleter([&] {
    while (!converting) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    EXPECT_TRUE(images_->Delete("vg0", "up1").ok());  // an import under way: cancelled
  });
  ChunksBody body({testing::PseudoRandomBytes(64 << 10, 25)});
  auto r = images_->Upload(Qcow2(64 << 10), body);
  deleter.join();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  ExpectNothingLeft(v1::OPERATION_STATE_CANCELLED, "cancelled");
}

TEST_F(Qcow2UploadTest, TooLittleFreeSpaceInScratchIsRefusedBeforeTheUploadStarts) {
  free_ = (64 << 10) - 1;
  ChunksBody body({testing::PseudoRandomBytes(64 << 10, 26)});
  auto r = images_->Upload(Qcow2(64 << 10), body);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("[images] scratch_dir: "));
  ExpectNothingStarted();
  // A raw upload does not land in scratch: no check.
  ChunksBody raw({testing::PseudoRandomBytes(64 << 10, 27)});
  EXPECT_TRUE(images_->Upload(Header(64 << 10), raw).ok());
}

TEST_F(VolumeExportTest, Qcow2WithoutAScratchDirIsRefusedBeforeAnythingRuns) {
  MakeVolume("data1", testing::PseudoRandomBytes(1 << 20, 15));
  ImageService no_scratch(*storage_, *journal_, runner_, ImageService::Options{.hypervisor = &hv_});
  StringSink sink;
  auto r = ExportOf(no_scratch, {.pool = "vg0", .name = "data1", .format = ImageFormat::kQcow2}, sink);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("format: qcow2 needs [images] scratch_dir"));
  EXPECT_TRUE(runner_.calls().empty());
}

TEST_F(VolumeExportTest, ImageFromASnapshotOfARunningGuestsVolumePausesNothingAndHoldsTheSnapshotsBytes) {
  backend_->snapshots = true;
  RunningDomain("web1");
  const std::string at_snapshot = testing::PseudoRandomBytes(2 << 20, 16);
  MakeVolume("root1", at_snapshot, "web1");
  ASSERT_TRUE(storage_->CreateSnapshot("vg0", "root1", "s1").ok());
  std::ofstream(vol_dir_ + "/vol-root1", std::ios::binary | std::ios::in | std::ios::out).write("later", 5);
  hv_.calls.clear();
  auto r = images_->CreateFromVolume("vg0", "root1", "tmpl1", "s1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->paused);
  EXPECT_TRUE(hv_.calls.empty());  // the guest ran on throughout
  ASSERT_TRUE(r->image.record.has_value());
  EXPECT_EQ(r->image.record->sha256, Sha256(at_snapshot));
  EXPECT_EQ(r->image.record->source, "snapshot:vg0/root1@s1");
  // An unknown or malformed snapshot names the field; no image is left.
  auto missing = images_->CreateFromVolume("vg0", "root1", "tmpl2", "nosuch");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("snapshot: "));
  auto bad = images_->CreateFromVolume("vg0", "root1", "tmpl2", "../s1");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  auto all = images_->List("vg0");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 1u);
}

}  // namespace
}  // namespace hvagent::service
