#include "hypervisor/domain_xml_builder.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "hypervisor/domain_spec_validator.h"
#include "hypervisor/xml_writer.h"

namespace hvagent::hv {
namespace {

bool IsQemu(const GuestTarget& t) { return t.domain_type == "qemu" || t.domain_type == "kvm"; }

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
  return absl::OkStatus();
}

void WriteOs(XmlWriter& w, const DomainSpec& spec, const GuestTarget& target) {
  const auto* fw = std::get_if<FirmwareBoot>(&spec.boot);
  XmlWriter::Attributes os_attrs;
  if (fw != nullptr && fw->type == FirmwareType::kUefi && fw->loader_path.empty()) {
    os_attrs.emplace_back("firmware", "efi");
  }
  w.Open("os", os_attrs);
  XmlWriter::Attributes type_attrs{{"arch", target.arch}};
  if (!spec.machine.empty()) type_attrs.emplace_back("machine", spec.machine);
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
  w.Open("disk", {{"type", block ? "block" : "file"}, {"device", "disk"}});
  const std::string format = d.format.empty() ? "raw" : d.format;
  if (IsQemu(target)) {
    w.Leaf("driver", {}, {{"name", "qemu"}, {"type", format}, {"cache", "none"}});
  } else if (target.domain_type == "xen") {
    w.Leaf("driver", {}, {{"name", block ? "phy" : "qemu"}, {"type", format}});
  }
  w.Leaf("source", {}, {{block ? "dev" : "file", d.source_path}});
  const std::string bus = d.bus.empty() ? DomainXmlBuilder::DefaultBus(d.target) : d.bus;
  w.Leaf("target", {}, {{"dev", d.target}, {"bus", bus}});
  if (d.readonly) w.Leaf("readonly");
  w.Close();
}

void WriteNic(XmlWriter& w, const NicSpec& n) {
  const bool bridge = !n.bridge.empty();
  w.Open("interface", {{"type", bridge ? "bridge" : "network"}});
  if (!n.mac.empty()) w.Leaf("mac", {}, {{"address", n.mac}});
  w.Leaf("source", {}, {{bridge ? "bridge" : "network", bridge ? n.bridge : n.network}});
  if (!n.model.empty()) w.Leaf("model", {}, {{"type", n.model}});
  w.Close();
}

void WriteConsole(XmlWriter& w, const GuestTarget& target) {
  if (target.os_type == "xen") {
    w.Open("console", {{"type", "pty"}}).Leaf("target", {}, {{"type", "xen"}, {"port", "0"}}).Close();
    return;
  }
  w.Open("serial", {{"type", "pty"}}).Leaf("target", {}, {{"port", "0"}}).Close();
  w.Open("console", {{"type", "pty"}}).Leaf("target", {}, {{"type", "serial"}, {"port", "0"}}).Close();
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
  const std::string mem = std::to_string(spec.memory_mib);
  w.Leaf("memory", mem, {{"unit", "MiB"}});
  w.Leaf("currentMemory", mem, {{"unit", "MiB"}});
  w.Leaf("vcpu", std::to_string(spec.vcpus));
  WriteOs(w, spec, target);
  if (IsQemu(target) && target.os_type == "hvm") {
    // ACPI lets a graceful shutdown reach the guest's power button handler.
    w.Open("features").Leaf("acpi").Close();
  }
  w.Leaf("on_poweroff", "destroy");
  w.Leaf("on_reboot", "restart");
  w.Leaf("on_crash", "destroy");
  w.Open("devices");
  for (const auto& disk : spec.disks) WriteDisk(w, disk, target);
  for (const auto& nic : spec.nics) WriteNic(w, nic);
  if (spec.serial_console) WriteConsole(w, target);
  w.Close();
  w.Close();
  return w.Finish();
}

}  // namespace hvagent::hv
