#pragma once
// HostNetworks: the VLAN and VXLAN networks the agent makes on the host for NICs that ask for
// them (`vlan {physical, id}`, `vxlan {physical, id}`): an uplink device on a configured
// physical interface (`<physical>.<id>` of type vlan, or `vxlan<id>`) enslaved to a bridge of
// the agent's own (`<prefix><id>`), which the guest's tap then joins like any Linux bridge.
//
// Everything runs `ip` from an argv vector (storage::CommandRunner: no shell). What the agent
// made carries the kernel interface alias `hvagent-managed`, so ownership survives an agent
// restart with the devices themselves (and vanishes with them on reboot): a bridge without it
// is never touched, and never removed. Users are not counted here: DomainService derives them
// from the domains' definitions (all of libvirt's domains, foreign ones included) and asks to
// remove a bridge only when none uses it; a bridge with any port the agent did not make (a
// foreign guest's tap, an operator's interface) is kept too.

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hypervisor/model.h"
#include "storage/exec/command_runner.h"

namespace hvagent::service {

inline constexpr absl::string_view kHostNetworkAlias = "hvagent-managed";

struct HostNetworkOptions {
  // [network] physical_interfaces: the only interfaces a vlan/vxlan NIC may name.
  std::vector<std::string> physical_interfaces;
  std::string vlan_bridge_prefix = "brvlan";
  std::string vxlan_bridge_prefix = "brvx";
  // MTU set on the uplink and the bridge when the agent makes them; 0: the kernel's default.
  uint32_t mtu = 0;
  std::string ip = "/usr/sbin/ip";
};

class HostNetworks {
 public:
  HostNetworks(storage::CommandRunner& runner, HostNetworkOptions options)
      : runner_(runner), options_(std::move(options)) {}

  // The bridge `net` is served by; PermissionDenied naming `field` + ".vlan.physical" (or
  // ".vxlan.physical") when the interface is not in physical_interfaces. The request's own
  // ranges are checked by hv::ValidateNicSpec.
  absl::StatusOr<std::string> BridgeFor(absl::string_view field, const hv::HostNetwork& net) const;
  // The uplink device's name: "<physical>.<id>" or "vxlan<id>".
  static std::string UplinkFor(const hv::HostNetwork& net);

  // Makes the uplink and bridge unless they exist (idempotent), sets the MTU, brings both up.
  // Answers true when this call made the bridge (the caller undoes it with Remove if what
  // follows fails). All or nothing: a failure removes whatever this call made.
  // FailedPrecondition naming `field` when the bridge or uplink name is taken by an interface
  // the agent did not make, or when the VLAN id (VNI) is already this host's network over
  // another physical interface (one network per id: the names carry the id alone).
  absl::StatusOr<bool> Ensure(absl::string_view field, const hv::HostNetwork& net);

  // Removes `bridge` and the uplinks it holds when the agent made it and it holds no port the
  // agent did not make; otherwise leaves it (Ok). The caller has checked no domain uses it.
  absl::Status RemoveIfOwned(const std::string& bridge);

  // The bridges on the host that carry the agent's alias (for the sweep at recovery).
  absl::StatusOr<std::vector<std::string>> OwnedBridges();

  // True when `bridge` is named like one of the agent's bridges (a cheap pre-filter).
  bool LooksOwned(const std::string& bridge) const;

 private:
  // A device `ip -j -d link show` lists: its name, whether it carries the agent's alias, and the
  // interface it runs over (a VLAN's parent, a VXLAN's `dev`; empty for others).
  struct Link {
    std::string name;
    bool ours = false;
    std::string underlay;
  };
  // `ip -j -d link show <selector...>` read into Links. A device it names that does not exist is
  // NOT_FOUND; any other failure is the tool's.
  absl::StatusOr<std::vector<Link>> Links(const std::vector<std::string>& selector);
  // `dev`, or nullopt when there is no such device.
  absl::StatusOr<std::optional<Link>> Show(const std::string& dev);
  absl::Status Ip(std::vector<std::string> args);
  void Delete(const std::string& dev);

  storage::CommandRunner& runner_;
  HostNetworkOptions options_;
};

}  // namespace hvagent::service
