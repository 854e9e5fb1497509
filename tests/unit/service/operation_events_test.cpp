// Specification of agent/service OperationEvents: the journal's operations on the event stream,
// begin and end at once and in order, progress at most once per interval per operation, the
// end always delivered with the last figures; and EventHub's operation filters.

#include "agent/service/operation_events.h"

#include <chrono>
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include "agent/service/event_hub.h"
#include "tests/fakes/fake_clock.h"

namespace hvagent::service {
namespace {

using namespace std::chrono_literals;

internal::JournalBegin BeginOf(v1::OperationKind kind, const std::string& domain = "") {
  internal::JournalBegin b;
  b.set_type(kind);
  b.set_domain(domain);
  b.set_pool("p0");
  b.set_image("golden");
  return b;
}

// A real in-memory journal observed by OperationEvents, whose events land in a vector.
class OperationEventsTest : public ::testing::Test {
 protected:
  OperationEventsTest()
      : journal_(std::move(*Journal::Open(""))),
        events_(clock_, [this](const OperationEvent& e) { seen_.push_back(e); }) {
    journal_->SetObserver(&events_);
  }
  uint64_t Begin(v1::OperationKind kind = v1::OPERATION_KIND_IMPORT_IMAGE, const std::string& domain = "") {
    return *journal_->Begin(BeginOf(kind, domain));
  }

  testing::FakeClock clock_;
  std::unique_ptr<Journal> journal_;
  std::vector<OperationEvent> seen_;
  OperationEvents events_;
};

TEST_F(OperationEventsTest, BeginProgressEnd_ArriveInOrderWithTheOperationsFigures) {
  const uint64_t id = Begin();
  clock_.SleepFor(600ms);
  events_.Progress(id, 10, 100);
  clock_.SleepFor(600ms);
  events_.Progress(id, 60, 100);
  ASSERT_TRUE(journal_->End(id, v1::OPERATION_STATE_SUCCEEDED).ok());

  ASSERT_EQ(seen_.size(), 4u);
  EXPECT_EQ(seen_[0].state, v1::OPERATION_STATE_RUNNING);
  EXPECT_EQ(seen_[0].done, 0u);
  EXPECT_EQ(seen_[1].done, 10u);
  EXPECT_EQ(seen_[2].done, 60u);
  EXPECT_EQ(seen_[3].state, v1::OPERATION_STATE_SUCCEEDED);
  for (const auto& e : seen_) {
    EXPECT_EQ(e.op.id, id);
    EXPECT_EQ(e.op.begin.type(), v1::OPERATION_KIND_IMPORT_IMAGE);
    EXPECT_EQ(e.op.begin.image(), "golden");
    EXPECT_EQ(e.total, e.state == v1::OPERATION_STATE_RUNNING && e.done == 0 ? 0u : 100u);
  }
  EXPECT_NE(seen_[3].end_unix_ms, 0);
}

TEST_F(OperationEventsTest, ProgressWithinTheInterval_IsNotPublishedButCarriedByTheNextEvent) {
  const uint64_t id = Begin();
  // A fast copy: 1000 blocks in 0.9 s.
  for (uint64_t block = 1; block <= 1000; ++block) {
    clock_.SleepFor(900us);
    events_.Progress(id, block * 4, 4000);
  }
  // 0.9 s after the begin event: one progress event (at 0.5 s) beside begin.
  ASSERT_EQ(seen_.size(), 2u);
  EXPECT_GE(seen_[1].done, 4u * 556);
  EXPECT_LE(seen_[1].done, 4u * 557);
  ASSERT_TRUE(journal_->End(id, v1::OPERATION_STATE_SUCCEEDED).ok());
  ASSERT_EQ(seen_.size(), 3u);
  EXPECT_EQ(seen_[2].done, 4000u) << "the end carries the last figures, though they were never published";
  EXPECT_EQ(seen_[2].total, 4000u);
}

TEST_F(OperationEventsTest, EndIsPublishedEvenRightAfterAProgressEvent) {
  const uint64_t id = Begin();
  clock_.SleepFor(500ms);
  events_.Progress(id, 1, 2);
  // No time passes: a progress report would be held back, the end never is.
  ASSERT_TRUE(journal_->End(id, v1::OPERATION_STATE_FAILED, "disk full").ok());
  ASSERT_EQ(seen_.size(), 3u);
  EXPECT_EQ(seen_[2].state, v1::OPERATION_STATE_FAILED);
  EXPECT_EQ(seen_[2].message, "disk full");
}

TEST_F(OperationEventsTest, NothingIsPublishedAfterTheEnd) {
  const uint64_t id = Begin();
  ASSERT_TRUE(journal_->End(id, v1::OPERATION_STATE_CANCELLED).ok());
  clock_.SleepFor(10s);
  events_.Progress(id, 5, 10);  // a late report from a copy thread
  ASSERT_EQ(seen_.size(), 2u);
  EXPECT_EQ(seen_.back().state, v1::OPERATION_STATE_CANCELLED);
}

TEST_F(OperationEventsTest, TheIntervalIsPerOperation) {
  const uint64_t a = Begin();
  const uint64_t b = Begin(v1::OPERATION_KIND_VOLUME_FROM_IMAGE);
  clock_.SleepFor(500ms);
  events_.Progress(a, 1, 10);
  events_.Progress(b, 2, 10);  // same instant: a's event does not hold b's back
  ASSERT_EQ(seen_.size(), 4u);
  EXPECT_EQ(seen_[2].op.id, a);
  EXPECT_EQ(seen_[3].op.id, b);
}

TEST_F(OperationEventsTest, AnOperationEndedByRecovery_StillGetsItsEndEvent) {
  // Begun by an earlier run of the agent: this OperationEvents never saw it begin.
  journal_->SetObserver(nullptr);
  const uint64_t id = Begin(v1::OPERATION_KIND_CREATE_DOMAIN, "web1");
  journal_->SetObserver(&events_);
  ASSERT_TRUE(journal_->End(id, v1::OPERATION_STATE_ROLLED_BACK, "recovery: undone").ok());
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(seen_[0].state, v1::OPERATION_STATE_ROLLED_BACK);
  EXPECT_EQ(seen_[0].op.begin.domain(), "web1");
}

TEST_F(OperationEventsTest, DiskCopyProgress_GoesToTheCreateOfThatDomainNamingTheDisk) {
  const uint64_t other = Begin(v1::OPERATION_KIND_CREATE_DOMAIN, "db1");
  const uint64_t web = Begin(v1::OPERATION_KIND_CREATE_DOMAIN, "web1");
  clock_.SleepFor(1s);
  events_.DiskCopyProgress("web1", "p0", "golden", "web1-root", 7, 70);
  events_.DiskCopyProgress("nobody", "p0", "golden", "x", 7, 70);
  ASSERT_EQ(seen_.size(), 3u);
  EXPECT_EQ(seen_[2].op.id, web);
  EXPECT_NE(seen_[2].op.id, other);
  EXPECT_EQ(seen_[2].copy_volume, "web1-root");
  EXPECT_EQ(seen_[2].copy_image, "golden");
  EXPECT_EQ(seen_[2].done, 7u);
}

TEST_F(OperationEventsTest, EventsCarryNoSteps) {
  const uint64_t id = Begin();
  internal::JournalStep step;
  step.set_name("seal");
  ASSERT_TRUE(journal_->Step(id, step).ok());
  ASSERT_TRUE(journal_->End(id, v1::OPERATION_STATE_SUCCEEDED).ok());
  ASSERT_EQ(seen_.size(), 2u);
  EXPECT_TRUE(seen_[1].op.steps.empty());
}

// ---- EventHub's operation filters ----

hv::DomainEvent Started(const std::string& name) {
  hv::DomainEvent e;
  e.domain_name = name;
  e.type = hv::DomainEventType::kStarted;
  return e;
}

OperationEvent OpEvent(uint64_t id, const std::string& domain = "") {
  OperationEvent e;
  e.op.id = id;
  e.op.begin.set_domain(domain);
  return e;
}

std::vector<std::string> Drain(EventHub::Subscription& sub) {
  std::vector<std::string> got;
  while (auto e = sub.TryNext()) {
    got.push_back(e->operation ? "op" + std::to_string(e->operation->op.id) : e->event.domain_name);
  }
  return got;
}

TEST(EventHubOperations, ByDefault_AStreamGetsNoOperationEvents) {
  EventHub hub;
  auto sub = hub.Subscribe({});
  hub.Publish(OpEvent(1));
  hub.Publish(Started("vm1"));
  EXPECT_EQ(Drain(*sub), std::vector<std::string>{"vm1"});
}

TEST(EventHubOperations, Also_InterleavesThemInSequence) {
  EventHub hub;
  auto sub = hub.Subscribe({}, {.mode = OperationFilter::Mode::kAlso});
  hub.Publish(Started("vm1"));
  hub.Publish(OpEvent(1, "vm1"));
  hub.Publish(Started("vm2"));
  EXPECT_EQ(Drain(*sub), (std::vector<std::string>{"vm1", "op1", "vm2"}));
}

TEST(EventHubOperations, Only_DropsDomainEventsAndTheResyncMarker) {
  EventHub hub;
  auto sub = hub.Subscribe({}, {.mode = OperationFilter::Mode::kOnly});
  hv::DomainEvent resync;
  resync.type = hv::DomainEventType::kResync;
  hub.Publish(resync);
  hub.Publish(Started("vm1"));
  hub.Publish(OpEvent(4));
  EXPECT_EQ(Drain(*sub), std::vector<std::string>{"op4"});
}

TEST(EventHubOperations, OperationId_KeepsOnlyThatOperation) {
  EventHub hub;
  auto sub = hub.Subscribe({}, {.mode = OperationFilter::Mode::kOnly, .operation_id = 2});
  hub.Publish(OpEvent(1));
  hub.Publish(OpEvent(2));
  hub.Publish(OpEvent(3));
  EXPECT_EQ(Drain(*sub), std::vector<std::string>{"op2"});
}

TEST(EventHubOperations, DomainNamesFilterDomainEventsOnly) {
  EventHub hub;
  auto sub = hub.Subscribe({"vm1"}, {.mode = OperationFilter::Mode::kAlso});
  hub.Publish(Started("vm2"));
  hub.Publish(OpEvent(5, "vm2"));  // an image import names no domain; this one names another
  hub.Publish(Started("vm1"));
  EXPECT_EQ(Drain(*sub), (std::vector<std::string>{"op5", "vm1"}));
}

}  // namespace
}  // namespace hvagent::service
