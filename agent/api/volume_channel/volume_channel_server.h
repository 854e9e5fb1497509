#pragma once
// VolumeChannelServer: the destination's end of the volume channel ([migration] data_port;
// wire in connection.h and proto/hvagent/v1/migration.proto). ReceiveVolume over bare frames,
// with the same checks as over gRPC: the caller is its TLS client certificate (the Authorizer,
// as for gRPC; plain only in the development mode), admitted through the Pipeline for
// hvagent.v1.MigrationService/ReceiveVolume (the `peer` role, a stream slot, the audit), and
// the bytes go to IncomingMigrations::Receive, which checks the transfer, the disk, the size
// and the sha256. A thread per connection (a migration sends one volume at a time).

#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "agent/api/operations/pipeline.h"

namespace hvagent::api {

class VolumeChannelServer {
 public:
  struct Tls {
    std::string cert_file;  // the agent's server certificate and key ([tls]), re-read for each
    std::string key_file;   // connection so that a rotation needs no restart
  };
  struct Options {
    std::string host;        // the address to bind: an IP literal (v6 without brackets: HostOf)
    int port = 0;            // 0: any free port (port() tells which)
    std::optional<Tls> tls;  // none: plain text (the development mode, loopback only)
    int max_connections = 16;  // beyond it a connection is closed at once
  };
  VolumeChannelServer(const ops::Pipeline& pipeline, Options options);
  ~VolumeChannelServer();  // Stop()s

  // Binds and listens. Unavailable when the address cannot be bound.
  absl::Status Start();
  int port() const;
  // Closes the listener and every connection (their transfers fail as a sender gone would).
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hvagent::api
