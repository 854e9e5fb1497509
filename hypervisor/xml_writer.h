#pragma once
// XmlWriter: builds an XML document element by element, escaping every attribute value and
// every text node. The only way hvagent produces XML; nothing is pasted into markup.

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hvagent::hv {

class XmlWriter {
 public:
  using Attributes = std::vector<std::pair<std::string_view, std::string_view>>;

  // Opens <name attrs...>; must be matched by Close().
  XmlWriter& Open(std::string_view name, const Attributes& attrs = {});
  // Writes <name attrs...>text</name>, or <name attrs.../> when text is empty.
  XmlWriter& Leaf(std::string_view name, std::string_view text = {}, const Attributes& attrs = {});
  XmlWriter& Close();

  // The document; all opened elements must be closed.
  std::string Finish();

  static std::string Escape(std::string_view text);

 private:
  void Indent();
  void StartTag(std::string_view name, const Attributes& attrs);

  std::string out_;
  std::vector<std::string> open_;
};

}  // namespace hvagent::hv
