#include "hypervisor/xml_writer.h"

#include <gtest/gtest.h>

namespace hvagent::hv {
namespace {

TEST(XmlWriterTest, EscapesTextAndAttributes) {
  XmlWriter w;
  w.Open("a", {{"k", "x'\"<&>"}}).Leaf("b", "</b><c>&amp;").Close();
  EXPECT_EQ(w.Finish(),
            "<a k='x&apos;&quot;&lt;&amp;&gt;'>\n  <b>&lt;/b&gt;&lt;c&gt;&amp;amp;</b>\n</a>\n");
}

TEST(XmlWriterTest, EmptyLeafIsSelfClosing) {
  XmlWriter w;
  w.Leaf("acpi");
  EXPECT_EQ(w.Finish(), "<acpi/>\n");
}

TEST(XmlWriterTest, FinishWithOpenElementThrows) {
  XmlWriter w;
  w.Open("domain");
  EXPECT_THROW(w.Finish(), std::logic_error);
}

TEST(XmlWriterTest, CloseWithoutOpenThrows) {
  XmlWriter w;
  EXPECT_THROW(w.Close(), std::logic_error);
}

}  // namespace
}  // namespace hvagent::hv
