#include "agent/cli/hvctl_rescue.h"

#include <chrono>

#include "agent/cli/hvctl_image_upload.h"
#include "hvagent/v1/domain.grpc.pb.h"
#include "hvagent/v1/image.grpc.pb.h"

namespace hvagent::cli {
namespace {

void SetImage(v1::RescueImage* to, const std::string& pool, const std::string& image, const std::string& volume) {
  to->set_pool(pool);
  to->set_image(image);
  to->set_volume(volume);
}

}  // namespace

std::optional<RescueArgs> ParseRescueArgs(const std::vector<std::string>& args) {
  if (args.size() < 2 || args[1].empty()) return std::nullopt;
  RescueArgs out;
  v1::RescueDomainRequest& req = out.request;
  req.set_name(args[1]);
  for (size_t i = 2; i < args.size(); ++i) {
    const std::string& flag = args[i];
    const size_t left = args.size() - i - 1;  // values after the flag
    if (flag == "--image" && left >= 2) {
      req.mutable_image()->set_pool(args[i + 1]);
      req.mutable_image()->set_image(args[i + 2]);
      i += 2;
    } else if (flag == "--volume" && left >= 1) {
      req.mutable_image()->set_volume(args[++i]);
    } else if (flag == "--kernel" && left >= 1) {
      req.mutable_kernel()->set_kernel_path(args[++i]);
    } else if (flag == "--initrd" && left >= 1) {
      req.mutable_kernel()->set_initrd_path(args[++i]);
    } else if (flag == "--cmdline" && left >= 1) {
      req.mutable_kernel()->set_cmdline(args[++i]);
    } else if ((flag == "--config-drive-image" || flag == "--config-drive") && left >= 3 &&
               !req.has_config_drive()) {
      const std::string& pool = args[i + 1];
      const std::string& volume = args[i + 3];
      const bool file = flag == "--config-drive";
      SetImage(req.mutable_config_drive(), pool, file ? "cfg-" + volume : args[i + 2], volume);
      if (file) out.config_drive_file = args[i + 2];
      i += 3;
    } else {
      return std::nullopt;
    }
  }
  return out;
}

grpc::Status Rescue(const std::shared_ptr<grpc::Channel>& channel, const RescueArgs& args, bool progress,
                    v1::Domain* out) {
  auto images = v1::ImageService::NewStub(channel);
  const bool upload = !args.config_drive_file.empty();
  if (upload) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(600));
    const v1::RescueImage& drive = args.request.config_drive();
    v1::Image uploaded;
    grpc::Status s = UploadImage(
        *images, ctx, {.pool = drive.pool(), .name = drive.image(), .file = args.config_drive_file, .progress = progress},
        &uploaded);
    if (!s.ok()) return grpc::Status(s.error_code(), "config drive upload: " + s.error_message());
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(600));  // disks are copied first
  grpc::Status result = v1::DomainService::NewStub(channel)->RescueDomain(&ctx, args.request, out);
  if (upload) {
    grpc::ClientContext del;
    del.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    v1::ImageRef ref;
    ref.set_pool(args.request.config_drive().pool());
    ref.set_name(args.request.config_drive().image());
    v1::Image deleted;
    grpc::Status s = images->DeleteImage(&del, ref, &deleted);
    if (result.ok() && !s.ok()) {
      return grpc::Status(s.error_code(), "rescued, but deleting the uploaded config drive image failed: " +
                                              s.error_message());
    }
  }
  return result;
}

}  // namespace hvagent::cli
