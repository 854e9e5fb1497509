#include "hypervisor/libvirt/domain_xml_reader.h"


#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "hypervisor/domain_spec_validator.h"
#include "hypervisor/domain_xml_builder.h"
#include "hypervisor/libvirt/xml_read.h"

namespace hvagent::hv {
namespace {

using xml::Attr;
using xml::Child;
using xml::DocDeleter;
using xml::Is;
using xml::Text;

absl::StatusOr<std::unique_ptr<xmlDoc, DocDeleter>> Parse(absl::string_view xml) {
  std::unique_ptr<xmlDoc, DocDeleter> doc(xmlReadMemory(xml.data(), static_cast<int>(xml.size()), "domain.xml",
                                                        nullptr, XML_PARSE_NONET | XML_PARSE_NOERROR |
                                                                     XML_PARSE_NOWARNING));
  if (!doc) return absl::InternalError("domain XML from libvirt is not well-formed");
  return doc;
}

}  // namespace

absl::StatusOr<std::vector<DiskSpec>> ParseDomainDisks(absl::string_view xml) {
  auto parsed = Parse(xml);
  if (!parsed.ok()) return parsed.status();
  const auto& doc = *parsed;
  const xmlNode* devices = Child(xmlDocGetRootElement(doc.get()), "devices");
  std::vector<DiskSpec> disks;
  for (const xmlNode* d = devices ? devices->children : nullptr; d != nullptr; d = d->next) {
    if (!Is(d, "disk") || (Attr(d, "device") != "disk" && Attr(d, "device") != "cdrom")) continue;
    DiskSpec disk;
    disk.cdrom = Attr(d, "device") == "cdrom";
    disk.type = Attr(d, "type") == "block" ? DiskType::kBlock : DiskType::kFile;
    const xmlNode* source = Child(d, "source");
    disk.source_path = Attr(source, disk.type == DiskType::kBlock ? "dev" : "file");
    disk.target = Attr(Child(d, "target"), "dev");
    disk.bus = Attr(Child(d, "target"), "bus");
    disk.format = Attr(Child(d, "driver"), "type");
    disk.readonly = Child(d, "readonly") != nullptr;
    disks.push_back(std::move(disk));
  }
  return disks;
}

namespace {

std::string Dump(xmlDoc* doc, const xmlNode* node) {
  std::unique_ptr<xmlBuffer, decltype(&xmlBufferFree)> buf(xmlBufferCreate(), &xmlBufferFree);
  if (!buf || xmlNodeDump(buf.get(), doc, const_cast<xmlNode*>(node), 0, 0) < 0) return {};
  return reinterpret_cast<const char*>(xmlBufferContent(buf.get()));
}

NicSpec NicOf(const xmlNode* d) {
  NicSpec nic;
  nic.mac = Attr(Child(d, "mac"), "address");
  const std::string type = Attr(d, "type");
  const xmlNode* source = Child(d, "source");
  const xmlNode* port = Child(d, "virtualport");
  if (type == "network") {
    nic.network = Attr(source, "network");
  } else if (type == "bridge" && Attr(port, "type") == "openvswitch") {
    nic.ovs_bridge = Attr(source, "bridge");
    nic.interface_id = Attr(Child(port, "parameters"), "interfaceid");
    uint32_t tag = 0;
    if (absl::SimpleAtoi(Attr(Child(Child(d, "vlan"), "tag"), "id"), &tag)) nic.vlan = tag;
  } else if (type == "bridge") {
    nic.bridge = Attr(source, "bridge");
  }
  nic.model = Attr(Child(d, "model"), "type");
  if (!absl::SimpleAtoi(Attr(Child(d, "mtu"), "size"), &nic.mtu)) nic.mtu = 0;
  // A name a caller may give (or the agent's default for an ovs port); libvirt's own vnetN and
  // vifN.M are the running guest's, reported as DomainNic::name, not part of the spec.
  if (std::string dev = Attr(Child(d, "target"), "dev"); IsTapName(dev)) nic.target_dev = std::move(dev);
  return nic;
}

}  // namespace

namespace {

std::vector<DomainNic> NicsIn(xmlDoc* doc) {
  const xmlNode* root = xmlDocGetRootElement(doc);
  const xmlNode* devices = Child(root, "devices");
  // Only a running domain's XML carries its id; a definition's <target dev> (a name the spec
  // gave) is no device on the host yet.
  int id = -1;
  const bool running = absl::SimpleAtoi(Attr(root, "id"), &id) && id >= 0;
  std::vector<DomainNic> out;
  for (const xmlNode* d = devices ? devices->children : nullptr; d != nullptr; d = d->next) {
    if (!Is(d, "interface")) continue;
    out.push_back({NicOf(d), Dump(doc, d), running ? Attr(Child(d, "target"), "dev") : std::string()});
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<DomainNic>> ParseDomainNics(absl::string_view xml) {
  auto parsed = Parse(xml);
  if (!parsed.ok()) return parsed.status();
  return NicsIn(parsed->get());
}

absl::StatusOr<std::vector<std::string>> ParseInterfaceDevices(absl::string_view xml) {
  auto parsed = Parse(xml);
  if (!parsed.ok()) return parsed.status();
  const xmlNode* devices = Child(xmlDocGetRootElement(parsed->get()), "devices");
  std::vector<std::string> out;
  for (const xmlNode* d = devices ? devices->children : nullptr; d != nullptr; d = d->next) {
    if (!Is(d, "interface")) continue;
    std::string dev = Attr(Child(d, "target"), "dev");
    if (!dev.empty()) out.push_back(std::move(dev));
  }
  return out;
}

namespace {

// Whether a define from the model gives the domain this device again: the model writes it, or
// libvirt adds it by itself to every definition.
bool Modelled(const xmlNode* d) {
  for (const char* own : {"emulator", "controller", "input", "video", "memballoon", "audio", "serial", "console"}) {
    if (Is(d, own)) return true;
  }
  if (Is(d, "disk")) return Attr(d, "device") == "disk" || Attr(d, "device") == "cdrom";
  if (Is(d, "interface")) return Attr(d, "type") == "network" || Attr(d, "type") == "bridge";
  if (Is(d, "graphics")) return Attr(d, "type") == "vnc";
  return false;
}

std::string Describe(const xmlNode* d) {
  std::string out = absl::StrCat("<", reinterpret_cast<const char*>(d->name));
  for (const char* attr : {"type", "model", "device"}) {
    if (std::string v = Attr(d, attr); !v.empty()) absl::StrAppend(&out, " ", attr, "='", v, "'");
  }
  absl::StrAppend(&out, ">");
  if (std::string target = Attr(Child(d, "target"), "name"); Is(d, "channel") && !target.empty()) {
    absl::StrAppend(&out, " ", target);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseUnmodelledDevices(absl::string_view xml) {
  auto parsed = Parse(xml);
  if (!parsed.ok()) return parsed.status();
  const xmlNode* devices = Child(xmlDocGetRootElement(parsed->get()), "devices");
  std::vector<std::string> out;
  for (const xmlNode* d = devices ? devices->children : nullptr; d != nullptr; d = d->next) {
    if (d->type == XML_ELEMENT_NODE && !Modelled(d)) out.push_back(Describe(d));
  }
  return out;
}

absl::StatusOr<bool> ParseHasGuestAgent(absl::string_view xml) {
  auto parsed = Parse(xml);
  if (!parsed.ok()) return parsed.status();
  const xmlNode* devices = Child(xmlDocGetRootElement(parsed->get()), "devices");
  for (const xmlNode* d = devices ? devices->children : nullptr; d != nullptr; d = d->next) {
    if (!Is(d, "channel")) continue;
    const xmlNode* target = Child(d, "target");
    if (Attr(target, "type") == "virtio" && Attr(target, "name") == "org.qemu.guest_agent.0") return true;
  }
  return false;
}

namespace {

bool InLabelsNamespace(const xmlNode* n) {
  return n != nullptr && n->type == XML_ELEMENT_NODE && n->ns != nullptr && n->ns->href != nullptr &&
         xmlStrcmp(n->ns->href, reinterpret_cast<const xmlChar*>(kLabelsNamespace)) == 0;
}

}  // namespace

namespace {

std::map<std::string, std::string> LabelsIn(const xmlNode* root) {
  const xmlNode* labels = nullptr;
  if (root != nullptr && Is(root, "labels") && (root->ns == nullptr || InLabelsNamespace(root))) {
    // virDomainGetMetadata picked the element by our namespace and returns it stripped of it.
    labels = root;
  } else {
    const xmlNode* metadata = Child(root, "metadata");
    for (const xmlNode* c = metadata ? metadata->children : nullptr; c != nullptr; c = c->next) {
      if (Is(c, "labels") && InLabelsNamespace(c)) {
        labels = c;
        break;
      }
    }
  }
  std::map<std::string, std::string> out;
  for (const xmlNode* c = labels ? labels->children : nullptr; c != nullptr; c = c->next) {
    if (!Is(c, "label") || (c->ns != labels->ns && !InLabelsNamespace(c)) || out.size() == kMaxLabels) continue;
    std::map<std::string, std::string> one{{Attr(c, "key"), Attr(c, "value")}};
    if (ValidateDomainLabels(one).ok()) out.insert(*one.begin());
  }
  return out;
}

}  // namespace

absl::StatusOr<std::map<std::string, std::string>> ParseDomainLabels(absl::string_view xml) {
  auto parsed = Parse(xml);
  if (!parsed.ok()) return parsed.status();
  return LabelsIn(xmlDocGetRootElement(parsed->get()));
}

absl::StatusOr<DomainXmlFacts> ParseDomainFacts(absl::string_view xml) {
  auto parsed = Parse(xml);
  if (!parsed.ok()) return parsed.status();
  DomainXmlFacts facts;
  facts.labels = LabelsIn(xmlDocGetRootElement(parsed->get()));
  for (DomainNic& n : NicsIn(parsed->get())) facts.nics.push_back({std::move(n.spec), std::move(n.host_device)});
  return facts;
}

absl::StatusOr<std::optional<VncPasswordUpdate>> VncPasswordUpdateXml(absl::string_view xml,
                                                                      const std::string& password,
                                                                      const std::string& valid_to) {
  auto parsed = Parse(xml);
  if (!parsed.ok()) return parsed.status();
  xmlDoc* doc = parsed->get();
  const xmlNode* devices = Child(xmlDocGetRootElement(doc), "devices");
  for (const xmlNode* g = devices ? devices->children : nullptr; g != nullptr; g = g->next) {
    if (!Is(g, "graphics") || Attr(g, "type") != "vnc") continue;
    VncPasswordUpdate out;
    // The address: the element's own attribute, else its first <listen type='address'>.
    out.display.listen = Attr(g, "listen");
    if (out.display.listen.empty()) out.display.listen = Attr(Child(g, "listen"), "address");
    if (!absl::SimpleAtoi(Attr(g, "port"), &out.display.port) || out.display.port <= 0) {
      return absl::FailedPreconditionError("the VNC display has no port yet");
    }
    // The copy is changed, the parsed document stays as libvirt wrote it.
    xmlNode* copy = xmlDocCopyNode(const_cast<xmlNode*>(g), doc, 1);
    if (copy == nullptr) return absl::InternalError("copying the graphics element failed");
    xmlSetProp(copy, reinterpret_cast<const xmlChar*>("passwd"), reinterpret_cast<const xmlChar*>(password.c_str()));
    xmlSetProp(copy, reinterpret_cast<const xmlChar*>("passwdValidTo"),
               reinterpret_cast<const xmlChar*>(valid_to.c_str()));
    out.device_xml = Dump(doc, copy);
    xmlFreeNode(copy);
    if (out.device_xml.empty()) return absl::InternalError("writing the graphics element failed");
    return std::optional<VncPasswordUpdate>(std::move(out));
  }
  return std::optional<VncPasswordUpdate>();
}

namespace {

// libvirt writes <memory unit='KiB'>; other units are accepted as its schema lists them.
bool MemoryMib(const xmlNode* n, uint64_t* mib) {
  uint64_t v = 0;
  if (n == nullptr || !absl::SimpleAtoi(Text(n), &v)) return false;
  const std::string unit = Attr(n, "unit");
  if (unit == "b" || unit == "bytes") {
    v >>= 20;
  } else if (unit.empty() || unit == "k" || unit == "KiB") {
    v >>= 10;
  } else if (unit == "G" || unit == "GiB") {
    v <<= 10;
  } else if (unit != "M" && unit != "MiB") {
    return false;
  }
  *mib = v;
  return true;
}

void ReadBoot(const xmlNode* os, DomainSpec& spec) {
  if (const xmlNode* kernel = Child(os, "kernel"); kernel != nullptr) {
    spec.boot = DirectKernelBoot{Text(kernel), Text(Child(os, "initrd")), Text(Child(os, "cmdline"))};
  } else if (Attr(os, "firmware") == "efi") {
    spec.boot = FirmwareBoot{FirmwareType::kUefi, ""};  // the hypervisor picks the loader
  } else if (const xmlNode* loader = Child(os, "loader"); loader != nullptr) {
    spec.boot = FirmwareBoot{FirmwareType::kUefi, Text(loader)};
  }
}

void ReadCpu(const xmlNode* root, DomainSpec& spec) {
  const xmlNode* cpu = Child(root, "cpu");
  const std::string mode = Attr(cpu, "mode");
  if (mode == "host-passthrough") {
    spec.cpu_model = "host";
  } else if (mode == "maximum") {
    spec.cpu_model = "max";
  } else if (cpu != nullptr) {
    spec.cpu_model = Text(Child(cpu, "model"));
  }
  if (const xmlNode* t = Child(cpu, "topology"); t != nullptr) {
    GuestCpuTopology topology;
    if (absl::SimpleAtoi(Attr(t, "sockets"), &topology.sockets) && absl::SimpleAtoi(Attr(t, "cores"), &topology.cores) &&
        absl::SimpleAtoi(Attr(t, "threads"), &topology.threads)) {
      spec.cpu_topology = topology;
    }
  }
  spec.gic_version = Attr(Child(Child(root, "features"), "gic"), "version");
  if (!absl::SimpleAtoi(Text(Child(Child(root, "cputune"), "shares")), &spec.cpu_shares)) spec.cpu_shares = 0;
}

absl::Status ReadSizes(const xmlNode* root, DomainSpec& spec) {
  if (!MemoryMib(Child(root, "memory"), &spec.memory_mib)) {
    return absl::InternalError("domain XML from libvirt: unreadable <memory>");
  }
  const xmlNode* vcpu = Child(root, "vcpu");
  uint32_t max = 0;
  if (!absl::SimpleAtoi(Text(vcpu), &max)) return absl::InternalError("domain XML from libvirt: unreadable <vcpu>");
  spec.vcpus = max;
  if (uint32_t current = 0; absl::SimpleAtoi(Attr(vcpu, "current"), &current) && current < max) {
    spec.vcpus = current;
    spec.max_vcpus = max;
  }
  return absl::OkStatus();
}

void ReadDevices(const xmlNode* root, DomainSpec& spec) {
  const xmlNode* devices = Child(root, "devices");
  for (const xmlNode* d = devices ? devices->children : nullptr; d != nullptr; d = d->next) {
    if (Is(d, "serial") || Is(d, "console")) spec.serial_console = true;
    if (Is(d, "graphics") && Attr(d, "type") == "vnc") spec.vnc = true;
  }
}

}  // namespace

absl::StatusOr<DomainSpec> ParseDomainSpec(absl::string_view xml) {
  auto parsed = Parse(xml);
  if (!parsed.ok()) return parsed.status();
  const xmlNode* root = xmlDocGetRootElement(parsed->get());
  if (root == nullptr || !Is(root, "domain")) return absl::InternalError("domain XML from libvirt: no <domain>");
  DomainSpec spec;
  spec.name = Text(Child(root, "name"));
  spec.uuid = Text(Child(root, "uuid"));
  if (auto s = ReadSizes(root, spec); !s.ok()) return s;
  const xmlNode* os = Child(root, "os");
  const xmlNode* type = Child(os, "type");
  spec.arch = Attr(type, "arch");
  // Only full virtualization has machine types a definition may name (Xen PV/PVH: "xenpv").
  if (Text(type) == "hvm") spec.machine = Attr(type, "machine");
  ReadBoot(os, spec);
  ReadCpu(root, spec);
  ReadDevices(root, spec);
  auto labels = ParseDomainLabels(xml);
  if (!labels.ok()) return labels.status();
  spec.labels = std::move(*labels);
  auto disks = ParseDomainDisks(xml);
  if (!disks.ok()) return disks.status();
  spec.disks = std::move(*disks);
  auto nics = ParseDomainNics(xml);
  if (!nics.ok()) return nics.status();
  for (DomainNic& n : *nics) spec.nics.push_back(std::move(n.spec));
  return spec;
}

}  // namespace hvagent::hv
