#include "hypervisor/xen/xenctrl_probe.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace hvagent::hv {
namespace {

// errno from a libxenctrl call as a status naming the call. Permission errors say what the
// agent needs, since that is the usual cause (not dom0, not root, or an XSM policy).
absl::Status CallError(const std::string& what, int err) {
  std::string message = absl::StrCat(what, ": ", std::strerror(err), " (errno ", err, ")");
  switch (err) {
    case EPERM:
    case EACCES:
      return absl::PermissionDeniedError(
          absl::StrCat(message, "; reading event channels needs root in dom0 (or an XSM policy allowing it)"));
    case ESRCH:
      return absl::NotFoundError(message);
    case EINTR:
    case EAGAIN:
    case EBUSY:
    case ENOENT:
    case ENODEV:
    case ENXIO:
      return absl::UnavailableError(message);
    case ENOMEM:
      return absl::ResourceExhaustedError(message);
    case ENOSYS:
    case EOPNOTSUPP:
      return absl::UnimplementedError(message);
    default:
      return absl::InternalError(message);
  }
}

std::string DomPort(uint32_t domid, uint32_t port) {
  return absl::StrCat("xc_evtchn_status(domain ", domid, ", port ", port, ")");
}

absl::Status CheckOptions(const XenEventChannelProbe::Options& o) {
  if (o.default_evtchn_word_bits != 32 && o.default_evtchn_word_bits != 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("event channels: default_evtchn_word_bits must be 32 or 64, got ", o.default_evtchn_word_bits));
  }
  if (o.max_ports_per_domain == 0 || o.max_ports_per_domain > kEvtchnFifoNrChannels) {
    return absl::InvalidArgumentError(absl::StrCat("event channels: max_ports_per_domain must be in [1, ",
                                                   kEvtchnFifoNrChannels, "], got ", o.max_ports_per_domain));
  }
  if (o.list_batch == 0) return absl::InvalidArgumentError("event channels: list_batch must be at least 1");
  return absl::OkStatus();
}

}  // namespace

XenEventChannelProbe::XenEventChannelProbe(XenCtrlCalls& calls, Options options)
    : calls_(calls), options_(std::move(options)) {}

XenEventChannelProbe::XenEventChannelProbe(std::unique_ptr<XenCtrlCalls> calls, Options options)
    : owned_(std::move(calls)), calls_(*owned_), options_(std::move(options)) {}

absl::StatusOr<std::vector<XenDomainListEntry>> XenEventChannelProbe::ListDomains() {
  std::vector<XenDomainListEntry> all;
  uint32_t first = 0;
  while (first < kDomidFirstReserved) {
    std::vector<XenDomainListEntry> batch;
    if (int err = calls_.DomainGetInfoList(first, options_.list_batch, &batch); err != 0) {
      return CallError(absl::StrCat("xc_domain_getinfolist(first ", first, ")"), err);
    }
    for (const XenDomainListEntry& e : batch) {
      // Each batch must move forward, or a confused answer could loop forever.
      if (e.domid < first) {
        return absl::InternalError(absl::StrCat("xc_domain_getinfolist(first ", first, ") returned domain ", e.domid,
                                                " out of order"));
      }
      if (e.domid >= kDomidFirstReserved) return all;
      all.push_back(e);
      first = e.domid + 1;
    }
    if (batch.size() < options_.list_batch) break;
  }
  return all;
}

absl::StatusOr<XenEventChannelProbe::WalkEnd> XenEventChannelProbe::Walk(uint32_t domid, uint64_t& budget,
                                                                         uint64_t& calls, DomainEventChannels* d) {
  uint32_t port = 0;
  bool saw_end = false;
  for (; port < options_.max_ports_per_domain; ++port) {
    if (budget == 0) break;
    --budget;
    ++calls;
    EvtchnPortState state = EvtchnPortState::kClosed;
    const int err = calls_.EvtchnStatus(domid, port, &state);
    if (err == 0) {
      if (state != EvtchnPortState::kClosed) {
        ++d->ports_bound;
        d->highest_bound_port = port;
      }
      continue;
    }
    if (err == EINVAL) {  // beyond the domain's allocated ports: the walk is complete
      saw_end = true;
      break;
    }
    if (err == ESRCH) return WalkEnd::kVanished;
    // Port 0 is reserved and never Xen-consumed, so EACCES there can only be a policy denial.
    if (err == EACCES && port != 0) {
      ++d->ports_bound;
      ++d->ports_xen;
      d->highest_bound_port = port;
      continue;
    }
    return CallError(DomPort(domid, port), err);
  }
  d->ports_valid = port;
  // Xen never allocates more than kEvtchnFifoNrChannels ports, so reaching that is complete.
  d->walk_truncated = !saw_end && port < kEvtchnFifoNrChannels;
  return WalkEnd::kDone;
}

absl::StatusOr<XenEventChannelProbe::WalkEnd> XenEventChannelProbe::Classify(DomainEventChannels* d) {
  std::optional<uint32_t> cap = options_.default_max_evtchn_port;
  if (auto it = options_.max_evtchn_port.find(d->domid); it != options_.max_evtchn_port.end()) cap = it->second;
  d->max_evtchn_port = cap;
  if (cap.has_value() && d->ports_bound > 0 && d->highest_bound_port > *cap) {
    d->cap_exceeded = true;
    cap.reset();
  }

  const uint32_t widest_2l = TwoLevelLimit(64);
  if (d->ports_bound > 0 && d->highest_bound_port > widest_2l) {
    d->abi = EvtchnAbi::kFifo;
  } else {
    unsigned int width_bytes = 0;
    uint32_t word_bits = options_.default_evtchn_word_bits;
    const int err = calls_.DomainGetGuestWidth(d->domid, &width_bytes);
    if (err == 0) {
      if (width_bytes != 4 && width_bytes != 8) {
        return absl::InternalError(absl::StrCat("xc_domain_get_guest_width(domain ", d->domid, ") answered ",
                                                width_bytes, " bytes"));
      }
      word_bits = width_bytes * 8;
    } else if (err == ESRCH) {
      return WalkEnd::kVanished;
    } else if (err != ENOSYS && err != EOPNOTSUPP) {
      return CallError(absl::StrCat("xc_domain_get_guest_width(domain ", d->domid, ")"), err);
    }
    d->abi_limit = TwoLevelLimit(word_bits);
    // A bound port the 2-level ABI cannot address proves FIFO.
    if (d->ports_bound > 0 && d->highest_bound_port > d->abi_limit) d->abi = EvtchnAbi::kFifo;
  }

  if (d->abi == EvtchnAbi::kFifo) {
    d->abi_limit = kEvtchnFifoNrChannels - 1;
    d->limit_exact = true;
  } else {
    // FIFO allows more than 2-level, so a cap at or below the 2-level figure decides either way.
    d->limit_exact = cap.has_value() && *cap <= d->abi_limit;
  }
  d->port_limit = cap.has_value() ? std::min(*cap, d->abi_limit) : d->abi_limit;
  return WalkEnd::kDone;
}

absl::StatusOr<EventChannelReport> XenEventChannelProbe::Read() {
  if (absl::Status s = CheckOptions(options_); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<std::vector<XenDomainListEntry>> listed = ListDomains();
  if (!listed.ok()) return listed.status();

  EventChannelReport report;
  uint64_t budget = options_.max_status_calls_per_read;
  for (const XenDomainListEntry& entry : *listed) {
    if (entry.dying) continue;
    if (budget == 0) {
      ++report.domains_not_walked;
      report.truncated = true;
      continue;
    }
    DomainEventChannels d;
    d.domid = entry.domid;
    absl::StatusOr<WalkEnd> end = Walk(entry.domid, budget, report.status_calls, &d);
    if (end.ok() && *end == WalkEnd::kDone) end = Classify(&d);
    if (!end.ok()) return end.status();
    if (*end == WalkEnd::kVanished) {
      ++report.domains_vanished;
      continue;
    }
    report.truncated = report.truncated || d.walk_truncated;
    report.host_ports_bound += d.ports_bound;
    report.host_port_limit += d.port_limit;
    report.domains.push_back(std::move(d));
  }
  return report;
}

}  // namespace hvagent::hv
