#include "hypervisor/libvirt/domain_xml_reader.h"


#include <memory>

#include "absl/strings/numbers.h"
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
  return nic;
}

}  // namespace

absl::StatusOr<std::vector<DomainNic>> ParseDomainNics(absl::string_view xml) {
  auto parsed = Parse(xml);
  if (!parsed.ok()) return parsed.status();
  xmlDoc* doc = parsed->get();
  const xmlNode* devices = Child(xmlDocGetRootElement(doc), "devices");
  std::vector<DomainNic> out;
  for (const xmlNode* d = devices ? devices->children : nullptr; d != nullptr; d = d->next) {
    if (!Is(d, "interface")) continue;
    out.push_back({NicOf(d), Dump(doc, d)});
  }
  return out;
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

absl::StatusOr<std::map<std::string, std::string>> ParseDomainLabels(absl::string_view xml) {
  auto parsed = Parse(xml);
  if (!parsed.ok()) return parsed.status();
  const xmlNode* root = xmlDocGetRootElement(parsed->get());
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

}  // namespace hvagent::hv
