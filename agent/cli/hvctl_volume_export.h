#pragma once
// hvctl's `volume-export` command: reads StorageService.ExportVolume into a local file, zero
// runs as holes (the file stays sparse), drawing the bytes received on stderr, and checks the
// stream's sha256 trailer against its own hash of what it wrote. A mismatch, a stream without
// its trailer or a short one is an error and the file is removed.

#include <string>

#include <grpcpp/client_context.h>

#include "hvagent/v1/storage.grpc.pb.h"

namespace hvagent::cli {

struct ExportArgs {
  std::string pool;
  std::string name;
  std::string file;
  bool image = false;
  bool domain_quiesced = false;
  bool progress = true;
};

// On success *out holds the trailer (size, zero bytes, sha256) and *received the bytes that
// crossed the wire as data.
grpc::Status ExportVolume(v1::StorageService::Stub& stub, grpc::ClientContext& ctx, const ExportArgs& args,
                          v1::ExportTrailer* out, uint64_t* received);

}  // namespace hvagent::cli
