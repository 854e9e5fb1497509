#include "agent/service/network_policy.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace hvagent::service {
namespace {

absl::Status NotAllowed(absl::string_view field, const std::string& name, absl::string_view key,
                        const std::vector<std::string>& allowed) {
  return absl::PermissionDeniedError(absl::StrCat(
      field, ": bridge '", name, "' is not one this agent may use ([network] ", key, ": ",
      allowed.empty() ? std::string("none") : absl::StrJoin(allowed, ", "), ")"));
}

bool Listed(const std::vector<std::string>& list, const std::string& name) {
  return std::find(list.begin(), list.end(), name) != list.end();
}

}  // namespace

absl::Status CheckNic(const NetworkPolicy& policy, absl::string_view field, const hv::NicSpec& nic) {
  if (!nic.ovs_bridge.empty() && !Listed(policy.ovs_bridges, nic.ovs_bridge)) {
    return NotAllowed(absl::StrCat(field, ".ovs.bridge"), nic.ovs_bridge, "ovs_bridges", policy.ovs_bridges);
  }
  // A vlan/vxlan NIC's bridge is the agent's own (host_networks.h), not a `bridges` entry.
  if (!nic.bridge.empty() && !nic.host_network.has_value() && policy.bridges.has_value() && !Listed(*policy.bridges, nic.bridge)) {
    return NotAllowed(absl::StrCat(field, ".bridge"), nic.bridge, "bridges", *policy.bridges);
  }
  return absl::OkStatus();
}

}  // namespace hvagent::service
