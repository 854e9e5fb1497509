// DomainView over the fake hypervisor: events in, answers out; writes read back at once;
// reconnects never answered from before.
#include "hypervisor/domain_view.h"

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/fakes/fake_hypervisor.h"

namespace hvagent::hv {
namespace {

using ::testing::HasSubstr;
using testing::FakeHypervisor;

DomainSpec Spec(const std::string& name, uint64_t memory_mib = 64) {
  DomainSpec s;
  s.name = name;
  s.vcpus = 1;
  s.memory_mib = memory_mib;
  return s;
}

// Polls `done` for up to 2 s (the view's worker applies events asynchronously).
bool Eventually(const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return done();
}

DomainEvent Event(const std::string& name, DomainEventType type) {
  return DomainEvent{.time = std::chrono::system_clock::now(), .domain_name = name, .type = type};
}

std::vector<std::string> Names(const std::vector<DomainInfo>& ds) {
  std::vector<std::string> out;
  for (const auto& d : ds) out.push_back(d.name);
  return out;
}

TEST(DomainView, FilledAtConnectByOneListing) {
  FakeHypervisor fake;
  ASSERT_TRUE(fake.DefineDomain(Spec("a", 128)).ok());
  ASSERT_TRUE(fake.DefineDomain(Spec("b")).ok());
  ASSERT_TRUE(fake.StartDomain("b").ok());
  DomainView view(fake);
  auto list = view.ListDomains();
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_THAT(Names(*list), ::testing::ElementsAre("a", "b"));
  auto a = view.GetDomain("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->memory_mib, 128u);
  EXPECT_EQ(a->state, DomainState::kShutoff);
  EXPECT_EQ(view.GetDomain("b")->state, DomainState::kRunning);
  EXPECT_EQ(view.rebuilds(), 1u);
  EXPECT_TRUE(view.Connected());
}

// Labels travel in DomainInfo: the listing that fills the view, the re-read after a write and
// the one after an event all carry them, so the cache never answers without them.
TEST(DomainView, LabelsAreCarriedByEveryWayIntoTheCache) {
  FakeHypervisor fake;
  DomainSpec a = Spec("a");
  a.labels = {{"cloudstack.instance", "i-2-1-VM"}};
  ASSERT_TRUE(fake.DefineDomain(a).ok());
  DomainView view(fake);
  ASSERT_TRUE(view.ListDomains().ok());
  EXPECT_EQ(view.GetDomain("a")->labels, a.labels);  // from the first listing
  DomainSpec b = Spec("b");
  b.labels = {{"team", "web"}};
  ASSERT_TRUE(view.DefineDomain(b).ok());
  const uint64_t refreshes = view.refreshes();
  EXPECT_EQ(view.GetDomain("b")->labels, b.labels);  // from the re-read after the write
  ASSERT_TRUE(view.StartDomain("b").ok());
  fake.Emit(Event("b", DomainEventType::kStarted));
  ASSERT_TRUE(Eventually([&] { return view.refreshes() > refreshes + 1; }));
  auto list = view.ListDomains();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].labels, a.labels);
  EXPECT_EQ((*list)[1].labels, b.labels);  // still there after the event's re-read
  EXPECT_EQ((*list)[1].state, DomainState::kRunning);
}

TEST(DomainView, ReadsAnswerFromMemoryUntilAnEventSaysOtherwise) {
  FakeHypervisor fake;
  ASSERT_TRUE(fake.DefineDomain(Spec("web")).ok());
  DomainView view(fake);
  ASSERT_EQ(view.GetDomain("web")->state, DomainState::kShutoff);
  const uint64_t reads_before = view.refreshes();
  // Started behind the agent's back: without the event the view has no way to know, and it
  // does not ask libvirt on every read (that is its point).
  ASSERT_TRUE(fake.StartDomain("web").ok());
  for (int i = 0; i < 100; ++i) ASSERT_EQ(view.GetDomain("web")->state, DomainState::kShutoff);
  EXPECT_EQ(view.refreshes(), reads_before);
  fake.Emit(Event("web", DomainEventType::kStarted));
  EXPECT_TRUE(Eventually([&] { return view.GetDomain("web")->state == DomainState::kRunning; }));
  EXPECT_EQ(view.refreshes(), reads_before + 1);
}

TEST(DomainView, EventReachesSubscribersOnlyAfterTheViewHasIt) {
  FakeHypervisor fake;
  ASSERT_TRUE(fake.DefineDomain(Spec("web")).ok());
  DomainView view(fake);
  ASSERT_TRUE(view.ListDomains().ok());
  std::mutex mu;
  std::vector<DomainState> seen_in_sink;
  view.SetEventSink([&](const DomainEvent& e) {
    auto d = view.GetDomain(e.domain_name);
    std::lock_guard lock(mu);
    seen_in_sink.push_back(d.ok() ? d->state : DomainState::kUnknown);
  });
  ASSERT_TRUE(fake.StartDomain("web").ok());
  fake.Emit(Event("web", DomainEventType::kStarted));
  ASSERT_TRUE(Eventually([&] {
    std::lock_guard lock(mu);
    return !seen_in_sink.empty();
  }));
  std::lock_guard lock(mu);
  EXPECT_EQ(seen_in_sink.front(), DomainState::kRunning);
}

TEST(DomainView, DefinedAndUndefinedBehindTheAgentsBack) {
  FakeHypervisor fake;
  DomainView view(fake);
  ASSERT_TRUE(view.ListDomains()->empty());
  ASSERT_TRUE(fake.DefineDomain(Spec("new")).ok());
  fake.Emit(Event("new", DomainEventType::kDefined));
  EXPECT_TRUE(Eventually([&] { return view.GetDomain("new").ok(); }));
  EXPECT_EQ(view.ListDomains()->size(), 1u);
  ASSERT_TRUE(fake.UndefineDomain("new").ok());
  fake.Emit(Event("new", DomainEventType::kUndefined));
  EXPECT_TRUE(Eventually([&] { return absl::IsNotFound(view.GetDomain("new").status()); }));
  EXPECT_THAT(view.GetDomain("new").status().message(), HasSubstr("'new' not found"));
  EXPECT_TRUE(view.ListDomains()->empty());
}

TEST(DomainView, AWriteIsSeenByTheNextReadWithoutItsEvent) {
  FakeHypervisor fake;
  DomainView view(fake);
  ASSERT_TRUE(view.DefineDomain(Spec("vm", 256)).ok());
  auto d = view.GetDomain("vm");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->state, DomainState::kShutoff);
  EXPECT_EQ(d->memory_mib, 256u);
  ASSERT_TRUE(view.StartDomain("vm").ok());
  EXPECT_EQ(view.GetDomain("vm")->state, DomainState::kRunning);
  ASSERT_TRUE(view.SuspendDomain("vm").ok());
  EXPECT_EQ(view.GetDomain("vm")->state, DomainState::kPaused);
  ASSERT_TRUE(view.ResumeDomain("vm").ok());
  ASSERT_TRUE(view.DestroyDomain("vm").ok());
  EXPECT_EQ(view.GetDomain("vm")->state, DomainState::kShutoff);
  ASSERT_TRUE(view.UndefineDomain("vm").ok());
  EXPECT_TRUE(absl::IsNotFound(view.GetDomain("vm").status()));
  EXPECT_TRUE(view.ListDomains()->empty());
}

TEST(DomainView, ALiveMigrationAwayIsSeenByTheNextReadWithoutItsEvent) {
  FakeHypervisor fake;
  DomainView view(fake);
  ASSERT_TRUE(view.DefineDomain(Spec("vm")).ok());
  ASSERT_TRUE(view.StartDomain("vm").ok());
  fake.migrate_live = [](const DomainInfo&, const std::vector<DiskSpec>&, const LiveMigration&) {
    return absl::OkStatus();  // the guest runs elsewhere now; libvirt sent no event yet
  };
  ASSERT_TRUE(view.MigrateLive("vm", LiveMigration{.destination_uri = "qemu+tcp://h2/system"}).ok());
  EXPECT_TRUE(absl::IsNotFound(view.GetDomain("vm").status()));
  EXPECT_TRUE(view.ListDomains()->empty());
}

TEST(DomainView, AFailedWriteLeavesTheViewAsTheHypervisorHasIt) {
  FakeHypervisor fake;
  DomainView view(fake);
  fake.fail_start = absl::InternalError("qemu died");
  ASSERT_TRUE(view.DefineDomain(Spec("vm")).ok());
  EXPECT_EQ(view.StartDomain("vm").code(), absl::StatusCode::kInternal);
  EXPECT_EQ(view.GetDomain("vm")->state, DomainState::kShutoff);
  EXPECT_EQ(view.DefineDomain(Spec("vm")).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(view.ListDomains()->size(), 1u);
}

TEST(DomainView, BadNameIsInvalidArgumentNamingTheField) {
  FakeHypervisor fake;
  DomainView view(fake);
  auto d = view.GetDomain("<bad>");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(d.status().message(), HasSubstr("name"));
}

TEST(DomainView, ByUuidFromMemoryAndMissesAskTheHypervisor) {
  FakeHypervisor fake;
  ASSERT_TRUE(fake.DefineDomain(Spec("a")).ok());
  DomainView view(fake);
  const std::string uuid = fake.GetDomain("a")->uuid;
  auto d = view.GetDomainByUuid(uuid);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->name, "a");
  EXPECT_TRUE(absl::IsNotFound(view.GetDomainByUuid("11111111-2222-3333-4444-555555555555").status()));
}

TEST(DomainView, ConnectionDownAnswersUnavailableNotStale) {
  FakeHypervisor fake;
  ASSERT_TRUE(fake.DefineDomain(Spec("a")).ok());
  DomainView view(fake);
  ASSERT_TRUE(view.GetDomain("a").ok());
  fake.connected = false;
  EXPECT_TRUE(absl::IsUnavailable(view.GetDomain("a").status()));
  EXPECT_TRUE(absl::IsUnavailable(view.ListDomains().status()));
  EXPECT_TRUE(absl::IsUnavailable(view.GetDomainByUuid("x").status()));
  EXPECT_FALSE(view.Connected());
}

TEST(DomainView, ReconnectRebuildsBeforeAnsweringAgain) {
  FakeHypervisor fake;
  ASSERT_TRUE(fake.DefineDomain(Spec("a")).ok());
  ASSERT_TRUE(fake.DefineDomain(Spec("b")).ok());
  DomainView view(fake);
  ASSERT_EQ(view.ListDomains()->size(), 2u);
  // While "libvirtd" was away: a started, b undefined, c defined; no events for any of it.
  fake.connected = false;
  ASSERT_TRUE(absl::IsUnavailable(view.GetDomain("a").status()));
  fake.connected = true;
  ASSERT_TRUE(fake.StartDomain("a").ok());
  ASSERT_TRUE(fake.UndefineDomain("b").ok());
  ASSERT_TRUE(fake.DefineDomain(Spec("c")).ok());
  fake.generation = 2;
  // The first read after the reconnect waits for the rebuild (no kResync needed to trigger it).
  auto list = view.ListDomains();
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_THAT(Names(*list), ::testing::ElementsAre("a", "c"));
  EXPECT_EQ(view.GetDomain("a")->state, DomainState::kRunning);
  EXPECT_EQ(view.rebuilds(), 2u);
}

TEST(DomainView, ResyncEventRebuilds) {
  FakeHypervisor fake;
  DomainView view(fake);
  ASSERT_TRUE(view.ListDomains()->empty());
  ASSERT_TRUE(fake.DefineDomain(Spec("a")).ok());
  fake.Emit(DomainEvent{.type = DomainEventType::kResync});
  EXPECT_TRUE(Eventually([&] { return view.rebuilds() == 2; }));
  EXPECT_TRUE(view.GetDomain("a").ok());
}

TEST(DomainView, RebuildThatCannotListAnswersUnavailableAfterTheWait) {
  FakeHypervisor fake;
  ASSERT_TRUE(fake.DefineDomain(Spec("a")).ok());
  DomainView view(fake, {.rebuild_wait = std::chrono::milliseconds(100), .retry_delay = std::chrono::milliseconds(20)});
  ASSERT_TRUE(view.GetDomain("a").ok());
  fake.fail_list = absl::InternalError("listing broke");
  fake.generation = 2;
  const auto t0 = std::chrono::steady_clock::now();
  auto d = view.GetDomain("a");
  EXPECT_TRUE(absl::IsUnavailable(d.status())) << d.status();
  EXPECT_THAT(d.status().message(), HasSubstr("rebuilt"));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
  EXPECT_FALSE(view.Connected());
}

TEST(DomainView, UnrelatedEventsPassThroughWithoutRereads) {
  FakeHypervisor fake;
  DomainView view(fake);
  ASSERT_TRUE(view.ListDomains().ok());
  std::atomic<int> got{0};
  view.SetEventSink([&](const DomainEvent&) { ++got; });
  const uint64_t before = view.refreshes();
  fake.Emit(Event("dom", DomainEventType::kEventChannelsHigh));
  EXPECT_TRUE(Eventually([&] { return got.load() == 1; }));
  EXPECT_EQ(view.refreshes(), before);
}


NicSpec BridgeNic(const std::string& mac) {
  NicSpec n;
  n.mac = mac;
  n.bridge = "br0";
  n.model = "virtio";
  return n;
}

std::vector<std::string> Macs(const DomainInfo& d) {
  std::vector<std::string> out;
  for (const NicInfo& n : d.nics) out.push_back(n.spec.mac);
  return out;
}

// NICs travel in DomainInfo: the host-side device appears with the start that made it and goes
// with the stop, and the agent's own hot-plug and unplug are seen by the next read.
TEST(DomainView, NicsAndTheirTapsFollowStartStopAndTheAgentsHotPlug) {
  FakeHypervisor fake;
  DomainSpec spec = Spec("web");
  spec.nics.push_back(BridgeNic("52:54:00:00:00:01"));
  ASSERT_TRUE(fake.DefineDomain(spec).ok());
  DomainView view(fake);
  auto d = view.GetDomain("web");
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->nics.size(), 1u);
  EXPECT_EQ(d->nics[0].spec.bridge, "br0");
  EXPECT_EQ(d->nics[0].host_device, "");  // not running: no tap
  ASSERT_TRUE(view.StartDomain("web").ok());
  d = view.GetDomain("web");
  ASSERT_EQ(d->nics.size(), 1u);
  EXPECT_THAT(d->nics[0].host_device, ::testing::StartsWith("vnet"));
  ASSERT_TRUE(view.AttachNic("web", BridgeNic("52:54:00:00:00:02")).ok());
  d = view.GetDomain("web");  // no event: the write's own re-read
  EXPECT_THAT(Macs(*d), ::testing::ElementsAre("52:54:00:00:00:01", "52:54:00:00:00:02"));
  EXPECT_NE(d->nics[1].host_device, "");
  EXPECT_NE(d->nics[1].host_device, d->nics[0].host_device);
  ASSERT_TRUE(view.DetachNic("web", "52:54:00:00:00:01").ok());
  EXPECT_THAT(Macs(*view.GetDomain("web")), ::testing::ElementsAre("52:54:00:00:00:02"));
  ASSERT_TRUE(view.DestroyDomain("web").ok());
  d = view.GetDomain("web");
  ASSERT_EQ(d->nics.size(), 1u);
  EXPECT_EQ(d->nics[0].host_device, "");
  EXPECT_EQ(view.ListDomains()->at(0).nics.size(), 1u);
}

// A hot-plug behind the agent's back (virsh attach-interface) has no lifecycle event: libvirt's
// DEVICE_ADDED / DEVICE_REMOVED make the view re-read, and pass on to subscribers after.
TEST(DomainView, DeviceEventsRereadTheDomainsNics) {
  FakeHypervisor fake;
  ASSERT_TRUE(fake.DefineDomain(Spec("web")).ok());
  ASSERT_TRUE(fake.StartDomain("web").ok());
  DomainView view(fake);
  ASSERT_TRUE(view.GetDomain("web")->nics.empty());
  std::atomic<int> passed{0};
  view.SetEventSink([&](const DomainEvent& e) {
    if (e.type == DomainEventType::kDeviceAdded || e.type == DomainEventType::kDeviceRemoved) ++passed;
  });
  ASSERT_TRUE(fake.AttachNic("web", BridgeNic("52:54:00:00:00:09")).ok());
  EXPECT_TRUE(view.GetDomain("web")->nics.empty());  // no event yet: memory, not libvirt
  fake.Emit(Event("web", DomainEventType::kDeviceAdded));
  EXPECT_TRUE(Eventually([&] { return view.GetDomain("web")->nics.size() == 1; }));
  ASSERT_TRUE(fake.DetachNic("web", "52:54:00:00:00:09").ok());
  fake.Emit(Event("web", DomainEventType::kDeviceRemoved));
  EXPECT_TRUE(Eventually([&] { return view.GetDomain("web")->nics.empty(); }));
  EXPECT_TRUE(Eventually([&] { return passed.load() == 2; }));
}

}  // namespace
}  // namespace hvagent::hv
