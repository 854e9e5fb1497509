// hvctl: the operator's command line for hvagentd, over the public gRPC API only (like any
// third-party client). Human tables by default, `--json` for scripts.
//
//   hvctl [--server HOST:PORT] [--ca FILE --cert FILE --key FILE] [--json] COMMAND ...
//
// Exit codes scripts can rely on:
//   0  done
//   1  the agent refused or failed the request (the gRPC code and message are printed)
//   2  usage error (unknown command, missing argument, unreadable TLS file)
//   3  the agent could not be reached (UNAVAILABLE, DEADLINE_EXCEEDED)
// Without --ca it speaks plain text (an agent in --plaintext-loopback development mode).

#include <charconv>
#include <chrono>
#include <functional>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <grpcpp/create_channel.h>

#include "absl/strings/numbers.h"
#include "agent/cli/hvctl_console.h"
#include "agent/cli/hvctl_drain.h"
#include "agent/cli/hvctl_image_upload.h"
#include "agent/cli/hvctl_rescue.h"
#include "agent/cli/hvctl_volume_export.h"
#include "hvagent/v1/domain.grpc.pb.h"
#include "hvagent/v1/event.grpc.pb.h"
#include "hvagent/v1/host.grpc.pb.h"
#include "hvagent/v1/image.grpc.pb.h"
#include "hvagent/v1/metrics.grpc.pb.h"
#include "hvagent/v1/migration.grpc.pb.h"
#include "hvagent/v1/operation.grpc.pb.h"
#include "hvagent/v1/storage.grpc.pb.h"

namespace {

using namespace hvagent;

constexpr int kOk = 0, kRefused = 1, kUsage = 2, kUnreachable = 3;

int Usage() {
  std::cerr << "usage: hvctl [--server HOST:PORT] [--ca FILE --cert FILE --key FILE] [--json] COMMAND\n"
               "commands:\n"
               "  host | capacity | stats | pools | volumes POOL\n"
               "  list | get NAME\n"
               "  start | shutdown | destroy | reboot | suspend | resume NAME\n"
               "  resize NAME [--vcpus N] [--memory-mib M]  (running: within its maximums)\n"
               "  delete NAME [--force] [--volumes]     (--volumes deletes the volumes the domain owns)\n"
               "  volume-delete POOL NAME [--wait] [--cascade]  (--cascade deletes its snapshots too)\n"
               "  snapshot-create POOL VOLUME NAME     (a running guest is frozen or paused meanwhile)\n"
               "  snapshot-list POOL VOLUME | snapshot-delete POOL VOLUME NAME\n"
               "  snapshot-revert POOL VOLUME NAME     (the volume's domain must be stopped)\n"
               "  nic-attach NAME (--bridge BR | --network NET | --ovs BR --iface-id UUID [--vlan N]\n"
               "                   | --vlan-physical IF --vlan-id N | --vxlan-id N --vxlan-physical IF)\n"
               "             [--mtu N] [--mac MAC] [--model M] [--target-dev tapNAME]\n"
               "                                       (hot-plugged when running; vlan/vxlan:\n"
               "             the agent makes the network on IF, one of its [network] physical_interfaces)\n"
               "  nic-detach NAME MAC\n"
               "  rescue NAME [--image POOL IMAGE [--volume NAME]] [--kernel PATH [--initrd PATH] [--cmdline TEXT]]\n"
               "              [--config-drive-image POOL IMAGE VOLUME | --config-drive POOL FILE VOLUME]\n"
               "                                       (boots it from the rescue disk/kernel, root as vdb; a config\n"
               "                                       drive from a ready image, or FILE uploaded as image cfg-VOLUME)\n"
               "  unrescue NAME                        (restores its definition and starts it)\n"
               "  volume-keep POOL NAME                (its domain's deletion releases it, never deletes it)\n"
               "  watch [NAME...] [--operations|--operations-only] [--operation ID]\n"
               "                                       (follows the event stream; operations: their progress)\n"
               "  console NAME [--read-only] [--take-over]  (the guest's serial console; Ctrl-] detaches)\n"
               "  operations [--running]               (creates and deletes: running, then recent)\n"
               "  images POOL | image-delete POOL NAME (a delete of an importing image cancels it)\n"
               "  image-import POOL NAME raw|qcow2 URL|FILE [--sha256 HEX] [--sha512 HEX] [--wait]\n"
               "                                       (--wait draws the import's progress until it ends)\n"
               "  image-upload POOL NAME FILE [--format raw|qcow2] [--sha256 HEX] [--sha512 HEX]\n"
               "  volume-export POOL NAME (FILE | -o FILE|-) [--snapshot S] [--format raw|qcow2] [--image]\n"
               "                [--quiesced]          (sparse FILE, or stdout with -; sha256 checked)\n"
               "  image-from-volume POOL VOLUME IMAGE   (pauses a running domain for the copy)\n"
               "  volume-from-image POOL IMAGE VOLUME [--size-mib N] [--wait]\n"
               "                                       (a clone or a copy; --wait draws its progress)\n"
               "  migrate NAME --to HOST:PORT [--shutdown [--shutdown-timeout S]] [--pool POOL] [--no-wait]\n"
               "                                       (cold: owned volumes streamed; a progress bar until it ends)\n"
               "  migrate NAME --to HOST:PORT --live [--max-downtime-ms MS] [--max-bandwidth MIB_S] [--pool POOL] [--no-wait]\n"
               "                                       (QEMU/KVM: moves running, memory and disks copied by libvirt)\n"
               "  drain --to HOST:PORT [--live [--cold-fallback]] [--parallel N] [--shutdown-timeout S]\n"
               "                                       (moves every domain; one line each; exit 1 names those left)\n"
               "                                       (streams a local file to the agent; raw by default)\n"
               "exit codes: 0 done, 1 refused by the agent, 2 usage, 3 agent unreachable\n"
               "default server: 127.0.0.1:50051\n";
  return kUsage;
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

std::string Json(const google::protobuf::Message& m, bool pretty = true) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = pretty;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  return out;
}

const char* CodeName(grpc::StatusCode c) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                                 "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                 "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  int i = static_cast<int>(c);
  return i >= 0 && i <= 16 ? kNames[i] : "UNKNOWN";
}

int Failed(const grpc::Status& s) {
  std::cerr << "hvctl: " << CodeName(s.error_code()) << ": " << s.error_message() << "\n";
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE || s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return kUnreachable;
  }
  return kRefused;
}

std::string Bytes(uint64_t b);

// Polls a running operation until it ends, drawing bytes_done of bytes_total on stderr; prints
// how it ended (`what` names it) and answers kOk only when it succeeded.
int FollowOperation(v1::OperationService::Stub& operations, v1::Operation& op, bool json, const std::string& what) {
  v1::GetOperationRequest get;
  get.set_id(std::to_string(op.id()));
  while (op.state() == v1::OPERATION_STATE_RUNNING) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    grpc::ClientContext poll;
    poll.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    grpc::Status s = operations.GetOperation(&poll, get, &op);
    if (!s.ok()) return Failed(s);
    if (!json) {
      const int width = 40;
      const uint64_t total = op.bytes_total();
      const int filled = total > 0 ? static_cast<int>(width * std::min(op.bytes_done(), total) / total) : 0;
      std::cerr << "\r[" << std::string(filled, '#') << std::string(width - filled, '.') << "] "
                << Bytes(op.bytes_done()) << (total > 0 ? " of " + Bytes(total) : std::string()) << std::flush;
    }
  }
  if (json) {
    std::cout << Json(op) << "\n";
  } else {
    std::cerr << "\n";
    std::cout << what << ": " << v1::OperationState_Name(op.state()).substr(sizeof("OPERATION_STATE_") - 1)
              << (op.message().empty() ? "" : ": " + op.message()) << "\n";
  }
  return op.state() == v1::OPERATION_STATE_SUCCEEDED ? kOk : kRefused;
}

// A plain table: columns as wide as their widest cell.
void Table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size() && i < width.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t i = 0; i < cells.size(); ++i) {
      if (i + 1 < cells.size()) {
        std::cout << std::left << std::setw(static_cast<int>(width[i]) + 2) << cells[i];
      } else {
        std::cout << cells[i];  // no trailing blanks
      }
    }
    std::cout << "\n";
  };
  line(header);
  for (const auto& r : rows) line(r);
}

std::string State(int state) {
  std::string s = v1::DomainState_Name(static_cast<v1::DomainState>(state));
  const std::string prefix = "DOMAIN_STATE_";
  if (s.rfind(prefix, 0) == 0) s = s.substr(prefix.size());
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// "owned" (deleted with its domain by delete --volumes), "borrowed" (only ever released), "-".
std::string Ownership(v1::VolumeOwnership o) {
  switch (o) {
    case v1::VOLUME_OWNERSHIP_OWNED: return "owned";
    case v1::VOLUME_OWNERSHIP_BORROWED: return "borrowed";
    default: return "-";
  }
}

std::string Bytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  std::ostringstream out;
  out << std::fixed << std::setprecision(u == 0 ? 0 : 1) << v << " " << units[u];
  return out.str();
}

// Key/value lines for a message's fields; nested messages as compact JSON, lists as a count.
// Fields named in `skip` are left out (the caller prints them its own way).
void KeyValues(const google::protobuf::Message& m, const std::set<std::string>& skip = {}) {
  using FD = google::protobuf::FieldDescriptor;
  const auto* d = m.GetDescriptor();
  const auto* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FD* f = d->field(i);
    if (skip.contains(f->name())) continue;
    std::string value;
    if (f->is_repeated()) {
      value = std::to_string(r->FieldSize(m, f)) + " (--json lists them)";
    } else if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
      if (!r->HasField(m, f)) continue;
      value = Json(r->GetMessage(m, f), false);
      // Durations and timestamps are JSON strings ("2s"): show them without the quotes.
      if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
    } else {
      switch (f->cpp_type()) {
        case FD::CPPTYPE_STRING: value = r->GetString(m, f); break;
        case FD::CPPTYPE_UINT32: value = std::to_string(r->GetUInt32(m, f)); break;
        case FD::CPPTYPE_UINT64:
          value = std::to_string(r->GetUInt64(m, f));
          if (f->name().find("bytes") != std::string::npos) value += " (" + Bytes(r->GetUInt64(m, f)) + ")";
          break;
        case FD::CPPTYPE_INT32: value = std::to_string(r->GetInt32(m, f)); break;
        case FD::CPPTYPE_INT64: value = std::to_string(r->GetInt64(m, f)); break;
        case FD::CPPTYPE_BOOL: value = r->GetBool(m, f) ? "yes" : "no"; break;
        case FD::CPPTYPE_DOUBLE: value = std::to_string(r->GetDouble(m, f)); break;
        case FD::CPPTYPE_FLOAT: value = std::to_string(r->GetFloat(m, f)); break;
        case FD::CPPTYPE_ENUM: value = r->GetEnum(m, f)->name(); break;
        default: value = "?";
      }
    }
    std::cout << std::left << std::setw(26) << f->name() << value << "\n";
  }
}

// volume-export's arguments past POOL NAME: the output (FILE, or -o FILE, "-" for stdout) and
// the flags. False on anything else, or on no output or two.
bool ParseExportFlags(const std::vector<std::string>& args, cli::ExportArgs* ex) {
  for (size_t i = 3; i < args.size(); ++i) {
    const std::string& a = args[i];
    const bool has_value = i + 1 < args.size();
    if (a == "--image") {
      ex->image = true;
    } else if (a == "--quiesced") {
      ex->domain_quiesced = true;
    } else if (a == "--snapshot" && has_value) {
      ex->snapshot = args[++i];
    } else if (a == "--format" && has_value && (args[i + 1] == "raw" || args[i + 1] == "qcow2")) {
      ex->format = args[++i] == "raw" ? v1::IMAGE_FORMAT_RAW : v1::IMAGE_FORMAT_QCOW2;
    } else if ((a == "-o" && has_value) || (a.rfind("-", 0) != 0 || a == "-")) {
      if (!ex->file.empty()) return false;
      ex->file = a == "-o" ? args[++i] : a;
    } else {
      return false;
    }
  }
  return !ex->file.empty();
}

// The one shape of every answer: an error (exit 1 or 3), or the reply as JSON (--json) or as
// the human form `human` prints.
// Where a NIC plugs in, as one cell: "bridge br0", "network default", "ovs br-int port UUID vlan 5".
std::string Attachment(const v1::Nic& n) {
  switch (n.attachment_case()) {
    case v1::Nic::kBridge: return "bridge " + n.bridge();
    case v1::Nic::kNetwork: return "network " + n.network();
    case v1::Nic::kOvs:
      return "ovs " + n.ovs().bridge() + (n.ovs().interface_id().empty() ? "" : " port " + n.ovs().interface_id()) +
             (n.ovs().has_vlan() ? " vlan " + std::to_string(n.ovs().vlan()) : "");
    case v1::Nic::kVlan: return "vlan " + std::to_string(n.vlan().id()) + " on " + n.vlan().physical();
    case v1::Nic::kVxlan: return "vxlan " + std::to_string(n.vxlan().id()) + " on " + n.vxlan().physical();
    case v1::Nic::ATTACHMENT_NOT_SET: break;
  }
  return "-";
}

// `get`: the domain's fields, then its NICs as a table.
void ShowDomain(const v1::Domain& d) {
  KeyValues(d, {"nics"});
  if (d.nics().empty()) {
    std::cout << std::left << std::setw(26) << "nics" << "none\n";
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& n : d.nics()) {
    rows.push_back({n.nic().mac(), Attachment(n.nic()), n.nic().model().empty() ? "-" : n.nic().model(),
                    n.nic().mtu() ? std::to_string(n.nic().mtu()) : "-",
                    n.host_device().empty() ? "-" : n.host_device()});
  }
  std::cout << "\n";
  Table({"MAC", "ATTACHMENT", "MODEL", "MTU", "HOST DEVICE"}, rows);
}

int Render(bool json, const grpc::Status& s, const google::protobuf::Message& reply, const std::function<void()>& human) {
  if (!s.ok()) return Failed(s);
  if (json) {
    std::cout << Json(reply) << "\n";
  } else {
    human();
  }
  return kOk;
}

}  // namespace

// Long on purpose: one branch per command, each a single RPC and how its answer is printed, read
// top to bottom like the usage text above; the helpers (Render, Table, KeyValues) hold what
// the branches share.
int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::map<std::string, std::string> opts = {{"--server", "127.0.0.1:50051"}};
  bool json = false;
  while (!args.empty() && args[0].rfind("--", 0) == 0) {
    if (args[0] == "--json") {
      json = true;
      args.erase(args.begin());
      continue;
    }
    if (args.size() < 2 || (args[0] != "--server" && args[0] != "--ca" && args[0] != "--cert" && args[0] != "--key")) {
      return Usage();
    }
    opts[args[0]] = args[1];
    args.erase(args.begin(), args.begin() + 2);
  }
  if (args.empty()) return Usage();
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (opts.contains("--ca")) {
    grpc::SslCredentialsOptions ssl;
    for (const auto& [flag, field] : {std::pair<std::string, std::string*>{"--ca", &ssl.pem_root_certs},
                                      {"--cert", &ssl.pem_cert_chain}, {"--key", &ssl.pem_private_key}}) {
      if (opts.contains(flag) && !ReadFile(opts[flag], field)) {
        std::cerr << "hvctl: " << flag << ": cannot read " << opts[flag] << "\n";
        return kUsage;
      }
    }
    creds = grpc::SslCredentials(ssl);
  }
  auto channel = grpc::CreateChannel(opts["--server"], creds);
  auto host = v1::HostService::NewStub(channel);
  auto domains = v1::DomainService::NewStub(channel);
  auto storage = v1::StorageService::NewStub(channel);
  auto metrics = v1::MetricsService::NewStub(channel);
  const std::string& cmd = args[0];
  const std::string arg1 = args.size() > 1 ? args[1] : "";
  auto has_flag = [&](const char* flag) {
    for (size_t i = 1; i < args.size(); ++i) {
      if (args[i] == flag) return true;
    }
    return false;
  };
  auto deadline = [](grpc::ClientContext& ctx, int seconds) {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  };
  // Prints a single message: JSON, or key/value lines.
  auto show = [&](const grpc::Status& s, const google::protobuf::Message& m) {
    return Render(json, s, m, [&] { KeyValues(m); });
  };
  grpc::ClientContext ctx;

  if (cmd == "host" || cmd == "capacity") {
    deadline(ctx, 30);
    if (cmd == "host") {
      v1::Host h;
      return show(host->GetHost(&ctx, {}, &h), h);
    }
    v1::Capacity c;
    return show(host->GetCapacity(&ctx, {}, &c), c);
  }
  if (cmd == "list" || cmd == "domains") {
    deadline(ctx, 30);
    v1::ListDomainsResponse r;
    return Render(json, domains->ListDomains(&ctx, {}, &r), r, [&] {
      std::vector<std::vector<std::string>> rows;
      for (const auto& d : r.domains()) {
        rows.push_back({d.name(), State(d.state()) + (d.rescued() ? " (rescued)" : ""), std::to_string(d.vcpus()),
                        std::to_string(d.memory_mib()) + " MiB", d.uuid()});
      }
      Table({"NAME", "STATE", "VCPUS", "MEMORY", "UUID"}, rows);
    });
  }
  if (cmd == "get" && !arg1.empty()) {
    deadline(ctx, 30);
    v1::GetDomainRequest req;
    req.set_name(arg1);
    v1::Domain d;
    return Render(json, domains->GetDomain(&ctx, req, &d), d, [&] { ShowDomain(d); });
  }
  if (!arg1.empty() && (cmd == "start" || cmd == "destroy" || cmd == "reboot" || cmd == "suspend" ||
                        cmd == "resume")) {
    deadline(ctx, 120);
    v1::DomainRef ref;
    ref.set_name(arg1);
    v1::Domain d;
    grpc::Status s = cmd == "start"     ? domains->StartDomain(&ctx, ref, &d)
                     : cmd == "destroy" ? domains->DestroyDomain(&ctx, ref, &d)
                     : cmd == "reboot"  ? domains->RebootDomain(&ctx, ref, &d)
                     : cmd == "suspend" ? domains->SuspendDomain(&ctx, ref, &d)
                                        : domains->ResumeDomain(&ctx, ref, &d);
    return Render(json, s, d, [&] { std::cout << d.name() << ": " << State(d.state()) << "\n"; });
  }
  if (cmd == "resize" && !arg1.empty()) {
    deadline(ctx, 120);
    v1::UpdateDomainRequest req;
    req.set_name(arg1);
    for (size_t i = 2; i + 1 < args.size(); i += 2) {
      // Digits only: the agent names the field for a value out of range, hvctl for garbage.
      if (args[i + 1].empty() || args[i + 1].find_first_not_of("0123456789") != std::string::npos ||
          args[i + 1].size() > 12) {
        return Usage();
      }
      const uint64_t n = std::stoull(args[i + 1]);
      if (args[i] == "--vcpus" && n <= UINT32_MAX) {
        req.set_vcpus(static_cast<uint32_t>(n));
      } else if (args[i] == "--memory-mib") {
        req.set_memory_mib(n);
      } else {
        return Usage();
      }
    }
    if (args.size() % 2 != 0) return Usage();
    v1::Domain d;
    return Render(json, domains->UpdateDomain(&ctx, req, &d), d, [&] {
      std::cout << d.name() << ": " << d.vcpus() << " vCPU, " << d.memory_mib() << " MiB, " << State(d.state()) << "\n";
    });
  }
  if (cmd == "shutdown" && !arg1.empty()) {
    deadline(ctx, 3700);
    v1::ShutdownDomainRequest req;
    req.set_name(arg1);
    v1::ShutdownDomainResponse r;
    return Render(json, domains->ShutdownDomain(&ctx, req, &r), r, [&] {
      std::cout << r.domain().name() << ": " << State(r.domain().state()) << (r.forced() ? " (forced off)" : "") << "\n";
    });
  }
  if (cmd == "nic-attach" && !arg1.empty()) {
    v1::AttachNicRequest req;
    req.set_domain(arg1);
    v1::Nic* nic = req.mutable_nic();
    // The Nic's attachment is a oneof: flags of two kinds (--bridge with --vlan-id, say) would
    // silently keep only the last kind, so they are a usage error instead.
    std::set<std::string> kinds;
    for (size_t i = 2; i < args.size(); i += 2) {
      if (i + 1 >= args.size()) return Usage();
      const std::string& flag = args[i];
      const std::string& value = args[i + 1];
      uint32_t n = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      const bool number = ec == std::errc() && end == value.data() + value.size();
      if (flag == "--bridge") {
        kinds.insert("bridge");
        nic->set_bridge(value);
      } else if (flag == "--network") {
        kinds.insert("network");
        nic->set_network(value);
      } else if (flag == "--ovs") {
        kinds.insert("ovs");
        nic->mutable_ovs()->set_bridge(value);
      } else if (flag == "--iface-id") {
        kinds.insert("ovs");
        nic->mutable_ovs()->set_interface_id(value);
      } else if (flag == "--vlan" && number) {
        kinds.insert("ovs");
        nic->mutable_ovs()->set_vlan(n);
      } else if (flag == "--vlan-physical") {
        kinds.insert("vlan");
        nic->mutable_vlan()->set_physical(value);
      } else if (flag == "--vlan-id" && number) {
        kinds.insert("vlan");
        nic->mutable_vlan()->set_id(n);
      } else if (flag == "--vxlan-physical") {
        kinds.insert("vxlan");
        nic->mutable_vxlan()->set_physical(value);
      } else if (flag == "--vxlan-id" && number) {
        kinds.insert("vxlan");
        nic->mutable_vxlan()->set_id(n);
      } else if (flag == "--mtu" && number) {
        nic->set_mtu(n);
      } else if (flag == "--mac") {
        nic->set_mac(value);
      } else if (flag == "--model") {
        nic->set_model(value);
      } else if (flag == "--target-dev") {
        nic->set_target_dev(value);
      } else {
        return Usage();
      }
    }
    if (kinds.size() > 1) {
      std::string got;
      for (const std::string& k : kinds) got += (got.empty() ? "" : ", ") + k;
      std::cerr << "hvctl: nic-attach: one of --bridge, --network, --ovs, --vlan-*, --vxlan-* (got " << got << ")\n";
      return Usage();
    }
    deadline(ctx, 60);
    v1::Nic r;
    return Render(json, domains->AttachNic(&ctx, req, &r), r,
                  [&] { std::cout << arg1 << ": NIC " << r.mac() << " attached\n"; });
  }
  if (cmd == "nic-detach" && args.size() >= 3) {
    deadline(ctx, 60);
    v1::DetachNicRequest req;
    req.set_domain(arg1);
    req.set_mac(args[2]);
    v1::DetachNicResponse r;
    return Render(json, domains->DetachNic(&ctx, req, &r), r,
                  [&] { std::cout << arg1 << ": NIC " << req.mac() << " detached\n"; });
  }
  if (cmd == "rescue" && !arg1.empty()) {
    auto parsed = cli::ParseRescueArgs(args);
    if (!parsed) return Usage();
    v1::Domain d;
    return Render(json, cli::Rescue(channel, *parsed, !json, &d), d,
                  [&] { std::cout << d.name() << ": rescued, " << State(d.state()) << "\n"; });
  }
  if (cmd == "unrescue" && !arg1.empty()) {
    deadline(ctx, 120);
    v1::DomainRef ref;
    ref.set_name(arg1);
    v1::Domain d;
    return Render(json, domains->UnrescueDomain(&ctx, ref, &d), d,
                  [&] { std::cout << d.name() << ": unrescued, " << State(d.state()) << "\n"; });
  }
  if (cmd == "delete" && !arg1.empty()) {
    deadline(ctx, 120);
    v1::DeleteDomainRequest req;
    req.set_name(arg1);
    req.set_force(has_flag("--force"));
    req.set_delete_volumes(has_flag("--volumes"));
    v1::DeleteDomainResponse r;
    return Render(json, domains->DeleteDomain(&ctx, req, &r), r, [&] { std::cout << arg1 << ": deleted\n"; });
  }
  if (cmd == "pools") {
    deadline(ctx, 60);
    v1::ListPoolsResponse r;
    return Render(json, storage->ListPools(&ctx, {}, &r), r, [&] {
      std::vector<std::vector<std::string>> rows;
      for (const auto& p : r.pools()) {
        rows.push_back({p.name(), v1::PoolType_Name(p.type()), Bytes(p.capacity_bytes()), Bytes(p.free_bytes()),
                        std::to_string(p.volume_count())});
      }
      Table({"POOL", "TYPE", "SIZE", "FREE", "VOLUMES"}, rows);
    });
  }
  if (cmd == "volumes" && !arg1.empty()) {
    deadline(ctx, 60);
    v1::ListVolumesRequest req;
    req.set_pool(arg1);
    v1::ListVolumesResponse r;
    return Render(json, storage->ListVolumes(&ctx, req, &r), r, [&] {
      std::vector<std::vector<std::string>> rows;
      for (const auto& v : r.volumes()) {
        rows.push_back({v.name(), Bytes(v.size_bytes()), v.attached_to().empty() ? "-" : v.attached_to(),
                        Ownership(v.ownership()), v1::VolumeState_Name(v.state()), v.path()});
      }
      Table({"VOLUME", "SIZE", "ATTACHED TO", "OWNERSHIP", "STATE", "PATH"}, rows);
    });
  }
  if (cmd == "operations") {
    deadline(ctx, 30);
    auto operations = v1::OperationService::NewStub(channel);
    v1::ListOperationsRequest req;
    req.set_running_only(has_flag("--running"));
    v1::ListOperationsResponse r;
    return Render(json, operations->ListOperations(&ctx, req, &r), r, [&] {
      std::vector<std::vector<std::string>> rows;
      for (const auto& o : r.operations()) {
        std::string kind = o.kind() == v1::OPERATION_KIND_CREATE_DOMAIN       ? "create"
                           : o.kind() == v1::OPERATION_KIND_DELETE_DOMAIN     ? "delete"
                           : o.kind() == v1::OPERATION_KIND_IMPORT_IMAGE      ? "import"
                           : o.kind() == v1::OPERATION_KIND_IMAGE_FROM_VOLUME ? "image-from-volume"
                           : o.kind() == v1::OPERATION_KIND_RESCUE_DOMAIN     ? "rescue"
                           : o.kind() == v1::OPERATION_KIND_MIGRATE_DOMAIN    ? "migrate"
                           : o.kind() == v1::OPERATION_KIND_MIGRATE_IN        ? "migrate-in"
                           : o.kind() == v1::OPERATION_KIND_UNRESCUE_DOMAIN   ? "unrescue"
                           : o.kind() == v1::OPERATION_KIND_VOLUME_FROM_IMAGE ? "volume-from-image"
                           : o.kind() == v1::OPERATION_KIND_SNAPSHOT_VOLUME   ? "snapshot"
                           : o.kind() == v1::OPERATION_KIND_REVERT_SNAPSHOT   ? "revert"
                                                                              : "?";
        std::string state = v1::OperationState_Name(o.state()).substr(sizeof("OPERATION_STATE_") - 1);
        rows.push_back({std::to_string(o.id()), kind, o.domain(), state,
                        google::protobuf::util::TimeUtil::ToString(o.start_time()),
                        o.message().empty() ? "-" : o.message()});
      }
      Table({"ID", "KIND", "DOMAIN", "STATE", "STARTED", "MESSAGE"}, rows);
    });
  }
  if (cmd == "volume-keep" && args.size() >= 3) {
    deadline(ctx, 60);
    v1::ReleaseVolumeOwnershipRequest req;
    req.set_pool(arg1);
    req.set_name(args[2]);
    v1::ReleaseVolumeOwnershipResponse r;
    return Render(json, storage->ReleaseVolumeOwnership(&ctx, req, &r), r, [&] {
      std::cout << req.pool() << "/" << req.name() << ": borrowed by " << r.volume().attached_to()
                << " (deleting it keeps this volume)\n";
    });
  }
  if (cmd == "volume-delete" && args.size() >= 3) {
    deadline(ctx, 60);
    v1::VolumeRef ref;
    ref.set_pool(arg1);
    ref.set_name(args[2]);
    ref.set_cascade(has_flag("--cascade"));
    v1::Volume v;
    grpc::Status s = storage->DeleteVolume(&ctx, ref, &v);
    if (!s.ok()) return Failed(s);
    if (!has_flag("--wait")) {
      std::cout << (json ? Json(v) : ref.name() + ": deleting (the wipe runs in the agent)") << "\n";
      return kOk;
    }
    // Follow the wipe until the volume is gone.
    while (true) {
      grpc::ClientContext poll;
      deadline(poll, 30);
      s = storage->GetVolume(&poll, ref, &v);
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) break;
      if (!s.ok()) return Failed(s);
      if (!json && v.wipe_total_bytes() > 0) {
        std::cerr << "\rwiping " << ref.name() << ": " << (100 * v.wipe_done_bytes() / v.wipe_total_bytes()) << "% of "
                  << Bytes(v.wipe_total_bytes()) << std::flush;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    std::cout << (json ? std::string("{}") : "\n" + ref.name() + ": deleted") << "\n";
    return kOk;
  }
  if (cmd == "snapshot-create" && args.size() >= 4) {
    deadline(ctx, 120);
    v1::CreateSnapshotRequest req;
    req.set_pool(arg1);
    req.set_volume(args[2]);
    req.set_name(args[3]);
    v1::CreateSnapshotResponse r;
    return Render(json, storage->CreateSnapshot(&ctx, req, &r), r, [&] {
      const char* how = r.quiesce() == v1::QUIESCE_MODE_FREEZE  ? "frozen"
                        : r.quiesce() == v1::QUIESCE_MODE_PAUSE ? "paused"
                                                                : "not held (not running)";
      std::cout << req.volume() << "@" << r.snapshot().name() << ": " << (r.snapshot().thin() ? "thin" : "classic")
                << ", guest " << how << " " << r.paused_ms() << " ms, " << r.total_ms() << " ms in all"
                << (r.note().empty() ? "" : " (" + r.note() + ")") << "\n";
    });
  }
  if (cmd == "snapshot-list" && args.size() >= 3) {
    deadline(ctx, 30);
    v1::ListSnapshotsRequest req;
    req.set_pool(arg1);
    req.set_volume(args[2]);
    v1::ListSnapshotsResponse r;
    return Render(json, storage->ListSnapshots(&ctx, req, &r), r, [&] {
      std::vector<std::vector<std::string>> rows;
      for (const auto& sn : r.snapshots()) {
        std::string reserve = sn.thin() ? "-"
                                         : Bytes(sn.reserve_bytes()) + " (" +
                                               std::to_string(static_cast<int>(sn.reserve_used_percent())) + "% used)";
        rows.push_back({sn.name(), sn.thin() ? "thin" : "classic", Bytes(sn.size_bytes()), reserve,
                        sn.valid() ? "yes" : "NO"});
      }
      Table({"NAME", "KIND", "SIZE", "RESERVE", "VALID"}, rows);
    });
  }
  if ((cmd == "snapshot-delete" || cmd == "snapshot-revert") && args.size() >= 4) {
    deadline(ctx, 120);
    v1::SnapshotRef ref;
    ref.set_pool(arg1);
    ref.set_volume(args[2]);
    ref.set_name(args[3]);
    if (cmd == "snapshot-delete") {
      v1::DeleteSnapshotResponse r;
      return Render(json, storage->DeleteSnapshot(&ctx, ref, &r), r,
                    [&] { std::cout << ref.volume() << "@" << ref.name() << ": deleted\n"; });
    }
    v1::RevertSnapshotResponse r;
    return Render(json, storage->RevertSnapshot(&ctx, ref, &r), r, [&] {
      std::cout << ref.volume() << ": reverted to " << ref.name()
                << (r.snapshot_kept() ? " (the snapshot stays)" : " (merged: the snapshot is gone)") << "\n";
    });
  }
  if (cmd == "images" && !arg1.empty()) {
    auto images = v1::ImageService::NewStub(channel);
    deadline(ctx, 30);
    v1::ListImagesRequest req;
    req.set_pool(arg1);
    v1::ListImagesResponse r;
    return Render(json, images->ListImages(&ctx, req, &r), r, [&] {
      std::vector<std::vector<std::string>> rows;
      for (const auto& i : r.images()) {
        rows.push_back({i.name(), i.state() == v1::IMAGE_STATE_READY ? "ready" : "importing",
                        i.virtual_size_bytes() ? Bytes(i.virtual_size_bytes()) : "-", i.sha256(), i.source()});
      }
      Table({"NAME", "STATE", "SIZE", "SHA256", "SOURCE"}, rows);
    });
  }
  if (cmd == "image-delete" && args.size() >= 3) {
    auto images = v1::ImageService::NewStub(channel);
    deadline(ctx, 3600);
    v1::ImageRef ref;
    ref.set_pool(arg1);
    ref.set_name(args[2]);
    v1::Image i;
    return Render(json, images->DeleteImage(&ctx, ref, &i), i, [&] {
      std::cout << ref.pool() << "/" << ref.name()
                << (i.state() == v1::IMAGE_STATE_READY ? ": deleted" : ": import cancelled") << "\n";
    });
  }
  if (cmd == "image-import" && args.size() >= 5) {
    auto images = v1::ImageService::NewStub(channel);
    auto operations = v1::OperationService::NewStub(channel);
    deadline(ctx, 60);
    v1::ImportImageRequest req;
    req.set_pool(arg1);
    req.set_name(args[2]);
    if (args[3] != "raw" && args[3] != "qcow2") return Usage();
    req.set_format(args[3] == "raw" ? v1::IMAGE_FORMAT_RAW : v1::IMAGE_FORMAT_QCOW2);
    if (args[4].rfind("http://", 0) == 0 || args[4].rfind("https://", 0) == 0) {
      req.set_url(args[4]);
    } else {
      req.set_host_file(args[4]);
    }
    for (size_t i = 5; i + 1 < args.size(); ++i) {
      if (args[i] == "--sha256") req.set_sha256(args[i + 1]);
      if (args[i] == "--sha512") req.set_sha512(args[i + 1]);
    }
    v1::Operation op;
    grpc::Status s = images->ImportImage(&ctx, req, &op);
    if (!s.ok()) return Failed(s);
    if (!has_flag("--wait")) {
      std::cout << (json ? Json(op) : "operation " + std::to_string(op.id()) + ": importing") << "\n";
      return kOk;
    }
    return FollowOperation(*operations, op, json, req.pool() + "/" + req.name());
  }
  if (cmd == "volume-from-image" && args.size() >= 4) {
    auto images = v1::ImageService::NewStub(channel);
    auto operations = v1::OperationService::NewStub(channel);
    deadline(ctx, 60);
    v1::CreateVolumeFromImageRequest req;
    req.set_pool(arg1);
    req.set_image(args[2]);
    req.set_volume(args[3]);
    for (size_t i = 4; i < args.size(); ++i) {
      if (args[i] == "--wait") continue;
      uint64_t mib = 0;
      if (args[i] != "--size-mib" || i + 1 >= args.size() || !absl::SimpleAtoi(args[i + 1], &mib)) return Usage();
      req.set_size_bytes(mib << 20);
      ++i;
    }
    v1::Operation op;
    if (grpc::Status s = images->CreateVolumeFromImage(&ctx, req, &op); !s.ok()) return Failed(s);
    if (!has_flag("--wait")) {
      std::cout << (json ? Json(op) : "operation " + std::to_string(op.id()) + ": making the volume") << "\n";
      return kOk;
    }
    return FollowOperation(*operations, op, json, req.pool() + "/" + req.volume());
  }
  if (cmd == "migrate" && !arg1.empty()) {
    v1::MigrateDomainRequest req;
    req.set_name(arg1);
    bool wait = true;
    for (size_t i = 2; i < args.size(); ++i) {
      const bool has_value = i + 1 < args.size();
      if (args[i] == "--to" && has_value) {
        req.set_destination(args[++i]);
      } else if (args[i] == "--pool" && has_value) {
        req.set_destination_pool(args[++i]);
      } else if (args[i] == "--shutdown-timeout" && has_value) {
        req.set_shutdown_timeout_seconds(static_cast<uint32_t>(std::strtoul(args[++i].c_str(), nullptr, 10)));
      } else if (args[i] == "--shutdown") {
        req.set_running_policy(v1::RUNNING_POLICY_SHUTDOWN);
      } else if (args[i] == "--live") {
        req.set_live(true);
      } else if (args[i] == "--max-downtime-ms" && has_value) {
        req.set_max_downtime_ms(static_cast<uint32_t>(std::strtoul(args[++i].c_str(), nullptr, 10)));
      } else if (args[i] == "--max-bandwidth" && has_value) {
        req.set_max_bandwidth_mib_s(static_cast<uint32_t>(std::strtoul(args[++i].c_str(), nullptr, 10)));
      } else if (args[i] == "--no-wait") {
        wait = false;
      } else {
        return Usage();
      }
    }
    if (req.destination().empty()) return Usage();
    deadline(ctx, 60);
    auto migration = v1::MigrationService::NewStub(channel);
    v1::MigrateDomainResponse r;
    grpc::Status s = migration->MigrateDomain(&ctx, req, &r);
    if (!s.ok()) return Failed(s);
    if (!wait) {
      std::cout << (json ? Json(r) : "operation " + std::to_string(r.operation_id()) + ": migrating") << "\n";
      return kOk;
    }
    auto operations = v1::OperationService::NewStub(channel);
    v1::Operation op;
    op.set_id(r.operation_id());
    op.set_state(v1::OPERATION_STATE_RUNNING);
    return FollowOperation(*operations, op, json, arg1 + " -> " + req.destination());
  }
  if (cmd == "drain") {
    cli::DrainArgs d{.json = json};
    for (size_t i = 1; i < args.size(); ++i) {
      const bool has_value = i + 1 < args.size();
      if (args[i] == "--to" && has_value) {
        d.destination = args[++i];
      } else if (args[i] == "--parallel" && has_value) {
        if (!absl::SimpleAtoi(args[++i], &d.parallel) || d.parallel < 1 || d.parallel > 16) return Usage();
      } else if (args[i] == "--shutdown-timeout" && has_value) {
        if (!absl::SimpleAtoi(args[++i], &d.shutdown_timeout_seconds)) return Usage();
      } else if (args[i] == "--live") {
        d.live = true;
      } else if (args[i] == "--cold-fallback") {
        d.cold_fallback = true;
      } else {
        return Usage();
      }
    }
    if (d.destination.empty() || (d.cold_fallback && !d.live)) return Usage();
    return cli::Drain(channel, creds, d);
  }
  if (cmd == "image-upload" && args.size() >= 4) {
    auto images = v1::ImageService::NewStub(channel);
    cli::UploadArgs up{.pool = arg1, .name = args[2], .file = args[3], .progress = !json};
    for (size_t i = 4; i < args.size(); ++i) {
      if (i + 1 >= args.size()) return Usage();
      const std::string& value = args[++i];
      if (args[i - 1] == "--format" && (value == "raw" || value == "qcow2")) {
        up.format = value == "raw" ? v1::IMAGE_FORMAT_RAW : v1::IMAGE_FORMAT_QCOW2;
      } else if (args[i - 1] == "--sha256") {
        up.sha256 = value;
      } else if (args[i - 1] == "--sha512") {
        up.sha512 = value;
      } else {
        return Usage();
      }
    }
    v1::Image image;
    return Render(json, cli::UploadImage(*images, ctx, up, &image), image, [&] {
      std::cout << image.pool() << "/" << image.name() << ": ready (" << Bytes(image.virtual_size_bytes())
                << ", sha256 " << image.sha256() << ")\n";
    });
  }
  if (cmd == "volume-export" && args.size() >= 3) {
    cli::ExportArgs ex{.pool = arg1, .name = args[2], .progress = !json};
    if (!ParseExportFlags(args, &ex)) return Usage();
    v1::ExportTrailer trailer;
    uint64_t received = 0;
    grpc::Status s = cli::ExportVolume(*storage, ctx, ex, &trailer, &received);
    // With the data on stdout, what is said about it goes to stderr.
    std::ostream& said = cli::ToStdout(ex) ? std::cerr : std::cout;
    if (!s.ok()) return Failed(s);
    if (json) {
      said << Json(trailer) << "\n";
      return kOk;
    }
    said << ex.pool << "/" << ex.name << (ex.snapshot.empty() ? "" : "@" + ex.snapshot) << " -> "
         << (cli::ToStdout(ex) ? "stdout" : ex.file) << ": " << Bytes(trailer.size_bytes()) << " ("
         << Bytes(received) << " sent as data, " << Bytes(trailer.zero_bytes()) << " as zero runs), sha256 "
         << trailer.sha256() << " checked\n";
    return kOk;
  }
  if (cmd == "image-from-volume" && args.size() == 4) {
    auto images = v1::ImageService::NewStub(channel);
    v1::CreateImageFromVolumeRequest req;
    req.set_pool(arg1);
    req.set_volume(args[2]);
    req.set_name(args[3]);
    v1::CreateImageFromVolumeResponse r;
    return Render(json, images->CreateImageFromVolume(&ctx, req, &r), r, [&] {
      std::cout << r.image().pool() << "/" << r.image().name() << ": ready (" << Bytes(r.image().virtual_size_bytes())
                << ", sha256 " << r.image().sha256() << ")"
                << (r.paused() ? ", domain paused " + std::to_string(r.paused_ms()) + " ms" : std::string()) << "\n";
    });
  }
  if (cmd == "stats") {
    deadline(ctx, 60);
    v1::GetDomainStatsResponse r;
    return Render(json, metrics->GetDomainStats(&ctx, {}, &r), r, [&] {
      std::vector<std::vector<std::string>> rows;
      for (const auto& d : r.domains()) {
        std::ostringstream cpu;
        if (d.has_cpu_usage()) cpu << std::fixed << std::setprecision(1) << d.cpu_usage() * 100 << "%";
        rows.push_back({d.name(), State(d.state()), d.has_cpu_usage() ? cpu.str() : "-",
                        d.has_memory_bytes() ? Bytes(d.memory_bytes()) : "-", std::to_string(d.disks_size()),
                        std::to_string(d.nics_size())});
      }
      Table({"NAME", "STATE", "CPU", "MEMORY", "DISKS", "NICS"}, rows);
    });
  }
  if (cmd == "console") {
    if (args.size() < 2) return Usage();
    bool read_only = false, take_over = false;
    for (size_t i = 2; i < args.size(); ++i) {
      if (args[i] == "--read-only") {
        read_only = true;
      } else if (args[i] == "--take-over") {
        take_over = true;
      } else {
        return Usage();
      }
    }
    auto consoles = v1::ConsoleService::NewStub(channel);
    grpc::Status s = cli::AttachConsole(*consoles, ctx, args[1], !read_only, take_over && !read_only);
    return s.ok() ? kOk : Failed(s);
  }
  if (cmd == "watch") {
    auto events = v1::EventService::NewStub(channel);
    v1::WatchEventsRequest req;
    for (size_t i = 1; i < args.size(); ++i) {
      if (args[i] == "--operations") {
        req.set_operations(v1::WATCH_OPERATIONS_ALSO);
      } else if (args[i] == "--operations-only") {
        req.set_operations(v1::WATCH_OPERATIONS_ONLY);
      } else if (args[i] == "--operation") {
        uint64_t id = 0;
        if (i + 1 >= args.size() || !absl::SimpleAtoi(args[i + 1], &id)) return Usage();
        req.set_operation_id(id);
        if (req.operations() == v1::WATCH_OPERATIONS_NONE) req.set_operations(v1::WATCH_OPERATIONS_ONLY);
        ++i;
      } else {
        req.add_domain_names(args[i]);
      }
    }
    auto reader = events->Watch(&ctx, req);
    v1::DomainEvent e;
    while (reader->Read(&e)) {
      if (json) {
        std::cout << Json(e, false) << std::endl;
      } else if (e.type() == v1::DOMAIN_EVENT_TYPE_OPERATION) {
        const v1::Operation& op = e.operation();
        std::cout << "operation " << op.id() << "  " << v1::OperationKind_Name(op.kind()).substr(sizeof("OPERATION_KIND_") - 1)
                  << "  " << e.detail() << "  " << Bytes(op.bytes_done())
                  << (op.bytes_total() > 0 ? " of " + Bytes(op.bytes_total()) : std::string())
                  << (op.message().empty() ? "" : "  " + op.message()) << std::endl;
      } else {
        std::cout << e.domain_name() << "  " << v1::DomainEventType_Name(e.type()) << "  " << e.detail() << std::endl;
      }
    }
    grpc::Status s = reader->Finish();
    return s.ok() ? kOk : Failed(s);
  }
  return Usage();
}
