#include "hypervisor/domain_xml_builder.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "hypervisor/domain_spec_validator.h"
#include "hypervisor/xml_writer.h"

namespace hvagent::hv {
namespace {

bool IsQemu(const GuestTarget& t) { return t.domain_type == "qemu" || t.domain_type == "kvm"; }

// libvirt's test driver keeps whatever QEMU-style CPU tuning it is given (so Nova's tests can
// exercise it); libxl has none.
bool TakesCpuTuning(const GuestTarget& t) { return IsQemu(t) || t.domain_type == "test"; }

bool IsArm(const GuestTarget& t) { return t.arch == "aarch64" || t.arch == "armv7l"; }

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

// What libxl on ARM cannot do, refused here with the reason rather than as XML that libvirt
// accepts and libxl fails on later (docs/arm64.md).
absl::Status CheckXenArm(const DomainSpec& spec) {
  if (!spec.machine.empty()) {
    return Invalid("spec.machine", "Xen on ARM has a single guest type (libvirt's xenpv, run as PVH); leave it empty");
  }
  if (!spec.cpu_model.empty()) return Invalid("spec.cpu_model", "Xen on ARM guests get the host's CPU; leave it empty");
  if (!spec.gic_version.empty()) {
    return Invalid("spec.gic_version", "Xen on ARM gives guests the GIC version of the host; leave it empty");
  }
  for (size_t i = 0; i < spec.disks.size(); ++i) {
    const DiskSpec& d = spec.disks[i];
    const std::string field = absl::StrCat("spec.disks[", i, "]");
    if (d.type != DiskType::kBlock) {
      return Invalid(field + ".type",
                     "Xen on ARM serves disks with the phy backend only (a file needs QEMU's qdisk in dom0); use a "
                     "block device such as an LVM volume or a partition");
    }
    if (!absl::StartsWith(d.target, "xvd")) {
      return Invalid(field + ".target", absl::StrCat("Xen guests see xvd* disks, got '", d.target, "'"));
    }
    if (!d.bus.empty() && d.bus != "xen") return Invalid(field + ".bus", "Xen guests use the xen bus");
    if (d.cdrom) {
      return Invalid(field + ".device",
                     "Xen on ARM guests have no emulated CD-ROM; attach the image as a read-only disk");
    }
  }
  for (size_t i = 0; i < spec.nics.size(); ++i) {
    const NicSpec& n = spec.nics[i];
    if (!n.model.empty() && n.model != "netfront") {
      return Invalid(absl::StrCat("spec.nics[", i, "].model"),
                     "Xen on ARM guests have paravirtual NICs only (netfront); leave it empty");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckTarget(const DomainSpec& spec, const GuestTarget& target) {
  const auto* fw = std::get_if<FirmwareBoot>(&spec.boot);
  if (target.os_type == "xen" && !std::holds_alternative<DirectKernelBoot>(spec.boot)) {
    return absl::InvalidArgumentError(
        "spec.kernel: Xen PV/PVH guests on this host boot a kernel directly; set spec.kernel.kernel_path");
  }
  if (fw != nullptr && fw->type == FirmwareType::kBios && target.arch != "x86_64" && target.arch != "i686") {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.firmware.type: BIOS is not available on ", target.arch, "; use UEFI"));
  }
  // libxl has neither a guest topology nor cgroup shares (Xen weighs domains with its
  // scheduler's own weight): refused rather than written into XML that libxl would ignore.
  if (!TakesCpuTuning(target) && spec.cpu_topology) {
    return Invalid("spec.cpu_topology", absl::StrCat("only for QEMU/KVM guests, not ", target.domain_type));
  }
  if (!TakesCpuTuning(target) && spec.cpu_shares != 0) {
    return Invalid("spec.cpu_shares", absl::StrCat("only for QEMU/KVM guests, not ", target.domain_type));
  }
  if (spec.vnc && !TakesCpuTuning(target)) {  // QEMU/KVM, and libvirt's test driver

    return Invalid("spec.vnc", absl::StrCat("only for QEMU/KVM guests: a ", target.domain_type,
                                            " guest has no emulated display (its console is the PV console, hvc0)"));
  }
  if (target.domain_type == "xen") {
    for (size_t i = 0; i < spec.disks.size(); ++i) {
      if (spec.disks[i].format == "qcow2") {
        return Invalid(absl::StrCat("spec.disks[", i, "].format"), "the Xen phy backend serves raw disks only");
      }
    }
    if (IsArm(target)) return CheckXenArm(spec);
  }
  if (!IsQemu(target) && (!spec.cpu_model.empty() || !spec.gic_version.empty())) {
    return Invalid(spec.cpu_model.empty() ? "spec.gic_version" : "spec.cpu_model",
                   absl::StrCat("only for QEMU/KVM guests, not ", target.domain_type));
  }
  if (!spec.gic_version.empty() && !IsArm(target)) {
    return Invalid("spec.gic_version", absl::StrCat("only for ARM guests, not ", target.arch));
  }
  if (target.domain_type == "qemu" && spec.cpu_model == "host") {
    return Invalid("spec.cpu_model", "'host' needs KVM; this hypervisor emulates the CPU (TCG): use 'max' or a model");
  }
  return absl::OkStatus();
}

bool UsesUefi(const DomainSpec& spec) {
  const auto* fw = std::get_if<FirmwareBoot>(&spec.boot);
  return fw != nullptr && fw->type == FirmwareType::kUefi;
}

void WriteOs(XmlWriter& w, const DomainSpec& spec, const GuestTarget& target) {
  const auto* fw = std::get_if<FirmwareBoot>(&spec.boot);
  XmlWriter::Attributes os_attrs;
  if (fw != nullptr && fw->type == FirmwareType::kUefi && fw->loader_path.empty()) {
    os_attrs.emplace_back("firmware", "efi");
  }
  w.Open("os", os_attrs);
  XmlWriter::Attributes type_attrs;
  // libvirt's domain schema (9.0) lists no ARM arch for os type 'xen', though its libxl driver
  // runs aarch64 guests: leave arch out there, and libvirt takes the only one the host offers.
  if (!(target.os_type == "xen" && IsArm(target))) type_attrs.emplace_back("arch", target.arch);
  if (!spec.machine.empty()) {
    type_attrs.emplace_back("machine", spec.machine);
  } else if (IsQemu(target) && IsArm(target)) {
    type_attrs.emplace_back("machine", "virt");  // the ARM machine with virtio, GIC and UEFI support
  }
  w.Leaf("type", target.os_type, type_attrs);
  if (fw != nullptr && !fw->loader_path.empty()) {
    w.Leaf("loader", fw->loader_path, {{"readonly", "yes"}, {"type", "pflash"}});
  }
  if (const auto* kernel = std::get_if<DirectKernelBoot>(&spec.boot)) {
    w.Leaf("kernel", kernel->kernel_path);
    if (!kernel->initrd_path.empty()) w.Leaf("initrd", kernel->initrd_path);
    if (!kernel->cmdline.empty()) w.Leaf("cmdline", kernel->cmdline);
  } else if (target.os_type == "hvm") {
    w.Leaf("boot", {}, {{"dev", "hd"}});
  }
  w.Close();
}

void WriteDisk(XmlWriter& w, const DiskSpec& d, const GuestTarget& target) {
  const bool block = d.type == DiskType::kBlock;
  w.Open("disk", {{"type", block ? "block" : "file"}, {"device", d.cdrom ? "cdrom" : "disk"}});
  const std::string format = d.format.empty() ? "raw" : d.format;
  if (IsQemu(target)) {
    w.Leaf("driver", {}, {{"name", "qemu"}, {"type", format}, {"cache", "none"}});
  } else if (target.domain_type == "xen") {
    w.Leaf("driver", {}, {{"name", block ? "phy" : "qemu"}, {"type", format}});
  }
  if (block) {
    // Block devices are pool volumes: libvirt gives them to the guest's user as usual.
    w.Leaf("source", {}, {{"dev", d.source_path}});
  } else {
    // A host file the agent did not create: libvirt must never chown it (DAC relabelling
    // hands it to the QEMU user while the guest runs). Nor may QEMU open a backing file that
    // the image's header names: the chain ends here.
    w.Open("source", {{"file", d.source_path}}).Leaf("seclabel", {}, {{"model", "dac"}, {"relabel", "no"}}).Close();
    w.Leaf("backingStore");
  }
  const std::string bus = d.bus.empty() ? DomainXmlBuilder::DefaultBus(d.target) : d.bus;
  w.Leaf("target", {}, {{"dev", d.target}, {"bus", bus}});
  if (d.readonly || d.cdrom) w.Leaf("readonly");
  w.Close();
}

void WriteNic(XmlWriter& w, const NicSpec& n, const GuestTarget& target) {
  // An OVS port is a bridge interface with a virtualport: libvirt adds the tap to the OVS bridge
  // with ovs-vsctl and sets external_ids:iface-id (and the tag) itself.
  const bool network = !n.network.empty();
  const std::string& bridge = n.ovs_bridge.empty() ? n.bridge : n.ovs_bridge;
  w.Open("interface", {{"type", network ? "network" : "bridge"}});
  if (!n.mac.empty()) w.Leaf("mac", {}, {{"address", n.mac}});
  w.Leaf("source", {}, {{network ? "network" : "bridge", network ? n.network : bridge}});
  // A stable tap name: Neutron's OVS agent matches a tap's removal and return in one polling
  // cycle by name, and with libvirt's vnetN (a new name each start) it processed the return and
  // then the removal, leaving the port unwired after a reboot or a resize.
  if (const std::string tap = TapName(n); !tap.empty()) w.Leaf("target", {}, {{"dev", tap}});
  if (!n.ovs_bridge.empty()) {
    if (n.vlan.has_value()) {
      w.Open("vlan");
      w.Leaf("tag", {}, {{"id", std::to_string(*n.vlan)}});
      w.Close();
    }
    w.Open("virtualport", {{"type", "openvswitch"}});
    w.Leaf("parameters", {}, {{"interfaceid", n.interface_id}});
    w.Close();
  }
  if (!n.model.empty()) {
    w.Leaf("model", {}, {{"type", n.model}});
  } else if (IsQemu(target) && IsArm(target)) {
    w.Leaf("model", {}, {{"type", "virtio"}});  // the virt machine has no emulated NIC worth using
  }
  if (n.mtu != 0) w.Leaf("mtu", {}, {{"size", std::to_string(n.mtu)}});
  w.Close();
}

// QEMU/KVM: the CPU model and, on ARM, the interrupt controller; ACPI where it works.
void WriteCpuAndFeatures(XmlWriter& w, const DomainSpec& spec, const GuestTarget& target) {
  if (!TakesCpuTuning(target)) return;
  const bool qemu = IsQemu(target);
  const bool kvm = target.domain_type == "kvm";
  const bool arm = IsArm(target);
  // ACPI lets a graceful shutdown reach the guest's power button handler; on ARM, QEMU's virt
  // machine offers ACPI tables only through UEFI.
  const bool acpi = qemu && target.os_type == "hvm" && (!arm || UsesUefi(spec));
  if (acpi || (qemu && arm)) {
    w.Open("features");
    if (acpi) w.Leaf("acpi");
    if (arm) {
      std::string gic = spec.gic_version.empty() ? (kvm ? "host" : "3") : spec.gic_version;
      w.Leaf("gic", {}, {{"version", gic}});
    }
    w.Close();
  }
  // x86 keeps libvirt's default CPU unless asked; ARM needs one named (no host-model there).
  std::string model = !qemu ? "" : !spec.cpu_model.empty() ? spec.cpu_model : !arm ? "" : kvm ? "host" : "max";
  if (model.empty() && !spec.cpu_topology) return;
  if (model == "host") {
    w.Open("cpu", {{"mode", "host-passthrough"}});
  } else if (!model.empty()) {
    w.Open("cpu", {{"mode", "custom"}, {"match", "exact"}}).Leaf("model", model, {{"fallback", "forbid"}});
  } else {
    w.Open("cpu");  // libvirt's default CPU, only shaped
  }
  if (spec.cpu_topology) {
    const GuestCpuTopology& t = *spec.cpu_topology;
    w.Leaf("topology", {}, {{"sockets", std::to_string(t.sockets)},
                            {"cores", std::to_string(t.cores)},
                            {"threads", std::to_string(t.threads)}});
  }
  w.Close();
}

void WriteCpuTune(XmlWriter& w, const DomainSpec& spec) {
  if (spec.cpu_shares == 0) return;
  w.Open("cputune").Leaf("shares", std::to_string(spec.cpu_shares)).Close();
}

void WriteConsole(XmlWriter& w, const GuestTarget& target, const std::string& log_path) {
  if (target.os_type == "xen") {
    w.Open("console", {{"type", "pty"}}).Leaf("target", {}, {{"type", "xen"}, {"port", "0"}}).Close();
    return;
  }
  w.Open("serial", {{"type", "pty"}});
  if (!log_path.empty()) w.Leaf("log", {}, {{"file", log_path}, {"append", "off"}});
  w.Leaf("target", {}, {{"port", "0"}}).Close();
  w.Open("console", {{"type", "pty"}}).Leaf("target", {}, {{"type", "serial"}, {"port", "0"}}).Close();
}

// The VNC display, locked: a password that expired long ago. libvirt then starts QEMU with
// password authentication on and expires the password at once (QEMU's expire_password "now"),
// so no one gets in until a ticket sets a live password (virDomainUpdateDeviceFlags). Without a
// password in the definition QEMU would serve the display to anyone reaching the port, and
// would refuse later passwords. The port is QEMU's pick (autoport) on the configured address.
void WriteVnc(XmlWriter& w, const DomainSpec& spec) {
  const std::string listen = spec.vnc_listen.empty() ? "127.0.0.1" : spec.vnc_listen;
  w.Open("graphics", {{"type", "vnc"},
                      {"port", "-1"},
                      {"autoport", "yes"},
                      {"listen", listen},
                      {"passwd", spec.vnc_locked_password},
                      {"passwdValidTo", "2000-01-01T00:00:00"}});
  w.Leaf("listen", {}, {{"type", "address"}, {"address", listen}});
  w.Close();
}

// <metadata><hvagent:labels xmlns:hvagent="..."><hvagent:label key="k" value="v"/>...
// The value is an attribute, not text: libvirt re-indents <metadata> when it formats it, which
// could change a value made of spaces. Both go through XmlWriter's escaping.
void WriteLabels(XmlWriter& w, const std::map<std::string, std::string>& labels) {
  if (labels.empty()) return;
  w.Open("metadata").Open("hvagent:labels", {{"xmlns:hvagent", kLabelsNamespace}});
  for (const auto& [key, value] : labels) w.Leaf("hvagent:label", {}, {{"key", key}, {"value", value}});
  w.Close().Close();
}

}  // namespace

std::string DomainXmlBuilder::DefaultBus(const std::string& target) {
  if (absl::StartsWith(target, "xvd")) return "xen";
  if (absl::StartsWith(target, "vd")) return "virtio";
  if (absl::StartsWith(target, "sd")) return "scsi";
  return "ide";
}

absl::StatusOr<std::string> DomainXmlBuilder::BuildDisk(const DiskSpec& disk, const GuestTarget& target) {
  if (auto s = ValidateDiskSpec("disk", disk); !s.ok()) return s;
  XmlWriter w;
  WriteDisk(w, disk, target);
  return w.Finish();
}

absl::StatusOr<std::string> DomainXmlBuilder::BuildNic(const NicSpec& nic, const GuestTarget& target) {
  if (auto s = ValidateNicSpec("nic", nic); !s.ok()) return s;
  if (target.os_type == "xen" && !nic.model.empty() && nic.model != "netfront") {
    return Invalid("nic.model", "Xen on ARM guests have paravirtual NICs only (netfront); leave it empty");
  }
  XmlWriter w;
  WriteNic(w, nic, target);
  return w.Finish();
}

absl::StatusOr<std::string> DomainXmlBuilder::Build(const DomainSpec& spec, const GuestTarget& target) {
  if (auto s = ValidateDomainSpec(spec); !s.ok()) return s;
  if (!spec.arch.empty() && spec.arch != target.arch) {
    return absl::InvalidArgumentError(absl::StrCat("spec.arch: ", spec.arch, " is not offered by this hypervisor"));
  }
  if (auto s = CheckTarget(spec, target); !s.ok()) return s;

  XmlWriter w;
  w.Open("domain", {{"type", target.domain_type}});
  w.Leaf("name", spec.name);
  if (!spec.uuid.empty()) w.Leaf("uuid", spec.uuid);
  WriteLabels(w, spec.labels);
  const std::string mem = std::to_string(spec.memory_mib);
  w.Leaf("memory", mem, {{"unit", "MiB"}});
  w.Leaf("currentMemory", mem, {{"unit", "MiB"}});
  if (spec.max_vcpus > spec.vcpus) {
    // Headroom for hot-plug: the guest boots with `current` and UpdateDomain may raise it live.
    w.Leaf("vcpu", std::to_string(spec.max_vcpus), {{"current", std::to_string(spec.vcpus)}});
  } else {
    w.Leaf("vcpu", std::to_string(spec.vcpus));
  }
  WriteCpuTune(w, spec);
  WriteOs(w, spec, target);
  WriteCpuAndFeatures(w, spec, target);
  w.Leaf("on_poweroff", "destroy");
  w.Leaf("on_reboot", "restart");
  w.Leaf("on_crash", "destroy");
  w.Open("devices");
  for (const auto& disk : spec.disks) WriteDisk(w, disk, target);
  for (const auto& nic : spec.nics) WriteNic(w, nic, target);
  if (spec.serial_console) WriteConsole(w, target, spec.console_log_path);
  if (spec.vnc) WriteVnc(w, spec);
  w.Close();
  w.Close();
  return w.Finish();
}

}  // namespace hvagent::hv
