#pragma once
// Turns the calling thread's last libvirt error into an absl::Status with the matching code.

#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace hvagent::hv {

// `what` names the operation ("start domain web1"); libvirt's message is appended.
absl::Status LastLibvirtError(absl::string_view what);
// The same, and libvirt's own error number (virErrorNumber) in `*vir_code` (0 when none), for a
// caller that must tell apart errors the status code lumps together.
absl::Status LastLibvirtError(absl::string_view what, int* vir_code);

// Stops libvirt from printing errors to stderr; we report them through Status and logs.
void SilenceLibvirtErrorPrinting();

}  // namespace hvagent::hv
