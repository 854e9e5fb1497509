#pragma once
// Logging for every hvagent component: one spdlog logger per component, a request id on every
// line logged while a request is being served, text or JSON output.
// Callers: main() configures once; components call ComponentLogger("name").

#include <memory>
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

#include "absl/strings/string_view.h"

namespace hvagent::log {

enum class Format { kText, kJson };

// Sets level and format for all current and future component loggers. Thread-safe.
void Configure(spdlog::level::level_enum level, Format format);

// The logger for a component ("hypervisor", "grpc", "rest", "service"...), created on first use.
std::shared_ptr<spdlog::logger> ComponentLogger(const std::string& component);

// The request id of the calling thread ("-" when none).
std::string_view CurrentRequestId();

// A fresh random request id (16 hex digits).
std::string NewRequestId();

// Sets the calling thread's request id for its lifetime, restoring the previous one after.
class ScopedRequestId {
 public:
  explicit ScopedRequestId(std::string id);
  ~ScopedRequestId();
  ScopedRequestId(const ScopedRequestId&) = delete;
  ScopedRequestId& operator=(const ScopedRequestId&) = delete;

 private:
  std::string previous_;
};

// Escapes a string for inclusion inside a JSON string literal.
std::string JsonEscape(absl::string_view s);

}  // namespace hvagent::log

// absl::string_view (distinct from std::string_view in Debian's abseil) in log arguments.
#include "absl/strings/string_view.h"
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<fmt::string_view> {
  auto format(absl::string_view s, fmt::format_context& ctx) const {
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(s.data(), s.size()), ctx);
  }
};
