#pragma once
// The destination agent as a gRPC peer (service::MigrationPeer): the source agent calls its
// MigrationService *Incoming methods and streams ReceiveVolume, presenting its own client
// certificate ([migration] cert_file / key_file), which the destination maps to the `peer` role.
// It carries calls and converts; every check is the destination's.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "agent/service/migration_peer.h"

namespace hvagent::api {

struct PeerTls {
  bool plaintext = false;  // development mode only (both agents on loopback)
  std::string ca_pem;      // the destination's server certificate chains to it
  std::string cert_pem;    // this agent's client certificate
  std::string key_pem;
};

// A factory for MigrationService: one channel per migration to "host:port"; `self` is this
// host's name as the destination logs it.
service::MigrationPeerFactory GrpcPeerFactory(PeerTls tls, std::string self);

// Reads [migration]'s files (with tls.client_ca_file as the CA when ca_file is empty).
absl::StatusOr<PeerTls> LoadPeerTls(const std::string& cert_file, const std::string& key_file,
                                    const std::string& ca_file);

}  // namespace hvagent::api
