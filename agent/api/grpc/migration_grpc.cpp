// MigrationService over gRPC: the destination's ReceiveVolume stream (server side) and the
// source's client of a destination agent (migration_peer_client.h).
#include <grpcpp/grpcpp.h>

#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "agent/api/convert.h"
#include "agent/api/grpc/grpc_services.h"
#include "agent/api/grpc/migration_peer_client.h"
#include "agent/api/status_mapping.h"
#include "agent/api/volume_channel/volume_channel_client.h"
#include "common/host_port.h"
#include "common/log.h"

namespace hvagent::api {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("migration");
  return logger;
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// ReceiveVolume's messages after the header, as the destination's VolumeStream.
class GrpcVolumeStream final : public service::VolumeStream {
 public:
  GrpcVolumeStream(grpc::ServerContext* ctx, grpc::ServerReader<v1::ReceiveVolumeChunk>* reader)
      : ctx_(ctx), reader_(reader) {}
  absl::StatusOr<service::VolumePiece> Next() override {
    if (!reader_->Read(&chunk_)) {
      if (ctx_->IsCancelled()) return absl::CancelledError("the sender went away (stream cancelled)");
      return absl::DataLossError("the stream ended without its trailer");
    }
    service::VolumePiece p;
    switch (chunk_.part_case()) {
      case v1::ReceiveVolumeChunk::kData:
        p.kind = service::VolumePiece::Kind::kData;
        p.data.swap(*chunk_.mutable_data());
        return p;
      case v1::ReceiveVolumeChunk::kZeros:
        p.kind = service::VolumePiece::Kind::kZeros;
        p.zeros = chunk_.zeros();
        return p;
      case v1::ReceiveVolumeChunk::kTrailer:
        p.kind = service::VolumePiece::Kind::kEnd;
        p.sha256 = chunk_.trailer().sha256();
        return p;
      default:
        return absl::InvalidArgumentError("part: after the header only data, zeros and one trailer may come");
    }
  }

 private:
  grpc::ServerContext* ctx_;
  grpc::ServerReader<v1::ReceiveVolumeChunk>* reader_;
  v1::ReceiveVolumeChunk chunk_;
};

}  // namespace

grpc::Status MigrationGrpcService::ReceiveVolume(grpc::ServerContext* ctx,
                                                 grpc::ServerReader<v1::ReceiveVolumeChunk>* reader,
                                                 v1::ReceiveVolumeResponse* out) {
  log::ScopedRequestId rid(RequestIdOf(ctx));
  const ops::Operation* op = ops::Find("hvagent.v1.MigrationService/ReceiveVolume");
  if (op == nullptr || !ops::Available(*op, pipeline_.services())) {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this agent takes no incoming migrations");
  }
  auto slot = pipeline_.AdmitStream(*op, CallerOf(ctx, pipeline_.authorizer()));
  if (!slot.ok()) return ToGrpcStatus(slot.status());
  v1::ReceiveVolumeChunk first;
  if (!reader->Read(&first) || first.part_case() != v1::ReceiveVolumeChunk::kHeader) {
    return ToGrpcStatus(absl::InvalidArgumentError("header: the first message must carry the header"));
  }
  GrpcVolumeStream stream(ctx, reader);
  auto r = pipeline_.services().incoming->Receive(first.header().transfer_id(), first.header().disk(),
                                                  first.header().size_bytes(), stream);
  if (!r.ok()) return ToGrpcStatus(r.status());
  out->set_sha256(r->sha256);
  out->set_size_bytes(r->bytes);
  return grpc::Status::OK;
}

namespace {

// An export's pieces as ReceiveVolume messages; a failed Write is the destination gone.
class GrpcSendSink final : public storage::image::ExportSink {
 public:
  explicit GrpcSendSink(grpc::ClientWriter<v1::ReceiveVolumeChunk>& writer) : writer_(writer) {}
  // An export piece is up to 1 MiB; a message must stay under the destination's receive limit
  // (rest.max_body_bytes, 1 MiB by default, framing included), so pieces go in slices.
  static constexpr size_t kSliceBytes = 256 << 10;
  absl::Status Data(absl::string_view bytes) override {
    for (size_t at = 0; at < bytes.size(); at += kSliceBytes) {
      const absl::string_view slice = bytes.substr(at, kSliceBytes);
      chunk_.set_data(slice.data(), slice.size());
      if (auto s = Send(); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  absl::Status Zeros(uint64_t bytes) override {
    chunk_.set_zeros(bytes);
    return Send();
  }

 private:
  absl::Status Send() {
    if (!writer_.Write(chunk_)) return absl::UnavailableError("the destination went away mid-volume");
    return absl::OkStatus();
  }
  grpc::ClientWriter<v1::ReceiveVolumeChunk>& writer_;
  v1::ReceiveVolumeChunk chunk_;
};

class GrpcMigrationPeer final : public service::MigrationPeer {
 public:
  // `host`: the destination's host as the source reached it (its volume channel is there too).
  GrpcMigrationPeer(std::shared_ptr<grpc::Channel> channel, std::string self, std::string host, PeerTls tls)
      : stub_(v1::MigrationService::NewStub(channel)), self_(std::move(self)), host_(std::move(host)),
        tls_(std::move(tls)) {}

  absl::StatusOr<std::string> Prepare(const service::IncomingPlan& plan) override {
    v1::PrepareIncomingRequest req;
    *req.mutable_spec() = ToProto(plan.spec, plan.volumes);
    req.set_start(plan.start);
    req.set_source_host(self_);
    v1::PrepareIncomingResponse resp;
    auto ctx = Context(std::chrono::seconds(60));
    if (auto s = FromGrpc(stub_->PrepareIncoming(ctx.get(), req, &resp)); !s.ok()) return Named("prepare", s);
    if (resp.data_port() > 0 && resp.data_port() <= 65535) data_ports_[resp.transfer_id()] = resp.data_port();
    return resp.transfer_id();
  }

  absl::StatusOr<service::LiveTarget> PrepareLive(const service::IncomingPlan& plan) override {
    v1::PrepareIncomingRequest req;
    *req.mutable_spec() = ToProto(plan.spec, plan.volumes);
    req.set_start(true);
    req.set_live(true);
    req.set_source_host(self_);
    v1::PrepareIncomingResponse resp;
    // The destination makes every volume now (a partition or LV each): longer than a cold prepare.
    auto ctx = Context(std::chrono::seconds(300));
    if (auto s = FromGrpc(stub_->PrepareIncoming(ctx.get(), req, &resp)); !s.ok()) return Named("prepare", s);
    return service::LiveTarget{.transfer = resp.transfer_id(), .libvirt_uri = resp.libvirt_uri(),
                               .migrate_uri = resp.migrate_uri(),
                               .disk_paths = {resp.disk_paths().begin(), resp.disk_paths().end()}};
  }

  absl::StatusOr<service::ReceivedVolume> SendVolume(const std::string& transfer, size_t disk, uint64_t size,
                                                     const Producer& produce) override {
    if (auto port = data_ports_.find(transfer); port != data_ports_.end()) {
      bool connected = false;
      auto r = SendOverChannel(port->second, transfer, disk, size, produce, &connected);
      if (connected) return r;
      // Nothing reached the destination (a firewall that lets only gRPC through): the same
      // stream over gRPC, slower but whole.
      Log()->warn("migration: {}; sending over gRPC instead", r.status().message());
    }
    grpc::ClientContext ctx;
    v1::ReceiveVolumeResponse resp;
    auto writer = stub_->ReceiveVolume(&ctx, &resp);
    v1::ReceiveVolumeChunk header;
    header.mutable_header()->set_transfer_id(transfer);
    header.mutable_header()->set_disk(static_cast<uint32_t>(disk));
    header.mutable_header()->set_size_bytes(size);
    GrpcSendSink sink(*writer);
    absl::StatusOr<storage::image::ExportResult> sent =
        writer->Write(header) ? produce(sink) : absl::UnavailableError("the destination went away");
    if (sent.ok()) {
      v1::ReceiveVolumeChunk trailer;
      trailer.mutable_trailer()->set_sha256(sent->sha256);
      if (!writer->Write(trailer)) sent = absl::UnavailableError("the destination went away before the trailer");
    }
    if (!sent.ok()) ctx.TryCancel();
    writer->WritesDone();
    // The destination's own reason (a full pool, a sha256 that differs) beats the sender's view.
    absl::Status s = FromGrpc(writer->Finish());
    if (!s.ok() && !absl::IsCancelled(s)) return Named("receive-volume", s);
    if (!sent.ok()) return sent.status();
    if (!s.ok()) return Named("receive-volume", s);
    return service::ReceivedVolume{resp.sha256(), resp.size_bytes()};
  }

  absl::Status Finish(const std::string& transfer) override {
    v1::IncomingRef ref;
    ref.set_transfer_id(transfer);
    v1::FinishIncomingResponse resp;
    auto ctx = Context(std::chrono::seconds(600));
    return Named("finish", FromGrpc(stub_->FinishIncoming(ctx.get(), ref, &resp)));
  }

  absl::Status Abort(const std::string& transfer) override {
    v1::IncomingRef ref;
    ref.set_transfer_id(transfer);
    v1::AbortIncomingResponse resp;
    auto ctx = Context(std::chrono::seconds(120));
    return Named("abort", FromGrpc(stub_->AbortIncoming(ctx.get(), ref, &resp)));
  }

  absl::Status Keep(const std::string& transfer, std::chrono::milliseconds deadline) override {
    v1::IncomingRef ref;
    ref.set_transfer_id(transfer);
    v1::KeepIncomingResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + deadline);
    // Plain: PeerHeartbeat names the code in its own reason.
    return FromGrpc(stub_->KeepIncoming(&ctx, ref, &resp));
  }

 private:
  // The destination's volume channel (volume_channel_client.h): the same stream as
  // ReceiveVolume, without gRPC's copies.
  absl::StatusOr<service::ReceivedVolume> SendOverChannel(int port, const std::string& transfer, size_t disk,
                                                          uint64_t size, const Producer& produce, bool* connected) {
    v1::ReceiveVolumeHeader header;
    header.set_transfer_id(transfer);
    header.set_disk(static_cast<uint32_t>(disk));
    header.set_size_bytes(size);
    auto r = SendVolumeOverChannel(host_, port, tls_, header, produce, connected);
    if (!r.ok()) return r.status();
    if (r->code() != 0) {
      return Named("receive-volume", absl::Status(static_cast<absl::StatusCode>(r->code()), r->message()));
    }
    return service::ReceivedVolume{r->response().sha256(), r->response().size_bytes()};
  }
  static std::unique_ptr<grpc::ClientContext> Context(std::chrono::seconds deadline) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + deadline);
    return ctx;
  }
  static absl::Status Named(absl::string_view call, const absl::Status& s) {
    if (s.ok()) return s;
    // The code travels in the text too: an operation's message is all an operator sees of it
    // ("destination prepare: PERMISSION_DENIED: ...").
    return absl::Status(s.code(), absl::StrCat("destination ", call, ": ", absl::StatusCodeToString(s.code()), ": ",
                                               s.message()));
  }
  std::unique_ptr<v1::MigrationService::Stub> stub_;
  const std::string self_;
  const std::string host_;
  const PeerTls tls_;
  std::map<std::string, int> data_ports_;  // by transfer: where its volumes go, when not over gRPC
};

absl::StatusOr<std::string> ReadPem(const std::string& field, const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::FailedPreconditionError(absl::StrCat(field, ": cannot read '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<PeerTls> LoadPeerTls(const std::string& cert_file, const std::string& key_file,
                                    const std::string& ca_file) {
  PeerTls tls;
  auto cert = ReadPem("migration.cert_file", cert_file);
  if (!cert.ok()) return cert.status();
  auto key = ReadPem("migration.key_file", key_file);
  if (!key.ok()) return key.status();
  auto ca = ReadPem("migration.ca_file", ca_file);
  if (!ca.ok()) return ca.status();
  tls.cert_pem = *cert;
  tls.key_pem = *key;
  tls.ca_pem = *ca;
  return tls;
}

service::MigrationPeerFactory GrpcPeerFactory(PeerTls tls, std::string self) {
  return [tls = std::move(tls), self = std::move(self)](
             const std::string& target) -> absl::StatusOr<std::unique_ptr<service::MigrationPeer>> {
    std::shared_ptr<grpc::ChannelCredentials> creds;
    if (tls.plaintext) {
      creds = grpc::InsecureChannelCredentials();
    } else {
      if (tls.cert_pem.empty()) {
        return absl::FailedPreconditionError("migration.cert_file: this agent has no client certificate for peers");
      }
      creds = grpc::SslCredentials({tls.ca_pem, tls.key_pem, tls.cert_pem});
    }
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(4 << 20);
    auto channel = grpc::CreateCustomChannel(target, creds, args);
    // Fail fast when nobody answers, rather than at the first call's deadline.
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
      return absl::UnavailableError(absl::StrCat("destination: cannot connect to ", target));
    }
    return std::unique_ptr<service::MigrationPeer>(new GrpcMigrationPeer(channel, self, HostOf(target), tls));
  };
}

}  // namespace hvagent::api
