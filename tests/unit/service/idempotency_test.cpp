// IdempotencyStore: one execution per key, the first outcome replayed, keys bound to one
// request, retryable failures not kept, and outcomes that survive a restart.
#include "agent/service/idempotency.h"
#include "tests/fakes/fresh_temp_dir.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <thread>

namespace hvagent::service {
namespace {

using ::testing::HasSubstr;
using Outcome = IdempotencyStore::Outcome;

std::string TempFile() { return testing::FreshTempDir("hvagent-idem") + "/requests"; }

std::unique_ptr<IdempotencyStore> Open(const std::string& path = "", IdempotencyStore::Options o = {}) {
  auto s = IdempotencyStore::Open(path, o);
  EXPECT_TRUE(s.ok()) << s.status();
  return std::move(*s);
}

TEST(IdempotencyStoreTest, ARetryGetsTheFirstOutcomeWithoutRunningAgain) {
  auto store = Open();
  int runs = 0;
  auto body = [&] {
    ++runs;
    return Outcome{absl::OkStatus(), "reply-" + std::to_string(runs)};
  };
  Outcome first = store->Run("k1", "op/Create", "fp", body);
  Outcome again = store->Run("k1", "op/Create", "fp", body);
  EXPECT_EQ(runs, 1);
  EXPECT_FALSE(first.replayed);
  EXPECT_TRUE(again.replayed);
  EXPECT_EQ(again.response, "reply-1");
  // Errors that are answers, not "try again", are kept too.
  store->Run("k2", "op/Create", "fp", [&] { ++runs; return Outcome{absl::AlreadyExistsError("exists"), ""}; });
  Outcome e = store->Run("k2", "op/Create", "fp", body);
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(e.status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(e.status.message(), "exists");
}

TEST(IdempotencyStoreTest, AKeyReusedForAnotherRequestIsRefusedNamingIt) {
  auto store = Open();
  store->Run("k", "op/Create", "fp-a", [] { return Outcome{absl::OkStatus(), "a"}; });
  bool ran = false;
  Outcome other = store->Run("k", "op/Create", "fp-b", [&] { ran = true; return Outcome{}; });
  EXPECT_FALSE(ran);
  EXPECT_EQ(other.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(other.status.message()), HasSubstr("idempotency-key: 'k'"));
  Outcome op = store->Run("k", "op/Delete", "fp-a", [&] { ran = true; return Outcome{}; });
  EXPECT_FALSE(ran);
  EXPECT_EQ(op.status.code(), absl::StatusCode::kFailedPrecondition);
}

TEST(IdempotencyStoreTest, RetryableFailuresAreNotKept) {
  auto store = Open();
  int runs = 0;
  store->Run("k", "op", "fp", [&] { ++runs; return Outcome{absl::UnavailableError("libvirtd down"), ""}; });
  Outcome second = store->Run("k", "op", "fp", [&] { ++runs; return Outcome{absl::OkStatus(), "done"}; });
  EXPECT_EQ(runs, 2);
  EXPECT_FALSE(second.replayed);
  EXPECT_EQ(store->size(), 1u);
}

TEST(IdempotencyStoreTest, ConcurrentRequestsWithOneKeyRunOnce) {
  auto store = Open();
  std::atomic<int> runs{0};
  std::vector<std::thread> threads;
  std::vector<Outcome> outcomes(16);
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&, i] {
      outcomes[i] = store->Run("same", "op", "fp", [&] {
        ++runs;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));  // keep the others waiting
        return Outcome{absl::OkStatus(), "the one"};
      });
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(runs.load(), 1);
  int replayed = 0;
  for (const auto& o : outcomes) {
    EXPECT_TRUE(o.status.ok());
    EXPECT_EQ(o.response, "the one");
    replayed += o.replayed;
  }
  EXPECT_EQ(replayed, 15);
}

TEST(IdempotencyStoreTest, OutcomesSurviveARestartAndExpireAfterTheWindow) {
  const std::string path = TempFile();
  {
    auto store = Open(path);
    store->Run("k", "op", "fp", [] { return Outcome{absl::OkStatus(), std::string("bin\0ary\n", 8)}; });
  }
  int runs = 0;
  {
    auto store = Open(path);
    Outcome o = store->Run("k", "op", "fp", [&] { ++runs; return Outcome{}; });
    EXPECT_EQ(runs, 0);
    EXPECT_TRUE(o.replayed);
    EXPECT_EQ(o.response, std::string("bin\0ary\n", 8));
  }
  auto expired = Open(path, {.window = std::chrono::seconds(-1)});  // everything is older
  EXPECT_EQ(expired->size(), 0u);
  expired->Run("k", "op", "fp", [&] { ++runs; return Outcome{}; });
  EXPECT_EQ(runs, 1);
}

TEST(IdempotencyStoreTest, TheOldestKeysGoFirstPastTheBound) {
  auto store = Open("", {.max_entries = 2});
  for (const char* k : {"a", "b", "c"}) store->Run(k, "op", "fp", [] { return Outcome{}; });
  EXPECT_EQ(store->size(), 2u);
  int runs = 0;
  store->Run("a", "op", "fp", [&] { ++runs; return Outcome{}; });  // forgotten: runs again
  store->Run("c", "op", "fp", [&] { ++runs; return Outcome{}; });  // kept: replayed
  EXPECT_EQ(runs, 1);
}

TEST(IdempotencyStoreTest, KeysAreChecked) {
  EXPECT_TRUE(IdempotencyStore::ValidateKey("2f1c9a9e-4b1d-4c55-9d5e-0c6c3f1b2a77").ok());
  EXPECT_TRUE(IdempotencyStore::ValidateKey("nova:req-1.2_3").ok());
  for (const std::string& bad : {std::string(), std::string(129, 'a'), std::string("a b"), std::string("x/../y"),
                                std::string("k\n")}) {
    absl::Status s = IdempotencyStore::ValidateKey(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(s.message()), HasSubstr("idempotency-key"));
  }
}

}  // namespace
}  // namespace hvagent::service
