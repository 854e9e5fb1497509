// libFuzzer target: arbitrary DomainSpecs through ValidateDomainSpec and DomainXmlBuilder.
// Properties checked on every input the builder accepts:
//   - the output is well-formed XML with exactly one <domain>, one <name>, and the name,
//     kernel command line and disk paths read back exactly as given (no injection);
//   - the builder never crashes, whatever it is fed (ASan/UBSan catch the rest).
#include <libxml/parser.h>
#include <libxml/xpath.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "hypervisor/domain_xml_builder.h"

namespace {

using namespace hvagent::hv;

class Reader {
 public:
  Reader(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  uint8_t Byte() { return n_ ? (--n_, *d_++) : 0; }
  uint32_t U32() { return Byte() | Byte() << 8 | Byte() << 16 | static_cast<uint32_t>(Byte()) << 24; }
  std::string Str() {
    size_t len = Byte() % 72;
    std::string s;
    while (len-- && n_) s += static_cast<char>(Byte());
    return s;
  }

 private:
  const uint8_t* d_;
  size_t n_;
};

std::string XPath(xmlDocPtr doc, const char* expr) {
  xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
  xmlXPathObjectPtr obj = xmlXPathEvalExpression(reinterpret_cast<const xmlChar*>(expr), ctx);
  std::string out = obj && obj->stringval ? reinterpret_cast<const char*>(obj->stringval) : "";
  xmlXPathFreeObject(obj);
  xmlXPathFreeContext(ctx);
  return out;
}

void Check(bool ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "property violated: %s\n", what);
    abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader r(data, size);
  DomainSpec s;
  s.name = r.Str();
  if (r.Byte() & 1) s.uuid = r.Str();
  s.vcpus = r.U32() % 5000;
  s.memory_mib = r.U32();
  switch (r.Byte() % 3) {
    case 0: break;
    case 1: s.boot = DirectKernelBoot{r.Str(), r.Str(), r.Str()}; break;
    case 2: s.boot = FirmwareBoot{static_cast<FirmwareType>(r.Byte() % 3), r.Str()}; break;
  }
  for (int i = r.Byte() % 3; i > 0; --i) {
    s.disks.push_back({r.Str(), (r.Byte() & 1) ? DiskType::kBlock : DiskType::kFile, r.Str(), r.Str(),
                       static_cast<bool>(r.Byte() & 1), r.Str()});
  }
  for (int i = r.Byte() % 3; i > 0; --i) s.nics.push_back({r.Str(), r.Str(), r.Str(), r.Str()});
  s.serial_console = r.Byte() & 1;
  static const GuestTarget kTargets[] = {{"qemu", "hvm", "x86_64"}, {"xen", "xen", "aarch64"},
                                         {"kvm", "hvm", "aarch64"}, {"test", "hvm", "i686"}};
  const GuestTarget& target = kTargets[r.Byte() % 4];

  auto xml = DomainXmlBuilder::Build(s, target);
  if (!xml.ok()) return 0;
  xmlDocPtr doc = xmlReadMemory(xml->data(), static_cast<int>(xml->size()), "f.xml", nullptr,
                                XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
  Check(doc != nullptr, "builder output is well-formed XML");
  Check(XPath(doc, "string(count(/domain))") == "1", "one <domain>");
  Check(XPath(doc, "string(count(//name))") == "1", "one <name>");
  Check(XPath(doc, "string(/domain/name)") == s.name, "name reads back unchanged");
  if (const auto* k = std::get_if<DirectKernelBoot>(&s.boot)) {
    Check(XPath(doc, "string(/domain/os/kernel)") == k->kernel_path, "kernel path reads back");
    Check(XPath(doc, "string(/domain/os/cmdline)") == k->cmdline, "cmdline reads back");
  }
  Check(XPath(doc, "string(count(/domain/devices/disk))") == std::to_string(s.disks.size()), "disk count");
  xmlFreeDoc(doc);
  return 0;
}
