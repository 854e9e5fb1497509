#include "agent/api/auth/audit.h"

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace hvagent::api::auth {

void Audit(const Caller& caller, absl::string_view operation, absl::string_view arguments, absl::string_view result,
           absl::string_view error, std::chrono::steady_clock::duration took) {
  static auto logger = log::ComponentLogger("audit");
  constexpr size_t kMaxArguments = 4096;
  std::string raw(arguments.substr(0, kMaxArguments));
  if (arguments.size() > kMaxArguments) absl::StrAppend(&raw, "...");
  // One line per request whatever the caller sent: control characters are escaped (no forged
  // log lines), and so are <, > and & (no markup from a request reaches the log verbatim).
  std::string args;
  for (char c : log::JsonEscape(raw)) {
    if (c == '<') {
      args += "\\u003c";
    } else if (c == '>') {
      args += "\\u003e";
    } else if (c == '&') {
      args += "\\u0026";
    } else {
      args += c;
    }
  }
  logger->info("caller={} role={} op={} result={} ms={:.1f} args=\"{}\"{}",
               caller.identity.empty() ? "-" : caller.identity, caller.role ? RoleName(*caller.role) : "-",
               operation, result, std::chrono::duration<double, std::milli>(took).count(), args,
               error.empty() ? "" : absl::StrCat(" error=\"", log::JsonEscape(error), "\""));
}

}  // namespace hvagent::api::auth
