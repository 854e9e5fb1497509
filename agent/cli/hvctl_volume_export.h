#pragma once
// hvctl's `volume-export` command: reads StorageService.ExportVolume (a volume, one of its
// snapshots or an image; raw or qcow2) into a local file, zero runs as holes (the file stays
// sparse), or onto stdout (`-o -`, zero runs written as bytes: a pipe cannot seek), drawing the
// bytes received on stderr, and checks the stream's sha256 trailer against its own hash of what
// it wrote. A mismatch, a stream without its trailer or a short one is an error: a file is
// removed; stdout cannot take bytes back, so the caller must trust only a zero exit code.

#include <string>

#include <grpcpp/client_context.h>

#include "hvagent/v1/storage.grpc.pb.h"

namespace hvagent::cli {

struct ExportArgs {
  std::string pool;
  std::string name;
  std::string file;  // "-": stdout
  std::string snapshot;
  v1::ImageFormat format = v1::IMAGE_FORMAT_RAW;
  bool image = false;
  bool domain_quiesced = false;
  bool progress = true;
};

// Whether `args.file` names stdout.
inline bool ToStdout(const ExportArgs& args) { return args.file == "-"; }

// On success *out holds the trailer (size, zero bytes, sha256) and *received the bytes that
// crossed the wire as data.
grpc::Status ExportVolume(v1::StorageService::Stub& stub, grpc::ClientContext& ctx, const ExportArgs& args,
                          v1::ExportTrailer* out, uint64_t* received);

}  // namespace hvagent::cli
