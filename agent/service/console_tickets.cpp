#include "agent/service/console_tickets.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace hvagent::service {
namespace {

constexpr size_t kTicketBytes = 32;

std::string Digest(const std::string& ticket) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(ticket.data()), ticket.size(), md);
  return std::string(reinterpret_cast<const char*>(md), sizeof md);
}

}  // namespace

const char* ConsoleKindName(ConsoleKind kind) {
  switch (kind) {
    case ConsoleKind::kSerialWs: return "serial-ws";
    case ConsoleKind::kSerialTcp: return "serial-tcp";
    case ConsoleKind::kVnc: return "vnc";
  }
  return "?";
}

absl::StatusOr<ConsoleTickets::Issued> ConsoleTickets::Issue(const std::string& domain, ConsoleKind kind) {
  unsigned char raw[kTicketBytes];
  if (RAND_bytes(raw, sizeof raw) != 1) return absl::InternalError("ticket: the random generator failed");
  Issued issued{absl::WebSafeBase64Escape(absl::string_view(reinterpret_cast<const char*>(raw), sizeof raw)),
                clock_.Now() + ttl_};
  OPENSSL_cleanse(raw, sizeof raw);
  std::string digest = Digest(issued.ticket);
  std::lock_guard lock(mu_);
  PurgeExpiredLocked(clock_.Now());
  tickets_.emplace(digest.substr(0, 8), Entry{digest, domain, kind, issued.expires});
  return issued;
}

absl::Status ConsoleTickets::Redeem(const std::string& ticket, const std::string& domain, ConsoleKind kind) {
  const std::string digest = Digest(ticket);
  std::lock_guard lock(mu_);
  auto [first, last] = tickets_.equal_range(digest.substr(0, 8));
  for (auto it = first; it != last; ++it) {
    if (CRYPTO_memcmp(it->second.digest.data(), digest.data(), digest.size()) != 0) continue;
    Entry e = std::move(it->second);
    tickets_.erase(it);  // one use, whatever the outcome
    if (clock_.Now() >= e.expires) return absl::UnauthenticatedError("ticket: expired");
    if (e.domain != domain) return absl::UnauthenticatedError("ticket: issued for another domain");
    if (e.kind != kind) {
      return absl::UnauthenticatedError(
          absl::StrCat("ticket: issued for ", ConsoleKindName(e.kind), ", not ", ConsoleKindName(kind)));
    }
    return absl::OkStatus();
  }
  return absl::UnauthenticatedError("ticket: unknown, already used or expired");
}

void ConsoleTickets::Revoke(const std::string& ticket) {
  const std::string digest = Digest(ticket);
  std::lock_guard lock(mu_);
  auto [first, last] = tickets_.equal_range(digest.substr(0, 8));
  for (auto it = first; it != last; ++it) {
    if (CRYPTO_memcmp(it->second.digest.data(), digest.data(), digest.size()) == 0) {
      tickets_.erase(it);
      return;
    }
  }
}

size_t ConsoleTickets::outstanding() const {
  std::lock_guard lock(mu_);
  return tickets_.size();
}

void ConsoleTickets::PurgeExpiredLocked(Clock::TimePoint now) {
  for (auto it = tickets_.begin(); it != tickets_.end();) {
    it = now >= it->second.expires ? tickets_.erase(it) : std::next(it);
  }
}

}  // namespace hvagent::service
