// DomainService::Update (UpdateDomain, resize in place): ranges are checked before the
// hypervisor is asked, growth is admitted like a create, a running domain changes only within
// its maximums, and a refusal changes nothing.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/service/domain_service.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"

namespace hvagent::service {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

hv::DomainSpec Spec(const std::string& name, uint32_t vcpus, uint64_t memory_mib, uint32_t max_vcpus = 0) {
  return hv::DomainSpec{.name = name, .vcpus = vcpus, .max_vcpus = max_vcpus, .memory_mib = memory_mib};
}

hv::ResourceChange Change(std::optional<uint32_t> vcpus, std::optional<uint64_t> memory_mib) {
  return hv::ResourceChange{.vcpus = vcpus, .memory_mib = memory_mib};
}

// The fake host: 8 CPUs, 16 GiB; the default policy leaves 32 vCPUs and 15872 MiB.
class DomainResizeTest : public ::testing::Test {
 protected:
  // Calls the fake saw after the domains were made.
  std::vector<std::string> CallsSince(size_t n) { return {hv_.calls.begin() + n, hv_.calls.end()}; }

  testing::FakeHypervisor hv_;
  testing::FakeClock clock_;
  DomainService svc_{hv_, clock_, DomainService::Options{.admission = CapacityPolicy{}}};
};

TEST_F(DomainResizeTest, Update_StoppedDomainTakesNewVcpusAndMemory) {
  ASSERT_TRUE(svc_.Create(Spec("web1", 1, 256), false).ok());
  auto d = svc_.Update("web1", Change(2, 512));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->vcpus, 2u);
  EXPECT_EQ(d->memory_mib, 512u);
  EXPECT_EQ(d->state, hv::DomainState::kShutoff);
}

TEST_F(DomainResizeTest, Update_UnsetFieldStaysAsItIs) {
  ASSERT_TRUE(svc_.Create(Spec("web1", 2, 256), false).ok());
  auto d = svc_.Update("web1", Change(std::nullopt, 1024));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->vcpus, 2u);
  EXPECT_EQ(d->memory_mib, 1024u);
}

TEST_F(DomainResizeTest, Update_BadInputNamesTheFieldAndTouchesNothing) {
  ASSERT_TRUE(svc_.Create(Spec("web1", 2, 256), false).ok());
  const size_t before = hv_.calls.size();
  struct Case {
    hv::ResourceChange change;
    const char* field;
  } cases[] = {
      {Change(0, std::nullopt), "vcpus: must be between 1 and 4096, got 0"},
      {Change(5000, std::nullopt), "vcpus: must be between 1"},
      {Change(std::nullopt, 8), "memory_mib: must be between 16"},
      {Change(std::nullopt, 0), "memory_mib: must be between 16"},
      {Change(std::nullopt, std::nullopt), "give at least one"},
  };
  for (const Case& c : cases) {
    auto d = svc_.Update("web1", c.change);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(std::string(d.status().message()), HasSubstr(c.field));
  }
  auto bad_name = svc_.Update("a'/><x", Change(2, std::nullopt));
  EXPECT_EQ(bad_name.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_name.status().message()), HasSubstr("name"));
  EXPECT_THAT(CallsSince(before), IsEmpty());
  EXPECT_EQ(svc_.Get("web1")->vcpus, 2u);
  EXPECT_EQ(svc_.Get("web1")->memory_mib, 256u);
}

TEST_F(DomainResizeTest, Update_UnknownDomainIsNotFound) {
  EXPECT_EQ(svc_.Update("ghost", Change(2, std::nullopt)).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(DomainResizeTest, Update_GrowthPastThePolicyIsRefusedAsComputeCapacity) {
  ASSERT_TRUE(svc_.Create(Spec("a", 2, 8192), false).ok());
  ASSERT_TRUE(svc_.Create(Spec("b", 2, 4096), false).ok());
  const size_t before = hv_.calls.size();
  // 8192 + 4096 defined; b may grow by 15872 - 12288 = 3584 MiB at most.
  auto d = svc_.Update("b", Change(std::nullopt, 4096 + 3585));
  ASSERT_EQ(d.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(CapacityKindOf(d.status()), CapacityKind::kCompute);
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("memory_mib: not enough memory"));
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("available 3584 MiB"));
  auto v = svc_.Update("b", Change(31, std::nullopt));  // 2 + 2 defined, 32 schedulable: 28 more at most
  ASSERT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("vcpus: not enough vCPUs"));
  EXPECT_THAT(CallsSince(before), IsEmpty());
  EXPECT_EQ(svc_.Get("b")->memory_mib, 4096u);
  // Exactly what is left fits; shrinking always does.
  EXPECT_TRUE(svc_.Update("b", Change(30, 4096 + 3584)).ok());
  EXPECT_TRUE(svc_.Update("a", Change(1, 1024)).ok());
}

TEST_F(DomainResizeTest, Update_RunningDomainGrowsWithinItsMaximumLive) {
  ASSERT_TRUE(svc_.Create(Spec("web1", 1, 512, /*max_vcpus=*/4), true).ok());
  auto d = svc_.Update("web1", Change(3, 256));  // memory: down to the balloon
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->vcpus, 3u);
  EXPECT_EQ(d->state, hv::DomainState::kRunning);
  auto r = hv_.GetDomainResources("web1");
  EXPECT_EQ(r->memory_mib, 256u);
  EXPECT_EQ(r->max_memory_mib, 512u);
}

TEST_F(DomainResizeTest, Update_RunningDomainBeyondItsMaximumIsFailedPreconditionAndUnchanged) {
  ASSERT_TRUE(svc_.Create(Spec("web1", 1, 512, /*max_vcpus=*/2), true).ok());
  auto v = svc_.Update("web1", Change(3, std::nullopt));
  EXPECT_EQ(v.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("vcpus"));
  auto m = svc_.Update("web1", Change(std::nullopt, 1024));
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("memory_mib"));
  EXPECT_EQ(svc_.Get("web1")->vcpus, 1u);
  EXPECT_EQ(svc_.Get("web1")->memory_mib, 512u);
}

TEST_F(DomainResizeTest, Update_HypervisorRefusalIsPassedOnAndChangesNothing) {
  ASSERT_TRUE(svc_.Create(Spec("web1", 1, 256), false).ok());
  hv_.fail_resize = absl::InternalError("operation failed: cannot hot-plug");
  auto d = svc_.Update("web1", Change(2, 512));
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(svc_.Get("web1")->vcpus, 1u);
}

// The growth of a resize in flight is held: a create racing it cannot take the same room.
TEST_F(DomainResizeTest, Update_GrowthIsHeldWhileTheHypervisorApplies) {
  ASSERT_TRUE(svc_.Create(Spec("a", 2, 4096), false).ok());
  ComputeAdmission admission(hv_, CapacityPolicy{});
  auto hold = admission.AdmitGrowth("a", 0, 11776, false);  // 4096 + 11776 = 15872: all of it
  ASSERT_TRUE(hold.ok()) << hold.status();
  auto other = admission.AdmitCreate("b", 1, 16, false);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kResourceExhausted);
  hold->Release();
  EXPECT_TRUE(admission.AdmitCreate("b", 1, 16, false).ok());
}

}  // namespace
}  // namespace hvagent::service
