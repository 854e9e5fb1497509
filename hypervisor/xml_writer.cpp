#include "hypervisor/xml_writer.h"

#include <stdexcept>

namespace hvagent::hv {

std::string XmlWriter::Escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

void XmlWriter::Indent() { out_.append(open_.size() * 2, ' '); }

void XmlWriter::StartTag(std::string_view name, const Attributes& attrs) {
  Indent();
  out_ += '<';
  out_ += name;
  for (const auto& [key, value] : attrs) {
    out_ += ' ';
    out_ += key;
    out_ += "='";
    out_ += Escape(value);
    out_ += '\'';
  }
}

XmlWriter& XmlWriter::Open(std::string_view name, const Attributes& attrs) {
  StartTag(name, attrs);
  out_ += ">\n";
  open_.emplace_back(name);
  return *this;
}

XmlWriter& XmlWriter::Leaf(std::string_view name, std::string_view text, const Attributes& attrs) {
  StartTag(name, attrs);
  if (text.empty()) {
    out_ += "/>\n";
  } else {
    out_ += '>';
    out_ += Escape(text);
    out_ += "</";
    out_ += name;
    out_ += ">\n";
  }
  return *this;
}

XmlWriter& XmlWriter::Close() {
  if (open_.empty()) throw std::logic_error("XmlWriter::Close without Open");
  std::string name = std::move(open_.back());
  open_.pop_back();
  Indent();
  out_ += "</" + name + ">\n";
  return *this;
}

std::string XmlWriter::Finish() {
  if (!open_.empty()) throw std::logic_error("XmlWriter::Finish with unclosed <" + open_.back() + ">");
  return std::move(out_);
}

}  // namespace hvagent::hv
