#include "hypervisor/libvirt/domain_xml_reader.h"

#include <libxml/parser.h>
#include <libxml/tree.h>

#include <memory>

namespace hvagent::hv {
namespace {

struct DocDeleter {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};

bool Is(const xmlNode* n, const char* name) {
  return n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, reinterpret_cast<const xmlChar*>(name)) == 0;
}

const xmlNode* Child(const xmlNode* parent, const char* name) {
  for (const xmlNode* c = parent ? parent->children : nullptr; c != nullptr; c = c->next) {
    if (Is(c, name)) return c;
  }
  return nullptr;
}

std::string Attr(const xmlNode* n, const char* name) {
  if (n == nullptr) return {};
  xmlChar* v = xmlGetProp(n, reinterpret_cast<const xmlChar*>(name));
  std::string out = v ? reinterpret_cast<const char*>(v) : "";
  xmlFree(v);
  return out;
}

}  // namespace

absl::StatusOr<std::vector<DiskSpec>> ParseDomainDisks(absl::string_view xml) {
  std::unique_ptr<xmlDoc, DocDeleter> doc(xmlReadMemory(xml.data(), static_cast<int>(xml.size()), "domain.xml",
                                                        nullptr, XML_PARSE_NONET | XML_PARSE_NOERROR |
                                                                     XML_PARSE_NOWARNING));
  if (!doc) return absl::InternalError("domain XML from libvirt is not well-formed");
  const xmlNode* devices = Child(xmlDocGetRootElement(doc.get()), "devices");
  std::vector<DiskSpec> disks;
  for (const xmlNode* d = devices ? devices->children : nullptr; d != nullptr; d = d->next) {
    if (!Is(d, "disk") || Attr(d, "device") != "disk") continue;
    DiskSpec disk;
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

}  // namespace hvagent::hv
