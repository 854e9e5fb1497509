// The volume channel end to end on loopback, in plain text (the development mode; TLS and the
// peer role are the integration tier's, tests/integration/test_migration.py): the source's
// client and the destination's server, with the destination's real IncomingMigrations on a
// fake host whose pool's volumes are files; and the source's gRPC peer choosing between the
// channel and gRPC's ReceiveVolume.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/api/grpc/grpc_services.h"
#include "agent/api/grpc/migration_peer_client.h"
#include "agent/api/volume_channel/connection.h"
#include "agent/api/volume_channel/volume_channel_client.h"
#include "agent/api/volume_channel/volume_channel_server.h"
#include "agent/service/incoming_migrations.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"
#include "tests/fakes/fake_storage_backend.h"
#include "tests/fakes/free_port.h"
#include "tests/fakes/fresh_temp_dir.h"
#include "tests/fakes/test_bytes.h"

namespace hvagent::api {
namespace {

using ::testing::HasSubstr;
namespace img = storage::image;

constexpr uint64_t kSize = 3 << 20;

class VolumeChannelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTempDir("/var/tmp/hvagent-vc");  // ext4: the writer's O_DIRECT works
    auto b = std::make_unique<testing::FakeStorageBackend>(storage::PoolConfig{.name = "vg0"}, 1ULL << 30);
    b->volume_dir = dir_;
    std::vector<std::unique_ptr<storage::StorageBackend>> backends;
    backends.push_back(std::move(b));
    storage_ = std::make_unique<service::StorageService>(hv_, std::move(backends));
    journal_ = *service::Journal::Open("");
    domains_ = std::make_unique<service::DomainService>(hv_, clock_, service::DomainService::Options{}, storage_.get(),
                                                        journal_.get());
    incoming_ = std::make_unique<service::IncomingMigrations>(*domains_, *storage_, hv_, *journal_, clock_,
                                                              service::IncomingMigrations::Options{});
    pipeline_ = std::make_unique<ops::Pipeline>(
        ops::Services{.domains = domains_.get(), .storage = storage_.get(), .incoming = incoming_.get()},
        ops::Pipeline::Options{});
    server_ = std::make_unique<VolumeChannelServer>(*pipeline_, VolumeChannelServer::Options{.host = "127.0.0.1"});
    ASSERT_TRUE(server_->Start().ok());
    ASSERT_GT(server_->port(), 0);

    // The source volume: data, a zero run, data (the zero run goes as one 'Z' frame).
    content_ = testing::PseudoRandomBytes(kSize, 5);
    std::fill(content_.begin() + (1 << 20), content_.begin() + (2 << 20), '\0');
    source_ = dir_ + "/source";
    std::ofstream(source_, std::ios::binary).write(content_.data(), content_.size());
  }
  void TearDown() override {
    server_.reset();
    if (storage_) storage_->WaitForDeletes();
  }

  static service::IncomingPlan Plan() {
    service::IncomingPlan p;
    p.spec = {.name = "web3", .uuid = "1a6f2a62-1d4e-4c4b-8f3e-7a9d2c1e5f41", .vcpus = 1, .memory_mib = 128};
    p.spec.disks.push_back({.source_path = "", .type = hv::DiskType::kBlock, .target = "vda"});
    p.volumes.push_back({0, {.pool = "vg0", .name = "web3-root", .create_size_bytes = kSize}});
    p.source_host = "src";
    return p;
  }
  std::string Prepare() {
    auto id = incoming_->Prepare(Plan());
    EXPECT_TRUE(id.ok()) << id.status();
    return id.value_or("");
  }
  v1::ReceiveVolumeHeader Header(const std::string& transfer, uint64_t size = kSize) {
    v1::ReceiveVolumeHeader h;
    h.set_transfer_id(transfer);
    h.set_disk(0);
    h.set_size_bytes(size);
    return h;
  }
  // The source's real export of `source_`, counting what it handed over.
  service::MigrationPeer::Producer Export(uint64_t* handed = nullptr) {
    return [this, handed](img::ExportSink& sink) -> absl::StatusOr<img::ExportResult> {
      struct Counting final : img::ExportSink {
        Counting(img::ExportSink& s, uint64_t* n) : s(s), n(n) {}
        absl::Status Data(absl::string_view b) override {
          if (auto st = s.Data(b); !st.ok()) return st;
          if (n) *n += b.size();
          return absl::OkStatus();
        }
        absl::Status Zeros(uint64_t z) override {
          if (auto st = s.Zeros(z); !st.ok()) return st;
          if (n) *n += z;
          return absl::OkStatus();
        }
        img::ExportSink& s;
        uint64_t* n;
      } counting(sink, handed);
      auto r = img::ExportDevice(source_, kSize, counting, nullptr, /*direct=*/false);
      if (r.ok()) sent_sha_ = r->sha256;
      return r;
    };
  }
  std::vector<std::string> VolumeNames() {
    storage_->WaitForDeletes();
    std::vector<std::string> out;
    auto all = storage_->ListVolumes("vg0");
    if (!all.ok()) return {"<" + std::string(all.status().message()) + ">"};
    for (const auto& v : *all) out.push_back(v.volume.name);
    return out;
  }
  // A raw connection to the server, for senders that break the rules.
  std::unique_ptr<volume_channel::Connection> Dial() {
    raw_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(server_->port()));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(raw_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    return std::make_unique<volume_channel::Connection>(raw_fd_, nullptr);
  }

  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  std::string dir_, source_, content_, sent_sha_;
  std::unique_ptr<service::StorageService> storage_;
  std::unique_ptr<service::Journal> journal_;
  std::unique_ptr<service::DomainService> domains_;
  std::unique_ptr<service::IncomingMigrations> incoming_;
  std::unique_ptr<ops::Pipeline> pipeline_;
  std::unique_ptr<VolumeChannelServer> server_;
  int raw_fd_ = -1;
  const PeerTls plain_{.plaintext = true};
};

// The source's gRPC peer (migration_peer_client.h) against the destination's gRPC service,
// whose messages may be at most `max_message` bytes.
class PeerTest : public VolumeChannelTest {
 protected:
  void StartGrpc(int max_message) {
    grpc_service_ = std::make_unique<MigrationGrpcService>(*pipeline_, workers_);
    grpc::ServerBuilder b;
    address_ = "127.0.0.1:" + std::to_string(testing::FreePort());
    int bound = 0;
    b.AddListeningPort(address_, grpc::InsecureServerCredentials(), &bound);
    b.SetMaxReceiveMessageSize(max_message);
    b.RegisterService(grpc_service_.get());
    grpc_ = b.BuildAndStart();
    ASSERT_GT(bound, 0);
  }
  void TearDown() override {
    if (grpc_) grpc_->Shutdown();
    VolumeChannelTest::TearDown();
  }
  // Prepares a transfer through the peer and sends the volume; answers what the destination
  // wrote.
  absl::StatusOr<service::ReceivedVolume> Move() {
    auto peer = GrpcPeerFactory(plain_, "src")(address_);
    if (!peer.ok()) return peer.status();
    auto t = (*peer)->Prepare(Plan());
    if (!t.ok()) return t.status();
    return (*peer)->SendVolume(*t, 0, kSize, Export());
  }
  WorkerPool workers_{4};
  std::unique_ptr<MigrationGrpcService> grpc_service_;
  std::unique_ptr<grpc::Server> grpc_;
  std::string address_;
};

TEST_F(PeerTest, TheBytesTakeTheChannelTheDestinationNames) {
  // 4 KiB messages: enough for PrepareIncoming, not for one of ReceiveVolume's 256 KiB pieces,
  // so only the channel can have carried the volume.
  StartGrpc(4096);
  incoming_->SetDataPort(server_->port());
  auto got = Move();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->sha256, sent_sha_);
  EXPECT_EQ(testing::ReadWholeFile(dir_ + "/vol-web3-root"), content_);
}

TEST_F(PeerTest, ASourceThatCannotReachTheChannelSendsOverGrpcInstead) {
  StartGrpc(4 << 20);
  // The destination names a port where nothing listens (a firewall that passes only gRPC
  // looks the same to the source: no connection).
  const int closed = server_->port();
  server_->Stop();
  incoming_->SetDataPort(closed);
  auto got = Move();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->sha256, sent_sha_);
  EXPECT_EQ(testing::ReadWholeFile(dir_ + "/vol-web3-root"), content_);
}

TEST_F(VolumeChannelTest, AVolumeCrossesWhole) {
  const std::string t = Prepare();
  auto r = SendVolumeOverChannel("127.0.0.1", server_->port(), plain_, Header(t), Export());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->code(), 0u) << r->message();
  EXPECT_EQ(r->response().size_bytes(), kSize);
  EXPECT_EQ(r->response().sha256(), sent_sha_);  // what the destination wrote is what was read
  EXPECT_EQ(testing::ReadWholeFile(dir_ + "/vol-web3-root"), content_);
  EXPECT_THAT(VolumeNames(), ::testing::ElementsAre("web3-root"));
}

TEST_F(VolumeChannelTest, TheDestinationsRefusalStopsTheSenderEarly) {
  // A sender with 256 MiB to go: the destination refuses at the header and reads on (so that
  // its answer is not lost to a reset); the sender sees the answer between its frames.
  constexpr uint64_t kBig = 256ULL << 20;
  uint64_t handed = 0;
  auto many = [&handed](img::ExportSink& sink) -> absl::StatusOr<img::ExportResult> {
    const std::string mib(1 << 20, 'x');
    for (uint64_t at = 0; at < kBig; at += mib.size()) {
      if (auto s = sink.Data(mib); !s.ok()) return s;
      handed += mib.size();
    }
    return img::ExportResult{.bytes = kBig};
  };
  auto r = SendVolumeOverChannel("127.0.0.1", server_->port(), plain_, Header("no-such-transfer", kBig), many);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->code(), static_cast<uint32_t>(absl::StatusCode::kNotFound));
  EXPECT_THAT(r->message(), HasSubstr("transfer_id: no open transfer 'no-such-transfer'"));
  EXPECT_LT(handed, kBig);
  EXPECT_TRUE(VolumeNames().empty());
}

TEST_F(VolumeChannelTest, ASenderThatStopsHalfWayLeavesNoVolumeAndMayRetry) {
  const std::string t = Prepare();
  auto half = [](img::ExportSink& sink) -> absl::StatusOr<img::ExportResult> {
    if (auto s = sink.Data(std::string(1 << 20, 'x')); !s.ok()) return s;
    return absl::CancelledError("cancelled");
  };
  auto r = SendVolumeOverChannel("127.0.0.1", server_->port(), plain_, Header(t), half);
  EXPECT_TRUE(absl::IsCancelled(r.status())) << r.status();
  // The destination saw the connection end short and deleted what it had written (waited for
  // up to 10 s: a loaded machine may run the destination's thread late).
  for (int i = 0; i < 1000 && !VolumeNames().empty(); ++i) usleep(10000);
  EXPECT_TRUE(VolumeNames().empty());
  // The transfer is still open: the same disk goes whole the second time.
  std::vector<std::string> names;
  for (int i = 0; i < 1000; ++i) {
    auto again = SendVolumeOverChannel("127.0.0.1", server_->port(), plain_, Header(t), Export());
    ASSERT_TRUE(again.ok()) << again.status();
    if (again->code() == static_cast<uint32_t>(absl::StatusCode::kFailedPrecondition)) {  // still being undone
      usleep(10000);
      continue;
    }
    EXPECT_EQ(again->code(), 0u) << again->message();
    break;
  }
  EXPECT_EQ(testing::ReadWholeFile(dir_ + "/vol-web3-root"), content_);
}

TEST_F(VolumeChannelTest, ASizeThatIsNotThePreparedOneIsRefusedNamingIt) {
  const std::string t = Prepare();
  auto conn = Dial();
  ASSERT_TRUE(volume_channel::WriteMessage(*conn, Header(t, 1 << 20)).ok());
  const std::string data = testing::PseudoRandomBytes(1 << 20, 7);
  ASSERT_TRUE(volume_channel::WriteFrameHead(*conn, volume_channel::kData, data.size()).ok());
  ASSERT_TRUE(conn->WriteAll(data.data(), data.size()).ok());
  ASSERT_TRUE(volume_channel::WriteTrailer(*conn, std::string(64, '0')).ok());
  v1::ReceiveVolumeResult r;
  ASSERT_TRUE(volume_channel::ReadMessage(*conn, &r, "result").ok());
  EXPECT_EQ(r.code(), static_cast<uint32_t>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(r.message(), HasSubstr("size_bytes: 1048576 is not the prepared size 3145728"));
  close(raw_fd_);
}

TEST_F(VolumeChannelTest, AShaThatDiffersIsDataLossAndTheVolumeGoes) {
  const std::string t = Prepare();
  auto conn = Dial();
  ASSERT_TRUE(volume_channel::WriteMessage(*conn, Header(t)).ok());
  ASSERT_TRUE(volume_channel::WriteFrameHead(*conn, volume_channel::kZeros, kSize).ok());
  ASSERT_TRUE(volume_channel::WriteTrailer(*conn, std::string(64, '0')).ok());
  v1::ReceiveVolumeResult r;
  ASSERT_TRUE(volume_channel::ReadMessage(*conn, &r, "result").ok());
  EXPECT_EQ(r.code(), static_cast<uint32_t>(absl::StatusCode::kDataLoss));
  EXPECT_THAT(r.message(), HasSubstr("sha256: the sender read 0000"));
  close(raw_fd_);
  EXPECT_TRUE(VolumeNames().empty());
}

TEST_F(VolumeChannelTest, AFrameOverTheLimitOrOfNoKindIsRefusedNamingIt) {
  for (const auto& [kind, value, expect] :
       std::vector<std::tuple<char, uint64_t, std::string>>{{volume_channel::kData, 2 << 20, "data: a frame of 2097152 bytes"},
                                                            {'Q', 1, "frame: kind 81 is none of"}}) {
    const std::string t = Prepare();
    auto conn = Dial();
    ASSERT_TRUE(volume_channel::WriteMessage(*conn, Header(t)).ok());
    ASSERT_TRUE(volume_channel::WriteFrameHead(*conn, kind, value).ok());
    v1::ReceiveVolumeResult r;
    ASSERT_TRUE(volume_channel::ReadMessage(*conn, &r, "result").ok());
    EXPECT_EQ(r.code(), static_cast<uint32_t>(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(r.message(), HasSubstr(expect));
    close(raw_fd_);
    EXPECT_TRUE(VolumeNames().empty());
    ASSERT_TRUE(incoming_->Abort(t).ok());
  }
}

TEST_F(VolumeChannelTest, NothingListensOnAPortThatIsNotTheChannels) {
  const int port = server_->port();
  server_->Stop();
  auto r = SendVolumeOverChannel("127.0.0.1", port, plain_, Header("t"), Export());
  EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("cannot connect to 127.0.0.1:"));
}

}  // namespace
}  // namespace hvagent::api
