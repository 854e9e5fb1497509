#pragma once
// ValidateDomainSpec: the single gate every DomainSpec passes before any hypervisor sees it.
// Returns InvalidArgument naming the offending field ("spec.disks[1].target: ...") or Ok.
// Rules are deliberately strict: names and paths end up in libvirt XML, lvm and Xen scripts.

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "hypervisor/model.h"

namespace hvagent::hv {

inline constexpr uint32_t kMaxVcpus = 4096;
// cgroup v1 cpu.shares maximum (libvirt passes <cputune><shares> through to it).
inline constexpr uint32_t kMaxCpuShares = 262144;
inline constexpr uint64_t kMinMemoryMib = 16;
inline constexpr uint64_t kMaxMemoryMib = 16ULL * 1024 * 1024;  // 16 TiB
inline constexpr size_t kMaxDisks = 64;
inline constexpr size_t kMaxNics = 32;
// 802.1Q: 0 is a priority tag, 4095 reserved.
inline constexpr uint32_t kMinVlan = 1;
inline constexpr uint32_t kMaxVlan = 4094;
inline constexpr uint32_t kMaxVni = 16777215;  // VXLAN's 24-bit network identifier
// 576: the smallest datagram every IPv4 host must take (RFC 791), well above the kernel's 68;
// 65535: the largest a tap and QEMU's virtio-net host_mtu take (ETH_MAX_MTU).
inline constexpr uint32_t kMinMtu = 576;
inline constexpr uint32_t kMaxMtu = 65535;
// Labels: few and small, so a listing that carries them stays cheap.
inline constexpr size_t kMaxLabels = 16;
inline constexpr size_t kMaxLabelKeyBytes = 63;
inline constexpr size_t kMaxLabelValueBytes = 256;

absl::Status ValidateDomainSpec(const DomainSpec& spec);

// One disk on its own (hot-plug); `field` prefixes error messages ("disk").
absl::Status ValidateDiskSpec(absl::string_view field, const DiskSpec& disk);

// One NIC on its own (hot-plug); `field` prefixes error messages ("nic"). Names of the ovs
// fields follow the API ("nic.ovs.vlan").
absl::Status ValidateNicSpec(absl::string_view field, const NicSpec& nic);

// A name a caller may give a guest's host-side interface (NicSpec::target_dev): "tap" and 1-12
// of [A-Za-z0-9_-]. Only taps: never a name libvirt generates (vnetN, vifN.M, macvtapN) nor any
// other kind of host interface.
bool IsTapName(absl::string_view name);

// A unicast MAC written as six colon-separated hex pairs.
absl::Status ValidateMac(absl::string_view field, absl::string_view mac);

// A domain name: 1-64 of [A-Za-z0-9._-], starting with a letter or digit.
// At most kMaxLabels; keys [a-z0-9][a-z0-9._-]{0,62}; values at most kMaxLabelValueBytes of
// UTF-8 without control characters. The field named is spec.labels["key"].
absl::Status ValidateDomainLabels(const std::map<std::string, std::string>& labels);

absl::Status ValidateDomainName(absl::string_view field, absl::string_view name);

}  // namespace hvagent::hv
