#include "agent/service/host_networks.h"

#include <algorithm>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "storage/exec/run_checked.h"

namespace hvagent::service {
namespace {

std::shared_ptr<spdlog::logger> Log() {
  static auto logger = log::ComponentLogger("host_networks");
  return logger;
}

bool IsVlan(const hv::HostNetwork& net) { return net.kind == hv::HostNetwork::Kind::kVlan; }

// CloudStack's KVM agent derives each VNI's multicast group the same way (239.<VNI as three
// bytes>, the organisation-local scope), so hosts of both kinds flood a segment to one group.
std::string GroupFor(uint32_t vni) {
  return absl::StrCat("239.", (vni >> 16) & 0xff, ".", (vni >> 8) & 0xff, ".", vni & 0xff);
}

const storage::ToolErrors& IpErrors() {
  static const storage::ToolErrors errors{};
  return errors;
}

// The interface a link runs over, as `ip -j -d` shows it: a VXLAN's `dev` in
// linkinfo.info_data.link, a VLAN's parent as "link"; empty when it names none.
std::string UnderlayIn(const google::protobuf::Map<std::string, google::protobuf::Value>& fields) {
  if (auto info = fields.find("linkinfo"); info != fields.end()) {
    const auto& li = info->second.struct_value().fields();
    if (auto data = li.find("info_data"); data != li.end()) {
      const auto& d = data->second.struct_value().fields();
      if (auto link = d.find("link"); link != d.end()) return link->second.string_value();
    }
  }
  if (auto link = fields.find("link"); link != fields.end()) return link->second.string_value();
  return {};
}

}  // namespace

std::string HostNetworks::UplinkFor(const hv::HostNetwork& net) {
  return IsVlan(net) ? absl::StrCat(net.physical, ".", net.id) : absl::StrCat("vxlan", net.id);
}

absl::StatusOr<std::string> HostNetworks::BridgeFor(absl::string_view field, const hv::HostNetwork& net) const {
  const auto& allowed = options_.physical_interfaces;
  if (std::find(allowed.begin(), allowed.end(), net.physical) == allowed.end()) {
    return absl::PermissionDeniedError(absl::StrCat(
        field, IsVlan(net) ? ".vlan" : ".vxlan", ".physical: interface '", net.physical,
        "' is not one this agent may use ([network] physical_interfaces: ",
        allowed.empty() ? std::string("none") : absl::StrJoin(allowed, ", "), ")"));
  }
  std::string bridge = absl::StrCat(IsVlan(net) ? options_.vlan_bridge_prefix : options_.vxlan_bridge_prefix, net.id);
  if (bridge.size() > 15) {
    // The config check keeps prefixes short enough for the largest id; this is the backstop.
    return absl::InvalidArgumentError(absl::StrCat(field, ": bridge name '", bridge, "' would exceed 15 bytes"));
  }
  return bridge;
}

bool HostNetworks::LooksOwned(const std::string& bridge) const {
  return absl::StartsWith(bridge, options_.vlan_bridge_prefix) || absl::StartsWith(bridge, options_.vxlan_bridge_prefix);
}

absl::Status HostNetworks::Ip(std::vector<std::string> args) {
  storage::Command c;
  c.argv.push_back(options_.ip);
  for (auto& a : args) c.argv.push_back(std::move(a));
  const std::string label = absl::StrJoin(c.argv.begin() + 1, c.argv.end(), " ");
  return storage::RunChecked(runner_, c, absl::StrCat("ip ", label), IpErrors());
}

absl::StatusOr<std::vector<HostNetworks::Link>> HostNetworks::Links(const std::vector<std::string>& selector) {
  storage::Command c;
  c.argv = {options_.ip, "-j", "-d", "link", "show"};
  c.argv.insert(c.argv.end(), selector.begin(), selector.end());
  const std::string label = absl::StrCat("ip link show ", absl::StrJoin(selector, " "));
  auto r = storage::RunTool(runner_, c, label);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    if (absl::StrContains(r->stderr_text, "does not exist")) return absl::NotFoundError(label);
    return storage::ToolFailed(label, *r, IpErrors());
  }
  google::protobuf::ListValue list;
  if (!google::protobuf::util::JsonStringToMessage(r->stdout_text, &list).ok()) {
    return absl::InternalError(absl::StrCat(label, ": unreadable answer"));
  }
  std::vector<Link> links;
  for (const auto& v : list.values()) {
    const auto& fields = v.struct_value().fields();
    auto name = fields.find("ifname");
    auto alias = fields.find("ifalias");
    links.push_back({name == fields.end() ? std::string() : name->second.string_value(),
                     alias != fields.end() && alias->second.string_value() == kHostNetworkAlias,
                     UnderlayIn(fields)});
  }
  return links;
}

absl::StatusOr<std::optional<HostNetworks::Link>> HostNetworks::Show(const std::string& dev) {
  auto links = Links({"dev", dev});
  if (absl::IsNotFound(links.status())) return std::nullopt;
  if (!links.ok()) return links.status();
  if (links->size() != 1) return absl::InternalError(absl::StrCat("ip link show dev ", dev, ": unreadable answer"));
  return links->front();
}

absl::StatusOr<std::vector<std::string>> HostNetworks::OwnedBridges() {
  auto links = Links({"type", "bridge"});
  if (!links.ok()) return links.status();
  std::vector<std::string> out;
  for (const Link& l : *links) {
    if (l.ours && !l.name.empty()) out.push_back(l.name);
  }
  return out;
}

void HostNetworks::Delete(const std::string& dev) {
  if (auto s = Ip({"link", "del", "dev", dev}); !s.ok()) Log()->error("removing {} failed: {}", dev, s.message());
}

absl::StatusOr<bool> HostNetworks::Ensure(absl::string_view field, const hv::HostNetwork& net) {
  auto bridge = BridgeFor(field, net);
  if (!bridge.ok()) return bridge.status();
  const std::string uplink = UplinkFor(net);
  auto br = Show(*bridge);
  if (!br.ok()) return br.status();
  auto up = Show(uplink);
  if (!up.ok()) return up.status();
  for (const auto& [name, link] : {std::pair{*bridge, *br}, std::pair{uplink, *up}}) {
    if (link.has_value() && !link->ours) {
      return absl::FailedPreconditionError(absl::StrCat(
          field, ": interface '", name, "' exists and was not made by this agent; it is left alone"));
    }
  }
  // One network per VLAN id (or VNI) on this host: its bridge and VXLAN uplink are named by the
  // id alone, so the same id over another physical interface would join that network to this
  // one (two physical networks' VLAN 100 bridged together) or land on the other's underlay.
  auto conflict = [&](const std::string& over) {
    return absl::FailedPreconditionError(absl::StrCat(
        field, IsVlan(net) ? ".vlan" : ".vxlan", ".physical: ", IsVlan(net) ? "VLAN " : "VNI ", net.id,
        " is this host's network ", *bridge, " over ", over, " already; the agent makes one network per ",
        IsVlan(net) ? "VLAN id" : "VNI", ", and one over '", net.physical, "' would join the two"));
  };
  if (br->has_value()) {
    auto ports = Links({"master", *bridge});
    if (!ports.ok()) return ports.status();
    for (const Link& port : *ports) {
      if (port.ours && port.name != uplink) return conflict(port.name);
    }
  }
  if (up->has_value() && !(*up)->underlay.empty() && (*up)->underlay != net.physical) {
    return conflict(absl::StrCat(uplink, " on ", (*up)->underlay));
  }
  bool made_bridge = false;
  bool made_uplink = false;
  auto step = [&]() -> absl::Status {
    if (!br->has_value()) {
      if (auto s = Ip({"link", "add", "name", *bridge, "type", "bridge"}); !s.ok()) return s;
      made_bridge = true;
      if (auto s = Ip({"link", "set", "dev", *bridge, "alias", std::string(kHostNetworkAlias)}); !s.ok()) return s;
    }
    if (!up->has_value()) {
      absl::Status s =
          IsVlan(net)
              ? Ip({"link", "add", "link", net.physical, "name", uplink, "type", "vlan", "id", std::to_string(net.id)})
              // Port 4789 is IANA's VXLAN port (the kernel's own default, 8472, predates it).
              : Ip({"link", "add", "name", uplink, "type", "vxlan", "id", std::to_string(net.id), "group",
                    GroupFor(net.id), "dev", net.physical, "dstport", "4789"});
      if (!s.ok()) return s;
      made_uplink = true;
      if (auto s2 = Ip({"link", "set", "dev", uplink, "alias", std::string(kHostNetworkAlias)}); !s2.ok()) return s2;
    }
    if (options_.mtu != 0) {
      const std::string mtu = std::to_string(options_.mtu);
      if (auto s = Ip({"link", "set", "dev", uplink, "mtu", mtu}); !s.ok()) return s;
      if (auto s = Ip({"link", "set", "dev", *bridge, "mtu", mtu}); !s.ok()) return s;
    }
    if (auto s = Ip({"link", "set", "dev", uplink, "master", *bridge}); !s.ok()) return s;
    if (auto s = Ip({"link", "set", "dev", uplink, "up"}); !s.ok()) return s;
    return Ip({"link", "set", "dev", *bridge, "up"});
  }();
  if (!step.ok()) {
    if (made_uplink) Delete(uplink);
    if (made_bridge) Delete(*bridge);
    return absl::Status(step.code(), absl::StrCat(field, ": making network ", *bridge, " failed: ", step.message()));
  }
  if (made_bridge || made_uplink) Log()->info("made host network {} (uplink {})", *bridge, uplink);
  return made_bridge;
}

absl::Status HostNetworks::RemoveIfOwned(const std::string& bridge) {
  auto br = Show(bridge);
  if (!br.ok()) return br.status();
  if (!br->has_value() || !(*br)->ours) return absl::OkStatus();
  auto ports = Links({"master", bridge});
  if (!ports.ok()) return ports.status();
  for (const Link& port : *ports) {
    if (!port.ours) {
      Log()->info("host network {} kept: port {} is not the agent's", bridge, port.name);
      return absl::OkStatus();
    }
  }
  for (const Link& port : *ports) {
    if (auto s = Ip({"link", "del", "dev", port.name}); !s.ok()) return s;
  }
  if (auto s = Ip({"link", "del", "dev", bridge}); !s.ok()) return s;
  Log()->info("removed host network {}", bridge);
  return absl::OkStatus();
}

}  // namespace hvagent::service
