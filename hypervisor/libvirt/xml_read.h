#pragma once
// Small read helpers over libxml2 trees, shared by the parsers of libvirt's XML
// (capabilities, domain definitions).

#include <libxml/parser.h>
#include <libxml/tree.h>

#include <string>

namespace hvagent::hv::xml {

struct DocDeleter {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};

inline bool Is(const xmlNode* n, const char* name) {
  return n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, reinterpret_cast<const xmlChar*>(name)) == 0;
}

// The first child element called `name`, or null (also for a null parent).
inline const xmlNode* Child(const xmlNode* parent, const char* name) {
  for (const xmlNode* c = parent ? parent->children : nullptr; c != nullptr; c = c->next) {
    if (Is(c, name)) return c;
  }
  return nullptr;
}

inline std::string Text(const xmlNode* n) {
  if (n == nullptr) return {};
  xmlChar* content = xmlNodeGetContent(n);
  std::string out = content ? reinterpret_cast<const char*>(content) : "";
  xmlFree(content);
  return out;
}

inline std::string Attr(const xmlNode* n, const char* name) {
  if (n == nullptr) return {};
  xmlChar* v = xmlGetProp(n, reinterpret_cast<const xmlChar*>(name));
  std::string out = v ? reinterpret_cast<const char*>(v) : "";
  xmlFree(v);
  return out;
}

}  // namespace hvagent::hv::xml
