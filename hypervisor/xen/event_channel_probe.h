#pragma once
// EventChannelProbe: per-domain event-channel usage on a Xen host (docs/xen-event-channels.md).
// The model is plain data with no libxenctrl types; XenEventChannelProbe (xenctrl_probe.h) fills
// it on Xen. Everywhere else UnsupportedEventChannelProbe answers Unimplemented naming the
// hypervisor, so a KVM or test host never reports zeros that look measured.
//
// EventChannelWatch turns successive reports into edge-triggered threshold events: one event
// when a domain's used share reaches the configured share, none while it stays there, and one
// (optional) when it falls back below, after which it is armed again.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hvagent::hv {

enum class EvtchnAbi { kUnknown, kTwoLevel, kFifo };
const char* EvtchnAbiName(EvtchnAbi abi);  // "unknown", "2-level", "fifo"

// Port counts are of bindable ports: port 0 is reserved by Xen in every domain, so a limit of
// N means ports 1..N (the figures xl.cfg's max_event_channels uses).
struct DomainEventChannels {
  uint32_t domid = 0;
  std::string name;  // may be empty: libxenctrl knows no names; callers may fill it in
  // kFifo only when proven (a bound port beyond what the 2-level ABI can address); Xen 4.17
  // exposes no way for dom0 to read a domain's ABI, so otherwise kUnknown.
  EvtchnAbi abi = EvtchnAbi::kUnknown;
  // Bindable ports the ABI allows: 2-level (word bits)^2 - 1 (4095, or 1023 for 32-bit x86 PV),
  // FIFO 2^17 - 1. For kUnknown this is the 2-level figure: the smaller, conservative one.
  uint32_t abi_limit = 0;
  // The domain's max_evtchn_port as the toolstack set it. Not readable through libxenctrl, so
  // this is the configured figure (libxl's default 1023); nullopt = not capped (dom0).
  std::optional<uint32_t> max_evtchn_port;
  // A bound port above max_evtchn_port was seen: the configured figure is wrong for this
  // domain, so it is ignored and the limit is the ABI's.
  bool cap_exceeded = false;
  uint32_t port_limit = 0;    // min(abi_limit, max_evtchn_port)
  bool limit_exact = false;   // false when port_limit rests on the unknown-ABI assumption
  uint32_t ports_bound = 0;   // ports not closed, including ports_xen
  uint32_t ports_xen = 0;     // ports whose status Xen refused with EACCES (Xen-internal)
  uint32_t ports_valid = 0;   // ports the walk visited (Xen's allocated buckets, or the cap)
  uint32_t highest_bound_port = 0;  // 0 when none is bound
  bool walk_truncated = false;      // the walk stopped at a cap before Xen said "no more ports"

  uint32_t headroom() const { return ports_bound >= port_limit ? 0 : port_limit - ports_bound; }
  // ports_bound / port_limit; can exceed 1 only if the limit assumption was wrong. A zero limit
  // is full (1.0).
  double used_share() const {
    return port_limit == 0 ? 1.0 : static_cast<double>(ports_bound) / static_cast<double>(port_limit);
  }
};

struct EventChannelReport {
  std::vector<DomainEventChannels> domains;  // by domid
  uint64_t host_ports_bound = 0;             // sum of ports_bound
  uint64_t host_port_limit = 0;              // sum of port_limit
  uint32_t domains_vanished = 0;   // listed, then gone (ESRCH) before their walk finished
  uint32_t domains_not_walked = 0; // skipped because the per-read call budget ran out
  uint64_t status_calls = 0;       // xc_evtchn_status calls this read made
  // Some domain's walk hit a cap, or domains were skipped: totals are lower bounds.
  bool truncated = false;
};

class EventChannelProbe {
 public:
  virtual ~EventChannelProbe() = default;
  // False on hosts that are not Xen; Read() then answers Unimplemented.
  virtual bool Supported() const = 0;
  // One full sample. PermissionDenied when the agent may not read event channels (not dom0 /
  // not root / XSM policy), naming the call.
  virtual absl::StatusOr<EventChannelReport> Read() = 0;
};

// For KVM/QEMU and libvirt test hosts: never a report, always Unimplemented.
class UnsupportedEventChannelProbe final : public EventChannelProbe {
 public:
  // hypervisor: what the host runs, as the message should name it ("qemu", "test").
  explicit UnsupportedEventChannelProbe(std::string hypervisor) : hypervisor_(std::move(hypervisor)) {}
  bool Supported() const override { return false; }
  absl::StatusOr<EventChannelReport> Read() override;

 private:
  std::string hypervisor_;
};

// A Xen host whose event channels cannot be read (not dom0, an XSM policy, no libxenctrl):
// every read answers why.
class FailedEventChannelProbe final : public EventChannelProbe {
 public:
  explicit FailedEventChannelProbe(absl::Status why) : why_(std::move(why)) {}
  bool Supported() const override { return true; }
  absl::StatusOr<EventChannelReport> Read() override { return why_; }

 private:
  absl::Status why_;
};

class EventChannelWatch {
 public:
  struct Options {
    double share = 0.8;  // fire when used_share() >= share; 0 < share <= 1
    // Re-arm when used_share() < clear_share (hysteresis); nullopt = share. 0 < clear <= share.
    std::optional<double> clear_share;
    bool report_cleared = true;  // also emit an event when a domain drops back below
  };
  enum class Direction { kAbove, kCleared };
  struct Crossing {
    uint32_t domid = 0;
    std::string name;
    Direction direction = Direction::kAbove;
    double used_share = 0;
    uint32_t ports_bound = 0;
    uint32_t port_limit = 0;
  };

  // InvalidArgument for a share outside (0, 1] or a clear_share outside (0, share].
  static absl::StatusOr<EventChannelWatch> Create(Options options);

  // Feeds the next report; returns the crossings it caused, by domid. A domain first seen
  // already at or above the share counts as crossing. Domains absent from a complete report
  // are forgotten (a domid reused later starts armed); a truncated report forgets nothing.
  std::vector<Crossing> Observe(const EventChannelReport& report);

  const Options& options() const { return options_; }
  bool IsAbove(uint32_t domid) const;

 private:
  explicit EventChannelWatch(Options options) : options_(options) {}

  Options options_;
  std::map<uint32_t, bool> above_;  // by domid: true while fired and not yet cleared
};

}  // namespace hvagent::hv
