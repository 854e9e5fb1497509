#include "agent/api/auth/cert_verifier.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "absl/strings/str_cat.h"

namespace hvagent::api::auth {
namespace {

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct StackFree {
  void operator()(STACK_OF(X509) * s) const { sk_X509_pop_free(s, X509_free); }
};
struct CtxFree {
  void operator()(X509_STORE_CTX* c) const { X509_STORE_CTX_free(c); }
};
struct NamesFree {
  void operator()(GENERAL_NAMES* n) const { GENERAL_NAMES_free(n); }
};

std::unique_ptr<BIO, BioFree> MemBio(absl::string_view pem) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

std::string Asn1String(const ASN1_STRING* s) {
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), ASN1_STRING_length(s));
}

std::vector<std::string> Names(X509* cert) {
  std::vector<std::string> out;
  std::unique_ptr<GENERAL_NAMES, NamesFree> sans(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  if (sans) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans.get()); ++i) {
      const GENERAL_NAME* n = sk_GENERAL_NAME_value(sans.get(), i);
      if (n->type == GEN_DNS) out.push_back(Asn1String(n->d.dNSName));
      if (n->type == GEN_URI) out.push_back(Asn1String(n->d.uniformResourceIdentifier));
    }
  }
  X509_NAME* subject = X509_get_subject_name(cert);
  for (int i = X509_NAME_get_index_by_NID(subject, NID_commonName, -1); i >= 0;
       i = X509_NAME_get_index_by_NID(subject, NID_commonName, i)) {
    out.push_back(Asn1String(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i))));
  }
  return out;
}

}  // namespace

struct CertVerifier::Store {
  X509_STORE* store = nullptr;
  ~Store() { X509_STORE_free(store); }
};

absl::StatusOr<std::unique_ptr<CertVerifier>> CertVerifier::Load(std::string ca_file) {
  std::unique_ptr<CertVerifier> v(new CertVerifier(std::move(ca_file)));
  if (auto s = v->Reload(); !s.ok()) return s;
  return v;
}

CertVerifier::~CertVerifier() = default;

absl::Status CertVerifier::Reload() {
  auto store = std::make_shared<Store>();
  store->store = X509_STORE_new();
  if (X509_STORE_load_locations(store->store, ca_file_.c_str(), nullptr) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("tls.client_ca_file: cannot load a PEM CA bundle from ", ca_file_));
  }
  std::lock_guard lock(mu_);
  store_ = std::move(store);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> CertVerifier::Verify(absl::string_view leaf_pem,
                                                              absl::string_view chain_pem) const {
  std::shared_ptr<Store> store;
  {
    std::lock_guard lock(mu_);
    store = store_;
  }
  auto bio = MemBio(leaf_pem);
  std::unique_ptr<X509, X509Free> leaf(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!leaf) {
    ERR_clear_error();
    return absl::UnauthenticatedError("client certificate: not a PEM certificate");
  }
  std::unique_ptr<STACK_OF(X509), StackFree> chain(sk_X509_new_null());
  auto chain_bio = MemBio(chain_pem);
  while (X509* c = PEM_read_bio_X509(chain_bio.get(), nullptr, nullptr, nullptr)) sk_X509_push(chain.get(), c);
  ERR_clear_error();
  std::unique_ptr<X509_STORE_CTX, CtxFree> ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store->store, leaf.get(), chain.get()) != 1) {
    return absl::InternalError("client certificate: cannot set up verification");
  }
  X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT);
  if (X509_verify_cert(ctx.get()) != 1) {
    int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return absl::UnauthenticatedError(
        absl::StrCat("client certificate refused: ", X509_verify_cert_error_string(err)));
  }
  return Names(leaf.get());
}

}  // namespace hvagent::api::auth
