#include "hypervisor/libvirt/capabilities.h"

#include <algorithm>
#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include "hypervisor/libvirt/xml_read.h"

namespace hvagent::hv {
namespace {

using xml::Attr;
using xml::Child;
using xml::DocDeleter;
using xml::Is;
using xml::Text;

uint32_t Count(const xmlNode* n, const char* attr) {
  uint32_t v = 0;
  if (n == nullptr || !absl::SimpleAtoi(Attr(n, attr), &v)) return 0;
  return v;
}

void AddFeature(std::vector<std::string>& out, std::string name) {
  if (name.empty() || std::find(out.begin(), out.end(), name) != out.end()) return;
  out.push_back(std::move(name));
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
      caps.host_cpu_vendor = Text(Child(cpu, "vendor"));
      const xmlNode* topo = Child(cpu, "topology");
      caps.host_sockets = Count(topo, "sockets");
      caps.host_cores = Count(topo, "cores");
      caps.host_threads = Count(topo, "threads");
      for (const xmlNode* f = cpu->children; f != nullptr; f = f->next) {
        if (Is(f, "feature")) AddFeature(caps.host_cpu_features, Attr(f, "name"));
        if (!Is(f, "features")) continue;
        for (const xmlNode* g = f->children; g != nullptr; g = g->next) {
          if (g->type == XML_ELEMENT_NODE) AddFeature(caps.host_cpu_features, reinterpret_cast<const char*>(g->name));
        }
      }
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

absl::StatusOr<GuestTarget> SelectGuestTarget(const Capabilities& caps, absl::string_view arch,
                                              absl::string_view domain_type) {
  std::string want = arch.empty() ? caps.host_arch : std::string(arch);
  bool arch_offered = false;
  bool found = false;
  GuestTarget chosen;
  int best_score = 1 << 30;
  for (const auto& g : caps.guests) {
    if (g.arch != want) continue;
    arch_offered = arch_offered || !g.domain_types.empty();
    for (const auto& dt : g.domain_types) {
      if (!domain_type.empty() && dt != domain_type) continue;
      int score = (g.os_type == "hvm" ? 0 : 10) + DomainTypeRank(dt);
      if (score < best_score) {
        best_score = score;
        chosen = GuestTarget{dt, g.os_type, g.arch};
        found = true;
      }
    }
  }
  if (found) return chosen;
  if (arch_offered) {
    return absl::FailedPreconditionError(absl::StrCat("hypervisor.domain_type: '", domain_type,
                                                      "' is not offered by this hypervisor for ", want));
  }
  return absl::InvalidArgumentError(absl::StrCat("spec.arch: ", want, " is not offered by this hypervisor"));
}

}  // namespace hvagent::hv
