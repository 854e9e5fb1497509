#include "common/random_text.h"

#include <set>

#include <gtest/gtest.h>

namespace hvagent {
namespace {

TEST(RandomAlphanumeric, GivesTheLengthAskedInLettersAndDigitsAndNeverRepeats) {
  std::set<std::string> seen;
  std::set<char> used;
  for (int i = 0; i < 200; ++i) {
    auto s = RandomAlphanumeric(8);
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_EQ(s->size(), 8u);
    for (char c : *s) {
      ASSERT_TRUE((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) << *s;
      used.insert(c);
    }
    seen.insert(*s);
  }
  EXPECT_EQ(seen.size(), 200u);  // 47.6 bits each: a repeat in 200 draws means a broken source
  EXPECT_GT(used.size(), 55u);   // 1600 draws over 62 characters reach nearly all of them
  auto long_one = RandomAlphanumeric(100);
  ASSERT_TRUE(long_one.ok());
  EXPECT_EQ(long_one->size(), 100u);  // more than one 16-byte read
  EXPECT_EQ(RandomAlphanumeric(0).value(), "");
}

}  // namespace
}  // namespace hvagent
