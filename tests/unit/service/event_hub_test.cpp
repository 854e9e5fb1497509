// Specification of agent/service EventHub: sequenced fan-out of domain events to filtered,
// bounded, non-blocking subscriptions.

#include "agent/service/event_hub.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace hvagent::service {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

hv::DomainEvent Event(const std::string& name, hv::DomainEventType type = hv::DomainEventType::kStarted,
                      const std::string& detail = "") {
  hv::DomainEvent e;
  e.time = std::chrono::system_clock::now();
  e.domain_name = name;
  e.domain_uuid = "uuid-" + name;
  e.type = type;
  e.detail = detail;
  return e;
}

TEST(EventHub, DeliversThePublishedEventUnchanged) {
  EventHub hub;
  auto sub = hub.Subscribe({});
  hv::DomainEvent sent = Event("vm-1", hv::DomainEventType::kCrashed, "watchdog");
  hub.Publish(sent);
  auto got = sub->Next(1s);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->event.domain_name, "vm-1");
  EXPECT_EQ(got->event.domain_uuid, "uuid-vm-1");
  EXPECT_EQ(got->event.type, hv::DomainEventType::kCrashed);
  EXPECT_EQ(got->event.detail, "watchdog");
  EXPECT_EQ(got->event.time, sent.time);
}

TEST(EventHub, SequenceNumbersIncreaseByOneAcrossEventsInOrder) {
  EventHub hub;
  auto sub = hub.Subscribe({});
  for (int i = 0; i < 5; ++i) hub.Publish(Event("vm-" + std::to_string(i)));
  std::vector<uint64_t> seqs;
  for (int i = 0; i < 5; ++i) {
    auto e = sub->Next(1s);
    ASSERT_TRUE(e) << i;
    EXPECT_EQ(e->event.domain_name, "vm-" + std::to_string(i));
    seqs.push_back(e->sequence);
  }
  EXPECT_GT(seqs[0], 0u);
  for (size_t i = 1; i < seqs.size(); ++i) EXPECT_EQ(seqs[i], seqs[i - 1] + 1) << i;
}

TEST(EventHub, SequenceCountsEventsHiddenByAFilter) {
  // The sequence is the hub's, not the subscriber's: a filtered subscriber sees the gap.
  EventHub hub;
  auto only_b = hub.Subscribe({"b"});
  hub.Publish(Event("b"));
  hub.Publish(Event("a"));
  hub.Publish(Event("b"));
  auto first = only_b->Next(1s);
  auto second = only_b->Next(1s);
  ASSERT_TRUE(first);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->sequence, first->sequence + 2);
}

TEST(EventHub, EverySubscriberSeesTheSameSequenceForAnEvent) {
  EventHub hub;
  auto s1 = hub.Subscribe({});
  auto s2 = hub.Subscribe({});
  hub.Publish(Event("vm"));
  auto e1 = s1->Next(1s);
  auto e2 = s2->Next(1s);
  ASSERT_TRUE(e1);
  ASSERT_TRUE(e2);
  EXPECT_EQ(e1->sequence, e2->sequence);
}

TEST(EventHub, NameFilterDeliversOnlyTheNamedDomains) {
  EventHub hub;
  auto sub = hub.Subscribe({"web", "db"});
  hub.Publish(Event("cache"));
  hub.Publish(Event("web"));
  hub.Publish(Event("web-2"));
  hub.Publish(Event("db"));
  auto a = sub->Next(1s);
  auto b = sub->Next(1s);
  ASSERT_TRUE(a);
  ASSERT_TRUE(b);
  EXPECT_EQ(a->event.domain_name, "web");
  EXPECT_EQ(b->event.domain_name, "db");
  EXPECT_FALSE(sub->Next(20ms));
}

TEST(EventHub, TheResyncMarkerReachesFilteredStreamsToo) {
  EventHub hub;
  auto sub = hub.Subscribe({"web"});
  hub.Publish(Event("", hv::DomainEventType::kResync));
  hub.Publish(Event("db", hv::DomainEventType::kState, "running"));
  hub.Publish(Event("web", hv::DomainEventType::kState, "shut off"));
  auto a = sub->Next(1s);
  auto b = sub->Next(1s);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->event.type, hv::DomainEventType::kResync);
  EXPECT_EQ(b->event.domain_name, "web");
  EXPECT_EQ(b->event.detail, "shut off");
  EXPECT_FALSE(sub->Next(20ms));
}

TEST(EventHub, EmptyFilterGetsEveryDomain) {
  EventHub hub;
  auto all = hub.Subscribe({});
  hub.Publish(Event("a"));
  hub.Publish(Event("b"));
  hub.Publish(Event("c"));
  std::vector<std::string> names;
  while (auto e = all->Next(20ms)) names.push_back(e->event.domain_name);
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b", "c"}));
}

TEST(EventHub, SubscriberSeesOnlyEventsPublishedAfterItSubscribed) {
  EventHub hub;
  hub.Publish(Event("before"));
  auto sub = hub.Subscribe({});
  hub.Publish(Event("after"));
  auto e = sub->Next(1s);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->event.domain_name, "after");
  EXPECT_FALSE(sub->Next(20ms));
}

TEST(EventHub, FullQueueDropsTheOldestAndCountsDrops) {
  EventHub hub(3);
  auto sub = hub.Subscribe({});
  for (int i = 0; i < 5; ++i) hub.Publish(Event("vm-" + std::to_string(i)));
  EXPECT_EQ(sub->dropped(), 2u);
  std::vector<std::string> names;
  while (auto e = sub->Next(20ms)) names.push_back(e->event.domain_name);
  EXPECT_EQ(names, (std::vector<std::string>{"vm-2", "vm-3", "vm-4"}));
}

TEST(EventHub, SlowSubscriberDoesNotAffectAFastOne) {
  EventHub hub(2);
  auto slow = hub.Subscribe({});
  auto fast = hub.Subscribe({});
  for (int i = 0; i < 6; ++i) {
    hub.Publish(Event("vm-" + std::to_string(i)));
    auto e = fast->Next(1s);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->event.domain_name, "vm-" + std::to_string(i));
  }
  EXPECT_EQ(fast->dropped(), 0u);
  EXPECT_EQ(slow->dropped(), 4u);
}

TEST(EventHub, NoDropsWhileUnderCapacity) {
  EventHub hub(3);
  auto sub = hub.Subscribe({});
  for (int i = 0; i < 3; ++i) hub.Publish(Event("vm"));
  EXPECT_EQ(sub->dropped(), 0u);
}

TEST(EventHub, FilteredOutEventsDoNotFillTheQueue) {
  EventHub hub(2);
  auto sub = hub.Subscribe({"wanted"});
  for (int i = 0; i < 10; ++i) hub.Publish(Event("other"));
  hub.Publish(Event("wanted"));
  EXPECT_EQ(sub->dropped(), 0u);
  auto e = sub->Next(1s);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->event.domain_name, "wanted");
}

TEST(EventHub, NextTimesOutReturningNullopt) {
  EventHub hub;
  auto sub = hub.Subscribe({});
  auto start = Clock::now();
  auto e = sub->Next(100ms);
  auto elapsed = Clock::now() - start;
  EXPECT_FALSE(e);
  EXPECT_GE(elapsed, 90ms);
  EXPECT_LT(elapsed, 5s);
  EXPECT_FALSE(sub->closed());
}

TEST(EventHub, NextWakesForAnEventPublishedWhileWaiting) {
  EventHub hub;
  auto sub = hub.Subscribe({});
  auto waiter = std::async(std::launch::async, [&] {
    auto start = Clock::now();
    auto e = sub->Next(20s);
    return std::make_pair(e, Clock::now() - start);
  });
  std::this_thread::sleep_for(50ms);
  hub.Publish(Event("late"));
  ASSERT_EQ(waiter.wait_for(10s), std::future_status::ready);
  auto [e, elapsed] = waiter.get();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->event.domain_name, "late");
  EXPECT_LT(elapsed, 10s);
}

TEST(EventHub, CloseWakesABlockedNext) {
  EventHub hub;
  auto sub = hub.Subscribe({});
  auto waiter = std::async(std::launch::async, [&] {
    auto start = Clock::now();
    auto e = sub->Next(20s);
    return std::make_pair(e.has_value(), Clock::now() - start);
  });
  std::this_thread::sleep_for(50ms);
  hub.Close();
  ASSERT_EQ(waiter.wait_for(10s), std::future_status::ready) << "Close did not wake Next";
  auto [got_event, elapsed] = waiter.get();
  EXPECT_FALSE(got_event);
  EXPECT_LT(elapsed, 10s);
  EXPECT_TRUE(sub->closed());
}

TEST(EventHub, ListenerIsToldOfEachQueuedEventAndOfClose) {
  EventHub hub;
  auto sub = hub.Subscribe({"web1"});
  std::atomic<int> told{0};
  sub->SetListener([&] { ++told; });
  EXPECT_FALSE(sub->TryNext());  // nothing queued: no wait
  hub.Publish(Event("other"));   // filtered out: not told
  hub.Publish(Event("web1"));
  EXPECT_EQ(told.load(), 1);
  auto e = sub->TryNext();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->event.domain_name, "web1");
  EXPECT_FALSE(sub->TryNext());
  hub.Close();
  EXPECT_EQ(told.load(), 2);
  EXPECT_TRUE(sub->closed());
}

TEST(EventHub, ClearingTheListenerWaitsForARunningCallAndStopsLaterOnes) {
  EventHub hub;
  auto sub = hub.Subscribe({});
  std::promise<void> inside, leave;
  std::shared_future<void> left = leave.get_future().share();
  std::atomic<int> calls{0};
  sub->SetListener([&] {
    if (++calls == 1) {
      inside.set_value();
      left.wait();
    }
  });
  auto publisher = std::async(std::launch::async, [&] { hub.Publish(Event("a")); });
  inside.get_future().wait();
  auto clearer = std::async(std::launch::async, [&] { sub->SetListener(nullptr); });
  EXPECT_EQ(clearer.wait_for(100ms), std::future_status::timeout) << "cleared while the listener still ran";
  leave.set_value();
  ASSERT_EQ(clearer.wait_for(10s), std::future_status::ready);
  publisher.get();
  hub.Publish(Event("b"));
  EXPECT_EQ(calls.load(), 1);
}

TEST(EventHub, SubscribeAfterCloseGetsAClosedSubscription) {
  EventHub hub;
  hub.Close();
  auto sub = hub.Subscribe({});
  ASSERT_NE(sub, nullptr);
  EXPECT_TRUE(sub->closed());
  auto start = Clock::now();
  EXPECT_FALSE(sub->Next(20s));
  EXPECT_LT(Clock::now() - start, 5s);
}

TEST(EventHub, CloseEndsEverySubscription) {
  EventHub hub;
  auto a = hub.Subscribe({});
  auto b = hub.Subscribe({"x"});
  EXPECT_FALSE(a->closed());
  hub.Close();
  EXPECT_TRUE(a->closed());
  EXPECT_TRUE(b->closed());
}

TEST(EventHub, ReleasedSubscriptionsArePruned) {
  EventHub hub;
  EXPECT_EQ(hub.subscriber_count(), 0u);
  auto a = hub.Subscribe({});
  auto b = hub.Subscribe({"x"});
  EXPECT_EQ(hub.subscriber_count(), 2u);
  a.reset();
  EXPECT_EQ(hub.subscriber_count(), 1u);
  hub.Publish(Event("x"));  // publishing to the remaining one still works
  EXPECT_TRUE(b->Next(1s));
  b.reset();
  EXPECT_EQ(hub.subscriber_count(), 0u);
}

TEST(EventHub, ManySubscribeReleaseCyclesKeepTheCountAccurate) {
  EventHub hub;
  auto keeper = hub.Subscribe({});
  for (int i = 0; i < 1000; ++i) {
    auto s = hub.Subscribe({});
    hub.Publish(Event("vm"));
  }
  EXPECT_EQ(hub.subscriber_count(), 1u);
  EXPECT_EQ(keeper->dropped(), 0u);
}

TEST(EventHub, ConcurrentPublishersProduceUniqueContiguousSequences) {
  EventHub hub(100000);
  auto sub = hub.Subscribe({});
  constexpr int kThreads = 4, kPerThread = 500;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&hub, t] {
      for (int i = 0; i < kPerThread; ++i) hub.Publish(Event("t" + std::to_string(t)));
    });
  }
  for (auto& t : threads) t.join();
  std::vector<uint64_t> seqs;
  while (auto e = sub->Next(20ms)) seqs.push_back(e->sequence);
  ASSERT_EQ(seqs.size(), static_cast<size_t>(kThreads * kPerThread));
  std::sort(seqs.begin(), seqs.end());
  for (size_t i = 1; i < seqs.size(); ++i) ASSERT_EQ(seqs[i], seqs[i - 1] + 1) << i;
  EXPECT_EQ(sub->dropped(), 0u);
}

TEST(EventHub, ZeroCapacityStillKeepsTheNewestEvent) {
  EventHub hub(0);
  auto sub = hub.Subscribe({});
  hub.Publish(Event("a"));
  hub.Publish(Event("b"));
  auto got = sub->Next(100ms);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->event.domain_name, "b");
  EXPECT_EQ(sub->dropped(), 1u);
}

TEST(EventHub, PublishAfterCloseDeliversNothing) {
  EventHub hub;
  auto sub = hub.Subscribe({});
  hub.Close();
  hub.Publish(Event("late"));
  EXPECT_FALSE(sub->Next(10ms));
}

}  // namespace
}  // namespace hvagent::service
