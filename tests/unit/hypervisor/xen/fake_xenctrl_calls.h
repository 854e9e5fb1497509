#pragma once
// FakeXenCtrlCalls: XenCtrlCalls answering from scripted domains the way Xen 4.17 does
// (xen/common/event_channel.c evtchn_status): ESRCH for a domain that does not exist, EINVAL
// for a port at or beyond the domain's allocated ports, EACCES for a Xen-consumed port, and the
// port's state otherwise. Records every call so tests can count them.

#include <cerrno>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include "hypervisor/xen/xenctrl_probe.h"

namespace hvagent::testing {

class FakeXenCtrlCalls final : public hv::XenCtrlCalls {
 public:
  struct Domain {
    bool dying = false;
    // Ports Xen has allocated (d->valid_evtchns); a status call at or beyond it is EINVAL.
    // kEndless: never EINVAL, for the walk cap.
    uint32_t valid_ports = 64;
    std::map<uint32_t, hv::EvtchnPortState> bound;  // every other valid port is closed
    std::set<uint32_t> xen_ports;                   // EACCES (consumer is Xen)
    // xc_domain_get_guest_width: errno (ENOSYS on Arm, EOPNOTSUPP for x86 HVM), or 0 with
    // width_bytes.
    int width_errno = ENOSYS;
    unsigned int width_bytes = 8;
    // From this port on, every status call fails with port_errno (ESRCH: destroyed mid-walk).
    std::optional<uint32_t> fail_from_port;
    int port_errno = ESRCH;
  };
  static constexpr uint32_t kEndless = std::numeric_limits<uint32_t>::max();

  // Binds ports [first, first + count) as interdomain channels.
  static void BindRange(Domain& d, uint32_t first, uint32_t count) {
    for (uint32_t p = first; p < first + count; ++p) d.bound[p] = hv::EvtchnPortState::kInterdomain;
  }

  int DomainGetInfoList(uint32_t first_domain, unsigned int max_domains,
                        std::vector<hv::XenDomainListEntry>* out) override {
    list_calls.push_back(first_domain);
    if (list_errno != 0) return list_errno;
    if (list_out_of_order) {
      out->push_back({.domid = 0});
      return 0;
    }
    for (auto it = domains.lower_bound(first_domain); it != domains.end() && max_domains > 0; ++it, --max_domains) {
      out->push_back({.domid = it->first, .dying = it->second.dying});
    }
    return 0;
  }

  int EvtchnStatus(uint32_t domid, uint32_t port, hv::EvtchnPortState* state) override {
    ++status_calls;
    ++status_calls_by_domain[domid];
    auto it = domains.find(domid);
    if (it == domains.end()) return ESRCH;
    const Domain& d = it->second;
    if (d.fail_from_port.has_value() && port >= *d.fail_from_port) return d.port_errno;
    if (d.valid_ports != kEndless && port >= d.valid_ports) return EINVAL;
    if (d.xen_ports.contains(port)) return EACCES;
    auto b = d.bound.find(port);
    *state = b == d.bound.end() ? hv::EvtchnPortState::kClosed : b->second;
    return 0;
  }

  int DomainGetGuestWidth(uint32_t domid, unsigned int* width_bytes) override {
    width_calls.push_back(domid);
    auto it = domains.find(domid);
    if (it == domains.end()) return ESRCH;
    if (it->second.width_errno != 0) return it->second.width_errno;
    *width_bytes = it->second.width_bytes;
    return 0;
  }

  std::map<uint32_t, Domain> domains;  // by domid
  int list_errno = 0;
  bool list_out_of_order = false;

  std::vector<uint32_t> list_calls;   // first_domain of each call
  std::vector<uint32_t> width_calls;  // domid of each call
  uint64_t status_calls = 0;
  std::map<uint32_t, uint64_t> status_calls_by_domain;
};

}  // namespace hvagent::testing
