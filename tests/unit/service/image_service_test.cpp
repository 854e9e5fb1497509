// ImageService's refusals: everything a request can get wrong is answered before an operation
// starts, naming the field, with nothing journalled and no backend change.
#include "agent/service/image_service.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/fakes/fake_command_runner.h"
#include "tests/fakes/fake_hypervisor.h"
#include "tests/fakes/fake_storage_backend.h"

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

}  // namespace
}  // namespace hvagent::service
