#include "hypervisor/xen/event_channel_probe.h"

#include <set>

#include "absl/strings/str_cat.h"

namespace hvagent::hv {

const char* EvtchnAbiName(EvtchnAbi abi) {
  switch (abi) {
    case EvtchnAbi::kTwoLevel:
      return "2-level";
    case EvtchnAbi::kFifo:
      return "fifo";
    case EvtchnAbi::kUnknown:
      break;
  }
  return "unknown";
}

absl::StatusOr<EventChannelReport> UnsupportedEventChannelProbe::Read() {
  return absl::UnimplementedError(absl::StrCat("event channels: only on Xen hosts (hypervisor is ",
                                               hypervisor_.empty() ? "unknown" : hypervisor_, ")"));
}

absl::StatusOr<EventChannelWatch> EventChannelWatch::Create(Options options) {
  // Written so that NaN fails too.
  if (!(options.share > 0.0 && options.share <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("event channel watch: share must be in (0, 1], got ", options.share));
  }
  if (options.clear_share.has_value() && !(*options.clear_share > 0.0 && *options.clear_share <= options.share)) {
    return absl::InvalidArgumentError(absl::StrCat("event channel watch: clear_share must be in (0, share = ",
                                                   options.share, "], got ", *options.clear_share));
  }
  return EventChannelWatch(options);
}

bool EventChannelWatch::IsAbove(uint32_t domid) const {
  auto it = above_.find(domid);
  return it != above_.end() && it->second;
}

std::vector<EventChannelWatch::Crossing> EventChannelWatch::Observe(const EventChannelReport& report) {
  const double clear = options_.clear_share.value_or(options_.share);
  std::vector<Crossing> out;
  std::set<uint32_t> seen;
  for (const DomainEventChannels& d : report.domains) {
    seen.insert(d.domid);
    const double share = d.used_share();
    bool& above = above_[d.domid];
    Crossing crossing{.domid = d.domid, .name = d.name, .used_share = share, .ports_bound = d.ports_bound,
                      .port_limit = d.port_limit};
    if (!above && share >= options_.share) {
      above = true;
      crossing.direction = Direction::kAbove;
      out.push_back(std::move(crossing));
    } else if (above && share < clear) {
      above = false;
      if (options_.report_cleared) {
        crossing.direction = Direction::kCleared;
        out.push_back(std::move(crossing));
      }
    }
  }
  if (!report.truncated) {
    std::erase_if(above_, [&](const auto& entry) { return !seen.contains(entry.first); });
  }
  return out;
}

}  // namespace hvagent::hv
