#pragma once
// Capabilities: the parts of libvirt's capabilities XML the agent needs (host arch, which
// guest os types / archs / domain types the hypervisor offers), and the choice of GuestTarget.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "hypervisor/model.h"

namespace hvagent::hv {

struct Capabilities {
  struct Guest {
    std::string os_type;                    // "hvm", "xen"
    std::string arch;                       // "x86_64", "aarch64"
    std::vector<std::string> domain_types;  // "kvm", "qemu", "xen", "test"
  };
  std::string host_arch;
  std::string host_cpu_model;  // may be empty (e.g. the test driver)
  std::string host_cpu_vendor;  // "Intel", "AMD"; empty where libvirt names none (Arm, test)
  // <topology sockets= cores= threads=> of the host CPU; 0 when libvirt reports none.
  uint32_t host_sockets = 0, host_cores = 0, host_threads = 0;
  // CPU flags as libvirt names them: <feature name='vmx'/> (QEMU hosts) and the children of
  // <features> (older drivers, the test driver's <pae/>), in document order, without duplicates.
  std::vector<std::string> host_cpu_features;
  std::vector<Guest> guests;
};

// InvalidArgument if the XML cannot be parsed.
absl::StatusOr<Capabilities> ParseCapabilities(absl::string_view xml);

// Picks os type and domain type for `arch` (the host arch when empty): HVM before Xen PV,
// and kvm > xen > qemu > test. A non-empty `domain_type` (the agent's [hypervisor] domain_type,
// e.g. "qemu" where /dev/kvm exists but does not run guests) is the only type considered.
// InvalidArgument naming spec.arch if nothing offers the arch; FailedPrecondition naming
// hypervisor.domain_type if the arch is offered but not with that type.
absl::StatusOr<GuestTarget> SelectGuestTarget(const Capabilities& caps, absl::string_view arch,
                                              absl::string_view domain_type = "");

}  // namespace hvagent::hv
