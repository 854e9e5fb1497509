#include "agent/api/auth/authorizer.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "agent/api/operations/operation.h"

namespace hvagent::api::auth {

const char* RoleName(Role r) {
  switch (r) {
    case Role::kMonitor: return "monitor";
    case Role::kOperator: return "operator";
    case Role::kController: return "controller";
    case Role::kPeer: return "peer";
  }
  return "?";
}

std::optional<Role> ParseRole(absl::string_view name) {
  if (name == "monitor") return Role::kMonitor;
  if (name == "operator") return Role::kOperator;
  if (name == "controller") return Role::kController;
  if (name == "peer") return Role::kPeer;
  return std::nullopt;
}

std::optional<Role> RequiredRole(absl::string_view operation) {
  const ops::Operation* op = ops::Find(operation);
  if (op == nullptr) return std::nullopt;
  return op->role;
}

bool IsMutating(absl::string_view operation) {
  const ops::Operation* op = ops::Find(operation);
  return op == nullptr || op->mutating;  // unknown: treat as mutating (it is refused anyway)
}

std::string Sha256Hex(absl::string_view text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(text.data(), text.size(), digest, &len, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 15];
  }
  return out;
}

Caller Authorizer::Anonymous() const {
  if (options_.everyone_is_controller) return {"local", Role::kController};
  return {};
}

Caller Authorizer::FromCertificate(const std::vector<std::string>& names) const {
  if (options_.everyone_is_controller) return Anonymous();
  if (names.empty()) return {};
  for (const std::string& n : names) {
    if (auto it = options_.identities.find(n); it != options_.identities.end()) return {n, it->second};
  }
  return {names.front(), std::nullopt};
}

absl::StatusOr<Caller> Authorizer::FromPeerCertificate(absl::string_view leaf_pem,
                                                       absl::string_view chain_pem) const {
  if (options_.everyone_is_controller) return Anonymous();
  if (leaf_pem.empty() || options_.verifier == nullptr) return Caller{};
  auto names = options_.verifier->Verify(leaf_pem, chain_pem);
  if (!names.ok()) return names.status();
  if (names->empty()) return absl::UnauthenticatedError("client certificate: it has no CN or SAN name");
  return FromCertificate(*names);
}

Caller Authorizer::FromBearerToken(absl::string_view authorization) const {
  if (options_.everyone_is_controller) return Anonymous();
  absl::string_view token = absl::StripAsciiWhitespace(authorization);
  if (!absl::ConsumePrefix(&token, "Bearer ") || token.empty()) return {};
  const std::string hash = Sha256Hex(absl::StripAsciiWhitespace(token));
  for (const Token& t : options_.tokens) {
    // Constant time, so response timing says nothing about how much of a hash matched.
    if (t.sha256.size() == hash.size() && CRYPTO_memcmp(t.sha256.data(), hash.data(), hash.size()) == 0) {
      return {absl::StrCat("token:", t.name), t.role};
    }
  }
  return {};
}

absl::Status Authorizer::Admit(const Caller& caller, absl::string_view operation) const {
  if (auto s = Check(caller, operation); !s.ok()) return s;
  if (options_.limiter == nullptr) return absl::OkStatus();
  return options_.limiter->Allow(caller.identity);
}

RateLimiter::StreamSlot Authorizer::OpenStream(const Caller& caller) const {
  if (options_.limiter == nullptr) return RateLimiter::StreamSlot(nullptr, caller.identity, absl::OkStatus());
  return options_.limiter->OpenStream(caller.identity);
}

absl::Status Authorizer::Check(const Caller& caller, absl::string_view operation) const {
  if (caller.identity.empty()) {
    return absl::UnauthenticatedError(
        absl::StrCat(operation, ": no valid client certificate or bearer token was presented"));
  }
  std::optional<Role> need = RequiredRole(operation);
  if (!need) return absl::PermissionDeniedError(absl::StrCat(operation, ": not an operation anybody may call"));
  if (!caller.role) {
    return absl::PermissionDeniedError(absl::StrCat(operation, ": '", caller.identity, "' has no role"));
  }
  // A peer may receive transfers and nothing else; those are also the controller's.
  const bool allowed = *caller.role == Role::kPeer || *need == Role::kPeer
                           ? *caller.role == *need || *caller.role == Role::kController
                           : static_cast<int>(*caller.role) >= static_cast<int>(*need);
  if (!allowed) {
    return absl::PermissionDeniedError(absl::StrCat(operation, ": '", caller.identity, "' is ",
                                                    RoleName(*caller.role), ", this needs ", RoleName(*need)));
  }
  return absl::OkStatus();
}

}  // namespace hvagent::api::auth
