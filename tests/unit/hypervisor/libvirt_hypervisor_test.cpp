// LibvirtHypervisor against libvirt's in-process test driver (test:///default). All
// connections in one process share that driver's state, so every test uses its own names.
#include "hypervisor/libvirt/libvirt_hypervisor.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <libvirt/libvirt.h>

#include <tuple>

namespace hvagent::hv {
namespace {

using ::testing::HasSubstr;

std::string Unique(const std::string& base) {
  static std::atomic<int> n{0};
  return base + "-" + std::to_string(getpid()) + "-" + std::to_string(n++);
}

DomainSpec Spec(const std::string& name) {
  DomainSpec s;
  s.name = name;
  s.vcpus = 1;
  s.memory_mib = 64;
  s.serial_console = true;
  return s;
}

// Collects events from the hypervisor's event thread.
class EventRecorder {
 public:
  Hypervisor::EventSink Sink() {
    return [this](const DomainEvent& e) {
      std::lock_guard lock(mu_);
      events_.push_back(e);
      cv_.notify_all();
    };
  }
  // True once an event of `type` for `name` arrived (within 10 s).
  bool WaitFor(const std::string& name, DomainEventType type) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] {
      for (const auto& e : events_) {
        if (e.domain_name == name && e.type == type) return true;
      }
      return false;
    });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<DomainEvent> events_;
};

class LibvirtHypervisorTest : public ::testing::Test {
 protected:
  LibvirtHypervisor hv_{{.uri = "test:///default"}};
};

TEST_F(LibvirtHypervisorTest, HostInfoComesFromTheDriver) {
  ASSERT_TRUE(hv_.Connected());
  auto h = hv_.GetHostInfo();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->arch, "i686");
  EXPECT_EQ(h->cpus, 16u);
  EXPECT_EQ(h->sockets * h->cores_per_socket * h->threads_per_core, h->cpus);
  EXPECT_EQ(h->memory_bytes, 3ULL << 30);
  EXPECT_EQ(h->hypervisor_type, "TEST");
  EXPECT_FALSE(h->libvirt_version.empty());
  EXPECT_EQ(h->uri, "test:///default");
}

TEST_F(LibvirtHypervisorTest, FullLifecycle) {
  const std::string name = Unique("life");
  ASSERT_TRUE(hv_.DefineDomain(Spec(name)).ok());
  auto d = hv_.GetDomain(name);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->state, DomainState::kShutoff);
  EXPECT_EQ(d->vcpus, 1u);
  EXPECT_EQ(d->memory_mib, 64u);
  EXPECT_TRUE(d->persistent);
  EXPECT_FALSE(d->uptime.has_value());

  ASSERT_TRUE(hv_.StartDomain(name).ok());
  EXPECT_EQ(hv_.GetDomain(name)->state, DomainState::kRunning);
  ASSERT_TRUE(hv_.SuspendDomain(name).ok());
  EXPECT_EQ(hv_.GetDomain(name)->state, DomainState::kPaused);
  ASSERT_TRUE(hv_.ResumeDomain(name).ok());
  EXPECT_EQ(hv_.GetDomain(name)->state, DomainState::kRunning);
  ASSERT_TRUE(hv_.RebootDomain(name).ok());
  ASSERT_TRUE(hv_.RequestShutdown(name).ok());
  EXPECT_EQ(hv_.GetDomain(name)->state, DomainState::kShutoff);  // the test driver obeys at once
  ASSERT_TRUE(hv_.StartDomain(name).ok());
  ASSERT_TRUE(hv_.DestroyDomain(name).ok());
  EXPECT_EQ(hv_.GetDomain(name)->state, DomainState::kShutoff);
  ASSERT_TRUE(hv_.UndefineDomain(name).ok());
  EXPECT_EQ(hv_.GetDomain(name).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(LibvirtHypervisorTest, ManagedSaveStopsStartRestoresAndUndefineDropsTheImage) {
  const std::string name = Unique("saved");
  ASSERT_TRUE(hv_.DefineDomain(Spec(name)).ok());
  EXPECT_EQ(hv_.ManagedSaveDomain(name).code(), absl::StatusCode::kFailedPrecondition);  // not running
  ASSERT_TRUE(hv_.StartDomain(name).ok());
  ASSERT_TRUE(hv_.ManagedSaveDomain(name).ok());
  EXPECT_EQ(hv_.GetDomain(name)->state, DomainState::kShutoff);
  ASSERT_TRUE(hv_.StartDomain(name).ok());  // restores the saved guest
  EXPECT_EQ(hv_.GetDomain(name)->state, DomainState::kRunning);
  // A saved guest cannot be resized: it restores at the size it was saved with.
  ASSERT_TRUE(hv_.ManagedSaveDomain(name).ok());
  auto resize = hv_.SetDomainResources(name, {.vcpus = 2});
  EXPECT_EQ(resize.code(), absl::StatusCode::kFailedPrecondition) << resize;
  EXPECT_THAT(std::string(resize.message()), testing::HasSubstr("resume it before resizing"));
  EXPECT_EQ(hv_.GetDomain(name)->vcpus, 1u);
  ASSERT_TRUE(hv_.StartDomain(name).ok());
  // A saved domain can still be deleted: libvirt refuses unless told to drop the image.
  ASSERT_TRUE(hv_.ManagedSaveDomain(name).ok());
  auto s = hv_.UndefineDomain(name);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(hv_.GetDomain(name).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(hv_.ManagedSaveDomain(name).code(), absl::StatusCode::kNotFound);
}

// What a rescue does to a domain: its definition is read, replaced by another one of the same
// name and uuid, and given back exactly.
TEST_F(LibvirtHypervisorTest, RedefineThenRestoreGivesTheOriginalDefinitionBack) {
  const std::string name = Unique("rescued");
  DomainSpec spec = Spec(name);
  spec.labels = {{"owner", "nova"}};
  ASSERT_TRUE(hv_.DefineDomain(spec).ok());
  auto original = hv_.GetDomainDefinition(name);
  ASSERT_TRUE(original.ok()) << original.status();
  const std::string uuid = hv_.GetDomain(name)->uuid;

  DomainSpec rescue = Spec(name);
  rescue.uuid = uuid;
  rescue.vcpus = 2;
  rescue.boot = DirectKernelBoot{.kernel_path = "/boot/rescue-kernel"};
  ASSERT_TRUE(hv_.RedefineDomain(rescue).ok());
  EXPECT_EQ(hv_.GetDomain(name)->vcpus, 2u);
  EXPECT_THAT(*hv_.GetDomainDefinition(name), HasSubstr("/boot/rescue-kernel"));

  DomainSpec other = rescue;
  other.uuid = "11111111-2222-4333-8444-555555555555";
  EXPECT_EQ(hv_.RedefineDomain(other).code(), absl::StatusCode::kInvalidArgument) << "another uuid";
  EXPECT_EQ(hv_.RestoreDomainDefinition("someone-else", *original).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(hv_.StartDomain(name).ok());
  EXPECT_EQ(hv_.RestoreDomainDefinition(name, *original).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(hv_.RedefineDomain(rescue).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(hv_.DestroyDomain(name).ok());

  ASSERT_TRUE(hv_.RestoreDomainDefinition(name, *original).ok());
  EXPECT_EQ(*hv_.GetDomainDefinition(name), *original);
  EXPECT_EQ(hv_.GetDomain(name)->uuid, uuid);
  EXPECT_EQ(hv_.GetDomain(name)->labels.at("owner"), "nova");
  ASSERT_TRUE(hv_.UndefineDomain(name).ok());
  // Restoring defines it again when it is gone (recovery after a crash between two steps).
  ASSERT_TRUE(hv_.RestoreDomainDefinition(name, *original).ok());
  EXPECT_EQ(hv_.GetDomain(name)->uuid, uuid);
  ASSERT_TRUE(hv_.UndefineDomain(name).ok());
}

// The libvirt calls of UpdateDomain: a shut-off domain's definition takes any size (its
// maximums follow), a running one changes within its maximums and is refused past them.
TEST_F(LibvirtHypervisorTest, SetDomainResourcesOfflineThenLiveWithinTheMaximums) {
  const std::string name = Unique("resize");
  DomainSpec spec = Spec(name);
  spec.max_vcpus = 2;
  ASSERT_TRUE(hv_.DefineDomain(spec).ok());
  auto r = hv_.GetDomainResources(name);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((std::tuple{r->active, r->vcpus, r->max_vcpus, r->max_memory_mib}), (std::tuple{false, 1u, 2u, 64ull}));

  auto s = hv_.SetDomainResources(name, {.vcpus = 3, .memory_mib = 128});
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(hv_.GetDomain(name)->vcpus, 3u);
  EXPECT_EQ(hv_.GetDomain(name)->memory_mib, 128u);
  s = hv_.SetDomainResources(name, {.vcpus = 1, .memory_mib = 96});  // shrinking lowers the memory maximum too
  ASSERT_TRUE(s.ok()) << s;
  r = hv_.GetDomainResources(name);
  EXPECT_EQ((std::tuple{r->vcpus, r->max_vcpus, r->memory_mib, r->max_memory_mib}), (std::tuple{1u, 3u, 96ull, 96ull}));

  ASSERT_TRUE(hv_.StartDomain(name).ok());
  s = hv_.SetDomainResources(name, {.vcpus = 4});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("vcpus"));
  s = hv_.SetDomainResources(name, {.memory_mib = 97});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("memory_mib"));
  s = hv_.SetDomainResources(name, {.vcpus = 2});
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(hv_.GetDomainResources(name)->vcpus, 2u);
  EXPECT_EQ(hv_.GetDomainResources("ghost").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(hv_.DestroyDomain(name).ok());
  ASSERT_TRUE(hv_.UndefineDomain(name).ok());
}

// The CPU topology and shares reach libvirt's definition (read back with libvirt's own call, on
// a connection of its own), so Nova's hw:cpu_* and quota:cpu_shares are not lost on the way.
TEST_F(LibvirtHypervisorTest, CpuTopologyAndSharesAreInTheDefinition) {
  const std::string name = Unique("tuned");
  DomainSpec spec = Spec(name);
  spec.vcpus = 4;
  spec.cpu_topology = GuestCpuTopology{2, 1, 2};
  spec.cpu_shares = 2048;
  ASSERT_TRUE(hv_.DefineDomain(spec).ok());
  virConnectPtr conn = virConnectOpen("test:///default");
  ASSERT_NE(conn, nullptr);
  virDomainPtr dom = virDomainLookupByName(conn, name.c_str());
  ASSERT_NE(dom, nullptr);
  char* xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
  ASSERT_NE(xml, nullptr);
  const std::string text(xml);
  free(xml);  // NOLINT: libvirt's allocation
  virDomainFree(dom);
  virConnectClose(conn);
  EXPECT_THAT(text, HasSubstr("<topology sockets='2'"));
  EXPECT_THAT(text, HasSubstr("cores='1' threads='2'/>"));
  EXPECT_THAT(text, HasSubstr("<shares>2048</shares>"));
  spec.name = Unique("tuned-bad");
  spec.cpu_topology = GuestCpuTopology{3, 1, 1};  // 3 != 4 vCPUs: refused before libvirt
  auto bad = hv_.DefineDomain(spec);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.message()), HasSubstr("spec.cpu_topology"));
  EXPECT_EQ(hv_.GetDomain(spec.name).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(hv_.UndefineDomain(name).ok());
}

// A cold migration sends this spec to the destination: every field the model expresses must
// come back from what libvirt stored, not only the ones the agent lists.
TEST_F(LibvirtHypervisorTest, GetDomainSpecReadsBackTheWholeDefinition) {
  const std::string name = Unique("whole");
  DomainSpec spec = Spec(name);
  spec.uuid = "2a7c1c8e-5d0b-4f4a-9b9e-0c1d2e3f4a5b";
  spec.vcpus = 2;
  spec.max_vcpus = 4;
  spec.memory_mib = 96;
  spec.boot = DirectKernelBoot{"/boot/vmlinuz-guest", "/boot/initrd-guest", "console=ttyS0 quiet"};
  spec.vnc = true;
  spec.cpu_topology = GuestCpuTopology{1, 2, 2};
  spec.cpu_shares = 512;
  spec.labels = {{"tenant", "blue"}, {"tier", "web"}};
  spec.disks.push_back({.source_path = "/dev/vg0/whole-root", .type = DiskType::kBlock, .target = "vda"});
  spec.nics.push_back({.mac = "52:54:00:12:34:56", .network = "default"});
  ASSERT_TRUE(hv_.DefineDomain(spec).ok());
  auto got = hv_.GetDomainSpec(name);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->name, name);
  EXPECT_EQ(got->uuid, spec.uuid);
  EXPECT_EQ(got->vcpus, 2u);
  EXPECT_EQ(got->max_vcpus, 4u);
  EXPECT_EQ(got->memory_mib, 96u);
  const auto* kernel = std::get_if<DirectKernelBoot>(&got->boot);
  ASSERT_NE(kernel, nullptr);
  EXPECT_EQ(kernel->kernel_path, "/boot/vmlinuz-guest");
  EXPECT_EQ(kernel->initrd_path, "/boot/initrd-guest");
  EXPECT_EQ(kernel->cmdline, "console=ttyS0 quiet");
  EXPECT_TRUE(got->vnc);
  EXPECT_TRUE(got->vnc_listen.empty());
  EXPECT_TRUE(got->vnc_locked_password.empty());
  EXPECT_TRUE(got->serial_console);
  ASSERT_TRUE(got->cpu_topology.has_value());
  EXPECT_EQ(got->cpu_topology->cores, 2u);
  EXPECT_EQ(got->cpu_topology->threads, 2u);
  EXPECT_EQ(got->cpu_shares, 512u);
  EXPECT_EQ(got->labels, spec.labels);
  ASSERT_EQ(got->disks.size(), 1u);
  EXPECT_EQ(got->disks[0].source_path, "/dev/vg0/whole-root");
  ASSERT_EQ(got->nics.size(), 1u);
  EXPECT_EQ(got->nics[0].mac, "52:54:00:12:34:56");
  // What was read back defines the same domain again (under another name and uuid).
  DomainSpec again = *got;
  again.name = Unique("whole-again");
  again.uuid.clear();
  EXPECT_TRUE(hv_.CheckDefinable(again).ok());
  EXPECT_TRUE(hv_.DefineDomain(again).ok());
  EXPECT_TRUE(hv_.UndefineDomain(again.name).ok());
  EXPECT_EQ(hv_.GetDomainSpec(Unique("none")).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(hv_.UndefineDomain(name).ok());
}

TEST_F(LibvirtHypervisorTest, CheckDefinableRefusesWhatThisHostCannotDefineAndDefinesNothing) {
  DomainSpec spec = Spec(Unique("nodef"));
  spec.cpu_model = "max";  // QEMU/KVM only: the test driver's guests have no CPU models
  auto s = hv_.CheckDefinable(spec);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("spec.cpu_model"));
  spec.cpu_model.clear();
  EXPECT_TRUE(hv_.CheckDefinable(spec).ok());
  EXPECT_EQ(hv_.GetDomain(spec.name).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(LibvirtHypervisorTest, ListIncludesDefinedDomains) {
  const std::string name = Unique("list");
  ASSERT_TRUE(hv_.DefineDomain(Spec(name)).ok());
  auto list = hv_.ListDomains();
  ASSERT_TRUE(list.ok());
  bool found = false;
  for (const auto& d : *list) found |= d.name == name;
  EXPECT_TRUE(found);
  ASSERT_TRUE(hv_.UndefineDomain(name).ok());
}

// Labels go into the definition's <metadata> and come back from every read path: by name,
// by uuid, the bulk listing, the per-domain listing, and after a start (the live definition).
TEST_F(LibvirtHypervisorTest, LabelsSurviveTheDefinitionAndEveryReadPath) {
  const std::string name = Unique("labels");
  DomainSpec s = Spec(name);
  s.labels = {{"cloudstack.instance", "i-2-100-VM"}, {"note", "  a <b> & \"c\" 'd' \u00e9  "}};
  ASSERT_TRUE(hv_.DefineDomain(s).ok());
  auto check = [&](const char* how, const std::map<std::string, std::string>& got) {
    EXPECT_EQ(got, s.labels) << how;
  };
  auto one = hv_.GetDomain(name);
  ASSERT_TRUE(one.ok()) << one.status();
  check("by name", one->labels);
  auto by_uuid = hv_.GetDomainByUuid(one->uuid);
  ASSERT_TRUE(by_uuid.ok());
  check("by uuid", by_uuid->labels);
  ASSERT_TRUE(hv_.StartDomain(name).ok());
  LibvirtHypervisor per_domain({.uri = "test:///default", .force_per_domain_stats = true});
  for (LibvirtHypervisor* h : {&hv_, &per_domain}) {
    auto list = h->ListDomains();
    ASSERT_TRUE(list.ok());
    auto mine = std::find_if(list->begin(), list->end(), [&](const DomainInfo& d) { return d.name == name; });
    ASSERT_NE(mine, list->end());
    check(h == &hv_ ? "bulk listing" : "per-domain listing", mine->labels);
    // A domain defined without labels (the driver's own "test") has none, not an error.
    auto other = std::find_if(list->begin(), list->end(), [&](const DomainInfo& d) { return d.name == "test"; });
    ASSERT_NE(other, list->end());
    EXPECT_TRUE(other->labels.empty());
  }
  ASSERT_TRUE(hv_.DestroyDomain(name).ok());
  ASSERT_TRUE(hv_.UndefineDomain(name).ok());
}

TEST_F(LibvirtHypervisorTest, BadLabelsAreRefusedBeforeLibvirt) {
  const std::string name = Unique("badlabels");
  DomainSpec s = Spec(name);
  s.labels = {{"Upper", "x"}};
  auto st = hv_.DefineDomain(s);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("spec.labels[\"Upper\"]"));
  EXPECT_TRUE(absl::IsNotFound(hv_.GetDomain(name).status()));
}

TEST_F(LibvirtHypervisorTest, DuplicateNameOrUuidIsAlreadyExists) {
  const std::string name = Unique("dup");
  DomainSpec s = Spec(name);
  s.uuid = "11111111-2222-3333-4444-" + std::to_string(100000000000 + getpid());
  ASSERT_TRUE(hv_.DefineDomain(s).ok());
  DomainSpec same_name = Spec(name);
  same_name.vcpus = 3;
  absl::Status st = hv_.DefineDomain(same_name);
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(st.message()), HasSubstr("spec.name"));
  EXPECT_EQ(hv_.GetDomain(name)->vcpus, 1u) << "the original definition must be untouched";
  DomainSpec same_uuid = Spec(Unique("dup-other"));
  same_uuid.uuid = s.uuid;
  st = hv_.DefineDomain(same_uuid);
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(st.message()), HasSubstr("spec.uuid"));
  ASSERT_TRUE(hv_.UndefineDomain(name).ok());
}

TEST_F(LibvirtHypervisorTest, UnknownDomainIsNotFoundForEveryOperation) {
  const std::string ghost = Unique("ghost");
  EXPECT_EQ(hv_.GetDomain(ghost).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(hv_.StartDomain(ghost).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(hv_.RequestShutdown(ghost).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(hv_.DestroyDomain(ghost).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(hv_.RebootDomain(ghost).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(hv_.SuspendDomain(ghost).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(hv_.ResumeDomain(ghost).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(hv_.UndefineDomain(ghost).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(hv_.GetDomainByUuid("99999999-9999-9999-9999-999999999999").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(LibvirtHypervisorTest, InvalidNameIsRejectedBeforeLibvirt) {
  absl::Status st = hv_.StartDomain("a'/><devices>");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("name"));
}

TEST_F(LibvirtHypervisorTest, WrongStateIsFailedPrecondition) {
  const std::string name = Unique("state");
  ASSERT_TRUE(hv_.DefineDomain(Spec(name)).ok());
  absl::Status st = hv_.DestroyDomain(name);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(st.message()), HasSubstr("shut off"));
  EXPECT_EQ(hv_.ResumeDomain(name).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(hv_.SuspendDomain(name).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(hv_.RebootDomain(name).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(hv_.RequestShutdown(name).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(hv_.StartDomain(name).ok());
  EXPECT_EQ(hv_.StartDomain(name).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(hv_.DestroyDomain(name).ok());
  ASSERT_TRUE(hv_.UndefineDomain(name).ok());
}

TEST_F(LibvirtHypervisorTest, ArchTheDriverLacksIsInvalidArgument) {
  DomainSpec s = Spec(Unique("arch"));
  s.arch = "aarch64";
  absl::Status st = hv_.DefineDomain(s);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("spec.arch"));
  EXPECT_EQ(hv_.GetDomain(s.name).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(LibvirtHypervisorTest, LifecycleEventsReachTheSinkAndUptimeIsTracked) {
  EventRecorder rec;
  hv_.SetEventSink(rec.Sink());
  const std::string name = Unique("events");
  ASSERT_TRUE(hv_.DefineDomain(Spec(name)).ok());
  EXPECT_TRUE(rec.WaitFor(name, DomainEventType::kDefined));
  ASSERT_TRUE(hv_.StartDomain(name).ok());
  EXPECT_TRUE(rec.WaitFor(name, DomainEventType::kStarted));
  EXPECT_TRUE(hv_.GetDomain(name)->uptime.has_value());
  ASSERT_TRUE(hv_.DestroyDomain(name).ok());
  EXPECT_TRUE(rec.WaitFor(name, DomainEventType::kStopped));
  EXPECT_FALSE(hv_.GetDomain(name)->uptime.has_value());
  ASSERT_TRUE(hv_.UndefineDomain(name).ok());
  EXPECT_TRUE(rec.WaitFor(name, DomainEventType::kUndefined));
  hv_.SetEventSink(nullptr);
}

// libvirt's test driver has no device hot-plug: attach answers UNIMPLEMENTED and changes
// nothing. Our own checks (validation, target in use) come first on every driver; the real
// attach is exercised against QEMU in the integration tier.
TEST_F(LibvirtHypervisorTest, DisksAreReadBackAndAttachChecksComeFirst) {
  const std::string name = Unique("disks");
  DomainSpec s = Spec(name);
  s.disks.push_back({"/var/lib/hvagent/root.raw", DiskType::kFile, "vda", "", false, ""});
  s.disks.push_back({"/dev/hvit_vg/data", DiskType::kBlock, "vdb", "", true, ""});
  ASSERT_TRUE(hv_.DefineDomain(s).ok());
  auto disks = hv_.GetDomainDisks(name);
  ASSERT_TRUE(disks.ok()) << disks.status();
  ASSERT_EQ(disks->size(), 2u);
  EXPECT_EQ((*disks)[0].source_path, "/var/lib/hvagent/root.raw");
  EXPECT_EQ((*disks)[0].target, "vda");
  EXPECT_EQ((*disks)[1].type, DiskType::kBlock);
  EXPECT_EQ((*disks)[1].source_path, "/dev/hvit_vg/data");
  EXPECT_TRUE((*disks)[1].readonly);

  DiskSpec taken{"/dev/hvit_vg/other", DiskType::kBlock, "vdb", "", false, ""};
  EXPECT_EQ(hv_.AttachDisk(name, taken).code(), absl::StatusCode::kAlreadyExists);
  DiskSpec hostile{"../../etc/passwd", DiskType::kBlock, "vdc", "", false, ""};
  EXPECT_EQ(hv_.AttachDisk(name, hostile).code(), absl::StatusCode::kInvalidArgument);
  DiskSpec fine{"/dev/hvit_vg/more", DiskType::kBlock, "vdc", "", false, ""};
  EXPECT_EQ(hv_.AttachDisk(name, fine).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(hv_.DetachDisk(name, {"/dev/hvit_vg/data", DiskType::kBlock, "vdz", "", false, ""}).code(),
            absl::StatusCode::kNotFound);
  // A disk is named by target and source together: the right target with another source is not it.
  EXPECT_EQ(hv_.DetachDisk(name, {"/dev/hvit_vg/other", DiskType::kBlock, "vdb", "", false, ""}).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(hv_.DetachDisk(name, {"/dev/hvit_vg/data", DiskType::kBlock, "vdb", "", true, ""}).code(),
            absl::StatusCode::kUnimplemented);  // the test driver has no device detach either
  EXPECT_EQ(hv_.GetDomainDisks(name)->size(), 2u);
  ASSERT_TRUE(hv_.UndefineDomain(name).ok());
}

// The per-domain fallback exists for libxl, which has no bulk call; the test driver has both,
// so the two paths can be compared on the same domains.
TEST(LibvirtHypervisorStatsTest, PerDomainFallbackAgreesWithTheBulkCall) {
  LibvirtHypervisor bulk({.uri = "test:///default"});
  LibvirtHypervisor per_domain({.uri = "test:///default", .force_per_domain_stats = true});
  const std::string name = Unique("stats");
  DomainSpec s = Spec(name);
  s.vcpus = 2;
  s.disks.push_back({"/var/lib/hvagent/root.raw", DiskType::kFile, "vda", "", false, ""});
  s.disks.push_back({"/dev/hvit_vg/data", DiskType::kBlock, "vdb", "", false, ""});
  s.nics.push_back({.mac = "", .network = "default", .bridge = "", .model = ""});
  ASSERT_TRUE(per_domain.DefineDomain(s).ok());
  const std::string stopped = Unique("stats-off");
  ASSERT_TRUE(per_domain.DefineDomain(Spec(stopped)).ok());
  ASSERT_TRUE(per_domain.StartDomain(name).ok());

  auto a = bulk.GetAllDomainStats();
  auto b = per_domain.GetAllDomainStats();
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE(bulk.per_domain_stats());
  auto find = [](const std::vector<DomainStats>& all, const std::string& n) -> const DomainStats* {
    for (const auto& d : all) {
      if (d.name == n) return &d;
    }
    return nullptr;
  };
  const DomainStats* ra = find(*a, name);
  const DomainStats* rb = find(*b, name);
  ASSERT_NE(ra, nullptr);
  ASSERT_NE(rb, nullptr);
  EXPECT_EQ(rb->uuid, ra->uuid);
  EXPECT_EQ(rb->id, ra->id);
  EXPECT_TRUE(rb->id.has_value());
  EXPECT_EQ(rb->state, DomainState::kRunning);
  EXPECT_EQ(rb->vcpus, 2u);
  EXPECT_TRUE(rb->cpu_time_ns.has_value());
  // The test driver's bulk call leaves out the block and interface groups, but it answers
  // virDomainBlockStats and virDomainInterfaceStats: the fallback must find the devices itself.
  ASSERT_EQ(rb->disks.size(), 2u);
  EXPECT_EQ(rb->disks[0].target, "vda");
  EXPECT_EQ(rb->disks[1].target, "vdb");
  EXPECT_TRUE(rb->disks[0].read_bytes.has_value());
  EXPECT_TRUE(rb->disks[1].write_requests.has_value());
  ASSERT_EQ(rb->nics.size(), 1u);
  EXPECT_FALSE(rb->nics[0].name.empty());
  EXPECT_TRUE(rb->nics[0].rx_bytes.has_value()) << rb->nics[0].name;

  const DomainStats* off = find(*b, stopped);
  ASSERT_NE(off, nullptr);
  EXPECT_EQ(off->state, DomainState::kShutoff);
  EXPECT_FALSE(off->cpu_time_ns.has_value());
  EXPECT_TRUE(off->disks.empty());
  EXPECT_EQ(b->size(), a->size());

  ASSERT_TRUE(per_domain.DestroyDomain(name).ok());
  ASSERT_TRUE(per_domain.UndefineDomain(name).ok());
  ASSERT_TRUE(per_domain.UndefineDomain(stopped).ok());
}

// ListDomains takes state, vCPUs and memory from one bulk call where the driver gives them, and
// completes with per-domain calls where it does not (the test driver reports only the state):
// either way the answer is the per-domain one.
TEST(LibvirtHypervisorStatsTest, BulkListingAgreesWithPerDomainCalls) {
  LibvirtHypervisor bulk({.uri = "test:///default"});
  LibvirtHypervisor per_domain({.uri = "test:///default", .force_per_domain_stats = true});
  const std::string name = Unique("listing");
  DomainSpec s = Spec(name);
  s.vcpus = 3;
  s.memory_mib = 96;
  ASSERT_TRUE(bulk.DefineDomain(s).ok());
  ASSERT_TRUE(bulk.StartDomain(name).ok());
  auto a = bulk.ListDomains();
  auto b = per_domain.ListDomains();
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->size(), b->size());
  for (size_t i = 0; i < a->size(); ++i) {
    const DomainInfo& x = (*a)[i];
    auto y = std::find_if(b->begin(), b->end(), [&](const DomainInfo& d) { return d.uuid == x.uuid; });
    ASSERT_NE(y, b->end()) << x.name;
    EXPECT_EQ(x.name, y->name);
    EXPECT_EQ(x.state, y->state) << x.name;
    EXPECT_EQ(x.vcpus, y->vcpus) << x.name;
    EXPECT_EQ(x.memory_mib, y->memory_mib) << x.name;
    EXPECT_EQ(x.persistent, y->persistent) << x.name;
  }
  auto mine = std::find_if(a->begin(), a->end(), [&](const DomainInfo& d) { return d.name == name; });
  ASSERT_NE(mine, a->end());
  EXPECT_EQ(mine->vcpus, 3u);
  EXPECT_EQ(mine->memory_mib, 96u);
  EXPECT_TRUE(mine->persistent);
  EXPECT_EQ(mine->state, DomainState::kRunning);
  ASSERT_TRUE(bulk.DestroyDomain(name).ok());
  ASSERT_TRUE(bulk.UndefineDomain(name).ok());
}

TEST(LibvirtHypervisorConnectionTest, UnreachableUriStartsDisconnectedAndCallsAreUnavailable) {
  LibvirtHypervisor hv({.uri = "test:///nonexistent/hvagent-missing.xml",
                        .min_backoff = std::chrono::milliseconds(50),
                        .max_backoff = std::chrono::milliseconds(100)});
  EXPECT_FALSE(hv.Connected());
  EXPECT_EQ(hv.ListDomains().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(hv.GetHostInfo().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(hv.DefineDomain(Spec("x")).code(), absl::StatusCode::kUnavailable);
}

TEST(LibvirtHypervisorConnectionTest, ReconnectsAfterConnectionLoss) {
  LibvirtHypervisor hv({.uri = "test:///default",
                        .min_backoff = std::chrono::milliseconds(50),
                        .max_backoff = std::chrono::milliseconds(100)});
  ASSERT_TRUE(hv.Connected());
  EXPECT_EQ(hv.connection_generation(), 1u);
  hv.SimulateConnectionLoss();
  for (int i = 0; i < 100 && !(hv.Connected() && hv.connection_generation() == 2); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(hv.connection_generation(), 2u);
  EXPECT_TRUE(hv.Connected());
  EXPECT_TRUE(hv.ListDomains().ok());
}

// After a reconnect, subscribers learn that events may have been missed, then every domain's
// state (the test driver's built-in "test" domain runs).
TEST(LibvirtHypervisorConnectionTest, AReconnectAnnouncesAResyncThenEachDomainsState) {
  LibvirtHypervisor hv({.uri = "test:///default",
                        .min_backoff = std::chrono::milliseconds(50),
                        .max_backoff = std::chrono::milliseconds(100)});
  EventRecorder events;
  hv.SetEventSink(events.Sink());
  hv.SimulateConnectionLoss();
  EXPECT_TRUE(events.WaitFor("", DomainEventType::kResync));
  EXPECT_TRUE(events.WaitFor("test", DomainEventType::kState));
}

}  // namespace
}  // namespace hvagent::hv
