// Built instead of real_xenctrl_calls.cpp when libxenctrl was not found (or
// HVAGENT_WITH_XENCTRL=OFF): the probe logic stays, the real calls answer Unimplemented.

#include "hypervisor/xen/xenctrl_probe.h"

namespace hvagent::hv {

bool XenCtrlBuiltIn() { return false; }

absl::StatusOr<std::unique_ptr<XenCtrlCalls>> OpenRealXenCtrlCalls() {
  return absl::UnimplementedError("event channels: hvagent was built without libxenctrl (libxen-dev)");
}

}  // namespace hvagent::hv
