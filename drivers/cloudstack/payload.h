// Reading the payload file Apache CloudStack's extensions framework writes for an Orchestrator
// extension, and turning it into hvagent requests. Pure functions (no I/O besides reading the
// payload file), so they can be checked without an agent. See README.md for the contract.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <cpprest/json.h>

#include "hvagent/v1/domain.pb.h"

namespace hvagent::cloudstack {

// A problem with the payload or with what the operator configured. The message is shown to the
// CloudStack user as it is, so it names the field.
struct PayloadError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Where and how to reach the agent: the host's details, falling back to the extension's.
struct AgentTarget {
  std::string address;  // "host:port"
  bool plaintext = false;
  std::string ca_file, cert_file, key_file;
  std::string server_name;  // optional TLS name override
};

struct Payload {
  web::json::value root;      // the whole document (an object)
  web::json::value ext_host;  // externaldetails.host (object, maybe empty)
  web::json::value ext_extension;
  web::json::value ext_vm;     // externaldetails.virtualmachine
  web::json::value vm;         // cloudstack.vm.details (VirtualMachineTO)
  web::json::value vm_params;  // cloudstack.vm.details.details (or .params)
  web::json::value parameters; // custom action parameters
};

// Reads and parses the file; throws PayloadError on a missing, oversized, truncated or non-object
// document.
Payload LoadPayload(const std::string& path);

// A setting looked up in this order: the VM's external details, the VM's details, the host's,
// the extension's (only the sources named in `where`: 'v' VM external, 'd' VM details, 'h' host,
// 'e' extension). Numbers and booleans are returned as text. Empty when absent.
std::string Setting(const Payload& p, const std::string& key, const std::string& where = "vdhe");

AgentTarget AgentTargetFrom(const Payload& p);

// The domain name a new VM gets on the agent: externaldetails.virtualmachine.vm_name if an
// administrator set it (template / offering), else the instance name. Validated.
std::string VmName(const Payload& p);

// CloudStack's own name for the instance (cloudstack.vm.details.name, else
// virtualmachinename; "i-2-100-VM"), validated; empty when the payload names none.
std::string InstanceName(const Payload& p);

// CloudStack's uuid of the instance (cloudstack.vm.details.uuid, else virtualmachineid),
// validated; empty when absent. The agent's domain carries it (create sets it).
std::string InstanceUuid(const Payload& p);

// The domain names that may be this instance's on the agent, most specific first: the
// `hvagent_domain` detail `prepare` had CloudStack persist, then VmName, then InstanceName
// (deduplicated, each validated). The persisted detail sits among the instance's details,
// which its user can edit: a caller must accept a candidate only when the agent's domain of
// that name carries InstanceUuid.
std::vector<std::string> DomainCandidates(const Payload& p);

// The details `prepare` hands back for CloudStack to persist with the VM.
inline constexpr char kDomainDetail[] = "hvagent_domain";
// The domain label create sets to CloudStack's instance name: `statuses`, whose payload names no
// VM, keys a domain renamed by vm_name by it.
inline constexpr char kInstanceLabel[] = "cloudstack.instance";
inline constexpr char kRootVolumeDetail[] = "hvagent_root_volume";
inline constexpr char kAgentDetail[] = "hvagent_agent_address";

// The template's image: the root volume is made from it (CreateVolumeRequest.image) instead of
// blank. Read from the template's external details only (externaldetails.virtualmachine, set by
// administrators): `image` ("pool/name", an image the agent has), or `image_url` +
// `image_checksum` (+ `image_format`, raw or qcow2), imported by the agent once per host under a
// name derived from the checksum, so every later VM of any template with the same bytes reuses it.
struct TemplateImage {
  std::string pool;    // the image's pool; the root volume is made in it
  std::string name;    // the image's name on the agent
  std::string url;     // empty: `image` named an existing image
  std::string sha256;  // lowercase hex; exactly one of sha256 / sha512 with a url
  std::string sha512;
  bool qcow2 = false;
};

// "sha256:<64 hex>", "sha512:<128 hex>", CloudStack's own "{SHA-256}<hex>" / "{SHA-512}<hex>",
// or bare hex (64 digits: sha256, 128: sha512). MD5 (CloudStack's unprefixed default, 32 digits)
// and anything else are refused: the agent checks sha256 or sha512 only. Fills sha256/sha512.
void ParseImageChecksum(const std::string& text, const std::string& field, TemplateImage* out);

// The image name for a url import: "cs-" and the checksum's first 17 hex digits (68 bits): the
// agent's image names are at most 20 characters. Within one host's few images a clash of 68 bits
// is not to be expected; a raw sha256 import is checked against the whole checksum anyway.
std::string ImageNameForChecksum(const TemplateImage& img);

// From a url, checksum, format and pool (the template's details, or importimage's parameters).
// Throws PayloadError naming `where`'s field.
TemplateImage ImageFromUrl(const std::string& url, const std::string& checksum, const std::string& format,
                           const std::string& pool, const std::string& where);

// The template's image, or nullopt when its details name none. Throws PayloadError.
std::optional<TemplateImage> TemplateImageOf(const Payload& p);

// The root volume's name for a domain, and the name a reinstall builds the next one under (the
// two alternate, so the old one stays until the new one is in place).
std::string RootVolumeName(const std::string& domain);
std::string AlternateRootVolumeName(const std::string& domain);

// The root disk's size in bytes from the template / instance (root_disk_size_bytes,
// root_disk_size_gb, else the ROOT entry of disks[]); 0 when none is given.
uint64_t RootDiskSize(const Payload& p);

// The whole DomainSpec for `create` (validated here as far as the extension can: names, MACs,
// VLANs, sizes, paths). Throws PayloadError.
v1::DomainSpec BuildDomainSpec(const Payload& p);

// Validators (true when acceptable).
bool ValidDomainName(const std::string& s);
bool ValidBridgeName(const std::string& s);
bool ValidMac(const std::string& s);
bool ValidUuid(const std::string& s);
bool ValidAbsolutePath(const std::string& s);
bool ValidAddress(const std::string& s);
bool IsLoopbackAddress(const std::string& address);

// A NIC's isolation as its broadcastUri says: untagged, a VLAN or a VXLAN segment.
struct Isolation {
  enum class Kind { kUntagged, kVlan, kVxlan };
  Kind kind = Kind::kUntagged;
  uint32_t id = 0;  // VLAN 1..4094 / VNI 1..16777215
};

// "vlan://100" -> VLAN 100; "vxlan://5000" -> VNI 5000; "vlan://untagged" or "" -> untagged.
// Throws PayloadError for any other scheme (pvlan://, lswitch:, ...) and for an id out of range:
// a network the extension cannot isolate exactly must never fall back to the untagged bridge.
Isolation IsolationFromBroadcastUri(const std::string& uri);


// Parses an unsigned decimal (string or JSON number text); throws PayloadError naming `field`.
uint64_t ParseUnsigned(const std::string& text, const std::string& field);

// CloudStack's power-state words for an agent domain state.
std::string PowerState(v1::DomainState state);

}  // namespace hvagent::cloudstack
