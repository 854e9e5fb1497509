#include "hypervisor/libvirt/domain_stats.h"

#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace hvagent::hv {
namespace {

std::optional<uint64_t> Unsigned(const virTypedParameter& p) {
  switch (p.type) {
    case VIR_TYPED_PARAM_ULLONG: return p.value.ul;
    case VIR_TYPED_PARAM_UINT: return p.value.ui;
    case VIR_TYPED_PARAM_LLONG:
      if (p.value.l >= 0) return static_cast<uint64_t>(p.value.l);
      return std::nullopt;
    case VIR_TYPED_PARAM_INT:
      if (p.value.i >= 0) return static_cast<uint64_t>(p.value.i);
      return std::nullopt;
    default: return std::nullopt;
  }
}

std::optional<std::string> String(const virTypedParameter& p) {
  if (p.type != VIR_TYPED_PARAM_STRING || p.value.s == nullptr) return std::nullopt;
  return std::string(p.value.s);
}

// "block.3.rd.bytes" -> (3, "rd.bytes") for prefix "block."
std::optional<std::pair<size_t, absl::string_view>> Indexed(absl::string_view field, absl::string_view prefix) {
  if (!absl::ConsumePrefix(&field, prefix)) return std::nullopt;
  size_t dot = field.find('.');
  if (dot == absl::string_view::npos) return std::nullopt;
  size_t index = 0;
  if (!absl::SimpleAtoi(field.substr(0, dot), &index)) return std::nullopt;
  return std::make_pair(index, field.substr(dot + 1));
}

}  // namespace

DomainState DomainStateFromLibvirt(int state) {
  switch (state) {
    case VIR_DOMAIN_RUNNING: return DomainState::kRunning;
    case VIR_DOMAIN_BLOCKED: return DomainState::kBlocked;
    case VIR_DOMAIN_PAUSED: return DomainState::kPaused;
    case VIR_DOMAIN_SHUTDOWN: return DomainState::kShuttingDown;
    case VIR_DOMAIN_SHUTOFF: return DomainState::kShutoff;
    case VIR_DOMAIN_CRASHED: return DomainState::kCrashed;
    case VIR_DOMAIN_PMSUSPENDED: return DomainState::kPmSuspended;
    default: return DomainState::kUnknown;
  }
}

DomainStats ParseDomainStats(const std::string& name, const std::string& uuid, const virTypedParameter* params,
                             int nparams) {
  DomainStats out{.name = name, .uuid = uuid};
  // The counts come first in libvirt's records, but do not rely on it: size by count, then fill.
  std::optional<uint64_t> block_count, net_count;
  for (int i = 0; i < nparams; ++i) {
    absl::string_view field = params[i].field;
    if (field == "block.count") block_count = Unsigned(params[i]);
    if (field == "net.count") net_count = Unsigned(params[i]);
  }
  // libvirt caps both far below this; the bound keeps a corrupt count from allocating memory.
  constexpr uint64_t kMaxDevices = 4096;
  out.disks.resize(std::min(block_count.value_or(0), kMaxDevices));
  out.nics.resize(std::min(net_count.value_or(0), kMaxDevices));

  for (int i = 0; i < nparams; ++i) {
    const virTypedParameter& p = params[i];
    absl::string_view field = p.field;
    if (field == "state.state") {
      if (auto v = Unsigned(p)) out.state = DomainStateFromLibvirt(static_cast<int>(*v));
    } else if (field == "cpu.time") {
      out.cpu_time_ns = Unsigned(p);
    } else if (field == "vcpu.current") {
      if (auto v = Unsigned(p)) out.vcpus = static_cast<uint32_t>(*v);
    } else if (field == "balloon.current") {
      out.balloon_current_kib = Unsigned(p);
    } else if (field == "balloon.maximum") {
      out.balloon_maximum_kib = Unsigned(p);
    } else if (field == "balloon.rss") {
      out.rss_kib = Unsigned(p);
    } else if (auto b = Indexed(field, "block."); b && b->first < out.disks.size()) {
      DiskStats& d = out.disks[b->first];
      if (b->second == "name") {
        if (auto s = String(p)) d.target = *s;
      } else if (b->second == "rd.bytes") {
        d.read_bytes = Unsigned(p);
      } else if (b->second == "wr.bytes") {
        d.write_bytes = Unsigned(p);
      } else if (b->second == "rd.reqs") {
        d.read_requests = Unsigned(p);
      } else if (b->second == "wr.reqs") {
        d.write_requests = Unsigned(p);
      }
    } else if (auto n = Indexed(field, "net."); n && n->first < out.nics.size()) {
      NicStats& nic = out.nics[n->first];
      if (n->second == "name") {
        if (auto s = String(p)) nic.name = *s;
      } else if (n->second == "rx.bytes") {
        nic.rx_bytes = Unsigned(p);
      } else if (n->second == "tx.bytes") {
        nic.tx_bytes = Unsigned(p);
      } else if (n->second == "rx.pkts") {
        nic.rx_packets = Unsigned(p);
      } else if (n->second == "tx.pkts") {
        nic.tx_packets = Unsigned(p);
      }
    }
  }
  return out;
}

namespace {

std::optional<uint64_t> Counter(long long v) {
  if (v < 0) return std::nullopt;  // libvirt's "not supported by this driver"
  return static_cast<uint64_t>(v);
}

}  // namespace

DomainStats StatsFromPerDomainCalls(const std::string& name, const std::string& uuid, const PerDomainCalls& calls) {
  DomainStats out{.name = name, .uuid = uuid, .id = calls.id};
  if (calls.info) {
    const virDomainInfo& i = *calls.info;
    out.state = DomainStateFromLibvirt(i.state);
    out.vcpus = i.nrVirtCpu;
    out.balloon_maximum_kib = i.maxMem;
    // A domain that is not running has used no CPU and holds no memory: report neither rather
    // than zeros that look measured (the bulk call leaves them out too).
    bool active = out.state != DomainState::kShutoff && out.state != DomainState::kCrashed &&
                  out.state != DomainState::kUnknown;
    if (active) {
      out.cpu_time_ns = i.cpuTime;
      out.balloon_current_kib = i.memory;
    }
  }
  for (const auto& [target, st] : calls.disks) {
    DiskStats& d = out.disks.emplace_back(DiskStats{.target = target});
    if (!st) continue;
    d.read_bytes = Counter(st->rd_bytes);
    d.write_bytes = Counter(st->wr_bytes);
    d.read_requests = Counter(st->rd_req);
    d.write_requests = Counter(st->wr_req);
  }
  for (const auto& [dev, st] : calls.nics) {
    NicStats& n = out.nics.emplace_back(NicStats{.name = dev});
    if (!st) continue;
    n.rx_bytes = Counter(st->rx_bytes);
    n.tx_bytes = Counter(st->tx_bytes);
    n.rx_packets = Counter(st->rx_packets);
    n.tx_packets = Counter(st->tx_packets);
  }
  return out;
}

}  // namespace hvagent::hv
