#include "payload.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <fstream>
#include <sstream>
#include <system_error>
#include <vector>

namespace hvagent::cloudstack {
namespace {

constexpr std::streamsize kMaxPayloadBytes = 8 << 20;  // CloudStack's payloads are a few KiB
constexpr uint64_t kMiB = 1024 * 1024;
constexpr uint64_t kGiB = 1024 * kMiB;

web::json::value ObjectAt(const web::json::value& parent, const std::string& key) {
  if (parent.is_object() && parent.has_field(key) && parent.at(key).is_object()) return parent.at(key);
  return web::json::value::object();
}

std::string Text(const web::json::value& v) {
  if (v.is_string()) return v.as_string();
  if (v.is_boolean()) return v.as_bool() ? "true" : "false";
  if (v.is_number()) return v.serialize();
  return "";
}

std::string Field(const web::json::value& obj, const std::string& key) {
  if (!obj.is_object() || !obj.has_field(key)) return "";
  return Text(obj.at(key));
}

bool AllOf(const std::string& s, bool (*ok)(char)) {
  return std::all_of(s.begin(), s.end(), [ok](char c) { return ok(c); });
}

bool IsTrue(const std::string& s) {
  std::string l = s;
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return std::tolower(c); });
  return l == "true" || l == "1" || l == "yes" || l == "on";
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// "100=br100,200=br200" -> {100: "br100", 200: "br200"}
std::map<int, std::string> ParseVlanMap(const std::string& text) {
  std::map<int, std::string> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    item.erase(std::remove_if(item.begin(), item.end(), [](unsigned char c) { return std::isspace(c); }), item.end());
    if (item.empty()) continue;
    auto eq = item.find('=');
    if (eq == std::string::npos) throw PayloadError("vlan_bridge_map: '" + item + "' is not VLAN=BRIDGE");
    int vlan = static_cast<int>(ParseUnsigned(item.substr(0, eq), "vlan_bridge_map"));
    std::string bridge = item.substr(eq + 1);
    if (vlan < 1 || vlan > 4094) throw PayloadError("vlan_bridge_map: VLAN " + std::to_string(vlan) + " is not in 1..4094");
    if (!ValidBridgeName(bridge)) throw PayloadError("vlan_bridge_map: '" + bridge + "' is not a valid bridge name");
    out[vlan] = bridge;
  }
  return out;
}

std::string BridgeForVlan(const Payload& p, int vlan) {
  const std::string map_text = Setting(p, "vlan_bridge_map", "he");
  if (!map_text.empty()) {
    auto m = ParseVlanMap(map_text);
    if (auto it = m.find(vlan); it != m.end()) return it->second;
  }
  std::string format = Setting(p, "vlan_bridge_format", "he");
  if (!format.empty()) {
    auto pos = format.find("{vlan}");
    if (pos == std::string::npos) throw PayloadError("vlan_bridge_format: must contain {vlan}, e.g. br{vlan}");
    format.replace(pos, 6, std::to_string(vlan));
    if (!ValidBridgeName(format)) throw PayloadError("vlan_bridge_format: gives '" + format + "', not a valid bridge name");
    return format;
  }
  throw PayloadError("no bridge for VLAN " + std::to_string(vlan) +
                     ": set the host detail vlan_bridge_format (e.g. br{vlan}) or vlan_bridge_map");
}

uint64_t RootDiskSizeOf(const Payload& p) {
  if (auto b = Setting(p, "root_disk_size_bytes", "vd"); !b.empty()) return ParseUnsigned(b, "root_disk_size_bytes");
  if (auto g = Setting(p, "root_disk_size_gb", "vd"); !g.empty()) {
    uint64_t gb = ParseUnsigned(g, "root_disk_size_gb");
    if (gb > (UINT64_MAX / kGiB)) throw PayloadError("root_disk_size_gb: too large");
    return gb * kGiB;
  }
  // The ROOT volume of VirtualMachineTO.disks, when the management server sent one.
  if (p.vm.has_field("disks") && p.vm.at("disks").is_array()) {
    for (const auto& d : p.vm.at("disks").as_array()) {
      if (Field(d, "type") != "ROOT") continue;
      auto data = ObjectAt(d, "data");
      if (auto size = Field(data, "size"); !size.empty()) return ParseUnsigned(size, "cloudstack.vm.details.disks[ROOT].data.size");
    }
  }
  return 0;
}

// Settings that name a file on the agent's host, or say how one is read (a raw image read as
// qcow2 could name a backing file). They come only from what administrators set: the
// template's external details (externaldetails.virtualmachine), the host's and the
// extension's; never from the instance's own details, which its user can set with
// deployVirtualMachine / updateVirtualMachine.
constexpr const char* kHostFileKeys[] = {"disk_path", "disk_format", "kernel_path", "initrd_path", "loader_path"};

std::string HostFileSetting(const Payload& p, const std::string& key) { return Setting(p, key, "vhe"); }

// What the root disk is made from: only the template's external details name it. In a user's
// hands these would make the agent fetch a URL, or copy an image of the operator's, of the
// user's choosing.
constexpr const char* kTemplateImageKeys[] = {"image", "image_url", "image_checksum", "image_format"};

// One in the instance's details is refused, whether or not it would have been used, so the
// attempt is seen rather than silently ignored.
void RefuseHostFilesFromUserDetails(const Payload& p) {
  for (const char* key : kHostFileKeys) {
    if (Field(p.vm_params, key).empty()) continue;
    throw PayloadError(std::string(key) + ": not taken from the instance's details (cloudstack.vm.details.details), "
                       "which its user can set; host files are named only in the template's, host's or extension's "
                       "external details");
  }
  for (const char* key : kTemplateImageKeys) {
    if (Field(p.vm_params, key).empty()) continue;
    throw PayloadError(std::string(key) + ": not taken from the instance's details (cloudstack.vm.details.details), "
                       "which its user can set; the root disk's image is named only in the template's external details");
  }
}

bool IsHex(const std::string& s) {
  return !s.empty() && AllOf(s, [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; });
}

}  // namespace

uint64_t RootDiskSize(const Payload& p) { return RootDiskSizeOf(p); }

std::string RootVolumeName(const std::string& domain) { return domain + "-root"; }
std::string AlternateRootVolumeName(const std::string& domain) { return domain + "-root2"; }

void ParseImageChecksum(const std::string& text, const std::string& field, TemplateImage* out) {
  std::string algo, hex;
  const std::string l = Lower(text);
  if (l.starts_with("sha256:") || l.starts_with("sha512:")) {
    algo = l.substr(0, 6);
    hex = l.substr(7);
  } else if (l.starts_with("{sha-256}") || l.starts_with("{sha-512}")) {
    algo = l.substr(1, 3) + l.substr(5, 3);
    hex = l.substr(9);
  } else if (l.find_first_of(":{") == std::string::npos) {
    hex = l;
    algo = hex.size() == 64 ? "sha256" : hex.size() == 128 ? "sha512" : "";
  }
  const size_t want = algo == "sha256" ? 64 : algo == "sha512" ? 128 : 0;
  if (want == 0 || hex.size() != want || !IsHex(hex)) {
    throw PayloadError(field + ": '" + text.substr(0, 140) +
                       "' is not a sha256 or sha512 checksum (sha256:<64 hex>, sha512:<128 hex>, {SHA-256}<hex>, "
                       "or bare hex of 64 or 128 digits; MD5 is not accepted)");
  }
  out->sha256.clear();
  out->sha512.clear();
  (algo == "sha256" ? out->sha256 : out->sha512) = hex;
}

std::string ImageNameForChecksum(const TemplateImage& img) {
  const std::string& hex = img.sha256.empty() ? img.sha512 : img.sha256;
  return "cs-" + hex.substr(0, 17);
}

TemplateImage ImageFromUrl(const std::string& url, const std::string& checksum, const std::string& format,
                           const std::string& pool, const std::string& where) {
  TemplateImage img;
  const std::string lurl = Lower(url.substr(0, 8));
  if (url.size() > 2048 || !(lurl.starts_with("http://") || lurl.starts_with("https://")) ||
      std::any_of(url.begin(), url.end(), [](unsigned char c) { return c <= 0x20 || c == 0x7f; })) {
    throw PayloadError(where + "image_url: '" + url.substr(0, 120) + "' is not an http:// or https:// URL");
  }
  if (checksum.empty()) throw PayloadError(where + "image_checksum: required with image_url (sha256 or sha512)");
  ParseImageChecksum(checksum, where + "image_checksum", &img);
  const std::string f = Lower(format);
  if (!f.empty() && f != "raw" && f != "qcow2") {
    throw PayloadError(where + "image_format: '" + format.substr(0, 40) + "' is neither raw nor qcow2");
  }
  img.qcow2 = f == "qcow2";
  if (pool.empty()) throw PayloadError(where + "image_url: no pool to import the image into: set storage_pool");
  if (!ValidDomainName(pool)) throw PayloadError("storage_pool: '" + pool + "' is not a valid pool name");
  img.pool = pool;
  img.url = url;
  img.name = ImageNameForChecksum(img);
  return img;
}

std::optional<TemplateImage> TemplateImageOf(const Payload& p) {
  const std::string named = Field(p.ext_vm, "image");
  const std::string url = Field(p.ext_vm, "image_url");
  const std::string pool = Setting(p, "storage_pool", "vdh");
  if (named.empty() && url.empty()) {
    for (const char* key : {"image_checksum", "image_format"}) {
      if (!Field(p.ext_vm, key).empty()) throw PayloadError(std::string(key) + ": set without image_url");
    }
    return std::nullopt;
  }
  if (!named.empty() && !url.empty()) throw PayloadError("image and image_url: the template names both; give one");
  if (!url.empty()) {
    return ImageFromUrl(url, Field(p.ext_vm, "image_checksum"), Field(p.ext_vm, "image_format"), pool,
                        "externaldetails.virtualmachine.");
  }
  TemplateImage img;
  if (auto slash = named.find('/'); slash != std::string::npos) {
    img.pool = named.substr(0, slash);
    img.name = named.substr(slash + 1);
  }
  if (!ValidDomainName(img.pool) || !ValidDomainName(img.name)) {
    throw PayloadError("image: '" + named.substr(0, 140) + "' is not POOL/NAME (each 1-64 of A-Za-z0-9._-)");
  }
  if (!pool.empty() && pool != img.pool) {
    throw PayloadError("image: pool '" + img.pool + "' is not storage_pool '" + pool +
                       "': a volume is made from an image of its own pool");
  }
  return img;
}

Payload LoadPayload(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw PayloadError("payload file not found or unreadable: " + path);
  std::string text;
  text.resize(static_cast<size_t>(kMaxPayloadBytes) + 1);
  in.read(text.data(), kMaxPayloadBytes + 1);
  text.resize(static_cast<size_t>(in.gcount()));
  if (static_cast<std::streamsize>(text.size()) > kMaxPayloadBytes) throw PayloadError("payload file is larger than 8 MiB");
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) throw PayloadError("payload file is empty");
  std::error_code ec;
  Payload p;
  p.root = web::json::value::parse(text, ec);
  if (ec) throw PayloadError("invalid JSON in payload file: " + ec.message());
  if (!p.root.is_object()) throw PayloadError("invalid payload: the document is not a JSON object");
  auto ext = ObjectAt(p.root, "externaldetails");
  p.ext_host = ObjectAt(ext, "host");
  p.ext_extension = ObjectAt(ext, "extension");
  p.ext_vm = ObjectAt(ext, "virtualmachine");
  p.vm = ObjectAt(p.root, "cloudstack.vm.details");
  // VirtualMachineTO's detail map is serialized as "details" (4.21; what the bundled
  // extensions read) or, in older trees, under its field name "params".
  p.vm_params = p.vm.has_field("details") ? ObjectAt(p.vm, "details") : ObjectAt(p.vm, "params");
  p.parameters = ObjectAt(p.root, "parameters");
  return p;
}

std::string Setting(const Payload& p, const std::string& key, const std::string& where) {
  for (char w : where) {
    const web::json::value* src = w == 'v' ? &p.ext_vm : w == 'd' ? &p.vm_params : w == 'h' ? &p.ext_host : &p.ext_extension;
    if (auto v = Field(*src, key); !v.empty()) return v;
  }
  return "";
}

AgentTarget AgentTargetFrom(const Payload& p) {
  AgentTarget t;
  t.address = Setting(p, "agent_address", "he");
  if (t.address.empty()) {
    // CloudStack's addHost url, e.g. "grpc://10.0.0.5:50051" or "10.0.0.5:50051".
    std::string url = Setting(p, "url", "he");
    if (auto s = url.find("://"); s != std::string::npos) url = url.substr(s + 3);
    while (!url.empty() && url.back() == '/') url.pop_back();
    t.address = url;
  }
  if (t.address.empty()) throw PayloadError("host detail agent_address (HOST:PORT of hvagentd's gRPC listener) is missing");
  if (!ValidAddress(t.address)) throw PayloadError("agent_address: '" + t.address + "' is not HOST:PORT");
  t.plaintext = IsTrue(Setting(p, "plaintext", "he"));
  t.ca_file = Setting(p, "ca_file", "he");
  t.cert_file = Setting(p, "cert_file", "he");
  t.key_file = Setting(p, "key_file", "he");
  t.server_name = Setting(p, "tls_server_name", "he");
  if (t.plaintext) {
    if (!IsLoopbackAddress(t.address))
      throw PayloadError("plaintext=true is only for an agent on this machine's loopback (--plaintext-loopback); "
                         "configure ca_file, cert_file and key_file for " + t.address);
  } else {
    if (t.ca_file.empty() || t.cert_file.empty() || t.key_file.empty())
      throw PayloadError("host details ca_file, cert_file and key_file are required for TLS to the agent "
                         "(or plaintext=true for a development agent on loopback)");
    for (const auto* f : {&t.ca_file, &t.cert_file, &t.key_file})
      if (!ValidAbsolutePath(*f)) throw PayloadError("TLS file '" + *f + "' is not an absolute path");
  }
  if (!t.server_name.empty() &&
      (t.server_name.size() > 253 ||
       !AllOf(t.server_name, [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-'; })))
    throw PayloadError("tls_server_name: invalid name");
  return t;
}

namespace {
std::string CheckedName(const std::string& name, const std::string& what) {
  if (!ValidDomainName(name))
    throw PayloadError(what + " '" + name.substr(0, 80) +
                       "' is not allowed: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit");
  return name;
}
}  // namespace

std::string InstanceName(const Payload& p) {
  std::string name = Field(p.vm, "name");
  if (name.empty()) name = Field(p.root, "virtualmachinename");
  return name.empty() ? name : CheckedName(name, "instance name");
}

std::string VmName(const Payload& p) {
  if (auto name = Field(p.ext_vm, "vm_name"); !name.empty()) return CheckedName(name, "vm_name");
  std::string name = InstanceName(p);
  if (name.empty()) throw PayloadError("payload names no instance (cloudstack.vm.details.name)");
  return name;
}

std::string InstanceUuid(const Payload& p) {
  std::string uuid = Field(p.vm, "uuid");
  if (uuid.empty()) uuid = Field(p.root, "virtualmachineid");
  if (!uuid.empty() && !ValidUuid(uuid))
    throw PayloadError("cloudstack.vm.details.uuid: '" + uuid.substr(0, 80) + "' is not a UUID");
  return uuid;
}

std::vector<std::string> DomainCandidates(const Payload& p) {
  std::vector<std::string> out;
  auto add = [&](const std::string& n) {
    if (!n.empty() && std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
  };
  if (auto persisted = Field(p.vm_params, kDomainDetail); !persisted.empty()) {
    add(CheckedName(persisted, std::string("cloudstack.vm.details.details.") + kDomainDetail));
  }
  add(VmName(p));
  add(InstanceName(p));
  return out;
}

namespace {

// vCPUs and memory from the offering, as CloudStack sends them (bytes, not MiB).
void SetSize(const Payload& p, v1::DomainSpec& spec) {
  uint64_t cpus = ParseUnsigned(Field(p.vm, "cpus"), "cloudstack.vm.details.cpus");
  if (cpus < 1 || cpus > 4096) throw PayloadError("cloudstack.vm.details.cpus: must be 1..4096");
  spec.set_vcpus(static_cast<uint32_t>(cpus));
  // maxRam is the offering's memory; minRam is lower only under memory overcommit.
  uint64_t ram = 0;
  if (auto max = Field(p.vm, "maxRam"); !max.empty()) ram = ParseUnsigned(max, "cloudstack.vm.details.maxRam");
  if (ram == 0) ram = ParseUnsigned(Field(p.vm, "minRam"), "cloudstack.vm.details.minRam");
  if (ram < kMiB) throw PayloadError("cloudstack.vm.details.maxRam/minRam: must be at least 1 MiB (bytes)");
  spec.set_memory_mib((ram + kMiB - 1) / kMiB);
}

// Architecture, machine type, CPU model and GIC version: optional settings, each a plain token.
void SetMachine(const Payload& p, v1::DomainSpec& spec) {
  for (const auto& [key, setter] : std::initializer_list<std::pair<const char*, void (v1::DomainSpec::*)(const std::string&)>>{
           {"arch", &v1::DomainSpec::set_arch}, {"machine", &v1::DomainSpec::set_machine},
           {"cpu_model", &v1::DomainSpec::set_cpu_model}, {"gic_version", &v1::DomainSpec::set_gic_version}}) {
    std::string v = Setting(p, key, "vdh");
    if (v.empty()) continue;
    if (v.size() > 64 || !AllOf(v, [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'; }))
      throw PayloadError(std::string(key) + ": '" + v + "' is not allowed");
    (spec.*setter)(v);
  }
}

// A VNC display (QEMU/KVM hosts) when `vnc` is true; getconsole then hands out VNC. Off by
// default: Xen on Arm has no display, and the agent refuses one there.
void SetDisplay(const Payload& p, v1::DomainSpec& spec) {
  const std::string v = Lower(Setting(p, "vnc"));
  if (v.empty() || v == "false") return;
  if (v != "true") throw PayloadError("vnc: must be true or false, got '" + v + "'");
  spec.set_vnc(true);
}

// Direct kernel boot when a kernel is named, else firmware.
void SetBoot(const Payload& p, v1::DomainSpec& spec) {
  if (auto kernel = HostFileSetting(p, "kernel_path"); !kernel.empty()) {
    if (!ValidAbsolutePath(kernel)) throw PayloadError("kernel_path: must be an absolute path");
    auto* k = spec.mutable_kernel();
    k->set_kernel_path(kernel);
    if (auto initrd = HostFileSetting(p, "initrd_path"); !initrd.empty()) {
      if (!ValidAbsolutePath(initrd)) throw PayloadError("initrd_path: must be an absolute path");
      k->set_initrd_path(initrd);
    }
    auto cmdline = Setting(p, "cmdline", "vdh");
    if (cmdline.size() > 2048 || std::any_of(cmdline.begin(), cmdline.end(), [](unsigned char c) { return c < 0x20; }))
      throw PayloadError("cmdline: too long or has control characters");
    k->set_cmdline(cmdline);
  } else {
    auto* f = spec.mutable_firmware();
    std::string fw = Lower(Setting(p, "firmware", "vdh"));
    if (!fw.empty() && fw != "uefi" && fw != "bios") throw PayloadError("firmware: '" + fw + "' is neither bios nor uefi");
    if (fw.empty()) {
      // CloudStack's own boot type (VirtualMachineTO.bootType "Uefi"/"Bios"), when set.
      fw = Lower(Field(p.vm, "bootType"));
    }
    if (fw == "uefi") f->set_type(v1::FirmwareBoot::TYPE_UEFI);
    else if (fw == "bios") f->set_type(v1::FirmwareBoot::TYPE_BIOS);
    if (auto loader = HostFileSetting(p, "loader_path"); !loader.empty()) {
      if (!ValidAbsolutePath(loader)) throw PayloadError("loader_path: must be an absolute path");
      f->set_loader_path(loader);
    }
  }
}

// The root disk: a new volume in an agent storage pool, or an existing image/device path.
void AddRootDisk(const Payload& p, v1::DomainSpec& spec) {
  std::string target = Setting(p, "disk_target", "vdh");
  if (target.empty()) target = "vda";
  if (target.size() > 8 || !AllOf(target, [](char c) { return std::islower(static_cast<unsigned char>(c)) != 0; }))
    throw PayloadError("disk_target: '" + target + "' is not a disk name like vda or xvda");
  if (auto img = TemplateImageOf(p)) {
    // The agent makes this volume from the image as part of CreateDomain, which owns it; the
    // extension raises the size to at least the image's once it knows the image (main.cpp).
    auto* d = spec.add_disks();
    d->set_target(target);
    auto* vol = d->mutable_volume();
    vol->set_pool(img->pool);
    vol->set_name(RootVolumeName(spec.name()));
    vol->set_image(img->name);
    vol->set_create_size_bytes(RootDiskSizeOf(p));
  } else if (auto pool = Setting(p, "storage_pool", "vdh"); !pool.empty()) {
    if (!ValidDomainName(pool)) throw PayloadError("storage_pool: '" + pool + "' is not a valid pool name");
    uint64_t size = RootDiskSizeOf(p);
    if (size == 0) throw PayloadError("storage_pool is set but the root disk size is not: set root_disk_size_gb");
    auto* d = spec.add_disks();
    d->set_target(target);
    auto* vol = d->mutable_volume();
    vol->set_pool(pool);
    vol->set_name(RootVolumeName(spec.name()));
    vol->set_create_size_bytes(size);
  } else if (auto path = HostFileSetting(p, "disk_path"); !path.empty()) {
    if (!ValidAbsolutePath(path)) throw PayloadError("disk_path: must be an absolute path");
    auto* d = spec.add_disks();
    d->set_target(target);
    d->set_source_path(path);
    d->set_type(path.rfind("/dev/", 0) == 0 ? v1::Disk::TYPE_BLOCK : v1::Disk::TYPE_FILE);
    std::string format = Lower(HostFileSetting(p, "disk_format"));
    if (!format.empty() && format != "raw" && format != "qcow2") throw PayloadError("disk_format: raw or qcow2");
    d->set_format(format);
  }
}

// NICs: MAC from CloudStack; VLAN N -> the host's bridge for VLAN N (vlan_bridge_map /
// vlan_bridge_format) or else the agent's own VLAN network on physical_interface; VXLAN N -> the
// agent's VXLAN network on physical_interface; untagged -> network_bridge or the libvirt network
// `network`. Any other broadcast URI is refused (IsolationFromBroadcastUri).
void AddNics(const Payload& p, v1::DomainSpec& spec) {
  std::string nic_model = Setting(p, "nic_model", "vdh");
  if (!nic_model.empty() && !ValidBridgeName(nic_model)) throw PayloadError("nic_model: invalid");
  if (p.vm.has_field("nics") && !p.vm.at("nics").is_null()) {
    if (!p.vm.at("nics").is_array()) throw PayloadError("cloudstack.vm.details.nics: not an array");
    const auto& nics = p.vm.at("nics").as_array();
    // Ordered by deviceId when present, as CloudStack numbers them.
    std::vector<std::pair<uint64_t, const web::json::value*>> ordered;
    size_t i = 0;
    for (const auto& n : nics) {
      auto dev = Field(n, "deviceId");
      ordered.emplace_back(dev.empty() ? i : ParseUnsigned(dev, "nics[].deviceId"), &n);
      ++i;
    }
    std::stable_sort(ordered.begin(), ordered.end(), [](auto& a, auto& b) { return a.first < b.first; });
    for (size_t idx = 0; idx < ordered.size(); ++idx) {
      const auto& n = *ordered[idx].second;
      const std::string where = "nics[" + std::to_string(idx) + "]";
      if (!n.is_object()) throw PayloadError(where + ": not an object");
      auto* nic = spec.add_nics();
      std::string mac = Lower(Field(n, "mac"));
      if (!mac.empty()) {
        if (!ValidMac(mac)) throw PayloadError(where + ".mac: '" + mac + "' is not a MAC address");
        nic->set_mac(mac);
      }
      if (!nic_model.empty()) nic->set_model(nic_model);
      const Isolation iso = IsolationFromBroadcastUri(Field(n, "broadcastUri"));
      // The agent's own VLAN/VXLAN networks on this physical interface (it must be in the
      // agent's [network] physical_interfaces); a pre-made bridge from vlan_bridge_map /
      // vlan_bridge_format overrides it for a VLAN.
      const std::string physical = Setting(p, "physical_interface", "he");
      if (!physical.empty() && !ValidBridgeName(physical)) {
        throw PayloadError("physical_interface: '" + physical + "' is not a valid interface name");
      }
      if (iso.kind == Isolation::Kind::kVxlan) {
        if (physical.empty()) {
          throw PayloadError("broadcastUri '" + Field(n, "broadcastUri").substr(0, 64) + "' (" + where +
                             "): needs the host detail physical_interface (the agent makes the VXLAN network on it)");
        }
        nic->mutable_vxlan()->set_physical(physical);
        nic->mutable_vxlan()->set_id(iso.id);
      } else if (iso.kind == Isolation::Kind::kVlan) {
        // A bridge the operator made for this VLAN (vlan_bridge_map, vlan_bridge_format) wins.
        const std::string map_text = Setting(p, "vlan_bridge_map", "he");
        const bool premade = !Setting(p, "vlan_bridge_format", "he").empty() ||
                             (!map_text.empty() && ParseVlanMap(map_text).count(static_cast<int>(iso.id)) != 0);
        if (!physical.empty() && !premade) {
          nic->mutable_vlan()->set_physical(physical);
          nic->mutable_vlan()->set_id(iso.id);
        } else {
          nic->set_bridge(BridgeForVlan(p, static_cast<int>(iso.id)));
        }
      } else if (auto br = Setting(p, "network_bridge", "he"); !br.empty()) {
        // Untagged (vlan://untagged or no URI) is the host's one shared network: the operator's
        // network_bridge (CloudStack's guest bridge, cloudbr0), else the libvirt network. Never
        // physical_interface: the agent would have to enslave the host's own uplink to a bridge
        // of its making, taking the host's addresses off it, and it makes only tagged networks.
        if (!ValidBridgeName(br)) throw PayloadError("network_bridge: '" + br + "' is not a valid bridge name");
        nic->set_bridge(br);
      } else if (auto net = Setting(p, "network", "he"); !net.empty()) {
        if (!ValidDomainName(net)) throw PayloadError("network: '" + net + "' is not a valid network name");
        nic->set_network(net);
      } else {
        throw PayloadError(where + ": untagged NIC (broadcastUri '" + Field(n, "broadcastUri").substr(0, 64) +
                           "') but the host has neither network_bridge nor network (physical_interface is "
                           "only for vlan://N and vxlan://N)");
      }
    }
  }
}

}  // namespace

// CloudStack's VM (cloudstack.vm.details) and the settings of its template, offering, host and
// extension (Setting) as the agent's DomainSpec, one part of the spec per function above.
// Throws PayloadError naming the field.
v1::DomainSpec BuildDomainSpec(const Payload& p) {
  RefuseHostFilesFromUserDetails(p);
  v1::DomainSpec spec;
  spec.set_name(VmName(p));
  if (auto uuid = InstanceUuid(p); !uuid.empty()) spec.set_uuid(uuid);
  if (auto instance = InstanceName(p); !instance.empty()) (*spec.mutable_labels())[kInstanceLabel] = instance;
  SetSize(p, spec);
  spec.set_serial_console(true);
  SetDisplay(p, spec);
  SetMachine(p, spec);
  SetBoot(p, spec);
  AddRootDisk(p, spec);
  AddNics(p, spec);
  return spec;
}

bool ValidDomainName(const std::string& s) {
  if (s.empty() || s.size() > 64 || !std::isalnum(static_cast<unsigned char>(s[0]))) return false;
  return AllOf(s, [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'; });
}

bool ValidBridgeName(const std::string& s) {
  // Linux interface names: at most 15 bytes, no '/', no whitespace; kept to a safe set.
  if (s.empty() || s.size() > 15) return false;
  return AllOf(s, [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'; });
}

bool ValidMac(const std::string& s) {
  if (s.size() != 17) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i % 3 == 2) {
      if (s[i] != ':') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(s[i]))) {
      return false;
    }
  }
  return true;
}

bool ValidUuid(const std::string& s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

bool ValidAbsolutePath(const std::string& s) {
  if (s.empty() || s[0] != '/' || s.size() > 1024) return false;
  if (s.find("/../") != std::string::npos || s.ends_with("/..")) return false;
  return std::none_of(s.begin(), s.end(), [](unsigned char c) { return c < 0x20 || c == 0x7f; });
}

bool ValidAddress(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= s.size() || s.size() > 260) return false;
  std::string host = s.substr(0, colon), port = s.substr(colon + 1);
  if (!AllOf(port, [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; }) || port.size() > 5) return false;
  int p = std::stoi(port);
  if (p < 1 || p > 65535) return false;
  if (host.front() == '[') {
    return host.back() == ']' && host.size() > 2 &&
           AllOf(host.substr(1, host.size() - 2), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.'; });
  }
  return AllOf(host, [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-'; });
}

bool IsLoopbackAddress(const std::string& address) {
  std::string host = address.substr(0, address.rfind(':'));
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "[::1]";
}

Isolation IsolationFromBroadcastUri(const std::string& uri) {
  // No URI at all: a NIC of an untagged network (basic zones send none).
  if (uri.empty()) return {};
  // Anything hvagent cannot honour exactly is refused: an isolated network (pvlan://, lswitch:,
  // ...) put on the untagged bridge would join the tenant to the shared network.
  const std::string lower = Lower(uri);
  const bool vlan = lower.rfind("vlan://", 0) == 0;
  const bool vxlan = lower.rfind("vxlan://", 0) == 0;
  if (!vlan && !vxlan) {
    auto colon = uri.find(':');
    std::string scheme = colon == std::string::npos ? uri : uri.substr(0, colon);
    if (scheme.size() > 32) scheme = scheme.substr(0, 32) + "...";
    throw PayloadError("broadcastUri '" + uri.substr(0, 64) + "': the '" + scheme +
                       "' isolation is not supported by hvagent (only vlan://N, vlan://untagged and vxlan://N); "
                       "refused rather than put the NIC on the untagged bridge");
  }
  std::string rest = uri.substr(vlan ? 7 : 8);
  if (vlan && Lower(rest) == "untagged") return {};
  const uint32_t max = vlan ? 4094 : 16777215;
  uint32_t id = 0;
  auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), id);
  if (rest.empty() || ec != std::errc() || ptr != rest.data() + rest.size() || id < 1 || id > max) {
    throw PayloadError("broadcastUri '" + uri.substr(0, 64) +
                       (vlan ? "': VLAN must be 1..4094 or untagged" : "': VNI must be 1..16777215"));
  }
  return {vlan ? Isolation::Kind::kVlan : Isolation::Kind::kVxlan, id};
}


uint64_t ParseUnsigned(const std::string& text, const std::string& field) {
  if (text.empty()) throw PayloadError(field + ": missing");
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || ptr != text.data() + text.size()) throw PayloadError(field + ": '" + text + "' is not a whole number");
  return v;
}

std::string PowerState(v1::DomainState state) {
  switch (state) {
    case v1::DOMAIN_STATE_RUNNING:
    case v1::DOMAIN_STATE_BLOCKED:
    case v1::DOMAIN_STATE_PAUSED:
    case v1::DOMAIN_STATE_SHUTTING_DOWN:
    case v1::DOMAIN_STATE_SUSPENDED:
      return "poweron";
    case v1::DOMAIN_STATE_SHUTOFF:
    case v1::DOMAIN_STATE_CRASHED:
      return "poweroff";
    default:
      return "unknown";
  }
}

}  // namespace hvagent::cloudstack
