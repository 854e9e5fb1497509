#pragma once
// NetworkPolicy: which host bridges a caller's NIC may join ([network] in the configuration).
// Checked by DomainService before anything is defined or plugged, for creates and hotplug alike;
// the hypervisor layer only checks that names are well formed, not whether they are allowed.

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "hypervisor/model.h"

namespace hvagent::service {

struct NetworkPolicy {
  // Linux bridges. Unset ([network] bridges absent): any bridge, as before the key existed, so
  // existing configurations keep working; set (even empty): only these.
  std::optional<std::vector<std::string>> bridges;
  // Open vSwitch bridges: only these (none unless configured).
  std::vector<std::string> ovs_bridges;
};

// PermissionDenied naming the field (`field` + ".bridge" / ".ovs.bridge") and the allowed
// names when `nic` asks for a bridge the policy does not list. Libvirt networks are not
// restricted here (they are the host administrator's own definitions).
absl::Status CheckNic(const NetworkPolicy& policy, absl::string_view field, const hv::NicSpec& nic);

}  // namespace hvagent::service
