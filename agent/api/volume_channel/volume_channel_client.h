#pragma once
// The source's end of the volume channel (connection.h; the destination's end is
// VolumeChannelServer): one volume sent to a destination agent's [migration] data_port, under
// the same mutual TLS as the agents' gRPC (the source's [migration] client certificate; the
// destination's server certificate must chain to the CA and name `host`, as gRPC checks it).

#include <string>

#include "absl/status/statusor.h"
#include "agent/api/grpc/migration_peer_client.h"
#include "agent/service/migration_peer.h"
#include "hvagent/v1/migration.pb.h"

namespace hvagent::api {

// Sends `header`, then what `produce` hands the sink as frames, then the trailer with its
// sha256. Answers the destination's result whenever it gave one (also a refusal, or its reason
// for stopping the stream early: a full pool, an unknown transfer), else why there is none:
// `produce`'s own error (a read, a cancel), or Unavailable naming a connection that failed.
// `*connected` (when given) tells whether the TCP connection was made at all: before that,
// nothing was sent and nothing of the transfer changed on the destination.
absl::StatusOr<v1::ReceiveVolumeResult> SendVolumeOverChannel(const std::string& host, int port, const PeerTls& tls,
                                                              const v1::ReceiveVolumeHeader& header,
                                                              const service::MigrationPeer::Producer& produce,
                                                              bool* connected = nullptr);

}  // namespace hvagent::api
