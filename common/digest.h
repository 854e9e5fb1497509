#pragma once
// A running message digest (OpenSSL EVP): what an image import checks its source against, what
// an export's trailer carries, and what hvctl checks an exported file with.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hvagent {

class Digest {
 public:
  // "sha256" or "sha512"; InvalidArgument for any other name.
  static absl::StatusOr<std::unique_ptr<Digest>> Create(const std::string& algorithm);
  ~Digest();
  Digest(const Digest&) = delete;
  Digest& operator=(const Digest&) = delete;
  void Update(absl::string_view bytes);
  std::string HexFinal();  // lowercase hex; once

 private:
  Digest() = default;
  void* ctx_ = nullptr;  // EVP_MD_CTX
};

}  // namespace hvagent
