#!/bin/bash
# Downloads (never installs) the Debian bookworm arm64 packages that make the Xen ARM64 dom0 of
# the system test, plus the host's qemu-system-aarch64. Idempotent: a .deb already in the cache
# is not fetched again, and apt-get update only runs when the arm64 lists are missing.
#
#   fetch.sh [CACHE_DIR]            (default /var/cache/hvagent-xen-arm64/debs)
#
# Writes CACHE_DIR/manifest: one .deb file name per line, the exact closure build-dom0.sh unpacks
# (the cache may hold other versions from earlier runs; only the manifest counts).
set -euo pipefail

CACHE=${1:-/var/cache/hvagent-xen-arm64/debs}

# What dom0 needs. Dependencies are resolved by apt against an EMPTY dpkg status, as if arm64
# were the only architecture and nothing were installed, so the closure is complete and does
# not lean on the host's amd64 packages (bash, coreutils... are Multi-Arch: foreign).
DOM0_PACKAGES=(
  xen-hypervisor-4.17-arm64 xen-utils-4.17 xenstore-utils
  libvirt-daemon libvirt-daemon-driver-xen libvirt-clients
  lvm2 dmsetup bash coreutils util-linux busybox-static socat
  iproute2
  thin-provisioning-tools   # thin_check: lvm2 runs it before it activates a thin pool
)
# hvagentd's runtime libraries (readelf -d build-arm64/agent/hvagentd | grep NEEDED), by package.
AGENT_RUNTIME_PACKAGES=(
  libgrpc++1.51 libgrpc29 libprotobuf32 libcpprest2.10 libspdlog1.10 libfmt9 libabsl20220623
  libvirt0 libxml2 libtomlplusplus3 libssl3 libcurl4 libxenmisc4.17 libxentoollog1 libsystemd0 libstdc++6
)
EXTRA_PACKAGES=(${HVAGENT_XEN_EXTRA_PACKAGES:-})

log() { echo "fetch.sh: $*" >&2; }

if [ "$(id -u)" != 0 ]; then log "run as root (dpkg --add-architecture, apt-get)"; exit 2; fi

if ! command -v qemu-system-aarch64 >/dev/null; then
  log "installing qemu-system-arm (host)"
  apt-get install -y -q qemu-system-arm >/dev/null
fi

for tool in cpio:cpio readelf:binutils; do
  command -v "${tool%%:*}" >/dev/null || { log "installing ${tool#*:} (host)"; apt-get install -y -q "${tool#*:}" >/dev/null; }
done

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  log "dpkg --add-architecture arm64"
  dpkg --add-architecture arm64
fi
if ! apt-cache show xen-hypervisor-4.17-arm64:arm64 >/dev/null 2>&1; then
  log "apt-get update (arm64 lists missing)"
  apt-get update -q >/dev/null
fi

mkdir -p "$CACHE"
EMPTY_STATUS=$(mktemp)
trap 'rm -f "$EMPTY_STATUS"' EXIT

# The kernel: the image package itself (it carries /boot/vmlinuz and every module); its own
# dependencies (initramfs-tools, kmod...) are not needed because we build the initramfs.
KPKG=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-/{sub(":arm64","",$2); print $2; exit}')
[ -n "$KPKG" ] || { log "cannot resolve linux-image-arm64"; exit 1; }

APT_ARM64=(-o Dir::State::status="$EMPTY_STATUS" -o APT::Architecture=arm64
           -o APT::Architectures::=arm64 -o APT::Install-Recommends=false
           -o APT::Install-Suggests=false)
mapfile -t PKGVERS < <(apt-get -s -q "${APT_ARM64[@]}" install \
    "${DOM0_PACKAGES[@]}" "${AGENT_RUNTIME_PACKAGES[@]}" "${EXTRA_PACKAGES[@]}" "$KPKG" \
  | awk '/^Inst /{v=$3; gsub(/[()]/,"",v); a=""; if (match($0, /\[(arm64|all)\]/)) a=substr($0, RSTART+1, RLENGTH-2); print $2 "\t" v "\t" a}')
[ "${#PKGVERS[@]}" -gt 50 ] || { log "dependency resolution failed (${#PKGVERS[@]} packages)"; exit 1; }

cd "$CACHE"
: > manifest.new
fetched=0
for line in "${PKGVERS[@]}"; do
  IFS=$'\t' read -r pkg ver arch <<<"$line"
  # apt-get download names files NAME_VERSION_ARCH.deb with ':' in the version as %3a.
  file="${pkg}_${ver//:/%3a}_${arch}.deb"
  if [ ! -s "$file" ]; then
    if [ "$arch" = all ]; then spec="$pkg=$ver"; else spec="$pkg:$arch=$ver"; fi
    apt-get download -q "$spec" >/dev/null 2>"$CACHE/download.err" || {
      log "apt-get download $spec failed:"; cat "$CACHE/download.err" >&2; exit 1; }
    fetched=$((fetched + 1))
  fi
  [ -s "$file" ] || { log "expected $file after download"; exit 1; }
  echo "$file" >> manifest.new
done
mv manifest.new manifest
rm -f download.err
echo "$KPKG" > kernel-package

total=$(cd "$CACHE" && xargs -a manifest du -cb | tail -1 | cut -f1)
log "${#PKGVERS[@]} packages ($fetched downloaded now), $((total / 1024 / 1024)) MiB in $CACHE (manifest)"
echo "$total" > download-bytes
