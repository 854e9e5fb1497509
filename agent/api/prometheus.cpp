#include "agent/api/prometheus.h"

#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/version.h"

namespace hvagent::api {
namespace {

using Labels = std::vector<std::pair<std::string, std::string>>;

std::string Escape(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string Number(double v) {
  // Integers print without exponent or decimals; others with full precision.
  if (v == static_cast<double>(static_cast<int64_t>(v)) && v < 9.007199254740992e15 && v > -9.007199254740992e15) {
    return absl::StrCat(static_cast<int64_t>(v));
  }
  return absl::StrCat(v);
}

// Collects samples per family, then prints families in the order they were declared.
class Exposition {
 public:
  void Family(const std::string& name, const char* type, const char* help) {
    if (families_.contains(name)) return;
    order_.push_back(name);
    families_[name] = {type, help, {}};
  }
  void Add(const std::string& name, const Labels& labels, double value) {
    std::string line = name;
    if (!labels.empty()) {
      line += '{';
      for (size_t i = 0; i < labels.size(); ++i) {
        if (i > 0) line += ',';
        absl::StrAppend(&line, labels[i].first, "=\"", Escape(labels[i].second), "\"");
      }
      line += '}';
    }
    absl::StrAppend(&line, " ", Number(value), "\n");
    families_[name].lines += line;
  }
  void Add(const std::string& name, const Labels& labels, const std::optional<uint64_t>& v, double scale = 1) {
    if (v) Add(name, labels, static_cast<double>(*v) * scale);
  }
  std::string Text() const {
    std::string out;
    for (const std::string& name : order_) {
      const Fam& f = families_.at(name);
      if (f.lines.empty()) continue;
      absl::StrAppend(&out, "# HELP ", name, " ", f.help, "\n# TYPE ", name, " ", f.type, "\n", f.lines);
    }
    return out;
  }

 private:
  struct Fam {
    const char* type;
    const char* help;
    std::string lines;
  };
  std::vector<std::string> order_;
  std::map<std::string, Fam> families_;
};

const char* StateLabel(hv::DomainState s) {
  switch (s) {
    case hv::DomainState::kRunning: return "running";
    case hv::DomainState::kBlocked: return "blocked";
    case hv::DomainState::kPaused: return "paused";
    case hv::DomainState::kShuttingDown: return "shutting_down";
    case hv::DomainState::kShutoff: return "shutoff";
    case hv::DomainState::kCrashed: return "crashed";
    case hv::DomainState::kPmSuspended: return "pmsuspended";
    case hv::DomainState::kUnknown: break;
  }
  return "unknown";
}

// Thin pools only: a thin pool whose data or metadata fills up errors or pauses every guest on
// it, long before the VG looks full (deploy/prometheus/hvagent-rules.yml: HvagentThinPoolNearlyFull).
void ThinPools(Exposition& e, const std::vector<storage::PoolInfo>& pools) {
  e.Family("hvagent_pool_thin_data_percent", "gauge", "How full a thin pool's data space is, in percent.");
  e.Family("hvagent_pool_thin_metadata_percent", "gauge", "How full a thin pool's metadata space is, in percent.");
  for (const storage::PoolInfo& p : pools) {
    if (!p.thin_data_percent || !p.thin_metadata_percent) continue;
    Labels l = {{"pool", p.name}};
    e.Add("hvagent_pool_thin_data_percent", l, *p.thin_data_percent);
    e.Add("hvagent_pool_thin_metadata_percent", l, *p.thin_metadata_percent);
  }
}

// Classic (thick LVM) snapshots: a copy-on-write reserve that fills up invalidates its snapshot
// (deploy/prometheus/hvagent-rules.yml: HvagentSnapshotReserveNearlyFull). Every LVM pool.
void SnapshotReserves(Exposition& e, const std::vector<storage::PoolInfo>& pools) {
  e.Family("hvagent_pool_snapshots", "gauge", "Volume snapshots in the pool.");
  e.Family("hvagent_pool_snapshot_reserve_bytes", "gauge",
           "Copy-on-write reserves of the pool's classic snapshots, in bytes.");
  e.Family("hvagent_pool_snapshot_reserve_used_bytes", "gauge", "How much of those reserves is used, in bytes.");
  e.Family("hvagent_pool_snapshot_fullest_percent", "gauge",
           "The fullest classic snapshot's reserve, in percent (100: a snapshot is invalid).");
  for (const storage::PoolInfo& p : pools) {
    if (p.type != storage::PoolType::kLvm) continue;
    Labels l = {{"pool", p.name}};
    e.Add("hvagent_pool_snapshots", l, p.snapshot_count);
    e.Add("hvagent_pool_snapshot_reserve_bytes", l, static_cast<double>(p.snapshot_reserve_bytes));
    e.Add("hvagent_pool_snapshot_reserve_used_bytes", l, static_cast<double>(p.snapshot_reserve_used_bytes));
    e.Add("hvagent_pool_snapshot_fullest_percent", l, p.snapshot_fullest_percent);
  }
}

void Host(Exposition& e, const service::MetricsSample& s) {
  if (!s.capacity.ok()) return;
  const service::Capacity& c = *s.capacity;
  e.Family("hvagent_host_info", "gauge", "Host facts as labels; the value is always 1.");
  e.Add("hvagent_host_info",
        {{"arch", c.arch}, {"hypervisor", c.hypervisor_type}, {"hypervisor_version", c.hypervisor_version}}, 1);
  e.Family("hvagent_host_cpus", "gauge", "Online logical CPUs of the host.");
  e.Add("hvagent_host_cpus", {}, c.cpus);
  e.Family("hvagent_host_cpus_reserved", "gauge", "CPUs kept for the host (dom0), from the config.");
  e.Add("hvagent_host_cpus_reserved", {}, c.policy.reserved_cpus);
  e.Family("hvagent_host_memory_bytes", "gauge", "Host memory.");
  e.Add("hvagent_host_memory_bytes", {}, static_cast<double>(c.memory_total_bytes));
  e.Family("hvagent_host_memory_free_bytes", "gauge", "Host memory not in use, as the hypervisor reports it.");
  e.Add("hvagent_host_memory_free_bytes", {}, static_cast<double>(c.memory_free_bytes));
  e.Family("hvagent_host_memory_reserved_bytes", "gauge", "Memory kept for the host (dom0), from the config.");
  e.Add("hvagent_host_memory_reserved_bytes", {}, static_cast<double>(c.policy.reserved_memory_bytes));
  e.Family("hvagent_host_allocation_ratio", "gauge", "Overcommit ratio applied to a resource, from the config.");
  e.Add("hvagent_host_allocation_ratio", {{"resource", "cpu"}}, c.policy.cpu_allocation_ratio);
  e.Add("hvagent_host_allocation_ratio", {{"resource", "memory"}}, c.policy.memory_allocation_ratio);
  e.Family("hvagent_host_vcpus_schedulable", "gauge", "vCPUs guests may have in total: (cpus - reserved) * ratio.");
  e.Add("hvagent_host_vcpus_schedulable", {}, c.vcpus_schedulable);
  e.Family("hvagent_host_memory_schedulable_bytes", "gauge",
           "Memory guests may have in total: (memory - reserved) * ratio.");
  e.Add("hvagent_host_memory_schedulable_bytes", {}, static_cast<double>(c.memory_schedulable_bytes));
  e.Family("hvagent_host_vcpus_allocated", "gauge", "vCPUs of domains, by whether they run now.");
  e.Add("hvagent_host_vcpus_allocated", {{"scope", "running"}}, c.allocated_vcpus);
  e.Add("hvagent_host_vcpus_allocated", {{"scope", "defined"}}, c.defined_vcpus);
  e.Family("hvagent_host_memory_allocated_bytes", "gauge", "Memory of domains, by whether they run now.");
  e.Add("hvagent_host_memory_allocated_bytes", {{"scope", "running"}}, static_cast<double>(c.allocated_memory_bytes));
  e.Add("hvagent_host_memory_allocated_bytes", {{"scope", "defined"}}, static_cast<double>(c.defined_memory_bytes));
  e.Family("hvagent_host_vcpus_available", "gauge", "Schedulable vCPUs not claimed by any defined domain.");
  e.Add("hvagent_host_vcpus_available", {}, c.vcpus_available);
  e.Family("hvagent_host_memory_available_bytes", "gauge", "Schedulable memory not claimed by any defined domain.");
  e.Add("hvagent_host_memory_available_bytes", {}, static_cast<double>(c.memory_available_bytes));

  e.Family("hvagent_pool_size_bytes", "gauge", "Size of a storage pool (the VG, the thin pool, or the disk).");
  e.Family("hvagent_pool_free_bytes", "gauge", "Free space of a storage pool.");
  e.Family("hvagent_pool_volumes", "gauge", "Volumes the agent manages in a storage pool.");
  e.Family("hvagent_pool_orphaned_volumes", "gauge",
           "Volumes recorded as attached to a domain that does not exist (last reconciliation).");
  for (const storage::PoolInfo& p : c.pools) {
    Labels l = {{"pool", p.name}, {"type", p.type == storage::PoolType::kLvm ? "lvm" : "partition"}};
    e.Add("hvagent_pool_size_bytes", l, static_cast<double>(p.capacity_bytes));
    e.Add("hvagent_pool_free_bytes", l, static_cast<double>(p.free_bytes));
    e.Add("hvagent_pool_volumes", l, p.volume_count);
    e.Add("hvagent_pool_orphaned_volumes", l, p.orphaned_volume_count);
  }
  ThinPools(e, c.pools);
  SnapshotReserves(e, c.pools);
}

void Domains(Exposition& e, const service::MetricsSample& s) {
  if (!s.domains.ok()) return;
  e.Family("hvagent_domains", "gauge", "Domains on the host by state.");
  std::map<std::string, int> by_state;
  for (const char* st : {"running", "paused", "shutoff", "crashed"}) by_state[st] = 0;
  for (const auto& d : *s.domains) ++by_state[StateLabel(d.state)];
  for (const auto& [state, n] : by_state) e.Add("hvagent_domains", {{"state", state}}, n);

  e.Family("hvagent_domain_info", "gauge", "A domain's state as a label; the value is always 1.");
  e.Family("hvagent_domain_cpu_seconds_total", "counter", "CPU time the domain used (all vCPUs).");
  e.Family("hvagent_domain_vcpus", "gauge", "vCPUs the domain has now.");
  e.Family("hvagent_domain_memory_bytes", "gauge", "Memory the domain has now (balloon current).");
  e.Family("hvagent_domain_memory_max_bytes", "gauge", "Memory the domain may balloon up to.");
  e.Family("hvagent_domain_memory_rss_bytes", "gauge", "Host memory the domain's process uses (QEMU only).");
  e.Family("hvagent_domain_disk_read_bytes_total", "counter", "Bytes the domain read from a disk.");
  e.Family("hvagent_domain_disk_written_bytes_total", "counter", "Bytes the domain wrote to a disk.");
  e.Family("hvagent_domain_disk_reads_total", "counter", "Read requests the domain made to a disk.");
  e.Family("hvagent_domain_disk_writes_total", "counter", "Write requests the domain made to a disk.");
  e.Family("hvagent_domain_network_receive_bytes_total", "counter", "Bytes a domain's interface received.");
  e.Family("hvagent_domain_network_transmit_bytes_total", "counter", "Bytes a domain's interface sent.");
  e.Family("hvagent_domain_network_receive_packets_total", "counter", "Packets a domain's interface received.");
  e.Family("hvagent_domain_network_transmit_packets_total", "counter", "Packets a domain's interface sent.");
  for (const hv::DomainStats& d : *s.domains) {
    Labels l = {{"domain", d.name}, {"uuid", d.uuid}};
    Labels info = l;
    info.push_back({"state", StateLabel(d.state)});
    e.Add("hvagent_domain_info", info, 1);
    e.Add("hvagent_domain_cpu_seconds_total", l, d.cpu_time_ns, 1e-9);
    if (d.vcpus) e.Add("hvagent_domain_vcpus", l, *d.vcpus);
    e.Add("hvagent_domain_memory_bytes", l, d.balloon_current_kib, 1024);
    e.Add("hvagent_domain_memory_max_bytes", l, d.balloon_maximum_kib, 1024);
    e.Add("hvagent_domain_memory_rss_bytes", l, d.rss_kib, 1024);
    for (const hv::DiskStats& disk : d.disks) {
      Labels dl = l;
      dl.push_back({"disk", disk.target});
      e.Add("hvagent_domain_disk_read_bytes_total", dl, disk.read_bytes);
      e.Add("hvagent_domain_disk_written_bytes_total", dl, disk.write_bytes);
      e.Add("hvagent_domain_disk_reads_total", dl, disk.read_requests);
      e.Add("hvagent_domain_disk_writes_total", dl, disk.write_requests);
    }
    for (const hv::NicStats& nic : d.nics) {
      Labels nl = l;
      nl.push_back({"interface", nic.name});
      e.Add("hvagent_domain_network_receive_bytes_total", nl, nic.rx_bytes);
      e.Add("hvagent_domain_network_transmit_bytes_total", nl, nic.tx_bytes);
      e.Add("hvagent_domain_network_receive_packets_total", nl, nic.rx_packets);
      e.Add("hvagent_domain_network_transmit_packets_total", nl, nic.tx_packets);
    }
  }
}

void EventChannels(Exposition& e, const service::MetricsSample& s) {
  e.Family("hvagent_evtchn_supported", "gauge",
           "1 when the host's event channels can be read (Xen); 0 elsewhere, and then no evtchn figures.");
  e.Add("hvagent_evtchn_supported", {}, absl::IsUnimplemented(s.event_channels.status()) ? 0 : 1);
  e.Add("hvagent_collect_errors", {{"part", "event_channels"}},
        s.event_channels.ok() || absl::IsUnimplemented(s.event_channels.status()) ? 0 : 1);
  if (!s.event_channels.ok()) return;
  const hv::EventChannelReport& r = *s.event_channels;
  e.Family("hvagent_evtchn_host_ports_bound", "gauge", "Event-channel ports bound over all domains.");
  e.Add("hvagent_evtchn_host_ports_bound", {}, static_cast<double>(r.host_ports_bound));
  e.Family("hvagent_evtchn_ports_bound", "gauge", "Event-channel ports a domain has bound.");
  e.Family("hvagent_evtchn_port_limit", "gauge",
           "Ports a domain may bind: min(ABI limit, max_evtchn_port); exact=false when the ABI is unknown.");
  e.Family("hvagent_evtchn_headroom_ports", "gauge", "Ports a domain can still bind.");
  for (const hv::DomainEventChannels& d : r.domains) {
    Labels l = {{"domid", absl::StrCat(d.domid)}, {"domain", d.name}};
    e.Add("hvagent_evtchn_ports_bound", l, d.ports_bound);
    Labels limit = l;
    limit.push_back({"abi", hv::EvtchnAbiName(d.abi)});
    limit.push_back({"exact", d.limit_exact ? "true" : "false"});
    e.Add("hvagent_evtchn_port_limit", limit, d.port_limit);
    e.Add("hvagent_evtchn_headroom_ports", l, d.headroom());
  }
}

}  // namespace

std::string RenderPrometheus(const service::MetricsSample& s) {
  Exposition e;
  e.Family("hvagent_build_info", "gauge", "The agent's version as a label; the value is always 1.");
  e.Add("hvagent_build_info", {{"version", kAgentVersion}}, 1);
  e.Family("hvagent_hypervisor_connected", "gauge", "1 while the agent's hypervisor connection is up.");
  e.Add("hvagent_hypervisor_connected", {}, s.hypervisor_connected ? 1 : 0);
  e.Family("hvagent_collect_duration_seconds", "gauge", "Time the agent took to collect this sample.");
  e.Add("hvagent_collect_duration_seconds", {}, std::chrono::duration<double>(s.collect_duration).count());
  e.Family("hvagent_collect_errors", "gauge", "1 for each part of the sample that could not be read.");
  e.Add("hvagent_collect_errors", {{"part", "capacity"}}, s.capacity.ok() ? 0 : 1);
  e.Add("hvagent_collect_errors", {{"part", "domains"}}, s.domains.ok() ? 0 : 1);
  if (s.capacity.ok()) e.Add("hvagent_collect_errors", {{"part", "pools"}}, s.capacity->pool_errors.size());
  Host(e, s);
  Domains(e, s);
  EventChannels(e, s);
  return e.Text();
}

}  // namespace hvagent::api
