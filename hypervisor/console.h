#pragma once
// ConsoleOpener: opens a domain's text console (its first serial or PV console) as a byte
// stream. Called by agent/service's ConsoleSessions only, which shares one open console among
// all the callers attached to a domain. Implementations are event-driven: output is delivered
// by callback from the hypervisor's event thread (no thread per console), and writing never
// blocks the caller. Errors: NotFound (no such domain), FailedPrecondition (not running, or no
// console), Unavailable (connection down).

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hvagent::hv {

// One open console. Destroying it (or Close()) detaches from the guest; after Close() returns
// no callback of this console runs any more.
class ConsoleChannel {
 public:
  virtual ~ConsoleChannel() = default;
  // Queues bytes for the guest and returns at once. ResourceExhausted when more than the
  // channel's input buffer is waiting (the guest is not reading); FailedPrecondition once closed.
  virtual absl::Status Write(std::string_view bytes) = 0;
  virtual void Close() = 0;
};

struct ConsoleCallbacks {
  // Guest output, in order. Runs on the hypervisor's event thread; must not block.
  std::function<void(std::string_view bytes)> on_output;
  // Once, when the console ends by itself (the guest stopped, the connection dropped): OK for an
  // orderly end, else why. Not called after Close().
  std::function<void(const absl::Status& why)> on_closed;
};

class ConsoleOpener {
 public:
  virtual ~ConsoleOpener() = default;
  virtual absl::StatusOr<std::unique_ptr<ConsoleChannel>> OpenConsole(const std::string& domain,
                                                                      ConsoleCallbacks callbacks) = 0;
};

// Where a domain's console log lives under the configured directory (`name` is a validated
// domain name: no '/' and no "..").
inline std::string ConsoleLogPath(const std::string& dir, const std::string& name) { return dir + "/" + name + ".log"; }

}  // namespace hvagent::hv
