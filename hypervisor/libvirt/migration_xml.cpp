#include "hypervisor/libvirt/migration_xml.h"

#include <memory>
#include <set>

#include "absl/strings/str_cat.h"
#include "hypervisor/libvirt/xml_read.h"

namespace hvagent::hv {
namespace {

const xmlChar* X(const char* s) { return reinterpret_cast<const xmlChar*>(s); }

// Makes `disk` a block disk reading `path`: <disk type='block'><source dev='PATH'/>.
void PointAt(xmlNode* disk, const std::string& path) {
  xmlSetProp(disk, X("type"), X("block"));
  xmlNode* source = const_cast<xmlNode*>(xml::Child(disk, "source"));
  if (source == nullptr) source = xmlNewChild(disk, nullptr, X("source"), nullptr);
  // A file or network disk's attributes mean nothing on a block disk.
  for (const char* a : {"file", "protocol", "name", "pool", "volume"}) xmlUnsetProp(source, X(a));
  xmlSetProp(source, X("dev"), X(path.c_str()));  // libxml2 escapes attribute values on output
}

}  // namespace

absl::StatusOr<std::string> RetargetDisks(const std::string& text, const std::map<std::string, std::string>& paths) {
  std::unique_ptr<xmlDoc, xml::DocDeleter> doc(
      xmlReadMemory(text.data(), static_cast<int>(text.size()), "domain.xml", nullptr,
                    XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
  xmlNode* root = doc ? xmlDocGetRootElement(doc.get()) : nullptr;
  if (root == nullptr || !xml::Is(root, "domain")) return absl::InvalidArgumentError("domain XML: does not parse");
  std::set<std::string> found;
  const xmlNode* devices = xml::Child(root, "devices");
  for (xmlNode* d = devices ? devices->children : nullptr; d != nullptr; d = d->next) {
    if (!xml::Is(d, "disk")) continue;
    const std::string target = xml::Attr(xml::Child(d, "target"), "dev");
    auto it = paths.find(target);
    if (it == paths.end()) continue;
    PointAt(d, it->second);
    found.insert(target);
  }
  for (const auto& [target, path] : paths) {
    if (!found.count(target)) {
      return absl::InvalidArgumentError(absl::StrCat("disk_paths: the domain has no disk '", target, "'"));
    }
  }
  xmlChar* out = nullptr;
  int size = 0;
  xmlDocDumpMemory(doc.get(), &out, &size);
  std::string result(reinterpret_cast<const char*>(out), static_cast<size_t>(size));
  xmlFree(out);
  return result;
}

}  // namespace hvagent::hv
