#pragma once
// Turns the calling thread's last libvirt error into an absl::Status with the matching code.

#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace hvagent::hv {

// `what` names the operation ("start domain web1"); libvirt's message is appended.
absl::Status LastLibvirtError(absl::string_view what);

// Stops libvirt from printing errors to stderr; we report them through Status and logs.
void SilenceLibvirtErrorPrinting();

}  // namespace hvagent::hv
