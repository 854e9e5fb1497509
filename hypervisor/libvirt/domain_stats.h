#pragma once
// Turns one record of virConnectGetAllDomainStats (a list of typed parameters such as
// "cpu.time", "block.0.rd.bytes") into hv::DomainStats. Pure: no connection, unit-tested with
// hand-made parameter arrays.

#include <libvirt/libvirt.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "hypervisor/model.h"

namespace hvagent::hv {

// libvirt's virDomainState as the model's DomainState.
DomainState DomainStateFromLibvirt(int state);

// The groups of statistics the agent asks for in its one bulk call.
inline constexpr unsigned int kDomainStatsGroups = VIR_DOMAIN_STATS_STATE | VIR_DOMAIN_STATS_CPU_TOTAL |
                                                   VIR_DOMAIN_STATS_BALLOON | VIR_DOMAIN_STATS_VCPU |
                                                   VIR_DOMAIN_STATS_INTERFACE | VIR_DOMAIN_STATS_BLOCK;

// Unknown parameters are ignored; numbers of the wrong type, or indexes at or beyond the
// record's own "block.count" / "net.count", are skipped (a malformed record never aborts the
// whole sample). Disks and NICs keep libvirt's index order.
DomainStats ParseDomainStats(const std::string& name, const std::string& uuid, const virTypedParameter* params,
                             int nparams);

// The per-domain fallback for drivers without the bulk call (libvirt 9.0's libxl driver answers
// VIR_ERR_NO_SUPPORT): what virDomainGetInfo, virDomainBlockStats and virDomainInterfaceStats
// returned for one domain. A device whose call failed has no struct; libvirt's -1 ("this driver
// does not report that field") becomes nullopt, never zero.
struct PerDomainCalls {
  std::optional<virDomainInfo> info;  // nullopt when virDomainGetInfo failed
  std::optional<unsigned int> id;     // virDomainGetID while the domain runs
  std::vector<std::pair<std::string, std::optional<virDomainBlockStatsStruct>>> disks;       // by target
  std::vector<std::pair<std::string, std::optional<virDomainInterfaceStatsStruct>>> nics;    // by host dev
};
DomainStats StatsFromPerDomainCalls(const std::string& name, const std::string& uuid, const PerDomainCalls& calls);

}  // namespace hvagent::hv
