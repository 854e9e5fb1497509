#pragma once
// Test helpers for generated libvirt XML: parse it for real with libxml2 and query it with XPath,
// and validate it against libvirt's own RelaxNG schemas with virt-xml-validate.

#include <libxml/parser.h>
#include <libxml/xpath.h>

#include <string>

#include "absl/status/status.h"

namespace hvagent::hv {

// Parses the builder's output for real, so tests check structure and escaping, not strings.
class Xml {
 public:
  explicit Xml(const std::string& text)
      : doc_(xmlReadMemory(text.data(), static_cast<int>(text.size()), "d.xml", nullptr, XML_PARSE_NONET)) {}
  ~Xml() {
    if (doc_) xmlFreeDoc(doc_);
  }
  bool ok() const { return doc_ != nullptr; }
  // The string value of an XPath expression ("" when it selects nothing).
  std::string Get(const std::string& xpath) const {
    xmlXPathContextPtr ctx = xmlXPathNewContext(doc_);
    xmlXPathObjectPtr obj =
        xmlXPathEvalExpression(reinterpret_cast<const xmlChar*>(("string(" + xpath + ")").c_str()), ctx);
    std::string out = obj && obj->stringval ? reinterpret_cast<const char*>(obj->stringval) : "";
    xmlXPathFreeObject(obj);
    xmlXPathFreeContext(ctx);
    return out;
  }
  int Count(const std::string& xpath) const { return std::stoi(Get("count(" + xpath + ")")); }

 private:
  xmlDocPtr doc_;
};

// Runs `virt-xml-validate <file> domain` (libvirt-clients) on `xml`: OK, or the validator's
// own words. FailedPrecondition when the validator is not installed.
absl::Status ValidateWithLibvirtSchema(const std::string& xml);

}  // namespace hvagent::hv
