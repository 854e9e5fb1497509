#pragma once
// MigrationPeer: the destination agent as the source's MigrationService sees it. One real
// implementation speaks gRPC with the source agent's own TLS material (agent/api/grpc/
// migration_peer_client.h); unit tests put an IncomingMigrations of a second fake host behind
// it. It only carries calls: every check is the destination's (IncomingMigrations).

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/service/domain_service.h"
#include "storage/image/image_io.h"

namespace hvagent::service {

// A domain as it is to be defined on the destination: disks listed in `volumes` are pool volumes
// (their source_path empty) of create_size_bytes, streamed by ReceiveVolume before the define.
struct IncomingPlan {
  hv::DomainSpec spec;
  std::vector<DiskVolume> volumes;
  bool start = false;       // it ran on the source: start it once defined
  bool live = false;        // the source's hypervisor copies the disks (MigrationPeer::PrepareLive)
  std::string source_host;  // for logs and the journal
};

// One volume's stream, as the destination takes it: pieces in order, then the sender's sha256.
struct VolumePiece {
  enum class Kind { kData, kZeros, kEnd };
  Kind kind = Kind::kEnd;
  std::string data;      // kData
  uint64_t zeros = 0;    // kZeros
  std::string sha256;    // kEnd: the sender's, lowercase hex
};
class VolumeStream {
 public:
  virtual ~VolumeStream() = default;
  // The next piece; an error when the sender went away (Cancelled) or sent something else.
  virtual absl::StatusOr<VolumePiece> Next() = 0;
};

// What the destination of a live migration prepared: the transfer, where its hypervisor takes
// the migration, and the device of each volume (by IncomingPlan::volumes' order).
struct LiveTarget {
  std::string transfer;
  std::string libvirt_uri;   // qemu+tls://HOST/system or qemu+tcp://HOST/system
  std::string migrate_uri;   // tcp://HOST[:PORT]; empty: the hypervisor's choice
  std::vector<std::string> disk_paths;
};

struct ReceivedVolume {
  std::string sha256;  // of what the destination wrote
  uint64_t bytes = 0;
};

class MigrationPeer {
 public:
  virtual ~MigrationPeer() = default;
  // The transfer's id (PrepareIncoming).
  virtual absl::StatusOr<std::string> Prepare(const IncomingPlan& plan) = 0;
  // A live migration's transfer (plan.live): the destination makes every volume now, empty.
  virtual absl::StatusOr<LiveTarget> PrepareLive(const IncomingPlan& plan) = 0;
  // Streams disk `disk`'s volume: `produce` is handed the sink the bytes go to and returns what
  // it sent (ExportDevice's result); its sha256 travels as the trailer. Answers what the
  // destination wrote.
  using Producer = std::function<absl::StatusOr<storage::image::ExportResult>(storage::image::ExportSink&)>;
  virtual absl::StatusOr<ReceivedVolume> SendVolume(const std::string& transfer, size_t disk, uint64_t size,
                                                    const Producer& produce) = 0;
  virtual absl::Status Finish(const std::string& transfer) = 0;
  virtual absl::Status Abort(const std::string& transfer) = 0;
  // A live migration's heartbeat (KeepIncoming), answered within `deadline`: OK while the
  // destination holds the transfer open, NotFound once it does not, anything else when it could
  // not be asked (PeerHeartbeat counts those).
  virtual absl::Status Keep(const std::string& transfer, std::chrono::milliseconds deadline) = 0;
};

// Connects to the destination agent at "host:port".
using MigrationPeerFactory = std::function<absl::StatusOr<std::unique_ptr<MigrationPeer>>(const std::string&)>;

}  // namespace hvagent::service
