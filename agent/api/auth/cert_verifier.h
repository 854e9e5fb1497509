#pragma once
// CertVerifier: checks a client certificate chain against the configured client CA, in the
// agent rather than in the TLS handshake, so that a caller with no certificate, an expired one
// or one from another CA gets a gRPC UNAUTHENTICATED naming the reason instead of a bare
// connection failure. (The handshake still proves the caller holds the certificate's key: TLS
// checks the client's CertificateVerify signature whatever the chain verification mode.)

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hvagent::api::auth {

class CertVerifier {
 public:
  // Reads the CA bundle (PEM). InvalidArgument naming tls.client_ca_file when it cannot.
  static absl::StatusOr<std::unique_ptr<CertVerifier>> Load(std::string ca_file);
  ~CertVerifier();
  // Re-reads the CA file; on an error the current one stays.
  absl::Status Reload();
  // The certificate's names (SAN DNS and URI names, then the subject CN) when `leaf_pem`
  // chains to the CA (with `chain_pem` as intermediates), is within its validity period and is
  // fit for TLS client use; otherwise UNAUTHENTICATED with OpenSSL's reason.
  absl::StatusOr<std::vector<std::string>> Verify(absl::string_view leaf_pem, absl::string_view chain_pem) const;

 private:
  explicit CertVerifier(std::string ca_file) : ca_file_(std::move(ca_file)) {}
  struct Store;
  std::string ca_file_;
  mutable std::mutex mu_;
  std::shared_ptr<Store> store_;
};

}  // namespace hvagent::api::auth
