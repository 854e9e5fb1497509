#pragma once
// ConsoleTickets: one-time tickets to a domain's console. A ticket is 32 random bytes from
// OpenSSL's RAND_bytes (base64url), bound to one domain and one kind of access, valid for a
// fixed time. Only its SHA-256 is kept; redeeming compares digests in constant time and
// consumes the ticket whatever the answer, so a ticket presented wrongly cannot be tried again.
// Called by ConsoleAccess (issue) and by the endpoints that take tickets (redeem).

#include <chrono>
#include <map>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "common/clock.h"

namespace hvagent::service {

enum class ConsoleKind { kSerialWs, kSerialTcp, kVnc };
const char* ConsoleKindName(ConsoleKind kind);  // "serial-ws", "serial-tcp", "vnc"

class ConsoleTickets {
 public:
  struct Issued {
    std::string ticket;
    Clock::TimePoint expires;
  };

  ConsoleTickets(const Clock& clock, std::chrono::seconds ttl) : clock_(clock), ttl_(ttl) {}

  // Internal only when the system's random generator fails (no ticket is then issued).
  absl::StatusOr<Issued> Issue(const std::string& domain, ConsoleKind kind);
  // OK once per ticket, for its domain and kind before it expires. Unauthenticated otherwise,
  // saying why (unknown or used, expired, another domain, another kind), never naming the
  // domain it was for.
  absl::Status Redeem(const std::string& ticket, const std::string& domain, ConsoleKind kind);
  // Forgets a ticket (its endpoint closed unused).
  void Revoke(const std::string& ticket);

  std::chrono::seconds ttl() const { return ttl_; }
  size_t outstanding() const;

 private:
  struct Entry {
    std::string digest;  // SHA-256 of the ticket, compared with CRYPTO_memcmp
    std::string domain;
    ConsoleKind kind;
    Clock::TimePoint expires;
  };
  void PurgeExpiredLocked(Clock::TimePoint now);

  const Clock& clock_;
  const std::chrono::seconds ttl_;
  mutable std::mutex mu_;
  // By the first 8 bytes of the digest: a lookup reveals nothing usable about the secret, and
  // the whole digest is then compared in constant time.
  std::multimap<std::string, Entry> tickets_;
};

}  // namespace hvagent::service
