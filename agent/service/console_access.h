#pragma once
// ConsoleAccess: the console operations of the API apart from the stream itself: one-time
// tickets (issued here, redeemed by the endpoint of their kind), and the console log. Called by
// the operation handlers; knows nothing of transports.

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "agent/service/console_tcp.h"
#include "agent/service/console_tickets.h"
#include "hypervisor/hypervisor.h"

namespace hvagent::service {

class ConsoleAccess {
 public:
  struct Options {
    std::string log_dir;  // QEMU/KVM: the agent's console log directory; empty: no logs kept
    // Xen: xenconsoled's log directory (its --log-dir, guest-NAME.log); empty: not served.
    std::string xen_log_dir;
    // serial-ws: where browsers reach the WebSocket listener, "https://HOST:PORT" (the
    // configured proxy-facing address, never the caller's); empty: no serial-ws endpoint.
    std::string ws_base_url;
    std::string ws_host;
    int ws_port = 0;
    // vnc: how long a ticket's password opens the display ([console] ticket_ttl_seconds).
    std::chrono::seconds vnc_ttl{60};
  };
  ConsoleAccess(hv::Hypervisor& hypervisor, ConsoleTickets& tickets, ConsoleTcpEndpoints* tcp, Options options)
      : hypervisor_(hypervisor), tickets_(tickets), tcp_(tcp), options_(std::move(options)) {}

  struct Ticket {
    std::string ticket;
    std::string domain;
    ConsoleKind kind;
    std::chrono::system_clock::time_point expires;
    std::string host;  // serial-tcp: where its one connection is awaited; serial-ws: the listener
    int port = 0;
    std::string url;  // serial-ws: the web terminal page, ticket included
    // vnc: the display's password until `expires` (8 characters, the most VNC authentication
    // uses). A vnc ticket has no `ticket`: the password is the credential (the RFB protocol has
    // no tickets).
    std::string password;
  };
  // NotFound (no such domain, whatever the kind), FailedPrecondition (not running; vnc on a Xen
  // host, whose guests have no display, or on a domain without a VNC display), Unimplemented (a
  // kind this agent has no endpoint for).
  absl::StatusOr<Ticket> Issue(const std::string& domain, ConsoleKind kind);

  struct LogTail {
    std::string data;
    uint64_t size = 0;
  };
  static constexpr uint64_t kDefaultTail = 64 * 1024;
  static constexpr uint64_t kMaxTail = 1024 * 1024;
  // The last `tail_bytes` (0: kDefaultTail) of the domain's console log. InvalidArgument over
  // kMaxTail; NotFound (no such domain); FailedPrecondition when no log is kept for it. On a Xen
  // host the log is xenconsoled's (Options::xen_log_dir).
  absl::StatusOr<LogTail> Log(const std::string& domain, uint64_t tail_bytes);

 private:
  absl::StatusOr<Ticket> IssueVnc(const hv::DomainInfo& domain);
  absl::StatusOr<std::string> LogPath(const std::string& name);

  hv::Hypervisor& hypervisor_;
  ConsoleTickets& tickets_;
  ConsoleTcpEndpoints* tcp_;
  const Options options_;
};

}  // namespace hvagent::service
