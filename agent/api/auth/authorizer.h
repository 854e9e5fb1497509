#pragma once
// Authorizer: who may call what, decided in one place for gRPC and REST. Default deny: an
// operation that is not in the table below is refused to every role.
//
// Roles (docs/security.md):
//   monitor     health, host facts, capacity, statistics, event channels, /metrics
//   operator    monitor + reading domains, pools, volumes and events + the lifecycle actions an
//               operator runs by hand (start, shutdown, destroy, reboot, suspend, resume)
//   controller  everything, including creating and deleting domains and volumes
//   peer        another hvagent moving a domain here (MigrationService's *Incoming and
//               ReceiveVolume) and nothing else; outside the ladder above: no other role may
//               call the peer's operations but the controller
// Operations are named like gRPC methods ("hvagent.v1.DomainService/CreateDomain"); the role
// each needs is a column of the one operation table (agent/api/operations/operation_table.cpp),
// which REST routes and gRPC methods both point into.
//
// Who the caller is: on gRPC the client certificate (its SAN DNS/URI names, then its CN) when
// TLS is on; on REST a bearer token, stored in the config as its SHA-256 only. In the
// development mode (plain text on loopback) every caller is the controller "local".

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/api/auth/cert_verifier.h"
#include "agent/api/auth/rate_limiter.h"

namespace hvagent::api::auth {

// monitor < operator < controller; peer stands apart (Check).
enum class Role { kMonitor = 1, kOperator = 2, kController = 3, kPeer = 4 };
const char* RoleName(Role r);
std::optional<Role> ParseRole(absl::string_view name);

struct Caller {
  std::string identity;       // empty: not authenticated
  std::optional<Role> role;   // nullopt: authenticated, but the config gives it no role
};

// The role an operation needs (from the operation table); nullopt = not an operation (refused
// to everybody).
std::optional<Role> RequiredRole(absl::string_view operation);
// Operations that change something (for the audit log).
bool IsMutating(absl::string_view operation);

// The lowercase hex SHA-256 of `text` (how tokens are stored in the config).
std::string Sha256Hex(absl::string_view text);

class Authorizer {
 public:
  struct Token {
    std::string name;    // shown in logs instead of the token
    std::string sha256;  // lowercase hex
    Role role;
  };
  struct Options {
    // Development mode only: everybody is the controller "local".
    bool everyone_is_controller = false;
    std::map<std::string, Role> identities;  // certificate name -> role
    std::vector<Token> tokens;
    // Checks client certificates against the client CA (not owned; null = no TLS).
    const CertVerifier* verifier = nullptr;
    // Per-caller request and stream limits (not owned; null = none).
    RateLimiter* limiter = nullptr;
  };
  explicit Authorizer(Options options) : options_(std::move(options)) {}

  // `names`: the peer certificate's SAN names and CN (any order); empty = no certificate.
  Caller FromCertificate(const std::vector<std::string>& names) const;
  // A TLS peer's certificate as the handshake presented it (PEM; empty = none): verified
  // against the client CA, then its names resolved. UNAUTHENTICATED when it does not verify.
  absl::StatusOr<Caller> FromPeerCertificate(absl::string_view leaf_pem, absl::string_view chain_pem) const;
  // `authorization`: the Authorization header ("Bearer <token>"); empty = none.
  Caller FromBearerToken(absl::string_view authorization) const;
  // The caller in development mode, or an unauthenticated one.
  Caller Anonymous() const;

  // UNAUTHENTICATED (no identity), PERMISSION_DENIED (no role, or not enough), naming both the
  // caller and the operation.
  absl::Status Check(const Caller& caller, absl::string_view operation) const;

  // Check, then the caller's rate limit (RESOURCE_EXHAUSTED when over it).
  absl::Status Admit(const Caller& caller, absl::string_view operation) const;
  // A stream slot for the caller (always granted without a limiter).
  RateLimiter::StreamSlot OpenStream(const Caller& caller) const;

  bool everyone_is_controller() const { return options_.everyone_is_controller; }

 private:
  Options options_;
};

}  // namespace hvagent::api::auth
