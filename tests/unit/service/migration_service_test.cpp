// Cold migration between two fake hosts: the source's MigrationService talks to the
// destination's IncomingMigrations through a loopback MigrationPeer (what the gRPC client
// carries in the agent). Every failure leaves the source as it was and the destination empty.
#include "agent/service/migration_service.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/service/incoming_migrations.h"
#include "common/host_path_policy.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"
#include "tests/fakes/fake_storage_backend.h"
#include "tests/fakes/test_bytes.h"

namespace hvagent::service {
namespace {

using ::testing::HasSubstr;


// One host: a hypervisor, one pool "vg0" whose volumes are files of `dir`, a journal, domains.
struct Host {
  explicit Host(const std::string& dir, uint64_t capacity = 1ULL << 30, const HostPathPolicy* paths = nullptr) {
    auto b = std::make_unique<testing::FakeStorageBackend>(storage::PoolConfig{.name = "vg0"}, capacity);
    b->volume_dir = dir;
    backend = b.get();
    std::vector<std::unique_ptr<storage::StorageBackend>> backends;
    backends.push_back(std::move(b));
    storage = std::make_unique<StorageService>(hv, std::move(backends));
    journal = *Journal::Open("");
    domains = std::make_unique<DomainService>(hv, clock, DomainService::Options{.host_paths = paths}, storage.get(),
                                              journal.get());
    incoming = std::make_unique<IncomingMigrations>(*domains, *storage, hv, *journal, clock,
                                                    IncomingMigrations::Options{});
  }
  std::vector<std::string> VolumeNames() {
    storage->WaitForDeletes();
    std::vector<std::string> out;
    auto all = storage->ListVolumes("vg0");
    if (!all.ok()) return {"<" + std::string(all.status().message()) + ">"};
    for (const auto& v : *all) out.push_back(v.volume.name);
    return out;
  }
  testing::FakeHypervisor hv;
  testing::FakeClock clock;
  testing::FakeStorageBackend* backend = nullptr;
  std::unique_ptr<StorageService> storage;
  std::unique_ptr<Journal> journal;
  std::unique_ptr<DomainService> domains;
  std::unique_ptr<IncomingMigrations> incoming;
};

// Pieces of one volume, replayed to the destination (with faults a test asks for).
class PieceStream final : public VolumeStream {
 public:
  PieceStream(std::vector<VolumePiece> pieces, size_t break_after) : pieces_(std::move(pieces)), break_after_(break_after) {}
  absl::StatusOr<VolumePiece> Next() override {
    if (next_ >= break_after_) return absl::CancelledError("the sender went away");
    if (next_ >= pieces_.size()) return absl::CancelledError("stream ended without a trailer");
    return pieces_[next_++];
  }

 private:
  std::vector<VolumePiece> pieces_;
  size_t break_after_;
  size_t next_ = 0;
};

class CollectingSink final : public storage::image::ExportSink {
 public:
  absl::Status Data(absl::string_view b) override {
    pieces.push_back({VolumePiece::Kind::kData, std::string(b), 0, ""});
    return absl::OkStatus();
  }
  absl::Status Zeros(uint64_t n) override {
    pieces.push_back({VolumePiece::Kind::kZeros, "", n, ""});
    zero_pieces += n;
    return absl::OkStatus();
  }
  std::vector<VolumePiece> pieces;
  uint64_t zero_pieces = 0;
};

// The destination's IncomingMigrations as the source reaches it, with faults on demand.
class LoopbackPeer final : public MigrationPeer {
 public:
  explicit LoopbackPeer(Host& dest) : dest_(dest) {}
  size_t break_stream_after = SIZE_MAX;  // pieces delivered before the link breaks
  bool corrupt = false;                  // flips one byte on the way
  absl::Status fail_finish;
  std::function<void()> before_finish;
  std::function<void()> before_send;
  uint64_t zero_bytes_sent = 0;
  uint64_t data_bytes_sent = 0;

  absl::StatusOr<std::string> Prepare(const IncomingPlan& plan) override { return dest_.incoming->Prepare(plan); }
  std::function<void(LiveTarget&)> tamper_live;  // a hostile destination's answer
  absl::StatusOr<LiveTarget> PrepareLive(const IncomingPlan& plan) override {
    auto t = dest_.incoming->PrepareLive(plan);
    if (t.ok() && tamper_live) tamper_live(*t);
    return t;
  }
  absl::StatusOr<ReceivedVolume> SendVolume(const std::string& t, size_t disk, uint64_t size,
                                            const Producer& produce) override {
    if (before_send) before_send();
    CollectingSink sink;
    auto sent = produce(sink);
    if (!sent.ok()) return sent.status();
    zero_bytes_sent += sink.zero_pieces;
    for (auto& p : sink.pieces) {
      data_bytes_sent += p.data.size();
      if (corrupt && !p.data.empty()) {
        p.data[0] ^= 1;
        corrupt = false;
      }
    }
    sink.pieces.push_back({VolumePiece::Kind::kEnd, "", 0, sent->sha256});
    PieceStream stream(std::move(sink.pieces), break_stream_after);
    return dest_.incoming->Receive(t, disk, size, stream);
  }
  absl::Status Finish(const std::string& t) override {
    if (before_finish) before_finish();
    if (!fail_finish.ok()) return fail_finish;
    return dest_.incoming->Finish(t).status();
  }
  absl::Status Abort(const std::string& t) override {
    if (unreachable) return absl::UnavailableError("failed to connect to all addresses");
    return dest_.incoming->Abort(t);
  }
  // The destination agent gone (killed, cut off): its heartbeat answers this instead.
  std::atomic<bool> unreachable{false};
  std::atomic<int> keeps{0}, unanswered{0};
  absl::Status Keep(const std::string& t, std::chrono::milliseconds) override {
    ++keeps;
    if (unreachable) {
      ++unanswered;
      return absl::DeadlineExceededError("Deadline Exceeded");
    }
    return dest_.incoming->Keep(t);
  }

 private:
  Host& dest_;
};

// What the service owns per connection; the test keeps the peer (and its counters).
class Forwarder final : public MigrationPeer {
 public:
  explicit Forwarder(MigrationPeer& p) : p_(p) {}
  absl::StatusOr<std::string> Prepare(const IncomingPlan& plan) override { return p_.Prepare(plan); }
  absl::StatusOr<LiveTarget> PrepareLive(const IncomingPlan& plan) override { return p_.PrepareLive(plan); }
  absl::StatusOr<ReceivedVolume> SendVolume(const std::string& t, size_t disk, uint64_t size,
                                            const Producer& produce) override {
    return p_.SendVolume(t, disk, size, produce);
  }
  absl::Status Finish(const std::string& t) override { return p_.Finish(t); }
  absl::Status Abort(const std::string& t) override { return p_.Abort(t); }
  absl::Status Keep(const std::string& t, std::chrono::milliseconds d) override { return p_.Keep(t, d); }

 private:
  MigrationPeer& p_;
};

class MigrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (std::string* d : {&src_dir_, &dst_dir_}) {
      char tmpl[] = "/var/tmp/hvagent-migrate-XXXXXX";  // ext4: O_DIRECT works
      ASSERT_NE(mkdtemp(tmpl), nullptr);
      *d = tmpl;
    }
    src_ = std::make_unique<Host>(src_dir_, 1ULL << 30, src_paths_);
    dst_ = std::make_unique<Host>(dst_dir_, dest_capacity_);
    peer_ = std::make_unique<LoopbackPeer>(*dst_);
    migrations_ = std::make_unique<MigrationService>(
        *src_->domains, *src_->storage, src_->hv, *src_->journal,
        [this](const std::string& to) -> absl::StatusOr<std::unique_ptr<MigrationPeer>> {
          destinations_.push_back(to);
          if (!connect_error_.ok()) return connect_error_;
          return std::unique_ptr<MigrationPeer>(new Forwarder(*peer_));
        });
  }
  void TearDown() override {
    migrations_.reset();
    // An owned volume released by a move is deleted in the background; let it finish with its
    // file before the directory goes (else both remove the same file).
    for (Host* h : {src_.get(), dst_.get()}) {
      if (h != nullptr) h->storage->WaitForDeletes();
    }
    std::filesystem::remove_all(src_dir_);
    std::filesystem::remove_all(dst_dir_);
  }
  // web1 with a root volume (owned) of 1 MiB data, 6 MiB zeros, 1 MiB data.
  void MakeDomain(bool start) {
    hv::DomainSpec spec{.name = "web1", .uuid = "6f1c3c5e-4b39-4c1a-9d3e-2d1f0a7b8c9d", .vcpus = 2, .memory_mib = 256};
    spec.disks.push_back({.source_path = "", .target = "vda"});
    spec.labels["tenant"] = "blue";
    auto d = src_->domains->Create(spec, start, {{0, {.pool = "vg0", .name = "web1-root", .create_size_bytes = 8 << 20}}});
    ASSERT_TRUE(d.ok()) << d.status();
    content_ = testing::PseudoRandomBytes(1 << 20, 3) + std::string(6 << 20, '\0') + testing::PseudoRandomBytes(1 << 20, 4);
    std::ofstream(src_dir_ + "/vol-web1-root", std::ios::binary | std::ios::in | std::ios::out)
        .write(content_.data(), content_.size());
  }
  absl::StatusOr<uint64_t> Migrate(RunningPolicy policy = RunningPolicy::kRefuse) {
    return migrations_->Migrate({.name = "web1", .destination = "dst.example:50051", .running = policy});
  }
  Journal::Ended Ended(uint64_t id) {
    migrations_->WaitForMigrations();
    for (const auto& e : src_->journal->Recent()) {
      if (e.op.id == id) return e;
    }
    ADD_FAILURE() << "operation " << id << " did not end";
    return {};
  }
  bool MigrationJournalled() {
    for (const auto& e : src_->journal->Recent()) {
      if (e.op.begin.type() == v1::OPERATION_KIND_MIGRATE_DOMAIN) return true;
    }
    return !src_->journal->Unfinished().empty();
  }
  // The source still has web1 and its root as before; the destination has neither.
  void ExpectSourceKeptDestinationClean(bool running) {
    auto d = src_->hv.GetDomain("web1");
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(hv::IsActive(d->state), running);
    EXPECT_EQ(testing::ReadWholeFile(src_dir_ + "/vol-web1-root"), content_);
    EXPECT_THAT(src_->VolumeNames(), ::testing::ElementsAre("web1-root"));
    EXPECT_TRUE(absl::IsNotFound(dst_->hv.GetDomain("web1").status()));
    EXPECT_TRUE(dst_->VolumeNames().empty());
    EXPECT_TRUE(std::filesystem::is_empty(dst_dir_));
    EXPECT_TRUE(dst_->journal->Unfinished().empty());
    EXPECT_TRUE(src_->journal->Unfinished().empty());
  }

  uint64_t dest_capacity_ = 1ULL << 30;
  const HostPathPolicy* src_paths_ = nullptr;  // where the source's host files may come from
  std::string src_dir_, dst_dir_, content_;
  std::unique_ptr<Host> src_, dst_;
  std::unique_ptr<LoopbackPeer> peer_;
  absl::Status connect_error_;
  std::vector<std::string> destinations_;
  std::unique_ptr<MigrationService> migrations_;
};

TEST_F(MigrationTest, StoppedDomainMovesWithItsBytesUuidAndOwnershipAndLeavesTheSource) {
  MakeDomain(/*start=*/false);
  auto id = Migrate();
  ASSERT_TRUE(id.ok()) << id.status();
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_SUCCEEDED) << e.message;
  auto moved = dst_->hv.GetDomain("web1");
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(moved->uuid, "6f1c3c5e-4b39-4c1a-9d3e-2d1f0a7b8c9d");
  EXPECT_EQ(moved->vcpus, 2u);
  EXPECT_EQ(moved->labels.at("tenant"), "blue");
  EXPECT_FALSE(hv::IsActive(moved->state));
  EXPECT_EQ(testing::ReadWholeFile(dst_dir_ + "/vol-web1-root"), content_);
  auto vol = dst_->storage->GetVolume("vg0", "web1-root");
  ASSERT_TRUE(vol.ok());
  EXPECT_EQ(vol->volume.attached_to, "web1");
  EXPECT_EQ(vol->volume.ownership, storage::Ownership::kOwned);
  EXPECT_EQ((*dst_->hv.GetDomainDisks("web1"))[0].source_path, dst_dir_ + "/vol-web1-root");
  // Gone from the source, volume included.
  EXPECT_TRUE(absl::IsNotFound(src_->hv.GetDomain("web1").status()));
  EXPECT_TRUE(src_->VolumeNames().empty());
  // Zero runs did not travel as bytes; progress reached the total.
  EXPECT_EQ(peer_->zero_bytes_sent, 6u << 20);
  EXPECT_EQ(peer_->data_bytes_sent, 2u << 20);
  auto t = migrations_->TransferOf(*id);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->done, 8u << 20);
  EXPECT_EQ(t->total, 8u << 20);
  EXPECT_EQ(destinations_.front(), "dst.example:50051");
  EXPECT_TRUE(dst_->journal->Unfinished().empty());
}

// A kernel-booted guest with VNC, a CPU model and topology, CPU shares and no serial console:
// each field arrives as it was, none replaced by the destination's defaults.
class WholeDefinitionTest : public MigrationTest {
 protected:
  void SetUp() override {
    char tmpl[] = "/var/tmp/hvagent-kernels-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    kernels_ = tmpl;
    chmod(kernels_.c_str(), 0755);
    std::ofstream(kernels_ + "/vmlinuz") << "kernel";
    std::ofstream(kernels_ + "/initrd") << "initrd";
    auto p = HostPathPolicy::Open({.kernel_dirs = {kernels_}, .trusted_owner = geteuid()});
    ASSERT_TRUE(p.ok()) << p.status();
    paths_ = std::move(*p);
    src_paths_ = paths_.get();
    MigrationTest::SetUp();
  }
  void TearDown() override {
    MigrationTest::TearDown();
    std::filesystem::remove_all(kernels_);
  }
  void DestinationAllowsTheKernels() {
    dst_ = std::make_unique<Host>(dst_dir_, dest_capacity_, paths_.get());
    peer_ = std::make_unique<LoopbackPeer>(*dst_);
  }
  void MakeKernelGuest() {
    spec_ = {.name = "web1", .uuid = "6f1c3c5e-4b39-4c1a-9d3e-2d1f0a7b8c9d", .vcpus = 2, .max_vcpus = 4,
             .memory_mib = 192, .machine = "pc"};
    spec_.boot = hv::DirectKernelBoot{kernels_ + "/vmlinuz", kernels_ + "/initrd", "console=ttyS0 hv=1"};
    spec_.vnc = true;
    spec_.cpu_model = "max";
    spec_.cpu_topology = hv::GuestCpuTopology{1, 2, 2};
    spec_.cpu_shares = 700;
    spec_.labels["tenant"] = "blue";
    spec_.disks.push_back({.source_path = "", .target = "vda"});
    auto d = src_->domains->Create(spec_, false, {{0, {.pool = "vg0", .name = "web1-root", .create_size_bytes = 8 << 20}}});
    ASSERT_TRUE(d.ok()) << d.status();
    content_ = testing::PseudoRandomBytes(8 << 20, 9);
    std::ofstream(src_dir_ + "/vol-web1-root", std::ios::binary | std::ios::in | std::ios::out)
        .write(content_.data(), content_.size());
  }
  std::string kernels_;
  std::unique_ptr<HostPathPolicy> paths_;
  hv::DomainSpec spec_;
};

TEST_F(WholeDefinitionTest, KernelBootVncCpuAndConsoleArriveAsTheyWere) {
  DestinationAllowsTheKernels();
  MakeKernelGuest();
  auto id = Migrate();
  ASSERT_TRUE(id.ok()) << id.status();
  Journal::Ended e = Ended(*id);
  ASSERT_EQ(e.state, v1::OPERATION_STATE_SUCCEEDED) << e.message;
  auto got = dst_->hv.GetDomainSpec("web1");
  ASSERT_TRUE(got.ok()) << got.status();
  const auto* kernel = std::get_if<hv::DirectKernelBoot>(&got->boot);
  ASSERT_NE(kernel, nullptr);
  EXPECT_EQ(kernel->kernel_path, kernels_ + "/vmlinuz");
  EXPECT_EQ(kernel->initrd_path, kernels_ + "/initrd");
  EXPECT_EQ(kernel->cmdline, "console=ttyS0 hv=1");
  EXPECT_TRUE(got->vnc);
  EXPECT_FALSE(got->serial_console);  // it had none: none is added
  EXPECT_EQ(got->cpu_model, "max");
  EXPECT_EQ(got->machine, "pc");
  ASSERT_TRUE(got->cpu_topology.has_value());
  EXPECT_EQ(got->cpu_topology->threads, 2u);
  EXPECT_EQ(got->cpu_shares, 700u);
  EXPECT_EQ(got->vcpus, 2u);
  EXPECT_EQ(got->max_vcpus, 4u);
  EXPECT_EQ(got->memory_mib, 192u);
  EXPECT_EQ(got->uuid, spec_.uuid);
  EXPECT_EQ(got->labels, spec_.labels);
  EXPECT_EQ(testing::ReadWholeFile(dst_dir_ + "/vol-web1-root"), content_);
  EXPECT_TRUE(absl::IsNotFound(src_->hv.GetDomain("web1").status()));
}

TEST_F(WholeDefinitionTest, KernelOutsideTheDestinationsDirsIsRefusedBeforeAnyByteMoves) {
  MakeKernelGuest();  // the destination allows no kernel directory
  auto id = Migrate();
  ASSERT_TRUE(id.ok()) << id.status();
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_FAILED);
  EXPECT_THAT(e.message, HasSubstr("this host cannot take the domain as defined: spec.kernel.kernel_path"));
  EXPECT_THAT(e.message, HasSubstr("the domain stays here"));
  EXPECT_EQ(peer_->data_bytes_sent + peer_->zero_bytes_sent, 0u);
  ExpectSourceKeptDestinationClean(false);
  // The refusal is a precondition of the destination, as its PrepareIncoming answers it.
  IncomingPlan plan{.spec = spec_, .volumes = {{0, {.pool = "vg0", .name = "web1-root", .create_size_bytes = 8 << 20}}}};
  EXPECT_EQ(dst_->incoming->Prepare(plan).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(WholeDefinitionTest, WhatTheDestinationsHypervisorCannotDefineIsRefusedBeforeAnyByteMoves) {
  DestinationAllowsTheKernels();
  dst_->hv.refuse_definable = absl::InvalidArgumentError("spec.vnc: only for QEMU/KVM guests, not xen");
  MakeKernelGuest();
  auto id = Migrate();
  ASSERT_TRUE(id.ok()) << id.status();
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_FAILED);
  EXPECT_THAT(e.message, HasSubstr("cannot take the domain as defined: spec.vnc"));
  EXPECT_EQ(peer_->data_bytes_sent + peer_->zero_bytes_sent, 0u);
  ExpectSourceKeptDestinationClean(false);
}

TEST_F(MigrationTest, RunningDomainIsRefusedUnlessThePolicySaysShutDown) {
  MakeDomain(/*start=*/true);
  auto refused = Migrate();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("running_policy SHUTDOWN"));
  EXPECT_FALSE(MigrationJournalled());
  EXPECT_TRUE(destinations_.empty());
  auto id = Migrate(RunningPolicy::kShutdown);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(Ended(*id).state, v1::OPERATION_STATE_SUCCEEDED);
  auto moved = dst_->hv.GetDomain("web1");
  ASSERT_TRUE(moved.ok());
  EXPECT_TRUE(hv::IsActive(moved->state));  // it ran: it runs again over there
  EXPECT_THAT(src_->hv.calls, ::testing::Contains("shutdown web1"));
}

TEST_F(MigrationTest, BadRequestsAreRefusedNamingTheFieldBeforeAnythingStarts) {
  MakeDomain(false);
  EXPECT_THAT(migrations_->Migrate({.name = "web1", .destination = "nohost"}).status().message(),
              HasSubstr("destination: "));
  EXPECT_THAT(migrations_->Migrate({.name = "web1", .destination = "a:0"}).status().message(),
              HasSubstr("destination: "));
  EXPECT_THAT(migrations_->Migrate({.name = "web1", .destination = "a/b:1"}).status().message(),
              HasSubstr("destination: "));
  EXPECT_THAT(migrations_->Migrate({.name = "", .destination = "a:1"}).status().message(), HasSubstr("name: "));
  EXPECT_THAT(migrations_->Migrate({.name = "web1", .destination = "a:1", .destination_pool = "../x"}).status().message(),
              HasSubstr("destination_pool: "));
  EXPECT_TRUE(absl::IsNotFound(migrations_->Migrate({.name = "nope", .destination = "a:1"}).status()));
  EXPECT_FALSE(MigrationJournalled());
  EXPECT_TRUE(destinations_.empty());
}

// A cold move defines the model again on the destination: a device added behind the agent's back
// would be silently lost, so the move is refused before the guest is shut down or a byte moves.
TEST_F(MigrationTest, DevicesTheModelLacksAreRefusedBeforeTheGuestIsShutDown) {
  MakeDomain(/*start=*/true);
  src_->hv.unmodelled_devices["web1"] = {"<rng model='virtio'>", "<channel type='unix'> org.qemu.guest_agent.0"};
  auto refused = Migrate(RunningPolicy::kShutdown);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("a cold move would drop: <rng model='virtio'>, <channel type='unix'> org.qemu.guest_agent.0"));
  EXPECT_THAT(refused.status().message(), HasSubstr("move the guest live"));
  EXPECT_FALSE(MigrationJournalled());
  EXPECT_TRUE(destinations_.empty());
  EXPECT_THAT(src_->hv.calls, ::testing::Not(::testing::Contains("shutdown web1")));
  EXPECT_TRUE(hv::IsActive(src_->hv.GetDomain("web1")->state));

  src_->hv.unmodelled_devices.clear();  // detached: the same request moves it
  auto id = Migrate(RunningPolicy::kShutdown);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(Ended(*id).state, v1::OPERATION_STATE_SUCCEEDED);
}

TEST_F(MigrationTest, BorrowedVolumeOrHostFileDiskIsRefused) {
  ASSERT_TRUE(src_->storage->CreateVolume("vg0", {"data", 1 << 20}).ok());
  hv::DomainSpec spec{.name = "web1", .uuid = "6f1c3c5e-4b39-4c1a-9d3e-2d1f0a7b8c9d", .vcpus = 1, .memory_mib = 128};
  spec.disks.push_back({.source_path = "", .target = "vda"});
  ASSERT_TRUE(src_->domains->Create(spec, false, {{0, {.pool = "vg0", .name = "data"}}}).ok());
  auto r = Migrate();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("borrowed volume"));
  EXPECT_TRUE(destinations_.empty());
}

TEST_F(MigrationTest, LinkBrokenMidVolumeLeavesSourceUntouchedAndDestinationEmpty) {
  MakeDomain(false);
  peer_->break_stream_after = 2;
  auto id = Migrate();
  ASSERT_TRUE(id.ok());
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_FAILED);
  EXPECT_THAT(e.message, HasSubstr("the sender went away"));
  EXPECT_THAT(e.message, HasSubstr("the domain stays here"));
  ExpectSourceKeptDestinationClean(false);
  ASSERT_FALSE(dst_->journal->Recent().empty());
  EXPECT_EQ(dst_->journal->Recent().front().state, v1::OPERATION_STATE_CANCELLED);
}

TEST_F(MigrationTest, CorruptedBytesAreDataLossAndNothingMoves) {
  MakeDomain(false);
  peer_->corrupt = true;
  auto id = Migrate();
  ASSERT_TRUE(id.ok());
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_FAILED);
  EXPECT_THAT(e.message, HasSubstr("sha256: the sender read"));
  ExpectSourceKeptDestinationClean(false);
}

TEST_F(MigrationTest, DestinationPoolTooSmallIsRefusedByPrepareAndTheGuestRunsAgain) {
  dest_capacity_ = 4 << 20;
  TearDown();  // the first fixture's directories go, then again with the small destination pool
  SetUp();
  MakeDomain(true);
  auto id = Migrate(RunningPolicy::kShutdown);
  ASSERT_TRUE(id.ok());
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_FAILED);
  EXPECT_THAT(e.message, HasSubstr("the incoming volumes need"));
  ExpectSourceKeptDestinationClean(/*running=*/true);  // shut down for the move, started again
}

TEST_F(MigrationTest, FailedDefineOnTheDestinationRemovesTheReceivedVolumes) {
  MakeDomain(false);
  dst_->hv.fail_define = absl::InternalError("libvirt said no");
  auto id = Migrate();
  ASSERT_TRUE(id.ok());
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_FAILED);
  EXPECT_THAT(e.message, HasSubstr("libvirt said no"));
  ExpectSourceKeptDestinationClean(false);
}

TEST_F(MigrationTest, CancelBeforeFinishIsCancelledWithNothingMoved) {
  MakeDomain(false);
  std::atomic<uint64_t> id{0};
  peer_->before_send = [&] {
    while (id == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_TRUE(migrations_->Cancel(id).ok());
  };
  auto r = Migrate();
  ASSERT_TRUE(r.ok());
  id = *r;
  Journal::Ended e = Ended(*r);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_CANCELLED) << e.message;
  ExpectSourceKeptDestinationClean(false);
  EXPECT_TRUE(absl::IsNotFound(migrations_->Cancel(id)));
}

TEST_F(MigrationTest, UnreachableDestinationFailsAndKeepsTheSource) {
  MakeDomain(false);
  connect_error_ = absl::UnavailableError("connection refused");
  auto id = Migrate();
  ASSERT_TRUE(id.ok());
  EXPECT_THAT(Ended(*id).message, HasSubstr("connection refused"));
  ExpectSourceKeptDestinationClean(false);
}

TEST_F(MigrationTest, SecondMigrationOfTheSameDomainIsRefusedWhileOneRuns) {
  MakeDomain(false);
  std::atomic<bool> release{false};
  peer_->before_finish = [&] {
    while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  };
  auto first = Migrate();
  ASSERT_TRUE(first.ok());
  auto second = Migrate();
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("migrating already"));
  release = true;
  EXPECT_EQ(Ended(*first).state, v1::OPERATION_STATE_SUCCEEDED);
}

// A reconciliation while the bytes are on the destination but its domain is not defined yet:
// the volumes are the transfer's, not orphans, so even `release_orphans` keeps their owner. Once
// the domain is defined the hold is gone, and a later undefine behind the agent's back is seen.
TEST_F(MigrationTest, ReconcileOnTheDestinationLeavesAnArrivingDomainsVolumesAlone) {
  MakeDomain(false);
  absl::StatusOr<std::vector<Orphan>> mid = absl::UnknownError("never reconciled");
  std::string owner_mid;
  peer_->before_finish = [&] {
    mid = dst_->domains->Reconcile(/*release_orphans=*/true);
    auto v = dst_->storage->GetVolume("vg0", "web1-root");
    if (v.ok()) owner_mid = v->volume.attached_to;
  };
  auto id = Migrate();
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(Ended(*id).state, v1::OPERATION_STATE_SUCCEEDED);
  ASSERT_TRUE(mid.ok()) << mid.status();
  EXPECT_TRUE(mid->empty());
  EXPECT_EQ(owner_mid, "web1");
  auto vol = dst_->storage->GetVolume("vg0", "web1-root");
  ASSERT_TRUE(vol.ok());
  EXPECT_EQ(vol->volume.attached_to, "web1");
  EXPECT_EQ(vol->volume.ownership, storage::Ownership::kOwned);
  ASSERT_TRUE(dst_->hv.UndefineDomain("web1").ok());
  auto after = dst_->domains->Reconcile(/*release_orphans=*/false);
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->size(), 1u);
  EXPECT_EQ((*after)[0].volume, "web1-root");
}

// ---- the destination alone ----

class IncomingTest : public MigrationTest {
 protected:
  IncomingPlan Plan(uint64_t size = 1 << 20) {
    IncomingPlan p;
    p.spec = {.name = "web2", .uuid = "0b6f2a62-1d4e-4c4b-8f3e-7a9d2c1e5f40", .vcpus = 1, .memory_mib = 128};
    p.spec.disks.push_back({.source_path = "", .type = hv::DiskType::kBlock, .target = "vda"});
    p.volumes.push_back({0, {.pool = "vg0", .name = "web2-root", .create_size_bytes = size}});
    p.source_host = "src";
    return p;
  }
};

TEST_F(IncomingTest, PrepareRefusesWhatCouldNotBeDefinedBeforeAnythingIsMade) {
  IncomingPlan p = Plan();
  p.spec.uuid.clear();
  EXPECT_THAT(dst_->incoming->Prepare(p).status().message(), HasSubstr("spec.uuid: required"));
  p = Plan();
  p.volumes[0].claim.pool = "nopool";
  EXPECT_THAT(dst_->incoming->Prepare(p).status().message(), HasSubstr("spec.disks[0].volume.pool: "));
  p = Plan();
  p.spec.disks[0].target = "v<da";
  EXPECT_EQ(dst_->incoming->Prepare(p).status().code(), absl::StatusCode::kInvalidArgument);
  p = Plan();
  p.spec.disks.push_back({.source_path = "/etc/shadow", .target = "vdb"});
  EXPECT_FALSE(dst_->incoming->Prepare(p).ok());  // a host file is no volume, and no host path is allowed here
  ASSERT_TRUE(dst_->hv.DefineDomain({.name = "web2", .vcpus = 1, .memory_mib = 64}).ok());
  EXPECT_EQ(dst_->incoming->Prepare(Plan()).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(dst_->journal->Recent().empty());
  EXPECT_TRUE(dst_->journal->Unfinished().empty());
  EXPECT_TRUE(dst_->VolumeNames().empty());
}

TEST_F(IncomingTest, AStreamLongerOrShorterThanAnnouncedLeavesNoVolume) {
  auto t = dst_->incoming->Prepare(Plan(64 << 10));
  ASSERT_TRUE(t.ok()) << t.status();
  PieceStream longer({{VolumePiece::Kind::kZeros, "", 128 << 10, ""}}, SIZE_MAX);
  auto r = dst_->incoming->Receive(*t, 0, 64 << 10, longer);
  EXPECT_THAT(r.status().message(), HasSubstr("more than its"));
  dst_->storage->WaitForDeletes();  // the failed volume is removed in the background
  PieceStream shorter({{VolumePiece::Kind::kZeros, "", 4096, ""}, {VolumePiece::Kind::kEnd, "", 0, "x"}}, SIZE_MAX);
  r = dst_->incoming->Receive(*t, 0, 64 << 10, shorter);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(dst_->VolumeNames().empty());
  EXPECT_EQ(dst_->incoming->Receive(*t, 0, 4096, shorter).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dst_->incoming->Receive(*t, 3, 64 << 10, shorter).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(dst_->incoming->Finish(*t).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(dst_->incoming->Abort(*t).ok());
  EXPECT_TRUE(dst_->journal->Unfinished().empty());
}

TEST_F(IncomingTest, AnIdleTransferExpiresAndIsUndone) {
  auto t = dst_->incoming->Prepare(Plan(64 << 10));
  ASSERT_TRUE(t.ok());
  PieceStream zeros({{VolumePiece::Kind::kZeros, "", 64 << 10, ""},
                     {VolumePiece::Kind::kEnd, "", 0, [] {
                        auto d = *storage::image::Digest::Create("sha256");
                        d->Update(std::string(64 << 10, '\0'));
                        return d->HexFinal();
                      }()}},
                    SIZE_MAX);
  ASSERT_TRUE(dst_->incoming->Receive(*t, 0, 64 << 10, zeros).ok());
  EXPECT_EQ(dst_->VolumeNames().size(), 1u);
  dst_->incoming->ExpireIdle();
  EXPECT_EQ(dst_->VolumeNames().size(), 1u);  // not idle yet
  dst_->clock.SleepFor(std::chrono::minutes(11));
  dst_->incoming->ExpireIdle();
  EXPECT_TRUE(dst_->VolumeNames().empty());
  EXPECT_TRUE(dst_->journal->Unfinished().empty());
  EXPECT_TRUE(absl::IsNotFound(dst_->incoming->Finish(*t).status()));
}

TEST_F(IncomingTest, RecoveryRemovesHalfReceivedVolumesACrashLeft) {
  auto t = dst_->incoming->Prepare(Plan(64 << 10));
  ASSERT_TRUE(t.ok());
  // What a crash mid-transfer leaves: the volume made and owned, the journal open.
  ASSERT_TRUE(dst_->storage->ClaimVolume({.pool = "vg0", .name = "web2-root", .create_size_bytes = 64 << 10}, "web2").ok());
  IncomingMigrations restarted(*dst_->domains, *dst_->storage, dst_->hv, *dst_->journal, dst_->clock, {});
  auto lines = restarted.Recover();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("rolled back"));
  EXPECT_TRUE(dst_->VolumeNames().empty());
  EXPECT_TRUE(dst_->journal->Unfinished().empty());
}

TEST_F(MigrationTest, RecoveryOnTheSourceBeforeRemovalKeepsTheDomainAndStartsItAgain) {
  MakeDomain(true);
  internal::JournalBegin b;
  b.set_type(v1::OPERATION_KIND_MIGRATE_DOMAIN);
  b.set_domain("web1");
  auto op = src_->journal->Begin(b);
  ASSERT_TRUE(op.ok());
  internal::JournalStep s;
  s.set_name("shutdown");
  ASSERT_TRUE(src_->journal->Step(*op, s).ok());
  ASSERT_TRUE(src_->hv.DestroyDomain("web1").ok());  // the crash came after the shutdown
  auto lines = migrations_->Recover();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("rolled back"));
  EXPECT_TRUE(hv::IsActive(src_->hv.GetDomain("web1")->state));
  EXPECT_TRUE(src_->journal->Unfinished().empty());
}

TEST_F(MigrationTest, RecoveryCutShortAtFinishNeverStartsTheSourceGuestAgain) {
  MakeDomain(true);
  internal::JournalBegin b;
  b.set_type(v1::OPERATION_KIND_MIGRATE_DOMAIN);
  b.set_domain("web1");
  b.set_peer("dst.example:50051");
  auto op = src_->journal->Begin(b);
  ASSERT_TRUE(op.ok());
  for (const char* name : {"shutdown", "prepare", "send-volume", "finish"}) {
    internal::JournalStep s;
    s.set_name(name);
    ASSERT_TRUE(src_->journal->Step(*op, s).ok());
  }
  ASSERT_TRUE(src_->hv.DestroyDomain("web1").ok());
  auto lines = migrations_->Recover();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("dst.example:50051 may hold it as well"));
  EXPECT_FALSE(hv::IsActive(src_->hv.GetDomain("web1")->state));  // kept, not started
  EXPECT_TRUE(src_->journal->Unfinished().empty());
  ASSERT_FALSE(src_->journal->Recent().empty());
  EXPECT_EQ(src_->journal->Recent().front().state, v1::OPERATION_STATE_FAILED);
}

// ---- live migration (QEMU/KVM): the source's fake hypervisor stands for libvirt's peer-to-peer
// move; it copies the disk into the device the destination prepared and defines and starts the
// domain on the destination's fake, as libvirt would.
class LiveMigrationTest : public MigrationTest {
 protected:
  void SetUp() override {
    MigrationTest::SetUp();
    dst_->incoming = std::make_unique<IncomingMigrations>(
        *dst_->domains, *dst_->storage, dst_->hv, *dst_->journal, dst_->clock,
        IncomingMigrations::Options{.libvirt_uri = "qemu+tcp://10.0.0.2/system", .migrate_uri = "tcp://10.0.0.2"});
    src_->hv.live_job = {.bytes_total = 300 << 20, .bytes_done = 120 << 20};
    src_->hv.migrate_live = [this](const hv::DomainInfo& info, const std::vector<hv::DiskSpec>& disks,
                                   const hv::LiveMigration& m) -> absl::Status {
      seen_ = m;
      if (before_move_) {
        if (auto s = before_move_(); !s.ok()) return s;
      }
      hv::DomainSpec spec{.name = info.name, .uuid = info.uuid, .vcpus = info.vcpus, .memory_mib = info.memory_mib};
      spec.labels = info.labels;
      for (hv::DiskSpec d : disks) {
        std::ofstream(m.disk_paths.at(d.target), std::ios::binary | std::ios::in | std::ios::out)
            << testing::ReadWholeFile(d.source_path);
        d.source_path = m.disk_paths.at(d.target);
        spec.disks.push_back(d);
      }
      if (auto s = dst_->hv.DefineDomain(spec); !s.ok()) return s;
      return dst_->hv.StartDomain(spec.name);
    };
  }
  absl::StatusOr<uint64_t> MigrateLive(uint32_t downtime = 0, uint32_t bandwidth = 0) {
    return migrations_->Migrate({.name = "web1", .destination = "dst.example:50051", .live = true,
                                 .max_downtime_ms = downtime, .max_bandwidth_mib_s = bandwidth});
  }
  // A source whose heartbeat runs every 5 ms (and progress likewise), given up after 3 misses.
  void FastHeartbeat() {
    migrations_ = std::make_unique<MigrationService>(
        *src_->domains, *src_->storage, src_->hv, *src_->journal,
        [this](const std::string&) -> absl::StatusOr<std::unique_ptr<MigrationPeer>> {
          ++connects_;
          return std::unique_ptr<MigrationPeer>(new Forwarder(*peer_));
        },
        MigrationService::Options{.live_poll = std::chrono::milliseconds(5),
                                  .peer_heartbeat = std::chrono::milliseconds(5), .peer_heartbeat_misses = 3});
  }
  // The plan of a domain web2 arriving live, as PrepareLive takes it.
  static IncomingPlan LivePlan() {
    IncomingPlan p;
    p.spec = {.name = "web2", .uuid = "0b6f2a62-1d4e-4c4b-8f3e-7a9d2c1e5f40", .vcpus = 1, .memory_mib = 128};
    p.spec.disks.push_back({.source_path = "", .type = hv::DiskType::kBlock, .target = "vda"});
    p.volumes.push_back({0, {.pool = "vg0", .name = "web2-root", .create_size_bytes = 1 << 20}});
    p.source_host = "src";
    p.live = true;
    return p;
  }
  hv::LiveMigration seen_;
  std::function<absl::Status()> before_move_;
  std::atomic<int> connects_{0};  // FastHeartbeat's connections to the destination
};

TEST_F(LiveMigrationTest, RunningDomainMovesLiveIntoPreparedVolumesAndTheSourceVolumesGo) {
  MakeDomain(/*start=*/true);
  before_move_ = [] {  // a move that lasts past one progress read
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
    return absl::OkStatus();
  };
  auto id = MigrateLive(500, 40);
  ASSERT_TRUE(id.ok()) << id.status();
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_SUCCEEDED) << e.message;
  // What libvirt was asked: the destination's URIs, its device per disk, the downtime bound.
  EXPECT_EQ(seen_.destination_uri, "qemu+tcp://10.0.0.2/system");
  EXPECT_EQ(seen_.migrate_uri, "tcp://10.0.0.2");
  EXPECT_EQ(seen_.disk_paths.at("vda"), dst_dir_ + "/vol-web1-root");
  EXPECT_EQ(seen_.max_downtime_ms, 500u);
  EXPECT_EQ(seen_.bandwidth_mib_s, 40u);
  EXPECT_TRUE(seen_.auto_converge);
  auto moved = dst_->hv.GetDomain("web1");
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_TRUE(hv::IsActive(moved->state));
  EXPECT_EQ(moved->uuid, "6f1c3c5e-4b39-4c1a-9d3e-2d1f0a7b8c9d");
  EXPECT_EQ(testing::ReadWholeFile(dst_dir_ + "/vol-web1-root"), content_);
  auto vol = dst_->storage->GetVolume("vg0", "web1-root");
  ASSERT_TRUE(vol.ok());
  EXPECT_EQ(vol->volume.attached_to, "web1");
  EXPECT_EQ(vol->volume.ownership, storage::Ownership::kOwned);
  // The hypervisor undefined it here; the agent removed the volumes it owned.
  EXPECT_TRUE(absl::IsNotFound(src_->hv.GetDomain("web1").status()));
  EXPECT_TRUE(src_->VolumeNames().empty());
  EXPECT_THAT(src_->hv.calls, ::testing::Not(::testing::Contains("shutdown web1")));
  EXPECT_TRUE(dst_->journal->Unfinished().empty());
  EXPECT_TRUE(src_->journal->Unfinished().empty());
  // Progress is the hypervisor job's bytes, whole at the end.
  auto t = migrations_->TransferOf(*id);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->total, 300u << 20);
  EXPECT_EQ(t->done, 300u << 20);
}

// Between libvirt's end of the move (the domain undefined here) and the agent's removal of the
// source volumes, a reconciliation finds no orphan: with `release_orphans` it would otherwise
// clear the owner, and the removal, which deletes only what the domain owns, would leave the disk.
TEST_F(LiveMigrationTest, ReconcileOnTheSourceAfterTheHypervisorsMoveLeavesTheVolumesToTheMigration) {
  MakeDomain(/*start=*/true);
  absl::StatusOr<std::vector<Orphan>> mid = absl::UnknownError("never reconciled");
  bool gone_mid = false;
  peer_->before_finish = [&] {
    gone_mid = absl::IsNotFound(src_->hv.GetDomain("web1").status());
    mid = src_->domains->Reconcile(/*release_orphans=*/true);
  };
  auto id = MigrateLive();
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(Ended(*id).state, v1::OPERATION_STATE_SUCCEEDED);
  EXPECT_TRUE(gone_mid);  // the window this test is about
  ASSERT_TRUE(mid.ok()) << mid.status();
  EXPECT_TRUE(mid->empty());
  EXPECT_TRUE(src_->VolumeNames().empty());
}

TEST_F(LiveMigrationTest, RefusedOnXenForAStoppedDomainAndForBadDowntimesBeforeAnythingStarts) {
  MakeDomain(/*start=*/false);
  auto stopped = MigrateLive();
  EXPECT_EQ(stopped.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(stopped.status().message(), HasSubstr("not running"));
  ASSERT_TRUE(src_->hv.StartDomain("web1").ok());
  src_->hv.host_type = "Xen";
  auto xen = MigrateLive();
  EXPECT_EQ(xen.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(xen.status().message(), HasSubstr("no live migration"));
  EXPECT_THAT(xen.status().message(), HasSubstr("Arm"));
  src_->hv.host_type = "QEMU";
  EXPECT_THAT(MigrateLive(60001).status().message(), HasSubstr("max_downtime_ms: "));
  EXPECT_THAT(migrations_->Migrate({.name = "web1", .destination = "a:1", .max_downtime_ms = 100}).status().message(),
              HasSubstr("max_downtime_ms: only for a live migration"));
  EXPECT_THAT(MigrateLive(0, 100001).status().message(), HasSubstr("max_bandwidth_mib_s: at most 100000"));
  EXPECT_THAT(migrations_->Migrate({.name = "web1", .destination = "a:1", .max_bandwidth_mib_s = 10}).status().message(),
              HasSubstr("max_bandwidth_mib_s: only for a live migration"));
  EXPECT_FALSE(MigrationJournalled());
  EXPECT_TRUE(destinations_.empty());
}

TEST_F(LiveMigrationTest, AFailedMoveLeavesTheGuestRunningHereAndTheDestinationClean) {
  MakeDomain(/*start=*/true);
  before_move_ = [] { return absl::UnavailableError("unable to connect to server at '10.0.0.2:16509'"); };
  auto id = MigrateLive();
  ASSERT_TRUE(id.ok()) << id.status();
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_FAILED);
  EXPECT_THAT(e.message, HasSubstr("16509"));
  EXPECT_THAT(e.message, HasSubstr("the domain stays here"));
  ExpectSourceKeptDestinationClean(/*running=*/true);
}

TEST_F(LiveMigrationTest, ADestinationHandingBackAHostileLibvirtUriIsNeverConnectedTo) {
  MakeDomain(/*start=*/true);
  peer_->tamper_live = [](LiveTarget& t) { t.libvirt_uri = "qemu+ext:///system?command=/bin/sh"; };
  auto id = MigrateLive();
  ASSERT_TRUE(id.ok()) << id.status();
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_FAILED);
  EXPECT_THAT(e.message, HasSubstr("libvirt_uri"));
  EXPECT_THAT(src_->hv.calls, ::testing::Not(::testing::Contains("migrate-live web1")));
  ExpectSourceKeptDestinationClean(/*running=*/true);
}

TEST_F(LiveMigrationTest, ADestinationWithoutLibvirtUriRefusesAndMakesNothing) {
  MakeDomain(/*start=*/true);
  dst_->incoming = std::make_unique<IncomingMigrations>(*dst_->domains, *dst_->storage, dst_->hv, *dst_->journal,
                                                        dst_->clock, IncomingMigrations::Options{});
  auto id = MigrateLive();
  ASSERT_TRUE(id.ok()) << id.status();
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_FAILED);
  EXPECT_THAT(e.message, HasSubstr("[migration] libvirt_uri"));
  ExpectSourceKeptDestinationClean(/*running=*/true);
}

TEST_F(LiveMigrationTest, CancelAbortsTheHypervisorsJobAndTheGuestStaysHere) {
  MakeDomain(/*start=*/true);
  std::atomic<bool> moving{false};
  before_move_ = [&]() -> absl::Status {
    moving = true;
    while (!src_->hv.live_aborted) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return absl::CancelledError("operation aborted: migration out job: canceled by client");
  };
  auto id = MigrateLive();
  ASSERT_TRUE(id.ok()) << id.status();
  while (!moving) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(migrations_->Cancel(*id).ok());
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_CANCELLED) << e.message;
  EXPECT_THAT(src_->hv.calls, ::testing::Contains("abort-job web1"));
  ExpectSourceKeptDestinationClean(/*running=*/true);
}

TEST_F(LiveMigrationTest, RecoveryAfterACrashMidMoveKeepsAGuestStillHereAndCompletesOneThatMoved) {
  MakeDomain(/*start=*/true);
  auto begin = [&](const std::vector<std::string>& steps) {
    internal::JournalBegin b;
    b.set_type(v1::OPERATION_KIND_MIGRATE_DOMAIN);
    b.set_domain("web1");
    b.set_uuid("6f1c3c5e-4b39-4c1a-9d3e-2d1f0a7b8c9d");
    b.set_peer("dst.example:50051");
    auto id = src_->journal->Begin(b);
    for (const std::string& n : steps) {
      internal::JournalStep st;
      st.set_name(n);
      (void)src_->journal->Step(*id, st);
    }
    return *id;
  };
  // Still here: rolled back, nothing deleted.
  begin({"prepare", "migrate-live"});
  auto lines = migrations_->Recover();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("rolled back"));
  EXPECT_THAT(src_->VolumeNames(), ::testing::ElementsAre("web1-root"));
  // Gone after finish (libvirt moved it while the agent was down): its volumes here go.
  ASSERT_TRUE(src_->hv.DestroyDomain("web1").ok());
  ASSERT_TRUE(src_->hv.UndefineDomain("web1").ok());
  begin({"prepare", "migrate-live", "finish"});
  lines = migrations_->Recover();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("completed"));
  EXPECT_TRUE(src_->VolumeNames().empty());
  EXPECT_TRUE(src_->journal->Unfinished().empty());
}

TEST_F(LiveMigrationTest, HeartbeatsTheDestinationAnswersKeepTheMoveGoing) {
  FastHeartbeat();
  MakeDomain(/*start=*/true);
  before_move_ = [&]() -> absl::Status {
    while (peer_->keeps < 5) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return absl::OkStatus();
  };
  auto id = MigrateLive();
  ASSERT_TRUE(id.ok()) << id.status();
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_SUCCEEDED) << e.message;
  EXPECT_THAT(src_->hv.calls, ::testing::Not(::testing::Contains("abort-job web1")));
  EXPECT_TRUE(hv::IsActive(dst_->hv.GetDomain("web1")->state));
}

// The destination agent killed mid-copy: its libvirtd would go on taking the guest, but nobody
// there holds the transfer any more. The source aborts the job; the guest stays here; the
// destination's restart removes the empty volumes.
TEST_F(LiveMigrationTest, ADestinationAgentLostMidCopyAbortsTheJobAndItsRestartRemovesTheVolumes) {
  FastHeartbeat();
  MakeDomain(/*start=*/true);
  std::atomic<bool> moving{false};
  before_move_ = [&]() -> absl::Status {
    moving = true;
    while (!src_->hv.live_aborted) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return absl::CancelledError("operation aborted: migration out job: canceled by client");
  };
  auto id = MigrateLive();
  ASSERT_TRUE(id.ok()) << id.status();
  while (!moving) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  peer_->unreachable = true;
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_FAILED) << e.message;
  EXPECT_THAT(e.message, HasSubstr("the destination agent at dst.example:50051 is unreachable (3 heartbeats failed"));
  EXPECT_THAT(e.message, HasSubstr("DEADLINE_EXCEEDED"));
  EXPECT_THAT(e.message, HasSubstr("the domain stays here"));
  EXPECT_EQ(peer_->unanswered, 3);  // given up at the third miss, not before, and no call after
  // Nor a second connection to ask the dead agent to abort (it would wait out a connect timeout).
  EXPECT_EQ(connects_, 1);
  EXPECT_THAT(e.message, HasSubstr("was not asked to abort its half, having stopped answering"));
  EXPECT_THAT(src_->hv.calls, ::testing::Contains("abort-job web1"));
  EXPECT_TRUE(hv::IsActive(src_->hv.GetDomain("web1")->state));
  EXPECT_THAT(src_->VolumeNames(), ::testing::ElementsAre("web1-root"));
  EXPECT_TRUE(src_->journal->Unfinished().empty());
  // The destination was never told (it was dead): its restart finds the transfer and no domain.
  EXPECT_THAT(dst_->VolumeNames(), ::testing::ElementsAre("web1-root"));
  IncomingMigrations restarted(*dst_->domains, *dst_->storage, dst_->hv, *dst_->journal, dst_->clock, {});
  auto lines = restarted.Recover();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("rolled back"));
  ExpectSourceKeptDestinationClean(/*running=*/true);
}

// libvirt finished the move between the last miss and the abort: the guest runs there, gone from
// here. Nothing is deleted anywhere, and the message says where the guest may be.
TEST_F(LiveMigrationTest, AJobThatCompletedAsTheLostDestinationWasAbortedIsNeverUndone) {
  FastHeartbeat();
  MakeDomain(/*start=*/true);
  before_move_ = [&]() -> absl::Status {
    peer_->unreachable = true;
    while (!src_->hv.live_aborted) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return absl::OkStatus();  // the fake moves the guest, then answers the abort's error
  };
  src_->hv.migrate_live = [this, move = src_->hv.migrate_live](const hv::DomainInfo& info,
                                                              const std::vector<hv::DiskSpec>& disks,
                                                              const hv::LiveMigration& m) -> absl::Status {
    if (auto s = move(info, disks, m); !s.ok()) return s;
    (void)src_->hv.DestroyDomain(info.name);  // libvirt's UNDEFINE_SOURCE
    return src_->hv.UndefineDomain(info.name);
  };
  auto id = MigrateLive();
  ASSERT_TRUE(id.ok()) << id.status();
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_FAILED) << e.message;
  EXPECT_THAT(e.message, HasSubstr("may run on dst.example:50051"));
  EXPECT_TRUE(hv::IsActive(dst_->hv.GetDomain("web1")->state));
  EXPECT_THAT(dst_->VolumeNames(), ::testing::ElementsAre("web1-root"));
  EXPECT_THAT(src_->VolumeNames(), ::testing::ElementsAre("web1-root"));  // kept for an operator
}

// The destination let the transfer go mid-copy (its idle expiry, or a restart's rollback, deleted
// the volumes being copied into): one NOT_FOUND is enough to abort.
TEST_F(LiveMigrationTest, ADestinationThatNoLongerHoldsTheTransferAbortsTheJobAtTheFirstAnswer) {
  FastHeartbeat();
  MakeDomain(/*start=*/true);
  before_move_ = [&]() -> absl::Status {
    for (const Journal::Operation& op : dst_->journal->Unfinished()) {
      if (op.begin.type() == v1::OPERATION_KIND_MIGRATE_IN) (void)dst_->incoming->Abort(op.begin.transfer_id());
    }
    while (!src_->hv.live_aborted) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return absl::CancelledError("operation aborted: migration out job: canceled by client");
  };
  auto id = MigrateLive();
  ASSERT_TRUE(id.ok()) << id.status();
  Journal::Ended e = Ended(*id);
  EXPECT_EQ(e.state, v1::OPERATION_STATE_FAILED) << e.message;
  EXPECT_THAT(e.message, HasSubstr("the destination agent at dst.example:50051 no longer holds the transfer (NOT_FOUND: transfer_id: no open"));
  EXPECT_EQ(peer_->unanswered, 0);  // answered, NOT_FOUND: no misses counted
  ExpectSourceKeptDestinationClean(/*running=*/true);
}

TEST_F(LiveMigrationTest, KeepIncomingAnswersOnlyWhileTheTransferIsOpen) {
  auto t = dst_->incoming->PrepareLive(LivePlan());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(dst_->incoming->Keep(t->transfer).ok());
  EXPECT_TRUE(absl::IsNotFound(dst_->incoming->Keep("nope")));
  IncomingMigrations restarted(*dst_->domains, *dst_->storage, dst_->hv, *dst_->journal, dst_->clock, {});
  EXPECT_TRUE(absl::IsNotFound(restarted.Keep(t->transfer)));  // a restart forgets it
  ASSERT_TRUE(dst_->incoming->Abort(t->transfer).ok());
  EXPECT_THAT(dst_->incoming->Keep(t->transfer).message(), HasSubstr("transfer_id: no open transfer"));
}

TEST_F(LiveMigrationTest, RecoveryOfALiveTransferKeepsADomainThatArrivedRunningAndRemovesEmptyVolumesOtherwise) {
  auto recover = [&] {
    IncomingMigrations restarted(*dst_->domains, *dst_->storage, dst_->hv, *dst_->journal, dst_->clock, {});
    return restarted.Recover();
  };
  // Killed mid-copy, the guest never arrived: the empty volume goes.
  ASSERT_TRUE(dst_->incoming->PrepareLive(LivePlan()).ok());
  dst_->incoming = std::make_unique<IncomingMigrations>(*dst_->domains, *dst_->storage, dst_->hv, *dst_->journal,
                                                        dst_->clock, IncomingMigrations::Options{.libvirt_uri = "qemu+tcp://10.0.0.2/system"});
  auto lines = recover();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("rolled back"));
  EXPECT_TRUE(dst_->VolumeNames().empty());
  EXPECT_TRUE(dst_->journal->Unfinished().empty());
  // Killed, and libvirt finished the move meanwhile: the guest runs here on the volume; all kept.
  auto t = dst_->incoming->PrepareLive(LivePlan());
  ASSERT_TRUE(t.ok()) << t.status();
  hv::DomainSpec arrived = LivePlan().spec;
  arrived.disks[0].source_path = t->disk_paths[0];
  ASSERT_TRUE(dst_->hv.DefineDomain(arrived).ok());
  ASSERT_TRUE(dst_->hv.StartDomain("web2").ok());
  lines = recover();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("arrived live while this agent was down: kept"));
  EXPECT_THAT(dst_->VolumeNames(), ::testing::ElementsAre("web2-root"));
  EXPECT_TRUE(hv::IsActive(dst_->hv.GetDomain("web2")->state));
  EXPECT_TRUE(dst_->journal->Unfinished().empty());
  EXPECT_EQ(dst_->journal->Recent().front().state, v1::OPERATION_STATE_RECOVERED);
}

}  // namespace
}  // namespace hvagent::service
