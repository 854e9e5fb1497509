#pragma once
// hvctl's `image-upload` command: streams a local file to ImageService.UploadImage in 256 KiB
// chunks (one chunk in memory), drawing the bytes sent on stderr. Returns the reply's status.

#include <string>

#include <grpcpp/client_context.h>

#include "hvagent/v1/image.grpc.pb.h"

namespace hvagent::cli {

struct UploadArgs {
  std::string pool;
  std::string name;
  std::string file;
  v1::ImageFormat format = v1::IMAGE_FORMAT_RAW;
  std::string sha256;
  std::string sha512;
  bool progress = true;  // draw the bytes sent on stderr
};

grpc::Status UploadImage(v1::ImageService::Stub& stub, grpc::ClientContext& ctx, const UploadArgs& args,
                         v1::Image* out);

}  // namespace hvagent::cli
