// Specification of common/log: JSON escaping, per-thread request ids, and the text / JSON line
// formats every component logger writes.

#include "common/log.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

namespace hvagent::log {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;

// ---------------------------------------------------------------------------------------------
// JsonEscape

TEST(JsonEscape, LeavesPlainTextAlone) { EXPECT_EQ(JsonEscape("domain vm-1 started"), "domain vm-1 started"); }

TEST(JsonEscape, KeepsValidUtf8AndReplacesStrayBytes) {
  EXPECT_EQ(JsonEscape("h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"), "h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  EXPECT_EQ(JsonEscape("a\xff\xfe" "b"), "a\\ufffd\\ufffdb");
  EXPECT_EQ(JsonEscape("\xc0\xaf"), "\\ufffd\\ufffd");          // overlong '/'
  EXPECT_EQ(JsonEscape("\xed\xa0\x80"), "\\ufffd\\ufffd\\ufffd");  // a surrogate
  EXPECT_EQ(JsonEscape("\xe2\x82"), "\\ufffd\\ufffd");          // cut short
  EXPECT_EQ(JsonEscape("\x7f"), "\\u007f");
}

TEST(JsonEscape, EscapesQuotes) { EXPECT_EQ(JsonEscape(R"(name "vm")"), R"(name \"vm\")"); }

TEST(JsonEscape, EscapesBackslashes) { EXPECT_EQ(JsonEscape(R"(C:\dir\)"), R"(C:\\dir\\)"); }

TEST(JsonEscape, EscapesNewlineTabAndCarriageReturnShortForm) {
  EXPECT_EQ(JsonEscape("a\nb\tc\rd"), R"(a\nb\tc\rd)");
}

TEST(JsonEscape, EscapesOtherControlCharactersAsUnicode) {
  EXPECT_EQ(JsonEscape("\x01"), "\\u0001");
  EXPECT_EQ(JsonEscape("x\x1fy"), "x\\u001fy");
  EXPECT_EQ(JsonEscape("\x1b[31m"), "\\u001b[31m");
  EXPECT_EQ(JsonEscape("\b\f"), "\\u0008\\u000c");
}

TEST(JsonEscape, EscapesEmbeddedNul) {
  const char raw[] = {'a', '\0', 'b'};
  EXPECT_EQ(JsonEscape(absl::string_view(raw, sizeof raw)), "a\\u0000b");
}

TEST(JsonEscape, PassesUtf8Through) { EXPECT_EQ(JsonEscape("caf\xc3\xa9 \xe2\x9c\x93"), "caf\xc3\xa9 \xe2\x9c\x93"); }

TEST(JsonEscape, EmptyStaysEmpty) { EXPECT_EQ(JsonEscape(""), ""); }

// ---------------------------------------------------------------------------------------------
// Request ids

TEST(CurrentRequestId, IsDashWhenUnset) { EXPECT_EQ(CurrentRequestId(), "-"); }

TEST(ScopedRequestId, SetsAndRestoresTheRequestId) {
  {
    ScopedRequestId rid("req-1");
    EXPECT_EQ(CurrentRequestId(), "req-1");
  }
  EXPECT_EQ(CurrentRequestId(), "-");
}

TEST(ScopedRequestId, NestsAndRestoresEachLevel) {
  ScopedRequestId outer("outer");
  {
    ScopedRequestId inner("inner");
    EXPECT_EQ(CurrentRequestId(), "inner");
    {
      ScopedRequestId innermost("innermost");
      EXPECT_EQ(CurrentRequestId(), "innermost");
    }
    EXPECT_EQ(CurrentRequestId(), "inner");
  }
  EXPECT_EQ(CurrentRequestId(), "outer");
}

TEST(ScopedRequestId, EmptyIdReadsAsDashAndRestoresTheOuterId) {
  ScopedRequestId outer("outer");
  {
    ScopedRequestId none("");
    EXPECT_EQ(CurrentRequestId(), "-");
  }
  EXPECT_EQ(CurrentRequestId(), "outer");
}

TEST(ScopedRequestId, IsPerThread) {
  ScopedRequestId mine("main-thread-id");
  std::string seen_by_other;
  std::string other_inside;
  std::thread t([&] {
    seen_by_other = std::string(CurrentRequestId());
    ScopedRequestId theirs("other-thread-id");
    other_inside = std::string(CurrentRequestId());
  });
  t.join();
  EXPECT_EQ(seen_by_other, "-");
  EXPECT_EQ(other_inside, "other-thread-id");
  EXPECT_EQ(CurrentRequestId(), "main-thread-id");
}

TEST(NewRequestId, IsSixteenLowercaseHexDigits) {
  for (int i = 0; i < 100; ++i) {
    std::string id = NewRequestId();
    EXPECT_THAT(id, MatchesRegex("[0-9a-f]{16}")) << id;
  }
}

TEST(NewRequestId, TwoCallsDiffer) {
  std::string a = NewRequestId();
  std::string b = NewRequestId();
  EXPECT_NE(a, b);
}

TEST(NewRequestId, DiffersAcrossThreads) {
  std::string a, b;
  std::thread t1([&] { a = NewRequestId(); });
  std::thread t2([&] { b = NewRequestId(); });
  t1.join();
  t2.join();
  EXPECT_NE(a, b);
}

// ---------------------------------------------------------------------------------------------
// Output formats

// Parses one flat JSON object whose values are all strings; nullopt if it is not one.
std::optional<std::map<std::string, std::string>> ParseFlatJsonObject(const std::string& s) {
  size_t i = 0;
  auto ws = [&] {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  };
  auto str = [&]() -> std::optional<std::string> {
    if (i >= s.size() || s[i] != '"') return std::nullopt;
    ++i;
    std::string out;
    while (i < s.size() && s[i] != '"') {
      unsigned char c = s[i];
      if (c < 0x20) return std::nullopt;  // raw control characters are not valid JSON
      if (c != '\\') {
        out += s[i++];
        continue;
      }
      if (++i >= s.size()) return std::nullopt;
      char e = s[i++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (i + 4 > s.size()) return std::nullopt;
          std::string hex = s.substr(i, 4);
          if (!std::all_of(hex.begin(), hex.end(), [](unsigned char h) { return std::isxdigit(h); })) {
            return std::nullopt;
          }
          unsigned long cp = std::stoul(hex, nullptr, 16);
          if (cp > 0x7f) return std::nullopt;  // enough for these tests
          out += static_cast<char>(cp);
          i += 4;
          break;
        }
        default: return std::nullopt;
      }
    }
    if (i >= s.size()) return std::nullopt;
    ++i;
    return out;
  };
  std::map<std::string, std::string> obj;
  ws();
  if (i >= s.size() || s[i++] != '{') return std::nullopt;
  ws();
  if (i < s.size() && s[i] == '}') return ++i == s.size() ? std::optional(obj) : std::nullopt;
  while (true) {
    ws();
    auto k = str();
    if (!k) return std::nullopt;
    ws();
    if (i >= s.size() || s[i++] != ':') return std::nullopt;
    ws();
    auto v = str();
    if (!v) return std::nullopt;
    if (!obj.emplace(*k, *v).second) return std::nullopt;  // duplicate key
    ws();
    if (i >= s.size()) return std::nullopt;
    if (s[i] == ',') {
      ++i;
      continue;
    }
    if (s[i++] != '}') return std::nullopt;
    ws();
    return i == s.size() ? std::optional(obj) : std::nullopt;
  }
}

TEST(ParseFlatJsonObjectHelper, AcceptsValidAndRejectsInvalid) {
  EXPECT_TRUE(ParseFlatJsonObject(R"({"a":"b","c":"d\n\u0001"})"));
  EXPECT_FALSE(ParseFlatJsonObject(R"({"a":"b""})"));
  EXPECT_FALSE(ParseFlatJsonObject("{\"a\":\"raw\nnewline\"}"));
  EXPECT_FALSE(ParseFlatJsonObject(R"({"a":"b"} trailing)"));
}

// Captures what a component logger writes, in the format Configure() sets. Configure() applies
// its formatter to every sink of every registered logger, so it is called after the sink is added.
class LoggerCapture {
 public:
  LoggerCapture(const std::string& component, spdlog::level::level_enum level, Format format)
      : logger_(ComponentLogger(component)), sink_(std::make_shared<spdlog::sinks::ostream_sink_mt>(out_)) {
    logger_->sinks().push_back(sink_);
    Configure(level, format);
  }
  ~LoggerCapture() {
    auto& sinks = logger_->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
    Configure(spdlog::level::info, Format::kText);
  }
  spdlog::logger& logger() { return *logger_; }
  std::string text() {
    logger_->flush();
    return out_.str();
  }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> logger_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
};

TEST(ComponentLogger, ReturnsTheSameLoggerForTheSameComponent) {
  auto a = ComponentLogger("test-same");
  auto b = ComponentLogger("test-same");
  EXPECT_EQ(a.get(), b.get());
  EXPECT_EQ(a->name(), "test-same");
  EXPECT_NE(ComponentLogger("test-other").get(), a.get());
}

TEST(Configure, JsonFormatWritesOneValidJsonLineWithRequestIdAndEscapedMessage) {
  LoggerCapture capture("test-json", spdlog::level::info, Format::kJson);
  {
    ScopedRequestId rid("0123456789abcdef");
    capture.logger().info("domain \"vm-1\" said:\n\tC:\\path \x01 done");
  }
  std::string out = capture.text();
  ASSERT_FALSE(out.empty());
  ASSERT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  ASSERT_EQ(out.back(), '\n') << out;
  std::string line = out.substr(0, out.size() - 1);
  EXPECT_THAT(line, HasSubstr(R"("request_id":"0123456789abcdef")"));
  EXPECT_THAT(line, HasSubstr(R"(domain \"vm-1\" said:\n\tC:\\path \u0001 done)"));

  auto obj = ParseFlatJsonObject(line);
  ASSERT_TRUE(obj) << "not a flat JSON object: " << line;
  EXPECT_EQ((*obj)["request_id"], "0123456789abcdef");
  EXPECT_EQ((*obj)["msg"], "domain \"vm-1\" said:\n\tC:\\path \x01 done");
  EXPECT_EQ((*obj)["level"], "info");
  EXPECT_EQ((*obj)["component"], "test-json");
  EXPECT_THAT((*obj)["time"], MatchesRegex("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]+Z"));
}

TEST(Configure, JsonFormatUsesDashOutsideARequest) {
  LoggerCapture capture("test-json", spdlog::level::info, Format::kJson);
  capture.logger().warn("no request");
  std::string out = capture.text();
  ASSERT_FALSE(out.empty());
  auto obj = ParseFlatJsonObject(out.substr(0, out.size() - 1));
  ASSERT_TRUE(obj) << out;
  EXPECT_EQ((*obj)["request_id"], "-");
  EXPECT_THAT((*obj)["level"], ::testing::StartsWith("warn"));
}

TEST(Configure, JsonFormatTakesTheRequestIdOfTheLoggingThread) {
  LoggerCapture capture("test-json", spdlog::level::info, Format::kJson);
  ScopedRequestId main_id("main-thread");
  std::thread t([&] {
    ScopedRequestId rid("worker-thread");
    capture.logger().info("from worker");
  });
  t.join();
  std::string out = capture.text();
  EXPECT_THAT(out, HasSubstr(R"("request_id":"worker-thread")"));
  EXPECT_THAT(out, Not(HasSubstr("main-thread")));
}

TEST(Configure, TextFormatShowsComponentRequestIdAndMessage) {
  LoggerCapture capture("test-text", spdlog::level::info, Format::kText);
  {
    ScopedRequestId rid("feedfacecafebeef");
    capture.logger().info("hello {}", 42);
  }
  std::string out = capture.text();
  EXPECT_THAT(out, HasSubstr("[test-text]"));
  EXPECT_THAT(out, HasSubstr("[req feedfacecafebeef]"));
  EXPECT_THAT(out, HasSubstr("hello 42"));
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
}

TEST(Configure, LevelFiltersLowerSeverities) {
  LoggerCapture capture("test-level", spdlog::level::warn, Format::kText);
  capture.logger().info("quiet info");
  capture.logger().debug("quiet debug");
  capture.logger().error("loud error");
  std::string out = capture.text();
  EXPECT_THAT(out, Not(HasSubstr("quiet")));
  EXPECT_THAT(out, HasSubstr("loud error"));
}

TEST(Configure, AppliesTheLevelToLoggersCreatedLater) {
  Configure(spdlog::level::err, Format::kText);
  auto late = ComponentLogger("test-created-after-configure");
  EXPECT_EQ(late->level(), spdlog::level::err);
  Configure(spdlog::level::info, Format::kText);
  EXPECT_EQ(late->level(), spdlog::level::info);
}

TEST(Configure, AbslStringViewArgumentsFormat) {
  LoggerCapture capture("test-absl", spdlog::level::info, Format::kText);
  absl::string_view name = "vm-absl";
  capture.logger().info("domain {}", name);
  EXPECT_THAT(capture.text(), HasSubstr("domain vm-absl"));
}

}  // namespace
}  // namespace hvagent::log
