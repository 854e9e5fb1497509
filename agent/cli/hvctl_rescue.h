#pragma once
// hvctl's `rescue` command: RescueDomainRequest from flags, and a config drive either from a
// ready image (--config-drive-image) or from a local file (--config-drive: uploaded as image
// `cfg-<volume>` first, deleted again once the rescue has answered, whatever it answered; the
// rescue's own volume is a copy, so the image is not needed afterwards).

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/channel.h>

#include "hvagent/v1/domain.pb.h"

namespace hvagent::cli {

struct RescueArgs {
  v1::RescueDomainRequest request;
  std::string config_drive_file;  // set: uploaded into request.config_drive's pool first
};

// `rescue NAME [--image POOL IMAGE] [--volume NAME] [--kernel PATH] [--initrd PATH] [--cmdline TEXT]
//  [--config-drive-image POOL IMAGE VOLUME | --config-drive POOL FILE VOLUME]`; nullopt: usage error.
std::optional<RescueArgs> ParseRescueArgs(const std::vector<std::string>& args);

// Runs the rescue (and the upload and removal of a --config-drive file's image).
grpc::Status Rescue(const std::shared_ptr<grpc::Channel>& channel, const RescueArgs& args, bool progress,
                    v1::Domain* out);

}  // namespace hvagent::cli
