// hvagent-cloudstack: an Apache CloudStack "Orchestrator extension" executable that drives one
// host's hvagentd over gRPC.
//
//   hvagent-cloudstack <action> <payload.json> [timeout-seconds]
//
// CloudStack writes the payload file and reads one JSON document from stdout (stderr is merged
// into it, so nothing else may be printed): {"status":"success",...} with exit code 0, or
// {"status":"error","error":"...","message":"..."} with exit code 1. README.md has the contract,
// the host details and the actions. No shell is ever run; every name is validated before it is
// sent to the agent.

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <grpc/support/log.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "hvagent/v1/console.grpc.pb.h"
#include "hvagent/v1/domain.grpc.pb.h"
#include "hvagent/v1/host.grpc.pb.h"
#include "hvagent/v1/image.grpc.pb.h"
#include "hvagent/v1/metrics.grpc.pb.h"
#include "hvagent/v1/operation.grpc.pb.h"
#include "hvagent/v1/storage.grpc.pb.h"
#include "payload.h"

namespace {

using namespace hvagent;
using namespace hvagent::cloudstack;
using web::json::value;

constexpr int kDefaultTimeoutSeconds = 60;
constexpr uint64_t kGiB = 1024ULL * 1024 * 1024;

// ---- output ------------------------------------------------------------------------------

int Emit(const value& v, int code) {
  std::cout << v.serialize() << std::endl;
  return code;
}

value Success(const std::string& message) {
  value v = value::object();
  v["status"] = value::string("success");
  v["message"] = value::string(message);
  return v;
}

int Fail(const std::string& message, const std::string& code = "") {
  value v = value::object();
  v["status"] = value::string("error");
  v["error"] = value::string(message);
  v["message"] = value::string(message);
  if (!code.empty()) v["code"] = value::string(code);
  return Emit(v, 1);
}

value ProtoToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  std::error_code ec;
  value v = value::parse(out, ec);
  return ec ? value::string(out) : v;
}

const char* CodeName(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

// ---- the agent ---------------------------------------------------------------------------

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return !out->empty();
}

class Agent {
 public:
  Agent(const AgentTarget& t, int timeout_seconds)
      : address_(t.address),
        timeout_(timeout_seconds),
        end_(std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds)) {
    std::shared_ptr<grpc::ChannelCredentials> creds;
    grpc::ChannelArguments args;
    if (t.plaintext) {
      creds = grpc::InsecureChannelCredentials();
    } else {
      grpc::SslCredentialsOptions ssl;
      for (const auto& [path, field] : {std::pair<const std::string*, std::string*>{&t.ca_file, &ssl.pem_root_certs},
                                        {&t.cert_file, &ssl.pem_cert_chain}, {&t.key_file, &ssl.pem_private_key}}) {
        if (!ReadFile(*path, field)) throw PayloadError("cannot read TLS file " + *path);
      }
      creds = grpc::SslCredentials(ssl);
      if (!t.server_name.empty()) args.SetSslTargetNameOverride(t.server_name);
    }
    // One attempt, no transparent retries across a dead agent: CloudStack retries itself.
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
    auto channel = grpc::CreateCustomChannel(t.address, creds, args);
    domains = v1::DomainService::NewStub(channel);
    host = v1::HostService::NewStub(channel);
    metrics = v1::MetricsService::NewStub(channel);
    storage = v1::StorageService::NewStub(channel);
    consoles = v1::ConsoleService::NewStub(channel);
    images = v1::ImageService::NewStub(channel);
    operations = v1::OperationService::NewStub(channel);
  }

  // A fresh context with the call's deadline: what is left of the action's time (at least 1 s),
  // so that an action of several calls (an image import, then a copy, then the domain) still ends
  // before CloudStack stops waiting.
  std::unique_ptr<grpc::ClientContext> Context(int extra_seconds = 0) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end_ - std::chrono::steady_clock::now());
    left = std::clamp(left, std::chrono::milliseconds(1000), std::chrono::milliseconds(timeout_ * 1000LL));
    ctx->set_deadline(std::chrono::system_clock::now() + left + std::chrono::seconds(extra_seconds));
    return ctx;
  }

  int timeout() const { return timeout_; }
  // The whole action's end: a wait on an import must stop here, whatever the calls took.
  bool Expired() const { return std::chrono::steady_clock::now() >= end_; }
  const std::string& address() const { return address_; }

  int Error(const grpc::Status& s, const std::string& what) const {
    return Fail("hvagent at " + address_ + ": " + what + ": " + CodeName(s.error_code()) + ": " + s.error_message(),
                CodeName(s.error_code()));
  }

  std::unique_ptr<v1::DomainService::Stub> domains;
  std::unique_ptr<v1::HostService::Stub> host;
  std::unique_ptr<v1::MetricsService::Stub> metrics;
  std::unique_ptr<v1::StorageService::Stub> storage;
  std::unique_ptr<v1::ConsoleService::Stub> consoles;
  std::unique_ptr<v1::ImageService::Stub> images;
  std::unique_ptr<v1::OperationService::Stub> operations;

 private:
  std::string address_;
  int timeout_;
  std::chrono::steady_clock::time_point end_;
};

grpc::Status GetDomain(const Agent& a, const std::string& name, v1::Domain* d) {
  v1::GetDomainRequest req;
  req.set_name(name);
  return a.domains->GetDomain(a.Context().get(), req, d);
}

value DomainJson(const v1::Domain& d) {
  value v = value::object();
  v["name"] = value::string(d.name());
  v["uuid"] = value::string(d.uuid());
  v["state"] = value::string(v1::DomainState_Name(d.state()));
  return v;
}

// The agent's domain of this payload's instance. CloudStack names the VM by its instance name;
// the domain may be named otherwise (vm_name), and `prepare` had CloudStack persist the name it
// chose (hvagent_domain). A candidate counts only when its domain carries the instance's uuid:
// the persisted detail is among details the VM's user can edit, and a name alone could point
// at another tenant's domain.
struct Resolved {
  std::string name;     // the domain to act on (VmName when none exists)
  bool exists = false;  // found, and it is this instance's
  v1::Domain domain;
};

std::string LowerAscii(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

grpc::Status Resolve(const Payload& p, const Agent& a, Resolved* r) {
  const std::string uuid = LowerAscii(InstanceUuid(p));
  std::string other;  // a candidate that exists but is another instance's
  for (const std::string& name : DomainCandidates(p)) {
    v1::Domain d;
    auto s = GetDomain(a, name, &d);
    if (s.error_code() == grpc::StatusCode::NOT_FOUND) continue;
    if (!s.ok()) return s;
    if (uuid.empty() || LowerAscii(d.uuid()) == uuid) {
      r->name = name;
      r->exists = true;
      r->domain = d;
      return grpc::Status::OK;
    }
    if (other.empty()) other = name + "' has uuid " + d.uuid();
  }
  if (!other.empty()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "domain '" + other + ", not this instance's " + uuid + "; refusing to act on another VM");
  }
  r->name = VmName(p);
  return grpc::Status::OK;
}

bool IsFalse(const std::string& s) { return s == "false" || s == "0" || s == "no" || s == "off"; }

// ---- images ------------------------------------------------------------------------------

std::string Ref(const std::string& pool, const std::string& name) { return pool + "/" + name; }

bool Ended(v1::OperationState s) {
  return s != v1::OPERATION_STATE_RUNNING && s != v1::OPERATION_STATE_UNSPECIFIED;
}

// Follows an import until it ends or the action's time is up. NOT_FOUND from the agent (the
// operation aged out of its list, or the agent restarted) ends the wait too: the caller reads
// the image again, which is what counts.
grpc::Status WaitOperation(const Agent& a, uint64_t id, const TemplateImage& img, v1::Operation* op) {
  v1::GetOperationRequest req;
  req.set_id(std::to_string(id));
  while (true) {
    auto s = a.operations->GetOperation(a.Context().get(), req, op);
    if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
      op->set_state(v1::OPERATION_STATE_UNSPECIFIED);
      return grpc::Status::OK;
    }
    if (!s.ok()) return s;
    if (Ended(op->state())) return grpc::Status::OK;
    if (a.Expired()) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "image " + Ref(img.pool, img.name) + " is still being imported (operation " +
                              std::to_string(id) + ", " + std::to_string(op->bytes_done()) + " of " +
                              std::to_string(op->bytes_total()) +
                              " bytes); the agent goes on with it: retry later, or pre-seed the host with the "
                              "importimage action and a longer timeout");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
}

// The image READY on the agent, imported from the template's URL when the host has none yet.
// Creates of the first VMs of a template race here: the agent lets one ImportImage through and
// answers the others ALREADY_EXISTS (the name is taken while importing), and those then wait on
// the import under way instead of failing or importing twice.
grpc::Status EnsureImage(const Agent& a, const TemplateImage& img, v1::Image* out) {
  v1::ImageRef ref;
  ref.set_pool(img.pool);
  ref.set_name(img.name);
  bool ours = false;     // this call started an import
  int failures = 0;      // imports seen failing (another's first: then one of our own)
  while (true) {
    if (a.Expired()) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "image " + Ref(img.pool, img.name) + " is not ready within the action's timeout");
    }
    v1::Image im;
    auto s = a.images->GetImage(a.Context().get(), ref, &im);
    if (s.ok() && im.state() == v1::IMAGE_STATE_READY) {
      // For a raw sha256 import, the image's own sha256 (of its raw bytes) is the template's: a
      // different image under this name is not silently used.
      if (!img.url.empty() && !img.qcow2 && !img.sha256.empty() && im.sha256() != img.sha256) {
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                            "image " + Ref(img.pool, img.name) + " on the host has sha256 " + im.sha256() +
                                ", not the template's " + img.sha256);
      }
      *out = im;
      return grpc::Status::OK;
    }
    if (s.ok() && im.state() == v1::IMAGE_STATE_IMPORTING) {
      v1::Operation op;
      if (auto w = WaitOperation(a, im.operation_id(), img, &op); !w.ok()) return w;
      if (op.state() == v1::OPERATION_STATE_FAILED || op.state() == v1::OPERATION_STATE_CANCELLED) {
        if (++failures > 1) {
          return grpc::Status(grpc::StatusCode::ABORTED, "import of image " + Ref(img.pool, img.name) +
                                                             " failed: " + op.message());
        }
      } else if (op.state() == v1::OPERATION_STATE_UNSPECIFIED) {
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
      }
      continue;
    }
    if (s.error_code() != grpc::StatusCode::NOT_FOUND) return s;
    if (img.url.empty()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "image " + Ref(img.pool, img.name) + " (the template's `image`) is not on this host: import "
                          "it first (the importimage action, or hvctl image-import)");
    }
    if (ours) {
      return grpc::Status(grpc::StatusCode::ABORTED,
                          "image " + Ref(img.pool, img.name) + " vanished after its import ended (deleted meanwhile?)");
    }
    v1::ImportImageRequest req;
    req.set_pool(img.pool);
    req.set_name(img.name);
    req.set_format(img.qcow2 ? v1::IMAGE_FORMAT_QCOW2 : v1::IMAGE_FORMAT_RAW);
    req.set_url(img.url);
    if (!img.sha256.empty()) req.set_sha256(img.sha256);
    if (!img.sha512.empty()) req.set_sha512(img.sha512);
    v1::Operation op;
    s = a.images->ImportImage(a.Context().get(), req, &op);
    if (s.error_code() == grpc::StatusCode::ALREADY_EXISTS) continue;  // another create's import: wait on it
    if (!s.ok()) return s;
    ours = true;
    if (auto w = WaitOperation(a, op.id(), img, &op); !w.ok()) return w;
    if (op.state() == v1::OPERATION_STATE_FAILED || op.state() == v1::OPERATION_STATE_CANCELLED) {
      return grpc::Status(grpc::StatusCode::ABORTED,
                          "import of image " + Ref(img.pool, img.name) + " from " + img.url + " failed: " + op.message());
    }
  }
}

// A volume made from the image, at least the image's size.
grpc::Status VolumeFromImage(const Agent& a, const TemplateImage& img, const v1::Image& im, const std::string& name,
                             uint64_t size, v1::Volume* v) {
  v1::CreateVolumeRequest req;
  req.set_pool(img.pool);
  req.set_name(name);
  req.set_size_bytes(std::max(size, im.virtual_size_bytes()));
  req.set_image(img.name);
  return a.storage->CreateVolume(a.Context().get(), req, v);
}

grpc::Status GetVolume(const Agent& a, const std::string& pool, const std::string& name, v1::Volume* v) {
  v1::VolumeRef ref;
  ref.set_pool(pool);
  ref.set_name(name);
  return a.storage->GetVolume(a.Context().get(), ref, v);
}

grpc::Status DeleteVolume(const Agent& a, const std::string& pool, const std::string& name) {
  v1::VolumeRef ref;
  ref.set_pool(pool);
  ref.set_name(name);
  v1::Volume v;
  auto s = a.storage->DeleteVolume(a.Context().get(), ref, &v);
  return s.error_code() == grpc::StatusCode::NOT_FOUND ? grpc::Status::OK : s;
}

value ImageJson(const v1::Image& im) {
  value m = ProtoToJson(im);
  m["template_detail"] = value::string("image=" + im.pool() + "/" + im.name());
  return m;
}

// ---- actions -----------------------------------------------------------------------------

int PrintMessage(const value& message);

int Prepare(const Payload& p, const Agent& a) {
  auto spec = BuildDomainSpec(p);  // everything create will send, validated now
  v1::Domain d;
  auto s = GetDomain(a, spec.name(), &d);
  if (s.ok()) return Fail("a domain named '" + spec.name() + "' already exists on this host", "ALREADY_EXISTS");
  if (s.error_code() != grpc::StatusCode::NOT_FOUND) return a.Error(s, "checking domain " + spec.name());
  // An early answer from the agent's capacity: CloudStack registers External hosts with no CPU
  // or memory and leaves capacity to the extension. create is admitted again by the agent, under
  // its lock, so a race between two prepares cannot overfill the host.
  v1::Capacity c;
  if (auto cs = a.host->GetCapacity(a.Context().get(), {}, &c); !cs.ok()) return a.Error(cs, "reading host capacity");
  const uint64_t memory = spec.memory_mib() * 1024 * 1024;
  if (spec.vcpus() > c.vcpus_available() || memory > c.memory_available_bytes()) {
    return Fail("the host has no room for instance " + spec.name() + ": asked " + std::to_string(spec.vcpus()) +
                    " vCPUs and " + std::to_string(spec.memory_mib()) + " MiB, available " +
                    std::to_string(c.vcpus_available()) + " vCPUs and " +
                    std::to_string(c.memory_available_bytes() >> 20) + " MiB of a limit of " +
                    std::to_string(c.vcpus_schedulable()) + " vCPUs and " +
                    std::to_string(c.memory_schedulable_bytes() >> 20) + " MiB",
                "RESOURCE_EXHAUSTED");
  }
  value out = Success("Instance " + spec.name() + " can be created");
  // CloudStack merges `details` into the VM's details and keeps them: later actions find the
  // domain by the name chosen now, even if the template's vm_name changes (Resolve checks the
  // uuid). The root volume and the agent address are recorded for operators.
  value details = value::object();
  details[kDomainDetail] = value::string(spec.name());
  for (const auto& disk : spec.disks()) {
    if (disk.has_volume()) {
      details[kRootVolumeDetail] = value::string(disk.volume().pool() + "/" + disk.volume().name());
      break;
    }
  }
  details[kAgentDetail] = value::string(a.address());
  out["details"] = details;
  return Emit(out, 0);
}

int Create(const Payload& p, const Agent& a) {
  auto spec = BuildDomainSpec(p);
  // With a template image the agent makes the root volume from the image (imported once per
  // host) inside CreateDomain (DiskVolume.image): the domain owns it, and a create that fails
  // or is cut short leaves no volume.
  if (auto img = TemplateImageOf(p)) {
    v1::Domain existing;
    auto gs = GetDomain(a, spec.name(), &existing);
    if (gs.error_code() == grpc::StatusCode::NOT_FOUND) {
      v1::Image im;
      if (auto s = EnsureImage(a, *img, &im); !s.ok()) return a.Error(s, "preparing the template's image");
      for (auto& disk : *spec.mutable_disks()) {
        if (disk.volume().image().empty()) continue;
        // At least the image's size: a template's root_disk_size below it means "the image's".
        disk.mutable_volume()->set_create_size_bytes(
            std::max(disk.volume().create_size_bytes(), im.virtual_size_bytes()));
      }
    } else if (!gs.ok()) {
      return a.Error(gs, "checking domain " + spec.name());
    }  // else: a retried create, answered below
  }
  v1::CreateDomainRequest req;
  *req.mutable_spec() = spec;
  req.set_start(true);
  v1::Domain d;
  auto s = a.domains->CreateDomain(a.Context().get(), req, &d);
  if (s.error_code() == grpc::StatusCode::ALREADY_EXISTS && !spec.uuid().empty()) {
    // A retried create of the same instance (same CloudStack uuid): make sure it runs.
    v1::Domain existing;
    if (GetDomain(a, spec.name(), &existing).ok() && existing.uuid() == spec.uuid()) {
      if (PowerState(existing.state()) != "poweron") {
        v1::DomainRef ref;
        ref.set_name(spec.name());
        auto st = a.domains->StartDomain(a.Context().get(), ref, &existing);
        if (!st.ok()) return a.Error(st, "starting existing domain " + spec.name());
      }
      value out = Success("Instance already created");
      out["domain"] = DomainJson(existing);
      return Emit(out, 0);
    }
  }
  if (!s.ok()) return a.Error(s, "creating domain " + spec.name());
  value out = Success("Instance created");
  out["domain"] = DomainJson(d);
  return Emit(out, 0);
}

int Start(const Payload& p, const Agent& a) {
  Resolved r;
  if (auto s = Resolve(p, a, &r); !s.ok()) return a.Error(s, "finding the instance's domain");
  v1::DomainRef ref;
  ref.set_name(r.name);
  v1::Domain d;
  auto s = a.domains->StartDomain(a.Context().get(), ref, &d);
  if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION && GetDomain(a, ref.name(), &d).ok() &&
      PowerState(d.state()) == "poweron") {
    return Emit(Success("Instance already running"), 0);
  }
  if (!s.ok()) return a.Error(s, "starting domain " + ref.name());
  return Emit(Success("Instance started"), 0);
}

int Stop(const Payload& p, const Agent& a) {
  Resolved found;
  if (auto s = Resolve(p, a, &found); !s.ok()) return a.Error(s, "finding the instance's domain");
  v1::ShutdownDomainRequest req;
  req.set_name(found.name);
  // Graceful for most of CloudStack's wait, then the agent forces it off.
  int graceful = std::clamp(a.timeout() - 10, 1, 300);
  if (auto t = Setting(p, "stop_timeout", "vdhe"); !t.empty())
    graceful = static_cast<int>(std::clamp<uint64_t>(ParseUnsigned(t, "stop_timeout"), 1, 3600));
  req.set_timeout_seconds(static_cast<uint32_t>(graceful));
  v1::ShutdownDomainResponse r;
  auto s = a.domains->ShutdownDomain(a.Context(graceful).get(), req, &r);
  if (s.error_code() == grpc::StatusCode::NOT_FOUND) return Emit(Success("Instance stopped (not present on host)"), 0);
  v1::Domain d;
  if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION && GetDomain(a, req.name(), &d).ok() &&
      PowerState(d.state()) == "poweroff") {
    return Emit(Success("Instance stopped (was not running)"), 0);
  }
  if (!s.ok()) return a.Error(s, "stopping domain " + req.name());
  value out = Success(r.forced() ? "Instance stopped (forced off after " + std::to_string(graceful) + " s)" : "Instance stopped");
  out["forced"] = value::boolean(r.forced());
  return Emit(out, 0);
}

int Reboot(const Payload& p, const Agent& a) {
  Resolved r;
  if (auto s = Resolve(p, a, &r); !s.ok()) return a.Error(s, "finding the instance's domain");
  v1::DomainRef ref;
  ref.set_name(r.name);
  v1::Domain d;
  auto s = a.domains->RebootDomain(a.Context().get(), ref, &d);
  if (!s.ok()) return a.Error(s, "rebooting domain " + ref.name());
  return Emit(Success("Instance rebooted"), 0);
}

int Delete(const Payload& p, const Agent& a) {
  Resolved found;
  if (auto s = Resolve(p, a, &found); !s.ok()) return a.Error(s, "finding the instance's domain");
  v1::DeleteDomainRequest req;
  req.set_name(found.name);
  req.set_force(true);
  // The agent deletes only the volumes the VM owns (its root volume, created with it); volumes an
  // operator attached are borrowed and only released (docs/cloudstack.md, "What delete removes").
  req.set_delete_volumes(!IsFalse(Setting(p, "delete_volumes", "vdhe")));
  // A root volume made from a template image is owned by its domain (DiskVolume.image) and goes
  // with it. VMs created by an extension before that have it borrowed (the extension made it
  // before the domain): DeleteDomain only releases such a root, so it is deleted here afterwards,
  // and only the one attached to this very domain.
  std::vector<std::string> image_roots;
  std::string pool;
  if (req.delete_volumes() && found.exists) {
    try {
      if (auto img = TemplateImageOf(p)) pool = img->pool;
    } catch (const PayloadError&) {
      // A template whose image details went bad since must not keep its VMs from being deleted.
    }
    if (pool.empty()) pool = Setting(p, "storage_pool", "vdh");
    if (!pool.empty() && ValidDomainName(pool)) {
      for (const auto& name : {RootVolumeName(found.name), AlternateRootVolumeName(found.name)}) {
        v1::Volume v;
        if (GetVolume(a, pool, name, &v).ok() && v.attached_to() == found.name &&
            v.ownership() == v1::VOLUME_OWNERSHIP_BORROWED) {
          image_roots.push_back(name);
        }
      }
    }
  }
  v1::DeleteDomainResponse r;
  auto s = a.domains->DeleteDomain(a.Context().get(), req, &r);
  if (s.error_code() == grpc::StatusCode::NOT_FOUND) return Emit(Success("Instance deleted (not present on host)"), 0);
  if (!s.ok()) return a.Error(s, "deleting domain " + req.name());
  for (const auto& name : image_roots) {
    if (auto ds = DeleteVolume(a, pool, name); !ds.ok()) {
      return a.Error(ds, "instance deleted, but deleting its root volume " + Ref(pool, name));
    }
  }
  return Emit(Success("Instance deleted"), 0);
}

int Status(const Payload& p, const Agent& a) {
  Resolved r;
  if (auto s = Resolve(p, a, &r); !s.ok()) return a.Error(s, "finding the instance's domain");
  value out = value::object();
  out["status"] = value::string("success");
  if (!r.exists) {
    out["power_state"] = value::string("poweroff");
    out["message"] = value::string("Instance " + r.name + " is not defined on this host");
    return Emit(out, 0);
  }
  out["power_state"] = value::string(PowerState(r.domain.state()));
  out["domain"] = value::string(r.name);
  return Emit(out, 0);
}

// suspend / resume (custom actions on VirtualMachine): the guest paused in memory, and back.
int PauseOrResume(const Payload& p, const Agent& a, bool suspend) {
  const char* action = suspend ? "suspend" : "resume";
  Resolved r;
  if (auto s = Resolve(p, a, &r); !s.ok()) return a.Error(s, "finding the instance's domain");
  if (!r.exists) return Fail(std::string(action) + ": instance " + r.name + " is not defined on this host", "NOT_FOUND");
  v1::DomainRef ref;
  ref.set_name(r.name);
  v1::Domain d;
  auto s = suspend ? a.domains->SuspendDomain(a.Context().get(), ref, &d)
                   : a.domains->ResumeDomain(a.Context().get(), ref, &d);
  if (!s.ok()) return a.Error(s, std::string(action) + " of domain " + r.name);
  value m = DomainJson(d);
  return PrintMessage(m);
}

// reinstall (custom action): a new root volume from the template's image takes the old one's
// place on the stopped VM. The new volume is made under the other of the two root names, put in
// the old one's place, and only then is the old one deleted; any step that fails puts the VM
// back as it was and deletes the new volume.
int Reinstall(const Payload& p, const Agent& a) {
  Resolved r;
  if (auto s = Resolve(p, a, &r); !s.ok()) return a.Error(s, "finding the instance's domain");
  if (!r.exists) return Fail("reinstall: instance " + r.name + " is not defined on this host", "NOT_FOUND");
  auto img = TemplateImageOf(p);
  if (!img) {
    return Fail("reinstall: the template names no image (external detail image, or image_url and image_checksum) "
                "to rebuild instance " + r.name + "'s root volume from; nothing was changed",
                "FAILED_PRECONDITION");
  }
  if (r.domain.state() != v1::DOMAIN_STATE_SHUTOFF) {
    return Fail("reinstall: instance " + r.name + " is " + v1::DomainState_Name(r.domain.state()) +
                    ": stop it first (the root volume is replaced only on a stopped VM); nothing was changed",
                "FAILED_PRECONDITION");
  }
  // The current root volume: whichever of the two names is attached to this domain.
  const std::string names[2] = {RootVolumeName(r.name), AlternateRootVolumeName(r.name)};
  v1::Volume old_volume;
  int current = -1;
  for (int i = 0; i < 2 && current < 0; ++i) {
    v1::Volume v;
    auto s = GetVolume(a, img->pool, names[i], &v);
    if (s.ok() && v.attached_to() == r.name) {
      old_volume = v;
      current = i;
    } else if (!s.ok() && s.error_code() != grpc::StatusCode::NOT_FOUND) {
      return a.Error(s, "reading volume " + Ref(img->pool, names[i]));
    }
  }
  if (current < 0) {
    return Fail("reinstall: instance " + r.name + " has no root volume " + Ref(img->pool, names[0]) + " (or " +
                    names[1] + ") attached; nothing was changed",
                "FAILED_PRECONDITION");
  }
  const std::string old_name = names[current], new_name = names[1 - current];
  v1::Image im;
  if (auto s = EnsureImage(a, *img, &im); !s.ok()) return a.Error(s, "reinstall: preparing the template's image");
  v1::Volume fresh;
  if (auto s = VolumeFromImage(a, *img, im, new_name, old_volume.size_bytes(), &fresh); !s.ok()) {
    return a.Error(s, "reinstall: creating " + Ref(img->pool, new_name) + " from image " + img->name +
                          " (nothing was changed)");
  }
  std::string target = Setting(p, "disk_target", "vdh");
  if (target.empty()) target = "vda";
  auto attach = [&](const std::string& name) {
    v1::AttachVolumeRequest req;
    req.set_pool(img->pool);
    req.set_name(name);
    req.set_domain(r.name);
    req.set_target(target);
    v1::Volume v;
    return a.storage->AttachVolume(a.Context().get(), req, &v);
  };
  auto undo = [&](const grpc::Status& s, const std::string& what, bool reattach) {
    std::string how = "; the VM was left as it was";
    if (reattach) {
      if (auto rs = attach(old_name); !rs.ok()) how = "; re-attaching " + old_name + " failed too: " + rs.error_message();
    }
    if (auto ds = DeleteVolume(a, img->pool, new_name); !ds.ok()) how += "; deleting " + new_name + " failed: " + ds.error_message();
    return a.Error(s, "reinstall: " + what + how);
  };
  v1::DetachVolumeRequest detach;
  detach.set_pool(img->pool);
  detach.set_name(old_name);
  detach.set_domain(r.name);  // refused, and nothing changed, should it have moved to another VM meanwhile
  v1::Volume detached;
  if (auto s = a.storage->DetachVolume(a.Context().get(), detach, &detached); !s.ok()) {
    return undo(s, "detaching " + Ref(img->pool, old_name), false);
  }
  if (auto s = attach(new_name); !s.ok()) return undo(s, "attaching " + Ref(img->pool, new_name), true);
  value m = value::object();
  m["domain"] = value::string(r.name);
  m["root_volume"] = value::string(Ref(img->pool, new_name));
  m["image"] = value::string(Ref(img->pool, img->name));
  if (auto s = DeleteVolume(a, img->pool, old_name); !s.ok()) {
    // The VM runs on its new disk; the old one is free and only takes space.
    m["warning"] = value::string("the old root volume " + Ref(img->pool, old_name) + " could not be deleted: " +
                                 s.error_message());
  }
  return PrintMessage(m);
}

// importimage (custom action on Host): the image a template's image_url names, imported now so
// that the first VMs need not wait for it. Parameters image_url, image_checksum, image_format,
// pool (default: the host's or extension's storage_pool); the name is the one create derives.
int ImportImageAction(const Payload& p, const Agent& a);

// CloudStack's instance names: i-<account>-<id>-VM for guests, r-/s-/v-<id>-VM for its system
// VMs. Only these can be keys of `statuses`: CloudStack looks its VMs up there by that name.
bool IsInstanceName(const std::string& n) {
  if (n.size() < 5 || n.find_first_of("irsv") != 0 || n[1] != '-' || !n.ends_with("-VM")) return false;
  const std::string mid = n.substr(2, n.size() - 5);  // "2-100" or "5"
  int dashes = 0;
  for (size_t i = 0; i < mid.size(); ++i) {
    if (mid[i] == '-') {
      if (i == 0 || i + 1 == mid.size() || mid[i - 1] == '-') return false;
      ++dashes;
    } else if (!std::isdigit(static_cast<unsigned char>(mid[i]))) {
      return false;
    }
  }
  return !mid.empty() && dashes <= 1 && (n[0] != 'i' || dashes == 1);
}

int Statuses(const Agent& a) {
  v1::ListDomainsResponse r;
  auto s = a.domains->ListDomains(a.Context().get(), {}, &r);
  if (!s.ok()) return a.Error(s, "listing domains");
  // Keys are CloudStack's instance names: the cloudstack.instance label create set (a domain
  // renamed by vm_name carries it), else the domain's own name when it is one. Labelled domains
  // are keyed first, so an unlabelled domain that merely bears the name cannot take the key of
  // the VM CloudStack made. Domains of other controllers, and a second claim to a key, are
  // listed apart.
  value states = value::object();
  value others = value::array();
  std::set<std::string> keyed;
  size_t n = 0;
  auto key = [&](const std::string& name, const v1::Domain& d) {
    if (keyed.insert(name).second) {
      states[name] = value::string(PowerState(d.state()));
    } else {
      others[n++] = value::string(d.name());
    }
  };
  for (const auto& d : r.domains()) {
    if (auto it = d.labels().find(kInstanceLabel); it != d.labels().end()) key(it->second, d);
  }
  for (const auto& d : r.domains()) {
    if (d.labels().contains(kInstanceLabel)) continue;
    if (IsInstanceName(d.name())) {
      key(d.name(), d);
    } else {
      others[n++] = value::string(d.name());
    }
  }
  value out = value::object();
  out["status"] = value::string("success");
  out["power_state"] = states;
  out["other_domains"] = others;
  return Emit(out, 0);
}

int PrintMessage(const value& message) {
  value out = value::object();
  out["status"] = value::string("success");
  out["printmessage"] = value::string("true");
  out["message"] = message;
  return Emit(out, 0);
}

int HostCapacity(const Agent& a) {
  v1::Capacity c;
  auto s = a.host->GetCapacity(a.Context().get(), {}, &c);
  if (!s.ok()) return a.Error(s, "reading host capacity");
  return PrintMessage(ProtoToJson(c));
}

int EventChannels(const Agent& a) {
  v1::EventChannels e;
  auto s = a.metrics->GetEventChannels(a.Context().get(), {}, &e);
  if (s.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
    value m = value::object();
    m["supported"] = value::boolean(false);
    m["unsupported"] = value::string(s.error_message());
    return PrintMessage(m);
  }
  if (!s.ok()) return a.Error(s, "reading event channels");
  value m = ProtoToJson(e);
  m["supported"] = value::boolean(true);
  return PrintMessage(m);
}

std::string Parameter(const Payload& p, const std::string& key) {
  if (!p.parameters.has_field(key)) return "";
  const auto& v = p.parameters.at(key);
  if (v.is_string()) return v.as_string();
  if (v.is_number()) return v.serialize();
  return "";
}

int ResizeVolume(const Payload& p, const Agent& a) {
  v1::ResizeVolumeRequest req;
  std::string pool = Parameter(p, "pool");
  if (pool.empty()) pool = Setting(p, "storage_pool", "vdh");
  if (pool.empty()) return Fail("resizevolume: parameter pool is missing (and no storage_pool detail)");
  std::string volume = Parameter(p, "volume");
  if (volume.empty() && (p.vm.has_field("name") || p.ext_vm.has_field("vm_name"))) {
    Resolved r;
    if (auto s = Resolve(p, a, &r); !s.ok()) return a.Error(s, "finding the instance's domain");
    volume = r.name + "-root";
  }
  if (volume.empty()) return Fail("resizevolume: parameter volume is missing");
  if (!ValidDomainName(pool)) return Fail("resizevolume: pool '" + pool + "' is not a valid name");
  if (!ValidDomainName(volume)) return Fail("resizevolume: volume '" + volume + "' is not a valid name");
  uint64_t size = 0;
  if (auto b = Parameter(p, "size_bytes"); !b.empty()) {
    size = ParseUnsigned(b, "resizevolume: size_bytes");
  } else if (auto g = Parameter(p, "size_gb"); !g.empty()) {
    uint64_t gb = ParseUnsigned(g, "resizevolume: size_gb");
    if (gb > UINT64_MAX / kGiB) return Fail("resizevolume: size_gb is too large");
    size = gb * kGiB;
  }
  if (size == 0) return Fail("resizevolume: parameter size_gb (or size_bytes) is missing or 0");
  req.set_pool(pool);
  req.set_name(volume);
  req.set_size_bytes(size);
  v1::Volume v;
  auto s = a.storage->ResizeVolume(a.Context().get(), req, &v);
  if (!s.ok()) return a.Error(s, "resizing volume " + pool + "/" + volume);
  return PrintMessage(ProtoToJson(v));
}

int ImportImageAction(const Payload& p, const Agent& a) {
  std::string pool = Parameter(p, "pool");
  if (pool.empty()) pool = Setting(p, "storage_pool", "he");
  auto img = ImageFromUrl(Parameter(p, "image_url"), Parameter(p, "image_checksum"), Parameter(p, "image_format"),
                          pool, "importimage: ");
  v1::Image im;
  if (auto s = EnsureImage(a, img, &im); !s.ok()) return a.Error(s, "importing image " + Ref(img.pool, img.name));
  return PrintMessage(ImageJson(im));
}

// createtemplate (custom action on VirtualMachine): a READY image of the pool made from the VM's
// root volume (ImageService.CreateImageFromVolume; a running VM is paused for the copy only).
// Parameters: name (string, required: the image's name), pool (string, default: the
// template's image pool, else the storage_pool detail). The answer's template_detail
// (image=pool/name) is what a new template's external details take.
// The VM's root volume in its pool, for the actions on it (createtemplate, *snapshot): `pool`
// is the parameter, else the template's image pool, else the storage_pool detail. The root is
// whichever of its two names (reinstall alternates them) is attached to the VM's domain here.
// Returns 0 with *pool and *root set, or the exit code of the error document it printed.
int RootVolumeOf(const Payload& p, const Agent& a, const char* action, std::string* pool, std::string* root) {
  *pool = Parameter(p, "pool");
  if (pool->empty()) {
    if (auto img = TemplateImageOf(p)) *pool = img->pool;
  }
  if (pool->empty()) *pool = Setting(p, "storage_pool", "vdh");
  const std::string what = std::string(action) + ": ";
  if (pool->empty()) return Fail(what + "parameter pool is missing (and no storage_pool detail)", "INVALID_ARGUMENT");
  if (!ValidDomainName(*pool)) return Fail(what + "pool '" + *pool + "' is not a valid name", "INVALID_ARGUMENT");
  Resolved r;
  if (auto s = Resolve(p, a, &r); !s.ok()) return a.Error(s, "finding the instance's domain");
  if (!r.exists) return Fail(what + "instance " + r.name + " is not defined on this host", "NOT_FOUND");
  root->clear();
  for (const auto& candidate : {RootVolumeName(r.name), AlternateRootVolumeName(r.name)}) {
    v1::Volume v;
    if (GetVolume(a, *pool, candidate, &v).ok() && v.attached_to() == r.name) *root = candidate;
  }
  if (root->empty()) {
    return Fail(what + "instance " + r.name + " has no root volume " + Ref(*pool, RootVolumeName(r.name)) +
                    " attached; nothing was done",
                "FAILED_PRECONDITION");
  }
  return 0;
}

int CreateTemplate(const Payload& p, const Agent& a) {
  const std::string name = Parameter(p, "name");
  if (name.empty()) return Fail("createtemplate: parameter name (the new image's name) is missing", "INVALID_ARGUMENT");
  std::string pool, root;
  if (int rc = RootVolumeOf(p, a, "createtemplate", &pool, &root); rc != 0) return rc;
  v1::CreateImageFromVolumeRequest req;
  req.set_pool(pool);
  req.set_volume(root);
  req.set_name(name);
  // From one of the root volume's snapshots (createsnapshot): read in place, no pause.
  req.set_snapshot(Parameter(p, "snapshot"));
  v1::CreateImageFromVolumeResponse made;
  auto s = a.images->CreateImageFromVolume(a.Context().get(), req, &made);
  if (!s.ok()) return a.Error(s, "making image " + Ref(pool, name) + " from " + Ref(pool, root));
  value m = ImageJson(made.image());
  m["paused"] = value::boolean(made.paused());
  m["paused_ms"] = value::number(static_cast<double>(made.paused_ms()));
  return PrintMessage(m);
}

// Snapshots of the VM's root volume (StorageService, docs/snapshots.md): custom actions on
// VirtualMachine. createsnapshot, revertsnapshot and deletesnapshot take `name` (STRING,
// required), all four `pool` (STRING, as createtemplate). A running VM is held still for a
// snapshot (frozen through its guest agent, else paused) and must be stopped for a revert.
int SnapshotAction(const Payload& p, const Agent& a, const std::string& action) {
  const std::string name = Parameter(p, "name");
  if (action != "listsnapshots" && name.empty()) {
    return Fail(action + ": parameter name (the snapshot's name) is missing", "INVALID_ARGUMENT");
  }
  std::string pool, root;
  if (int rc = RootVolumeOf(p, a, action.c_str(), &pool, &root); rc != 0) return rc;
  const std::string what = action + " of " + Ref(pool, root);
  if (action == "createsnapshot") {
    v1::CreateSnapshotRequest req;
    req.set_pool(pool);
    req.set_volume(root);
    req.set_name(name);
    v1::CreateSnapshotResponse r;
    if (auto s = a.storage->CreateSnapshot(a.Context().get(), req, &r); !s.ok()) return a.Error(s, what);
    return PrintMessage(ProtoToJson(r));
  }
  if (action == "listsnapshots") {
    v1::ListSnapshotsRequest req;
    req.set_pool(pool);
    req.set_volume(root);
    v1::ListSnapshotsResponse r;
    if (auto s = a.storage->ListSnapshots(a.Context().get(), req, &r); !s.ok()) return a.Error(s, what);
    value m = ProtoToJson(r);
    if (!m.has_field("snapshots")) m["snapshots"] = value::array();
    return PrintMessage(m);
  }
  v1::SnapshotRef ref;
  ref.set_pool(pool);
  ref.set_volume(root);
  ref.set_name(name);
  if (action == "revertsnapshot") {
    v1::RevertSnapshotResponse r;
    if (auto s = a.storage->RevertSnapshot(a.Context().get(), ref, &r); !s.ok()) return a.Error(s, what);
    return PrintMessage(ProtoToJson(r));
  }
  v1::DeleteSnapshotResponse r;
  if (auto s = a.storage->DeleteSnapshot(a.Context().get(), ref, &r); !s.ok()) return a.Error(s, what);
  value m = value::object();
  m["deleted"] = value::string(Ref(pool, root) + "@" + name);
  return PrintMessage(m);
}

void DropGrpcLog(gpr_log_func_args*) {}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// CloudStack wants VNC (host, port, password) or a URL a browser can open. A guest with a VNC
// display (QEMU/KVM, `vnc=true`) gets a vnc ticket: a fresh password on the display until
// [console] ticket_ttl_seconds, replaced by the next getconsole, at the host's [console]
// vnc_listen, which the console proxy VM must reach; CloudStack's orchestrator reads host, port
// (as text), password and passwordonetimeuseonly (a new viewer session per getconsole, since the
// old password stops working). Any other guest (no display; a Xen host) gets its serial console
// as a web terminal: a serial-ws ticket's URL on the agent's proxy-facing address ([console]
// ws_public_host), good once, handed to the user as a "direct" console.
int GetConsole(const Payload& p, const Agent& a) {
  Resolved r;
  if (auto s = Resolve(p, a, &r); !s.ok()) return a.Error(s, "finding the instance's domain");
  if (!r.exists) {
    return Fail("getconsole: instance " + VmName(p) + " has no domain on this host", "NOT_FOUND");
  }
  v1::IssueConsoleTicketRequest req;
  req.set_domain_name(r.name);
  req.set_kind(v1::CONSOLE_KIND_VNC);
  v1::ConsoleTicket t;
  auto s = a.consoles->IssueConsoleTicket(a.Context().get(), req, &t);
  if (s.ok()) {
    value console = value::object();
    console["host"] = value::string(t.host());
    console["port"] = value::string(std::to_string(t.port()));
    console["password"] = value::string(t.password());
    console["passwordonetimeuseonly"] = value::boolean(true);
    console["protocol"] = value::string("vnc");
    value out = value::object();
    out["status"] = value::string("success");
    out["console"] = console;
    return Emit(out, 0);
  }
  // No display (or not running, which the serial console says again): the text console.
  if (s.error_code() != grpc::StatusCode::FAILED_PRECONDITION && s.error_code() != grpc::StatusCode::UNIMPLEMENTED) {
    return a.Error(s, "issuing a VNC console ticket for " + r.name);
  }
  req.set_kind(v1::CONSOLE_KIND_SERIAL_WS);
  t.Clear();
  s = a.consoles->IssueConsoleTicket(a.Context().get(), req, &t);
  if (s.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
    return Fail("getconsole: the agent serves no web console ([console] ws_listen is not set on the host); "
                "on the host, `hvctl console " + r.name + "` attaches to the guest's serial console",
                "UNIMPLEMENTED");
  }
  if (!s.ok()) return a.Error(s, "issuing a console ticket for " + r.name);
  value console = value::object();
  console["url"] = value::string(t.url());
  console["protocol"] = value::string("direct");
  value out = value::object();
  out["status"] = value::string("success");
  out["console"] = console;
  return Emit(out, 0);
}

// Every action this extension answers, and how. An action missing here is refused by name; no
// action can fall through to another's handler.
struct Action {
  const char* name;
  bool per_vm;  // needs the payload's VM name (validated before anything reaches the agent)
  int (*run)(const Payload&, const Agent&);
};
constexpr Action kActions[] = {
    {"prepare", true, Prepare},
    {"create", true, Create},
    {"start", true, Start},
    {"stop", true, Stop},
    {"reboot", true, Reboot},
    {"delete", true, Delete},
    {"status", true, Status},
    {"getconsole", true, GetConsole},
    {"suspend", true, [](const Payload& p, const Agent& a) { return PauseOrResume(p, a, true); }},
    {"resume", true, [](const Payload& p, const Agent& a) { return PauseOrResume(p, a, false); }},
    {"reinstall", true, Reinstall},
    {"statuses", false, [](const Payload&, const Agent& a) { return Statuses(a); }},
    {"hostcapacity", false, [](const Payload&, const Agent& a) { return HostCapacity(a); }},
    {"eventchannels", false, [](const Payload&, const Agent& a) { return EventChannels(a); }},
    {"resizevolume", false, ResizeVolume},
    {"importimage", false, ImportImageAction},
    {"createtemplate", true, CreateTemplate},
    {"createsnapshot", true, [](const Payload& p, const Agent& a) { return SnapshotAction(p, a, "createsnapshot"); }},
    {"listsnapshots", true, [](const Payload& p, const Agent& a) { return SnapshotAction(p, a, "listsnapshots"); }},
    {"revertsnapshot", true, [](const Payload& p, const Agent& a) { return SnapshotAction(p, a, "revertsnapshot"); }},
    {"deletesnapshot", true, [](const Payload& p, const Agent& a) { return SnapshotAction(p, a, "deletesnapshot"); }},
};

int Run(int argc, char** argv) {
  if (argc < 3) return Fail("usage: hvagent-cloudstack <action> <payload.json> [timeout-seconds]");
  const std::string name = Lower(argv[1]);
  const Action* action = std::find_if(std::begin(kActions), std::end(kActions),
                                      [&](const Action& a) { return name == a.name; });
  if (action == std::end(kActions)) return Fail("unknown action '" + std::string(argv[1]).substr(0, 64) + "'");
  int timeout = kDefaultTimeoutSeconds;
  if (argc > 3) {
    try {
      timeout = std::stoi(argv[3]);
    } catch (...) {
      timeout = kDefaultTimeoutSeconds;
    }
  }
  // Leave CloudStack a few seconds to read our answer before its own deadline.
  timeout = std::clamp(timeout - 5, 5, 3600);

  Payload p = LoadPayload(argv[2]);
  if (action->per_vm) (void)VmName(p);  // validated before anything reaches the agent
  Agent agent(AgentTargetFrom(p), timeout);
  return action->run(p, agent);
}

}  // namespace

int main(int argc, char** argv) {
  // CloudStack reads stdout and stderr as one stream: gRPC must not write to either.
  gpr_set_log_function(DropGrpcLog);
  try {
    return Run(argc, argv);
  } catch (const PayloadError& e) {
    return Fail(e.what(), "INVALID_ARGUMENT");
  } catch (const std::exception& e) {
    return Fail(std::string("internal error: ") + e.what());
  }
}
