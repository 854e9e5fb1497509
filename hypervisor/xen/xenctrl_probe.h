#pragma once
// XenEventChannelProbe: the EventChannelProbe over libxenctrl, through XenCtrlCalls so the logic
// runs against a fake in unit tests. What is read and what is inferred (Xen 4.17; sources in
// docs/xen-event-channels.md):
//  - domains: xc_domain_getinfolist in batches (dying domains are skipped);
//  - ports: xc_evtchn_status for port 0, 1, 2... until Xen answers EINVAL (the port is beyond
//    the domain's allocated buckets), or a cap. Not-closed ports are bound; EACCES on a port
//    other than 0 is a Xen-internal channel and counts as bound (ports_xen). EPERM, or EACCES
//    on port 0 (always a reserved, non-Xen port), is PermissionDenied for the whole read; ESRCH
//    drops the domain (it went away: domains_vanished).
//  - ABI: not readable by dom0. kFifo when a bound port lies beyond the 2-level ABI's reach
//    (Xen only allocates such ports under FIFO), otherwise kUnknown.
//  - 2-level word width: xc_domain_get_guest_width (x86 PV only; 4 bytes -> 1024 ports, 8 ->
//    4096). Where Xen does not answer it (EOPNOTSUPP for x86 HVM, ENOSYS on Arm), the width is
//    Options::default_evtchn_word_bits (64: xen_ulong_t is 64-bit for every Arm guest). Asked
//    only when the 2-level figure decides the limit.
//  - max_evtchn_port: not readable; Options gives it (libxl default 1023; dom0 uncapped).
// The walk is capped per domain (max_ports_per_domain) and per read (max_status_calls_per_read)
// so a misbehaving hypervisor or a huge host cannot make a read spin. Reads are serialized.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "hypervisor/xen/event_channel_probe.h"

namespace hvagent::hv {

// EVTCHN_FIFO_NR_CHANNELS (public/event_channel.h): no domain has more ports than this.
inline constexpr uint32_t kEvtchnFifoNrChannels = uint32_t{1} << 17;
// DOMID_FIRST_RESERVED (public/xen.h): ordinary domids are below it.
inline constexpr uint32_t kDomidFirstReserved = 0x7FF0;
// libxl's default for max_event_channels (libxl__domain_build_info_setdefault).
inline constexpr uint32_t kLibxlDefaultMaxEvtchnPort = 1023;

// Port states as xc_evtchn_status reports them (EVTCHNSTAT_*).
enum class EvtchnPortState { kClosed, kUnbound, kInterdomain, kPirq, kVirq, kIpi };

struct XenDomainListEntry {
  uint32_t domid = 0;
  bool dying = false;  // XEN_DOMINF_dying
};

// The libxenctrl calls the probe makes, one method per call. Failures return the errno the
// call left (positive), success 0; nothing else is interpreted here.
class XenCtrlCalls {
 public:
  virtual ~XenCtrlCalls() = default;
  // xc_domain_getinfolist(first_domain, max_domains): appends up to max_domains domains with
  // domid >= first_domain, in domid order.
  virtual int DomainGetInfoList(uint32_t first_domain, unsigned int max_domains,
                                std::vector<XenDomainListEntry>* out) = 0;
  // xc_evtchn_status for (domid, port).
  virtual int EvtchnStatus(uint32_t domid, uint32_t port, EvtchnPortState* state) = 0;
  // xc_domain_get_guest_width, in bytes.
  virtual int DomainGetGuestWidth(uint32_t domid, unsigned int* width_bytes) = 0;
};

// libxenctrl itself (xc_interface_open). Unimplemented when the agent was built without
// libxenctrl; Unavailable / PermissionDenied when /dev/xen/privcmd cannot be opened (not Xen,
// not dom0, not root). Exercised only on a real Xen host (the Xen ARM64 system test).
absl::StatusOr<std::unique_ptr<XenCtrlCalls>> OpenRealXenCtrlCalls();
// Whether OpenRealXenCtrlCalls can succeed at all in this build.
bool XenCtrlBuiltIn();

class XenEventChannelProbe final : public EventChannelProbe {
 public:
  struct Options {
    // max_evtchn_port for domains not listed below; libxl's default.
    uint32_t default_max_evtchn_port = kLibxlDefaultMaxEvtchnPort;
    // Per-domid figure; nullopt = not capped. Xen builds dom0 with an unlimited max_evtchn_port.
    std::map<uint32_t, std::optional<uint32_t>> max_evtchn_port{{0, std::nullopt}};
    // 2-level word size when Xen does not report the guest width (Arm: always 64).
    uint32_t default_evtchn_word_bits = 64;
    uint32_t max_ports_per_domain = kEvtchnFifoNrChannels;
    uint64_t max_status_calls_per_read = uint64_t{1} << 22;
    unsigned int list_batch = 256;  // domains per xc_domain_getinfolist call
  };

  // The calls are not owned and must outlive the probe.
  explicit XenEventChannelProbe(XenCtrlCalls& calls) : XenEventChannelProbe(calls, Options{}) {}
  XenEventChannelProbe(XenCtrlCalls& calls, Options options);
  // Owning form, for OpenRealXenCtrlCalls().
  XenEventChannelProbe(std::unique_ptr<XenCtrlCalls> calls, Options options);

  bool Supported() const override { return true; }
  absl::StatusOr<EventChannelReport> Read() override;

  // Bindable ports of the 2-level ABI for a word of this many bits: bits^2 - 1.
  static uint32_t TwoLevelLimit(uint32_t word_bits) { return word_bits * word_bits - 1; }

 private:
  enum class WalkEnd { kDone, kVanished };
  absl::StatusOr<std::vector<XenDomainListEntry>> ListDomains();
  // Fills the port counts of *d; kVanished on ESRCH.
  absl::StatusOr<WalkEnd> Walk(uint32_t domid, uint64_t& budget, uint64_t& calls, DomainEventChannels* d);
  // Fills abi, limits; kVanished on ESRCH from the width call.
  absl::StatusOr<WalkEnd> Classify(DomainEventChannels* d);

  std::unique_ptr<XenCtrlCalls> owned_;
  XenCtrlCalls& calls_;
  const Options options_;
  std::mutex mu_;
};

}  // namespace hvagent::hv
