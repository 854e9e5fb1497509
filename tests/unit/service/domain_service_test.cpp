#include "agent/service/domain_service.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_hypervisor.h"

namespace hvagent::service {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::FakeClock;
using testing::FakeHypervisor;

hv::DomainSpec Spec(const std::string& name) {
  hv::DomainSpec s;
  s.name = name;
  s.vcpus = 2;
  s.memory_mib = 256;
  return s;
}

class DomainServiceTest : public ::testing::Test {
 protected:
  FakeHypervisor hv_;
  FakeClock clock_;
  DomainService svc_{hv_, clock_, {.default_shutdown_timeout = std::chrono::seconds(10)}};
};

TEST_F(DomainServiceTest, Create_DefinesWithoutStartingByDefault) {
  auto d = svc_.Create(Spec("web1"), false);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->state, hv::DomainState::kShutoff);
  EXPECT_EQ(d->vcpus, 2u);
  EXPECT_THAT(hv_.calls, ElementsAre("define web1"));
}

TEST_F(DomainServiceTest, Create_WithStartReturnsRunningDomain) {
  auto d = svc_.Create(Spec("web1"), true);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->state, hv::DomainState::kRunning);
}

TEST_F(DomainServiceTest, Create_RejectsInvalidSpecBeforeTouchingHypervisor) {
  auto spec = Spec("web1");
  spec.vcpus = 0;
  auto d = svc_.Create(spec, true);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(d.status().message(), HasSubstr("spec.vcpus"));
  EXPECT_TRUE(hv_.calls.empty());
}

TEST_F(DomainServiceTest, Create_RejectsNameWithXml) {
  auto d = svc_.Create(Spec("a'/><devices>"), true);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(d.status().message(), HasSubstr("spec.name"));
  EXPECT_TRUE(hv_.calls.empty());
  EXPECT_EQ(hv_.domain_count(), 0u);
}

TEST_F(DomainServiceTest, Create_DuplicateNameIsAlreadyExistsAndKeepsOriginal) {
  ASSERT_TRUE(svc_.Create(Spec("web1"), true).ok());
  auto other = Spec("web1");
  other.vcpus = 7;
  auto d = svc_.Create(other, false);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kAlreadyExists);
  auto original = svc_.Get("web1");
  ASSERT_TRUE(original.ok());
  EXPECT_EQ(original->vcpus, 2u);
  EXPECT_EQ(original->state, hv::DomainState::kRunning);
}

TEST_F(DomainServiceTest, Create_StartFailureRollsBackDefinition) {
  hv_.fail_start = absl::InternalError("qemu exploded");
  auto d = svc_.Create(Spec("web1"), true);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(hv_.calls, ElementsAre("define web1", "start web1", "undefine web1"));
  EXPECT_EQ(hv_.domain_count(), 0u);
}

TEST_F(DomainServiceTest, Create_DefineFailureLeavesNothing) {
  hv_.fail_define = absl::UnavailableError("down");
  EXPECT_EQ(svc_.Create(Spec("web1"), true).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(hv_.domain_count(), 0u);
}

TEST_F(DomainServiceTest, Shutdown_GracefulWhenGuestCooperates) {
  ASSERT_TRUE(svc_.Create(Spec("web1"), true).ok());
  auto r = svc_.Shutdown("web1", std::chrono::seconds(0));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->forced);
  EXPECT_EQ(r->domain.state, hv::DomainState::kShutoff);
  EXPECT_THAT(hv_.calls, ::testing::Not(::testing::Contains("destroy web1")));
}

TEST_F(DomainServiceTest, Shutdown_ForcesOffAfterDeadline) {
  hv_.guests_honour_shutdown = false;
  ASSERT_TRUE(svc_.Create(Spec("web1"), true).ok());
  auto before = clock_.Now();
  auto r = svc_.Shutdown("web1", std::chrono::seconds(3));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->forced);
  EXPECT_EQ(r->domain.state, hv::DomainState::kShutoff);
  EXPECT_GE(clock_.Now() - before, std::chrono::seconds(3));
  EXPECT_LT(clock_.Now() - before, std::chrono::seconds(4));
  EXPECT_EQ(hv_.calls.back(), "destroy web1");
}

TEST_F(DomainServiceTest, Shutdown_ZeroTimeoutUsesConfiguredDefault) {
  hv_.guests_honour_shutdown = false;
  ASSERT_TRUE(svc_.Create(Spec("web1"), true).ok());
  auto before = clock_.Now();
  ASSERT_TRUE(svc_.Shutdown("web1", std::chrono::seconds(0)).ok());
  EXPECT_GE(clock_.Now() - before, std::chrono::seconds(10));
}

TEST_F(DomainServiceTest, Shutdown_RejectsAbsurdTimeout) {
  ASSERT_TRUE(svc_.Create(Spec("web1"), true).ok());
  auto r = svc_.Shutdown("web1", std::chrono::seconds(100000));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("timeout_seconds"));
  EXPECT_EQ(svc_.Get("web1")->state, hv::DomainState::kRunning);
}

TEST_F(DomainServiceTest, Shutdown_OfStoppedDomainIsFailedPrecondition) {
  ASSERT_TRUE(svc_.Create(Spec("web1"), false).ok());
  EXPECT_EQ(svc_.Shutdown("web1", std::chrono::seconds(1)).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(DomainServiceTest, Operations_OnUnknownDomainAreNotFound) {
  EXPECT_EQ(svc_.Get("ghost").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(svc_.Start("ghost").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(svc_.Destroy("ghost").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(svc_.Reboot("ghost").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(svc_.Suspend("ghost").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(svc_.Resume("ghost").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(svc_.Shutdown("ghost", std::chrono::seconds(1)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(svc_.Delete("ghost", false).code(), absl::StatusCode::kNotFound);
}

TEST_F(DomainServiceTest, SuspendResume_ChangeState) {
  ASSERT_TRUE(svc_.Create(Spec("web1"), true).ok());
  EXPECT_EQ(svc_.Suspend("web1")->state, hv::DomainState::kPaused);
  EXPECT_EQ(svc_.Resume("web1")->state, hv::DomainState::kRunning);
  EXPECT_EQ(svc_.Reboot("web1")->state, hv::DomainState::kRunning);
  EXPECT_EQ(svc_.Destroy("web1")->state, hv::DomainState::kShutoff);
  EXPECT_EQ(svc_.Start("web1")->state, hv::DomainState::kRunning);
}

TEST_F(DomainServiceTest, ManagedSave_StopsTheDomainAndStartRestoresIt) {
  ASSERT_TRUE(svc_.Create(Spec("web1"), true).ok());
  auto d = svc_.ManagedSave("web1");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->state, hv::DomainState::kShutoff);
  EXPECT_EQ(svc_.Start("web1")->state, hv::DomainState::kRunning);
  EXPECT_THAT(hv_.calls, ElementsAre("define web1", "start web1", "managed-save web1", "start web1"));
  EXPECT_EQ(svc_.ManagedSave("ghost").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(DomainServiceTest, ManagedSave_OfStoppedDomainIsFailedPrecondition) {
  ASSERT_TRUE(svc_.Create(Spec("web1"), false).ok());
  EXPECT_EQ(svc_.ManagedSave("web1").status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(DomainServiceTest, ManagedSave_OnXenOnArmIsUnimplementedAndTouchesNothing) {
  ASSERT_TRUE(svc_.Create(Spec("web1"), true).ok());
  hv_.host_type = "Xen";  // the fake host is aarch64
  auto d = svc_.ManagedSave("web1");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(d.status().message(), HasSubstr("Xen 4.17 on Arm has no save/restore"));
  EXPECT_THAT(hv_.calls, ElementsAre("define web1", "start web1"));
  EXPECT_EQ(svc_.Get("web1")->state, hv::DomainState::kRunning);
}

TEST_F(DomainServiceTest, Delete_RunningWithoutForceIsRefusedAndChangesNothing) {
  ASSERT_TRUE(svc_.Create(Spec("web1"), true).ok());
  auto s = svc_.Delete("web1", false);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("force"));
  EXPECT_EQ(svc_.Get("web1")->state, hv::DomainState::kRunning);
}

TEST_F(DomainServiceTest, Delete_RunningWithForceDestroysThenUndefines) {
  ASSERT_TRUE(svc_.Create(Spec("web1"), true).ok());
  ASSERT_TRUE(svc_.Delete("web1", true).ok());
  EXPECT_EQ(svc_.Get("web1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(hv_.calls, ElementsAre("define web1", "start web1", "destroy web1", "undefine web1"));
}

TEST_F(DomainServiceTest, Delete_StoppedDomain) {
  ASSERT_TRUE(svc_.Create(Spec("web1"), false).ok());
  ASSERT_TRUE(svc_.Delete("web1", false).ok());
  EXPECT_EQ(hv_.domain_count(), 0u);
}

TEST_F(DomainServiceTest, Operations_WhileDisconnectedAreUnavailable) {
  hv_.connected = false;
  EXPECT_EQ(svc_.List().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(svc_.Create(Spec("web1"), true).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(svc_.Get("web1").status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace hvagent::service
