#include "agent/cli/hvctl_image_upload.h"

#include <fstream>
#include <iostream>
#include <memory>

namespace hvagent::cli {

grpc::Status UploadImage(v1::ImageService::Stub& stub, grpc::ClientContext& ctx, const UploadArgs& args,
                         v1::Image* out) {
  std::ifstream in(args.file, std::ios::binary | std::ios::ate);
  if (!in) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "FILE: cannot read " + args.file);
  // The size announced is the file's as opened: a file that changes under us ends short or long,
  // and the agent refuses it (nothing kept).
  const auto size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  auto writer = stub.UploadImage(&ctx, out);
  v1::UploadImageRequest msg;
  auto* header = msg.mutable_header();
  header->set_pool(args.pool);
  header->set_name(args.name);
  header->set_format(args.format);
  header->set_size_bytes(size);
  header->set_sha256(args.sha256);
  header->set_sha512(args.sha512);
  // A refused header ends the call at once: Write then fails and Finish says why.
  bool open = writer->Write(msg);
  // Under the agent's default message limit (1 MiB) with room for framing.
  constexpr size_t kChunk = 256 << 10;
  std::unique_ptr<char[]> buf(new char[kChunk]);
  uint64_t sent = 0;
  while (open && sent < size) {
    in.read(buf.get(), static_cast<std::streamsize>(kChunk));
    const auto n = static_cast<size_t>(in.gcount());
    if (n == 0) break;  // shorter than announced: the agent answers DATA_LOSS
    msg.set_chunk(buf.get(), n);
    open = writer->Write(msg);
    sent += n;
    if (args.progress && size > 0) {
      const int width = 40;
      const int filled = static_cast<int>(width * sent / size);
      std::cerr << "\r[" << std::string(filled, '#') << std::string(width - filled, '.') << "] " << sent << " of "
                << size << " bytes" << std::flush;
    }
  }
  if (args.progress) std::cerr << "\n";
  writer->WritesDone();
  return writer->Finish();
}

}  // namespace hvagent::cli
