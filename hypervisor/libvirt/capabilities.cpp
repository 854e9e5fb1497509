#include "hypervisor/libvirt/capabilities.h"

#include <memory>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "absl/strings/str_cat.h"

namespace hvagent::hv {
namespace {

struct DocDeleter {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};

bool Is(const xmlNode* n, const char* name) {
  return n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, reinterpret_cast<const xmlChar*>(name)) == 0;
}

const xmlNode* Child(const xmlNode* parent, const char* name) {
  for (const xmlNode* c = parent->children; c != nullptr; c = c->next) {
    if (Is(c, name)) return c;
  }
  return nullptr;
}

std::string Text(const xmlNode* n) {
  if (n == nullptr) return {};
  xmlChar* content = xmlNodeGetContent(n);
  std::string out = content ? reinterpret_cast<const char*>(content) : "";
  xmlFree(content);
  return out;
}

std::string Attr(const xmlNode* n, const char* name) {
  xmlChar* v = xmlGetProp(n, reinterpret_cast<const xmlChar*>(name));
  std::string out = v ? reinterpret_cast<const char*>(v) : "";
  xmlFree(v);
  return out;
}

int DomainTypeRank(absl::string_view t) {
  if (t == "kvm") return 0;
  if (t == "xen") return 1;
  if (t == "qemu") return 2;
  if (t == "test") return 3;
  return 4;
}

}  // namespace

absl::StatusOr<Capabilities> ParseCapabilities(absl::string_view xml) {
  std::unique_ptr<xmlDoc, DocDeleter> doc(xmlReadMemory(
      xml.data(), static_cast<int>(xml.size()), "capabilities.xml", nullptr,
      XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
  if (!doc) return absl::InvalidArgumentError("capabilities: not well-formed XML");
  const xmlNode* root = xmlDocGetRootElement(doc.get());
  if (root == nullptr || !Is(root, "capabilities")) {
    return absl::InvalidArgumentError("capabilities: root element is not <capabilities>");
  }
  Capabilities caps;
  if (const xmlNode* host = Child(root, "host")) {
    if (const xmlNode* cpu = Child(host, "cpu")) {
      caps.host_arch = Text(Child(cpu, "arch"));
      caps.host_cpu_model = Text(Child(cpu, "model"));
    }
  }
  for (const xmlNode* g = root->children; g != nullptr; g = g->next) {
    if (!Is(g, "guest")) continue;
    const xmlNode* arch = Child(g, "arch");
    if (arch == nullptr) continue;
    Capabilities::Guest guest{Text(Child(g, "os_type")), Attr(arch, "name"), {}};
    for (const xmlNode* d = arch->children; d != nullptr; d = d->next) {
      if (Is(d, "domain")) guest.domain_types.push_back(Attr(d, "type"));
    }
    caps.guests.push_back(std::move(guest));
  }
  return caps;
}

absl::StatusOr<GuestTarget> SelectGuestTarget(const Capabilities& caps, absl::string_view arch) {
  std::string want = arch.empty() ? caps.host_arch : std::string(arch);
  bool found = false;
  GuestTarget chosen;
  int best_score = 1 << 30;
  for (const auto& g : caps.guests) {
    if (g.arch != want) continue;
    for (const auto& dt : g.domain_types) {
      int score = (g.os_type == "hvm" ? 0 : 10) + DomainTypeRank(dt);
      if (score < best_score) {
        best_score = score;
        chosen = GuestTarget{dt, g.os_type, g.arch};
        found = true;
      }
    }
  }
  if (!found) {
    return absl::InvalidArgumentError(absl::StrCat("spec.arch: ", want, " is not offered by this hypervisor"));
  }
  return chosen;
}

}  // namespace hvagent::hv
