#pragma once
// ConsoleTcpEndpoints: the raw TCP way to a console, one endpoint per serial-tcp ticket, as
// nova-serialproxy expects (it connects to host:port and relays bytes). An endpoint listens on
// the configured proxy-facing address, on a free port of the configured range, accepts exactly
// one connection and closes its listener at once; if nobody connects before the ticket expires
// it closes unused. The connection redeems the ticket (a late or second use is refused and
// audited), then is attached to the console as its writer, taking it over: the ticket's holder
// is the guest's owner, come to type. Output the client is too slow for is dropped (bounded
// buffer) with an in-band marker line. One thread per endpoint, for its lifetime only.

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "agent/service/console_sessions.h"
#include "agent/service/console_tickets.h"

namespace hvagent::service {

class ConsoleTcpEndpoints {
 public:
  struct Options {
    std::string address = "127.0.0.1";  // an IP literal (v4 or v6)
    int port_min = 10000;
    int port_max = 10099;
  };
  // Called for each connection refused for its ticket (domain, why): the audit trail.
  using RefusalSink = std::function<void(const std::string& domain, const absl::Status& why)>;

  ConsoleTcpEndpoints(ConsoleSessions& sessions, ConsoleTickets& tickets, Options options, RefusalSink refused)
      : sessions_(sessions), tickets_(tickets), options_(std::move(options)), refused_(std::move(refused)) {}
  // Closes every endpoint and connection, and waits for their threads.
  ~ConsoleTcpEndpoints();

  // Listens for `ticket` (a serial-tcp ticket for `domain`) until `expires`; the port.
  // ResourceExhausted when every port of the range is taken; Unavailable when the address
  // cannot be bound.
  absl::StatusOr<int> Open(const std::string& domain, const std::string& ticket, Clock::TimePoint expires);

  const Options& options() const { return options_; }

 private:
  struct Endpoint {
    std::thread thread;
    std::atomic<bool> done{false};
  };
  void Serve(int listen_fd, std::string domain, std::string ticket, Clock::TimePoint expires);
  void Relay(int fd, const std::string& domain);
  void ReapLocked();

  ConsoleSessions& sessions_;
  ConsoleTickets& tickets_;
  const Options options_;
  const RefusalSink refused_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  int next_offset_ = 0;
  std::list<std::unique_ptr<Endpoint>> endpoints_;
};

}  // namespace hvagent::service
