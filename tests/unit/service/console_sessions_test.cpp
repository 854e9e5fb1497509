// Specification of agent/service ConsoleSessions: one open console per domain shared by many
// readers and one writer, bounded per-reader buffers that drop the oldest bytes (counted), and
// the console closed with its last attachment. The guest is tests/fakes/fake_console.h.

#include "agent/service/console_sessions.h"

#include <atomic>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/fakes/fake_console.h"

namespace hvagent::service {
namespace {

using testing::FakeConsoleOpener;
using ::testing::HasSubstr;

std::string Drain(ConsoleSessions::Attachment& a, uint64_t* dropped = nullptr) {
  std::string out;
  while (auto o = a.TryNext()) {
    if (dropped) *dropped += o->dropped_before;
    out += o->data;
  }
  return out;
}

class ConsoleSessionsTest : public ::testing::Test {
 protected:
  ConsoleSessionsTest() {
    guest.AddDomain("web1");
    guest.AddDomain("off", /*running=*/false);
  }
  FakeConsoleOpener guest;
  ConsoleSessions consoles{guest, {.reader_buffer_bytes = 64}};
};

TEST_F(ConsoleSessionsTest, ConsoleSessions_EveryAttachmentSeesOutputInOrder) {
  auto reader = consoles.Attach("web1", false, false);
  auto writer = consoles.Attach("web1", true, false);
  ASSERT_TRUE(reader.ok() && writer.ok());
  guest.Emit("web1", "abc");
  guest.Emit("web1", "def");
  EXPECT_EQ(Drain(**reader), "abcdef");
  EXPECT_EQ(Drain(**writer), "abcdef");
  EXPECT_FALSE((*reader)->TryNext().has_value());
}

TEST_F(ConsoleSessionsTest, ConsoleSessions_OpensOneConsolePerDomainAndClosesItWithTheLastAttachment) {
  auto a = consoles.Attach("web1", false, false);
  auto b = consoles.Attach("web1", true, false);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(guest.opens("web1"), 1);
  EXPECT_EQ(consoles.open_consoles(), 1u);
  a->reset();
  EXPECT_TRUE(guest.IsOpen("web1"));
  b->reset();
  EXPECT_FALSE(guest.IsOpen("web1"));
  EXPECT_EQ(consoles.open_consoles(), 0u);
  auto again = consoles.Attach("web1", false, false);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(guest.opens("web1"), 2);
}

TEST_F(ConsoleSessionsTest, ConsoleSessions_WriterKeystrokesReachTheGuest) {
  auto w = consoles.Attach("web1", true, false);
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE((*w)->writer());
  ASSERT_TRUE((*w)->Write("echo hi\n").ok());
  EXPECT_EQ(guest.Typed("web1"), "echo hi\n");
}

TEST_F(ConsoleSessionsTest, ConsoleSessions_ReaderCannotWrite) {
  auto r = consoles.Attach("web1", false, false);
  ASSERT_TRUE(r.ok());
  absl::Status s = (*r)->Write("rm -rf /\n");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("not the writer"));
  EXPECT_EQ(guest.Typed("web1"), "");
}

TEST_F(ConsoleSessionsTest, ConsoleSessions_SecondWriterRefusedUnlessItTakesOver) {
  auto first = consoles.Attach("web1", true, false);
  ASSERT_TRUE(first.ok());
  auto second = consoles.Attach("web1", true, false);
  ASSERT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("take_over"));
  EXPECT_TRUE((*first)->writer());
  EXPECT_FALSE((*first)->ended().has_value());
  ASSERT_TRUE((*first)->Write("a").ok());
  EXPECT_EQ(guest.Typed("web1"), "a");
}

TEST_F(ConsoleSessionsTest, ConsoleSessions_TakeOverEndsTheOldWriterAborted) {
  auto first = consoles.Attach("web1", true, false);
  ASSERT_TRUE(first.ok());
  auto second = consoles.Attach("web1", true, true);
  ASSERT_TRUE(second.ok());
  ASSERT_TRUE((*first)->ended().has_value());
  EXPECT_EQ((*first)->ended()->code(), absl::StatusCode::kAborted);
  EXPECT_EQ((*first)->Write("old").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*second)->Write("new").ok());
  EXPECT_EQ(guest.Typed("web1"), "new");
  // The console stays open for the new writer.
  first->reset();
  EXPECT_TRUE(guest.IsOpen("web1"));
}

TEST_F(ConsoleSessionsTest, ConsoleSessions_TakeOverWithoutWriteIsInvalid) {
  auto a = consoles.Attach("web1", false, true);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(a.status().message(), HasSubstr("take_over"));
}

TEST_F(ConsoleSessionsTest, ConsoleSessions_SlowReaderLosesTheOldestBytesAndIsToldHowMany) {
  auto slow = consoles.Attach("web1", false, false);
  auto fast = consoles.Attach("web1", false, false);
  ASSERT_TRUE(slow.ok() && fast.ok());
  std::string all;
  for (int i = 0; i < 10; ++i) {
    std::string chunk = std::string(10, static_cast<char>('0' + i));
    all += chunk;
    guest.Emit("web1", chunk);
    EXPECT_EQ(Drain(**fast), chunk);  // a reader that keeps up loses nothing
  }
  uint64_t dropped = 0;
  EXPECT_EQ(Drain(**slow, &dropped), all.substr(all.size() - 64));
  EXPECT_EQ(dropped, all.size() - 64);
}

TEST_F(ConsoleSessionsTest, ConsoleSessions_OneChunkLargerThanTheBufferKeepsItsTail) {
  auto r = consoles.Attach("web1", false, false);
  ASSERT_TRUE(r.ok());
  guest.Emit("web1", "head");
  guest.Emit("web1", std::string(100, 'x') + "TAIL");
  uint64_t dropped = 0;
  std::string got = Drain(**r, &dropped);
  EXPECT_EQ(got.size(), 64u);
  EXPECT_EQ(got.substr(60), "TAIL");
  EXPECT_EQ(dropped, 4u + 104u - 64u);
}

TEST_F(ConsoleSessionsTest, ConsoleSessions_AFloodingGuestNeverWaitsForAReaderThatDoesNotRead) {
  ConsoleSessions big(guest, {.reader_buffer_bytes = 256 * 1024});
  auto idle = big.Attach("web1", false, false);
  ASSERT_TRUE(idle.ok());
  const std::string chunk(64 * 1024, 'f');
  for (int i = 0; i < 1600; ++i) guest.Emit("web1", chunk);  // 100 MiB, nobody reading
  uint64_t dropped = 0;
  EXPECT_EQ(Drain(**idle, &dropped).size(), 256u * 1024);
  EXPECT_EQ(dropped, 1600ull * chunk.size() - 256 * 1024);
}

TEST_F(ConsoleSessionsTest, ConsoleSessions_GuestHangupEndsEveryAttachmentAndTheNextAttachReopens) {
  auto a = consoles.Attach("web1", true, false);
  auto b = consoles.Attach("web1", false, false);
  ASSERT_TRUE(a.ok() && b.ok());
  guest.Emit("web1", "bye");
  guest.Hangup("web1");
  EXPECT_EQ(Drain(**b), "bye");  // what came before the end is still delivered
  ASSERT_TRUE((*a)->ended().has_value());
  EXPECT_TRUE((*a)->ended()->ok());
  EXPECT_TRUE((*b)->ended()->ok());
  auto c = consoles.Attach("web1", true, false);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(guest.opens("web1"), 2);
}

TEST_F(ConsoleSessionsTest, ConsoleSessions_ListenerRunsOnOutputAndOnEnd) {
  auto a = consoles.Attach("web1", false, false);
  ASSERT_TRUE(a.ok());
  std::atomic<int> calls{0};
  (*a)->SetListener([&] { calls++; });
  guest.Emit("web1", "x");
  EXPECT_EQ(calls.load(), 1);
  guest.Hangup("web1");
  EXPECT_EQ(calls.load(), 2);
  (*a)->SetListener(nullptr);
}

TEST_F(ConsoleSessionsTest, ConsoleSessions_UnknownOrStoppedDomainsAreRefusedAndNothingStaysOpen) {
  auto missing = consoles.Attach("nope", false, false);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  auto off = consoles.Attach("off", true, false);
  EXPECT_EQ(off.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(consoles.open_consoles(), 0u);
}

}  // namespace
}  // namespace hvagent::service
