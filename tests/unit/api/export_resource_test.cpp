// REST export (GET ...:export): the router's half against a recording writer, and the whole
// path through RestServer over a real socket (chunked body, digest header, refusals as JSON).
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/escaping.h"
#include "agent/api/rest/rest_router.h"
#include "agent/api/rest/rest_server.h"
#include "common/digest.h"
#include "tests/fakes/fake_command_runner.h"
#include "tests/fakes/free_port.h"
#include "tests/fakes/fake_hypervisor.h"
#include "tests/fakes/fake_storage_backend.h"

#include <cpprest/http_client.h>

namespace hvagent::api {
namespace {

using ::testing::HasSubstr;
using ::hvagent::testing::FreePort;

std::string Bytes(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(gen());
  return s;
}

std::string Sha256Hex(absl::string_view bytes) {
  auto d = *Digest::Create("sha256");
  d->Update(bytes);
  return d->HexFinal();
}

// What a transport would have sent.
class RecordingWriter final : public HttpBodyWriter {
 public:
  absl::Status Start(const HttpResponse& h) override {
    head = h;
    started = true;
    return absl::OkStatus();
  }
  absl::Status Write(absl::string_view b) override {
    if (fail_after >= 0 && static_cast<int64_t>(body.size()) >= fail_after) return absl::CancelledError("gone");
    body.append(b.data(), b.size());
    return absl::OkStatus();
  }
  void Finish() override { finished = true; }
  void Abort(const std::string& why) override { aborted = why; }
  HttpResponse head;
  std::string body;
  bool started = false;
  bool finished = false;
  std::string aborted;
  int64_t fail_after = -1;
};

class ExportResourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/var/tmp/hvagent-export-XXXXXX";  // ext4, not tmpfs: O_DIRECT reads work
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto backend = std::make_unique<testing::FakeStorageBackend>(storage::PoolConfig{.name = "vg0"});
    backend->volume_dir = dir_;
    backend->snapshots = true;
    std::vector<std::unique_ptr<storage::StorageBackend>> backends;
    backends.push_back(std::move(backend));
    storage_ = std::make_unique<service::StorageService>(hv_, std::move(backends));
    journal_ = *service::Journal::Open("");
    images_ = std::make_unique<service::ImageService>(*storage_, *journal_, runner_,
                                                      service::ImageService::Options{.hypervisor = &hv_});
    router_ = std::make_unique<RestRouter>(
        ops::Pipeline({.host = &host_, .storage = storage_.get(), .journal = journal_.get(), .images = images_.get()}, {}));
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void MakeVolume(const std::string& name, const std::string& data) {
    auto v = storage_->CreateVolume("vg0", {name, data.size()});
    ASSERT_TRUE(v.ok()) << v.status();
    std::ofstream(v->volume.path, std::ios::binary | std::ios::in | std::ios::out).write(data.data(), data.size());
  }
  std::optional<HttpResponse> Export(const std::string& path, RecordingWriter& out,
                                     std::map<std::string, std::string> query = {}) {
    return router_->HandleExport({"GET", path, std::move(query), ""}, out);
  }

  std::string dir_;
  testing::FakeHypervisor hv_;
  testing::FakeCommandRunner runner_;
  std::unique_ptr<service::Journal> journal_;
  service::HostService host_{hv_};
  std::unique_ptr<service::StorageService> storage_;
  std::unique_ptr<service::ImageService> images_;
  std::unique_ptr<RestRouter> router_;
};

TEST_F(ExportResourceTest, ExportStreamsTheBytesWithTheirDigestInTheHeaders) {
  const std::string data = Bytes(1 << 20, 1) + std::string(3 << 20, '\0') + Bytes(1 << 20, 2);
  MakeVolume("data1", data);
  EXPECT_TRUE(router_->IsExport("GET", "/v1/pools/vg0/volumes/data1:export"));
  EXPECT_FALSE(router_->IsExport("GET", "/v1/pools/vg0/volumes/data1"));
  RecordingWriter out;
  EXPECT_FALSE(Export("/v1/pools/vg0/volumes/data1:export", out).has_value());
  ASSERT_TRUE(out.started);
  EXPECT_TRUE(out.finished);
  EXPECT_TRUE(out.aborted.empty());
  EXPECT_TRUE(out.body == data);  // zero runs go out as zeros: HTTP has no holes
  const std::string hex = Sha256Hex(data);
  const std::string raw = absl::HexStringToBytes(hex);
  EXPECT_EQ(out.head.headers["Repr-Digest"], "sha-256=:" + absl::Base64Escape(raw) + ":");
  EXPECT_EQ(out.head.headers["X-Hvagent-Sha256"], hex);
  EXPECT_EQ(out.head.headers["X-Hvagent-Size-Bytes"], std::to_string(data.size()));
  EXPECT_EQ(out.head.content_type, "application/octet-stream");
}

TEST_F(ExportResourceTest, ASnapshotExportsByItsOwnPath) {
  const std::string data = Bytes(2 << 20, 3);
  MakeVolume("data1", data);
  ASSERT_TRUE(storage_->CreateSnapshot("vg0", "data1", "s1").ok());
  MakeVolume("data2", Bytes(4096, 4));
  RecordingWriter out;
  EXPECT_FALSE(Export("/v1/pools/vg0/volumes/data1/snapshots/s1:export", out).has_value());
  EXPECT_TRUE(out.body == data);
  RecordingWriter none;
  auto missing = Export("/v1/pools/vg0/volumes/data1/snapshots/s9:export", none);
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(missing->status, 404);
  EXPECT_THAT(missing->body, HasSubstr("snapshot: "));
  EXPECT_FALSE(none.started);
}

TEST_F(ExportResourceTest, RefusalsAreJsonBeforeAnyByteAndAFailureMidwayAbortsTheBody) {
  MakeVolume("data1", Bytes(6 << 20, 5));
  RecordingWriter out;
  auto r = Export("/v1/pools/vg0/volumes/nosuch:export", out);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 404);
  r = Export("/v1/pools/vg0/volumes/data1:export", out, {{"format", "IMAGE_FORMAT_QCOW2"}});
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 409);  // no scratch_dir on this agent
  EXPECT_THAT(r->body, HasSubstr("scratch_dir"));
  r = Export("/v1/pools/vg0/volumes/data1:export", out, {{"format", "IMAGE_FORMAT_VMDK"}});
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 400);
  EXPECT_FALSE(out.started);
  // The client goes away after 1 MiB: the body is cut, never finished as if whole.
  RecordingWriter gone;
  gone.fail_after = 1 << 20;
  EXPECT_FALSE(Export("/v1/pools/vg0/volumes/data1:export", gone).has_value());
  EXPECT_FALSE(gone.finished);
  EXPECT_THAT(gone.aborted, HasSubstr("gone"));
}

TEST_F(ExportResourceTest, OverASocketTheBodyIsChunkedAndWhole) {
  const std::string data = Bytes(3 << 20, 6) + std::string(20 << 20, '\0') + Bytes(1 << 20, 7);
  MakeVolume("big1", data);
  const std::string listen = "127.0.0.1:" + std::to_string(FreePort());
  RestServer server(listen, *router_, 4096);
  ASSERT_TRUE(server.Start().ok());
  web::http::client::http_client client("http://" + listen);
  auto resp = client.request(web::http::methods::GET, "/v1/pools/vg0/volumes/big1:export").get();
  EXPECT_EQ(resp.status_code(), 200);
  EXPECT_EQ(resp.headers()["Transfer-Encoding"], "chunked");
  EXPECT_EQ(resp.headers()["X-Hvagent-Sha256"], Sha256Hex(data));
  auto body = resp.extract_vector().get();
  EXPECT_EQ(body.size(), data.size());
  EXPECT_TRUE(std::string(body.begin(), body.end()) == data);
  auto refused = client.request(web::http::methods::GET, "/v1/pools/vg0/volumes/nosuch:export").get();
  EXPECT_EQ(refused.status_code(), 404);
  EXPECT_THAT(refused.extract_utf8string().get(), HasSubstr("NOT_FOUND"));
  server.Stop();
}

}  // namespace
}  // namespace hvagent::api
