// DomainService's rescue and unrescue: the rescue boots the rescue disk and/or kernel with the
// domain's root second, unrescue puts the original back exactly, every refusal changes nothing,
// a failed step is undone, a delete takes the rescue volume along, and recovery finishes what a
// crash interrupted.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/service/domain_service.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"
#include "tests/fakes/fake_storage_backend.h"

namespace hvagent::service {
namespace {

namespace fs = std::filesystem;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

class DomainRescueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "hvagent-rescue-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    kernel_ = dir_ + "/vmlinuz";
    std::ofstream(kernel_) << "kernel";
    chmod(kernel_.c_str(), 0644);
    auto p = HostPathPolicy::Open({.kernel_dirs = {dir_}, .trusted_owner = geteuid()});
    ASSERT_TRUE(p.ok()) << p.status();
    policy_ = std::move(*p);
    std::vector<std::unique_ptr<storage::StorageBackend>> backends;
    auto b = std::make_unique<testing::FakeStorageBackend>(storage::PoolConfig{.name = "vg0"}, 1ULL << 30);
    pool_ = b.get();
    backends.push_back(std::move(b));
    storage_ = std::make_unique<StorageService>(hv_, std::move(backends));
    auto r = RescueRecords::Open(dir_ + "/rescues");
    ASSERT_TRUE(r.ok()) << r.status();
    rescues_ = std::move(*r);
    domains_ = NewService();
    // web1: a root volume it owns, a data volume it borrows, running.
    ASSERT_TRUE(storage_->CreateVolume("vg0", {"data", 16 << 20}).ok());
    hv::DomainSpec spec{.name = "web1", .vcpus = 2, .memory_mib = 256};
    spec.disks = {{.target = "vda"}, {.target = "vdc"}};
    spec.nics = {{.mac = "52:54:00:00:00:01", .bridge = "br0"}};
    spec.labels = {{"nova", "i-1"}};
    auto d = domains_->Create(spec, true, {{0, {"vg0", "root", 64 << 20}}, {1, {"vg0", "data", 0}}});
    ASSERT_TRUE(d.ok()) << d.status();
    hv_.calls.clear();
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // As ImageService::CreateVolumeFromImage: owned by `owner` from its creation on.
  absl::StatusOr<std::string> MakeFromImage(const std::string& pool, const std::string& volume,
                                            const std::string& image, const std::string& owner) {
    images_made_.push_back(pool + "/" + volume + " from " + image);
    if (image != "rescue-img") return absl::NotFoundError("image '" + image + "' not found");
    auto v = storage_->CreateVolumeFilled(
        pool, {volume, 32 << 20}, "image '" + image + "'", [](const storage::VolumeInfo&) { return absl::OkStatus(); },
        owner);
    if (!v.ok()) return v.status();
    return v->volume.path;
  }
  DomainService::Options ServiceOptions(RescueRecords* rescues) {
    DomainService::Options o;
    o.host_paths = policy_.get();
    o.volume_from_image = [this](const std::string& pool, const std::string& volume, const std::string& image,
                                 const std::string& owner) { return MakeFromImage(pool, volume, image, owner); };
    o.rescues = rescues;
    return o;
  }
  std::unique_ptr<DomainService> NewService() {
    return std::make_unique<DomainService>(hv_, clock_, ServiceOptions(rescues_.get()), storage_.get(), &journal_);
  }
  RescueBoot Kernel() const { return {.kernel = hv::DirectKernelBoot{.kernel_path = kernel_}}; }
  static RescueBoot Image() { return {.pool = "vg0", .image = "rescue-img"}; }
  static RescueBoot WithConfigDrive(RescueBoot boot, const std::string& volume, const std::string& image = "rescue-img") {
    boot.config_drive = RescueBoot::ConfigDrive{.pool = "vg0", .image = image, .volume = volume};
    return boot;
  }
  std::optional<storage::VolumeInfo> Volume(const std::string& name) {
    auto v = storage_->GetVolume("vg0", name);
    if (!v.ok()) return std::nullopt;
    return v->volume;
  }
  std::vector<std::string> Disks(const std::string& domain) {
    std::vector<std::string> out;
    auto disks = hv_.GetDomainDisks(domain);
    if (!disks.ok()) return {disks.status().ToString()};
    for (const auto& d : *disks) out.push_back(d.target + "=" + d.source_path);
    return out;
  }
  bool Running(const std::string& domain) { return hv::IsActive(hv_.GetDomain(domain)->state); }

  std::string dir_, kernel_;
  std::unique_ptr<HostPathPolicy> policy_;
  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  testing::FakeStorageBackend* pool_ = nullptr;
  std::unique_ptr<StorageService> storage_;
  std::unique_ptr<Journal> journal_owner_ = std::move(*Journal::Open(""));
  Journal& journal_ = *journal_owner_;
  std::unique_ptr<RescueRecords> rescues_;
  std::unique_ptr<DomainService> domains_;
  std::vector<std::string> images_made_;
};

TEST_F(DomainRescueTest, Rescue_KernelBootsWithTheRootAsTheSecondDisk) {
  auto d = domains_->Rescue("web1", Kernel());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(Running("web1"));
  EXPECT_THAT(Disks("web1"), ::testing::ElementsAre("vdb=/dev/fake/root"));
  auto boot = hv_.BootOf("web1");
  ASSERT_TRUE(std::holds_alternative<hv::DirectKernelBoot>(boot));
  EXPECT_EQ(std::get<hv::DirectKernelBoot>(boot).kernel_path, kernel_);
  EXPECT_EQ(d->labels.at("nova"), "i-1") << "the rescue keeps the domain's labels";
  auto nics = hv_.GetDomainNics("web1");
  ASSERT_EQ(nics->size(), 1u) << "the rescue keeps the NICs";
  EXPECT_EQ((*nics)[0].mac, "52:54:00:00:00:01");
  EXPECT_EQ((*nics)[0].bridge, "br0");
  EXPECT_TRUE(domains_->Rescued("web1"));
  EXPECT_THAT(hv_.calls, ::testing::ElementsAre("destroy web1", "redefine web1", "start web1"));
}

TEST_F(DomainRescueTest, Rescue_ImageMakesARescueVolumeBootedFirstWithTheRootSecond) {
  auto d = domains_->Rescue("web1", Image());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_THAT(images_made_, ::testing::ElementsAre("vg0/web1-rescue from rescue-img"));
  EXPECT_THAT(Disks("web1"), ::testing::ElementsAre("vda=/dev/fake/web1-rescue", "vdb=/dev/fake/root"));
  ASSERT_TRUE(Volume("web1-rescue").has_value());
  EXPECT_EQ(Volume("web1-rescue")->attached_to, "web1");
  EXPECT_TRUE(std::holds_alternative<std::monostate>(hv_.BootOf("web1"))) << "it boots from the rescue disk";
}

TEST_F(DomainRescueTest, Unrescue_RestoresTheOriginalExactlyAndDeletesTheRescueVolume) {
  const auto before = Disks("web1");
  ASSERT_TRUE(domains_->Rescue("web1", Image()).ok());
  auto d = domains_->Unrescue("web1");
  ASSERT_TRUE(d.ok()) << d.status();
  storage_->WaitForDeletes();
  EXPECT_TRUE(Running("web1"));
  EXPECT_EQ(Disks("web1"), before);
  EXPECT_TRUE(std::holds_alternative<std::monostate>(hv_.BootOf("web1")));
  EXPECT_FALSE(Volume("web1-rescue").has_value()) << "the rescue volume is deleted";
  EXPECT_EQ(Volume("root")->ownership, storage::Ownership::kOwned) << "an owned root stays owned";
  EXPECT_EQ(Volume("data")->ownership, storage::Ownership::kBorrowed);
  EXPECT_EQ(Volume("root")->attached_to, "web1");
  EXPECT_FALSE(domains_->Rescued("web1"));
}

// As Nova's libvirt driver: the rescue gets its own config drive (a read-only CD-ROM, last; sda
// on the fake's aarch64 host), which unrescue deletes with the rescue disk.
TEST_F(DomainRescueTest, Rescue_ConfigDriveIsAReadOnlyCdromThatUnrescueDeletes) {
  const auto before = Disks("web1");
  auto d = domains_->Rescue("web1", WithConfigDrive(Image(), "web1-cfg"));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_THAT(Disks("web1"), ::testing::ElementsAre("vda=/dev/fake/web1-rescue", "vdb=/dev/fake/root",
                                                    "sda=/dev/fake/web1-cfg"));
  auto disks = hv_.GetDomainDisks("web1");
  ASSERT_EQ(disks->size(), 3u);
  EXPECT_TRUE((*disks)[2].cdrom);
  EXPECT_TRUE((*disks)[2].readonly);
  ASSERT_TRUE(Volume("web1-cfg").has_value());
  EXPECT_EQ(Volume("web1-cfg")->attached_to, "web1");
  ASSERT_TRUE(domains_->Unrescue("web1").ok());
  storage_->WaitForDeletes();
  EXPECT_EQ(Disks("web1"), before);
  EXPECT_FALSE(Volume("web1-cfg").has_value()) << "the rescue's config drive is deleted at unrescue";
  EXPECT_FALSE(Volume("web1-rescue").has_value());
}

TEST_F(DomainRescueTest, Rescue_FailingDefineDeletesTheConfigDriveAndDeleteTakesItAlong) {
  hv_.fail_define = absl::InternalError("libvirt says no");
  EXPECT_FALSE(domains_->Rescue("web1", WithConfigDrive(Kernel(), "web1-cfg")).ok());
  storage_->WaitForDeletes();
  EXPECT_FALSE(Volume("web1-cfg").has_value()) << "a failed rescue leaves no config drive";
  EXPECT_FALSE(domains_->Rescued("web1"));
  hv_.fail_define = absl::OkStatus();
  ASSERT_TRUE(domains_->Rescue("web1", WithConfigDrive(Kernel(), "web1-cfg")).ok());
  ASSERT_TRUE(domains_->Delete("web1", /*force=*/true, /*delete_volumes=*/false).ok());
  storage_->WaitForDeletes();
  EXPECT_FALSE(Volume("web1-cfg").has_value()) << "deleted with the rescued domain";
  EXPECT_EQ(Volume("data")->attached_to, "") << "a borrowed volume is only released";
}

TEST_F(DomainRescueTest, Refusals_ChangeNothing) {
  struct Case {
    std::string name;
    RescueBoot boot;
    absl::StatusCode code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"web1", {}, absl::StatusCode::kInvalidArgument, "image, kernel"},
      {"web1", {.image = "rescue-img"}, absl::StatusCode::kInvalidArgument, "image.pool"},
      {"web1", {.pool = "vg0"}, absl::StatusCode::kInvalidArgument, "image.image"},
      {"web1", {.kernel = hv::DirectKernelBoot{}}, absl::StatusCode::kInvalidArgument, "kernel.kernel_path"},
      {"web1", {.kernel = hv::DirectKernelBoot{.kernel_path = "/etc/passwd"}}, absl::StatusCode::kPermissionDenied,
       "kernel.kernel_path"},
      {"web<1>", Kernel(), absl::StatusCode::kInvalidArgument, "name"},
      {"nosuch", Kernel(), absl::StatusCode::kNotFound, "nosuch"},
      {"web1", {.pool = "vg0", .image = "missing"}, absl::StatusCode::kNotFound, "image: "},
      {"web1", WithConfigDrive(Kernel(), ""), absl::StatusCode::kInvalidArgument, "config_drive.volume"},
      {"web1", WithConfigDrive(Image(), "web1-rescue"), absl::StatusCode::kInvalidArgument, "config_drive.volume"},
      {"web1", WithConfigDrive(Kernel(), "web1-cfg", "missing"), absl::StatusCode::kNotFound, "config_drive: "},
  };
  for (const Case& c : cases) {
    auto d = domains_->Rescue(c.name, c.boot);
    EXPECT_EQ(d.status().code(), c.code) << c.says << ": " << d.status();
    EXPECT_THAT(std::string(d.status().message()), HasSubstr(c.says));
    EXPECT_FALSE(domains_->Rescued("web1")) << c.says;
    EXPECT_TRUE(Running("web1")) << c.says;
    EXPECT_THAT(hv_.calls, Not(Contains("redefine web1"))) << c.says;
  }
  auto u = domains_->Unrescue("web1");
  EXPECT_EQ(u.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(u.status().message()), HasSubstr("is not rescued"));
  DomainService without_images(hv_, clock_, {}, storage_.get());
  EXPECT_EQ(without_images.Rescue("web1", Image()).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Disks("web1").size(), 2u);
}

// A rescue volume (disk or config drive) whose name is taken is refused before the rescue is
// journalled: nothing to undo, and nothing for recovery to mistake for its own.
TEST_F(DomainRescueTest, Rescue_AVolumeNameInUseIsRefusedBeforeAnythingIsJournalled) {
  ASSERT_TRUE(storage_->CreateVolume("vg0", {"web1-rescue", 8 << 20}).ok());
  ASSERT_TRUE(storage_->CreateVolume("vg0", {"taken-cfg", 8 << 20}).ok());
  const size_t ops_before = journal_.Recent().size();
  auto d = domains_->Rescue("web1", Image());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kAlreadyExists) << d.status();
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("image.volume: volume 'web1-rescue' already exists"));
  d = domains_->Rescue("web1", WithConfigDrive(Kernel(), "taken-cfg"));
  EXPECT_EQ(d.status().code(), absl::StatusCode::kAlreadyExists) << d.status();
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("config_drive.volume"));
  EXPECT_EQ(journal_.Recent().size(), ops_before) << "no operation was begun";
  EXPECT_TRUE(images_made_.empty());
  storage_->WaitForDeletes();
  EXPECT_TRUE(Volume("web1-rescue").has_value());
  EXPECT_TRUE(Volume("taken-cfg").has_value());
  EXPECT_TRUE(Running("web1"));
  EXPECT_FALSE(domains_->Rescued("web1"));
}

// The failpoint of the last note: the agent dies right after journalling `create-volume` or
// `create-config-volume`, while the volume of that name was made by someone else in the moment
// between the rescue's check and its own create (so its create was refused). The crash is real
// to recovery: the first agent is frozen at that point (its journal file and rescue records
// copied as a SIGKILL would leave them) while a second agent recovers from the copies.
// Recovery deletes what the rescue made (the rescue disk, owned by web1 from its creation) and
// leaves the other volume alone.
TEST_F(DomainRescueTest, Recover_ACrashAfterJournallingACreateKeepsTheVolumeSomeoneElseMade) {
  for (const bool config_drive : {false, true}) {
    SCOPED_TRACE(config_drive ? "create-config-volume" : "create-volume");
    const std::string taken = config_drive ? "web1-cfg" : "web1-rescue";
    const std::string state = dir_ + (config_drive ? "/cfg" : "/disk");
    fs::create_directories(state);
    auto journal = std::move(*Journal::Open(state + "/journal"));
    auto records = std::move(*RescueRecords::Open(state + "/rescues"));
    std::promise<void> crashed, released;
    DomainService::Options o = ServiceOptions(records.get());
    o.volume_from_image = [&](const std::string& pool, const std::string& volume, const std::string& image,
                              const std::string& owner) -> absl::StatusOr<std::string> {
      if (volume != taken) return MakeFromImage(pool, volume, image, owner);
      EXPECT_TRUE(storage_->CreateVolume(pool, {volume, 8 << 20}).ok());  // someone else, just now
      fs::copy(state, state + ".crash", fs::copy_options::recursive);     // the SIGKILL here
      crashed.set_value();
      released.get_future().wait();  // frozen: dead to the recovering agent
      return absl::AlreadyExistsError("volume '" + volume + "' already exists");
    };
    DomainService first(hv_, clock_, o, storage_.get(), journal.get());
    const RescueBoot boot = config_drive ? WithConfigDrive(Image(), "web1-cfg") : Image();
    std::thread rescuing([&] { EXPECT_FALSE(first.Rescue("web1", boot).ok()); });
    crashed.get_future().wait();

    auto journal2 = std::move(*Journal::Open(state + ".crash/journal"));
    auto records2 = std::move(*RescueRecords::Open(state + ".crash/rescues"));
    // No ASSERT until the first agent is released: its thread must be joined.
    EXPECT_EQ(journal2->Unfinished().size(), 1u);
    DomainService second(hv_, clock_, ServiceOptions(records2.get()), storage_.get(), journal2.get());
    auto recovered = second.Recover();
    EXPECT_EQ(recovered.size(), 1u);
    for (const auto& r : recovered) EXPECT_EQ(r.state, v1::OPERATION_STATE_ROLLED_BACK) << r.outcome;
    storage_->WaitForDeletes();
    EXPECT_TRUE(Volume(taken).has_value()) << "recovery deleted a volume this rescue never made";
    EXPECT_EQ(Volume(taken).value_or(storage::VolumeInfo{.attached_to = "(gone)"}).attached_to, "");
    if (config_drive) {
      EXPECT_FALSE(Volume("web1-rescue").has_value()) << "the rescue disk it made is deleted";
    }
    EXPECT_FALSE(records2->Find("web1").has_value());
    EXPECT_TRUE(Running("web1"));

    released.set_value();
    rescuing.join();
    storage_->WaitForDeletes();
    ASSERT_TRUE(Volume(taken).has_value()) << "nor does the first agent's own undo delete it";
    ASSERT_TRUE(storage_->DeleteVolume("vg0", taken).ok());
    storage_->WaitForDeletes();
  }
}

TEST_F(DomainRescueTest, Rescue_OfARescuedDomainIsRefused) {
  ASSERT_TRUE(domains_->Rescue("web1", Kernel()).ok());
  hv_.calls.clear();
  auto again = domains_->Rescue("web1", Image());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(again.status().message()), HasSubstr("already rescued"));
  EXPECT_TRUE(images_made_.empty());
  EXPECT_TRUE(hv_.calls.empty());
}

TEST_F(DomainRescueTest, Rescue_OfADomainSuspendedToDiskIsRefused) {
  ASSERT_TRUE(domains_->ManagedSave("web1").ok());
  hv_.calls.clear();
  auto r = domains_->Rescue("web1", Image());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("managed save"));
  EXPECT_TRUE(images_made_.empty());
  EXPECT_TRUE(hv_.calls.empty()) << "nothing changed";
  EXPECT_FALSE(domains_->Rescued("web1"));
  ASSERT_TRUE(domains_->Start("web1").ok()) << "the saved state is still there to restore";
  EXPECT_TRUE(domains_->Rescue("web1", Kernel()).ok()) << "once resumed, the rescue goes ahead";
}

TEST_F(DomainRescueTest, Rescue_FailingDefinePutsTheOriginalBackRunningWithoutTheRescueVolume) {
  hv_.fail_define = absl::InternalError("libvirt says no");
  auto d = domains_->Rescue("web1", Image());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInternal);
  storage_->WaitForDeletes();
  EXPECT_FALSE(Volume("web1-rescue").has_value());
  EXPECT_THAT(Disks("web1"), ::testing::ElementsAre("vda=/dev/fake/root", "vdc=/dev/fake/data"));
  EXPECT_TRUE(Running("web1")) << "it ran before the rescue";
  EXPECT_FALSE(domains_->Rescued("web1"));
  EXPECT_THAT(hv_.calls, Contains("restore web1"));
}

TEST_F(DomainRescueTest, Delete_OfARescuedDomainDeletesTheRescueVolumeAndKeepsBorrowedOnes) {
  ASSERT_TRUE(domains_->Rescue("web1", Image()).ok());
  ASSERT_TRUE(domains_->Delete("web1", /*force=*/true, /*delete_volumes=*/false).ok());
  storage_->WaitForDeletes();
  EXPECT_FALSE(Volume("web1-rescue").has_value()) << "deleted whatever delete_volumes says";
  ASSERT_TRUE(Volume("root").has_value()) << "owned, but delete_volumes was not set";
  EXPECT_EQ(Volume("root")->attached_to, "");
  EXPECT_EQ(Volume("data")->attached_to, "");
  EXPECT_FALSE(domains_->Rescued("web1"));
}

TEST_F(DomainRescueTest, Delete_WithVolumesOfARescuedDomainDeletesOwnedOnly) {
  ASSERT_TRUE(domains_->Rescue("web1", Image()).ok());
  ASSERT_TRUE(domains_->Delete("web1", /*force=*/true, /*delete_volumes=*/true).ok());
  storage_->WaitForDeletes();
  EXPECT_FALSE(Volume("web1-rescue").has_value());
  EXPECT_FALSE(Volume("root").has_value());
  ASSERT_TRUE(Volume("data").has_value()) << "borrowed: never deleted";
}

TEST_F(DomainRescueTest, RescueRecords_SurviveARestart) {
  ASSERT_TRUE(domains_->Rescue("web1", Kernel()).ok());
  auto reopened = RescueRecords::Open(dir_ + "/rescues");
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  auto rec = (*reopened)->Find("web1");
  ASSERT_TRUE(rec.has_value());
  EXPECT_TRUE(rec->was_active());
  EXPECT_FALSE(rec->definition().empty());
  rescues_ = std::move(*reopened);
  domains_ = NewService();
  ASSERT_TRUE(domains_->Unrescue("web1").ok());
  EXPECT_THAT(Disks("web1"), ::testing::ElementsAre("vda=/dev/fake/root", "vdc=/dev/fake/data"));
}

// A crash after the rescue definition replaced the original, before the start: recovery puts the
// original back (running, as it was), deletes the rescue volume and forgets the rescue.
TEST_F(DomainRescueTest, Recover_InterruptedRescueIsRolledBack) {
  // The start fails as a dropped connection would, and so does the undo: the operation stays
  // open, as a crash between the two would leave it.
  hv_.fail_start = absl::UnavailableError("connection dropped");
  hv_.fail_restore = absl::UnavailableError("connection dropped");
  ASSERT_FALSE(domains_->Rescue("web1", Image()).ok());
  ASSERT_EQ(journal_.Unfinished().size(), 1u) << "an undo that could not be done is left to recovery";
  EXPECT_FALSE(Running("web1"));
  hv_.fail_start = absl::OkStatus();
  hv_.fail_restore = absl::OkStatus();
  auto recovered = NewService()->Recover();
  ASSERT_EQ(recovered.size(), 1u);
  EXPECT_EQ(recovered[0].state, v1::OPERATION_STATE_ROLLED_BACK) << recovered[0].outcome;
  storage_->WaitForDeletes();
  EXPECT_THAT(Disks("web1"), ::testing::ElementsAre("vda=/dev/fake/root", "vdc=/dev/fake/data"));
  EXPECT_TRUE(Running("web1"));
  EXPECT_FALSE(Volume("web1-rescue").has_value());
  EXPECT_FALSE(rescues_->Find("web1").has_value());
  EXPECT_TRUE(journal_.Unfinished().empty());
}

// A crash after the undefine of a rescued domain, before its volumes were seen to: recovery
// deletes the rescue volume (not only releases it), releases the rest by the usual rule.
TEST_F(DomainRescueTest, Recover_InterruptedDeleteOfARescuedDomainDeletesTheRescueVolume) {
  ASSERT_TRUE(domains_->Rescue("web1", Image()).ok());
  internal::JournalBegin b;
  b.set_type(v1::OPERATION_KIND_DELETE_DOMAIN);
  b.set_domain("web1");
  b.set_uuid(hv_.GetDomain("web1")->uuid);
  b.set_delete_volumes(false);
  for (const char* v : {"web1-rescue", "root"}) {
    auto* jv = b.add_volumes();
    jv->set_pool("vg0");
    jv->set_name(v);
    jv->set_owned(true);
  }
  *b.mutable_rescue() = *rescues_->Find("web1");
  auto op = journal_.Begin(b);
  ASSERT_TRUE(op.ok()) << op.status();
  internal::JournalStep s;
  s.set_name("undefine");
  ASSERT_TRUE(journal_.Step(*op, s).ok());
  ASSERT_TRUE(hv_.DestroyDomain("web1").ok());
  ASSERT_TRUE(hv_.UndefineDomain("web1").ok());  // the step ran, then the crash
  auto recovered = NewService()->Recover();
  ASSERT_EQ(recovered.size(), 1u);
  EXPECT_EQ(recovered[0].state, v1::OPERATION_STATE_RECOVERED) << recovered[0].outcome;
  storage_->WaitForDeletes();
  EXPECT_FALSE(Volume("web1-rescue").has_value()) << "the rescue volume is deleted, not released";
  ASSERT_TRUE(Volume("root").has_value()) << "owned, but delete_volumes was not set";
  EXPECT_EQ(Volume("root")->attached_to, "");
  EXPECT_FALSE(rescues_->Find("web1").has_value());
}

TEST_F(DomainRescueTest, Recover_InterruptedUnrescueIsCarriedThrough) {
  ASSERT_TRUE(domains_->Rescue("web1", Image()).ok());
  internal::JournalBegin b;
  b.set_type(v1::OPERATION_KIND_UNRESCUE_DOMAIN);
  b.set_domain("web1");
  b.set_uuid(hv_.GetDomain("web1")->uuid);
  *b.mutable_rescue() = *rescues_->Find("web1");
  auto op = journal_.Begin(b);
  internal::JournalStep s;
  s.set_name("destroy");
  ASSERT_TRUE(journal_.Step(*op, s).ok());
  ASSERT_TRUE(hv_.DestroyDomain("web1").ok());  // the step ran, then the crash
  auto recovered = NewService()->Recover();
  ASSERT_EQ(recovered.size(), 1u);
  EXPECT_EQ(recovered[0].state, v1::OPERATION_STATE_RECOVERED) << recovered[0].outcome;
  storage_->WaitForDeletes();
  EXPECT_THAT(Disks("web1"), ::testing::ElementsAre("vda=/dev/fake/root", "vdc=/dev/fake/data"));
  EXPECT_TRUE(Running("web1"));
  EXPECT_FALSE(Volume("web1-rescue").has_value());
  EXPECT_FALSE(rescues_->Find("web1").has_value());
}

}  // namespace
}  // namespace hvagent::service
