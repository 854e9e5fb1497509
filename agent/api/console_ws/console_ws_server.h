#pragma once
// ConsoleWsServer: the browser's way to a guest's serial console, on its own listener
// ([console] ws_listen), with Boost.Beast (cpprestsdk's listener has no WebSocket server):
//   GET /console/{name}?ticket=T           the web terminal page (redeems nothing)
//   GET /console/{name}/ws?ticket=T        WebSocket: redeems T, a serial-ws ticket for {name}
//   GET /console/static/{file}             xterm.js and xterm.css from Debian's libjs-xterm, and
//                                          the page's own script; a fixed list, so no part of a
//                                          request ever names a file
// The ticket is the only credential: browsers cannot set headers on a WebSocket, and the URL is
// what CloudStack hands its user. A socket joins ConsoleSessions like a gRPC Attach (writer unless
// `read_only=1`; `take_over=1` replaces another writer; otherwise a second writer is refused).
// Guest output goes out in binary frames, one at a time: what a slow browser cannot take piles up
// in the attachment's bounded buffer (oldest dropped, with an in-band marker), never in the
// agent. One I/O thread serves every connection.

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "agent/api/auth/rate_limiter.h"
#include "agent/service/console_sessions.h"
#include "agent/service/console_tickets.h"

namespace hvagent::api {

// The agent's own certificate and key (PEM). No client certificate is asked: a browser has
// none, and the ticket authenticates.
struct ConsoleWsTls {
  std::string cert_file;
  std::string key_file;
};

class ConsoleWsServer {
 public:
  struct Options {
    std::string listen;  // "HOST:PORT" (IP literal, v6 in brackets, or localhost); port 0: any
    std::optional<ConsoleWsTls> tls;
    std::string asset_dir = "/usr/share/javascript/xterm";  // libjs-xterm's; fixed by the agent
    int max_connections = 256;  // beyond it: 503
    // Per-caller request limit: a token per HTTP request (page, file or upgrade; not keystrokes),
    // the caller being the peer's IP address, since a ticket is all a browser presents. Over
    // it: 429 before the ticket is looked at. Null: no limit (the development mode, as REST).
    auth::RateLimiter* limiter = nullptr;
  };
  // Called for each request refused for its ticket or its rate (domain, the peer's address, why):
  // the audit trail of who tried which domain.
  using RefusalSink =
      std::function<void(const std::string& domain, const std::string& peer, const absl::Status& why)>;

  ConsoleWsServer(service::ConsoleSessions& sessions, service::ConsoleTickets& tickets, Options options,
                  RefusalSink refused);
  ~ConsoleWsServer();  // Stop()s

  // Binds and starts serving. Unavailable when the address cannot be bound; InvalidArgument /
  // FailedPrecondition for unreadable or mismatched TLS files (naming the field).
  absl::Status Start();
  // The bound port (after Start).
  int port() const;
  // Re-reads the TLS files for new connections; on an error the current ones stay in use.
  absl::Status ReloadTls();
  // Closes the listener and every connection (their attachments detach), joins the thread.
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hvagent::api
