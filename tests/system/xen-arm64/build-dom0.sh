#!/bin/bash
# Builds the boot files of the Xen ARM64 system test from the .debs fetch.sh downloaded, by
# unpacking them (dpkg -x: no maintainer scripts, nothing installed on the host):
#
#   OUT/xen            the hypervisor (QEMU -kernel)
#   OUT/vmlinuz        Debian's arm64 kernel, for dom0 and, inside dom0, for the guest
#   OUT/dom0.cpio.gz   dom0's root file system as an initramfs (/init: dom0-init.sh)
#   OUT/guest.cpio.gz  the guest's initramfs (busybox; prints HVAGENT-GUEST-UP on hvc0)
#
#   build-dom0.sh [--cache DIR] [--out DIR] [--agent PATH | --agent-deb DEB] [--agent-libs DIR]
#                 [--pv /dev/vda] [--vg hvagent_sys] [--pool vg0]
#
# --agent: an arm64 hvagentd; when the file is absent dom0 is built without it and the image
# says so in /etc/hvagent/ABSENT (the test then skips the API steps, naming the path).
# --agent-deb: the arm64 Debian package (deploy/cross/build-arm64.sh makes it): dom0 gets the
# hvagentd it ships, and every library package its Depends names must be among dom0's own
# Debian arm64 packages (the manifest), i.e. the package would install on that system.
# --agent-libs: a directory whose *.so* files are copied to /usr/local/lib (libraries the
# agent needs that no Debian package in the manifest provides, e.g. a locally built one).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=/var/cache/hvagent-xen-arm64/debs
OUT=/var/cache/hvagent-xen-arm64/image
AGENT=""
AGENT_LIBS=""
AGENT_DEB=""
PV=/dev/vda
VG=hvagent_sys
POOL=vg0
while [ $# -gt 0 ]; do
  case "$1" in
    --cache) CACHE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --agent) AGENT=$2; shift 2 ;;
    --agent-libs) AGENT_LIBS=$2; shift 2 ;;
    --agent-deb) AGENT_DEB=$2; shift 2 ;;
    --pv) PV=$2; shift 2 ;;
    --vg) VG=$2; shift 2 ;;
    --pool) POOL=$2; shift 2 ;;
    *) echo "build-dom0.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
log() { echo "build-dom0.sh: $*" >&2; }
[ -s "$CACHE/manifest" ] || { log "no $CACHE/manifest: run fetch.sh first"; exit 1; }

mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT"

# Packages unpacked but left out of dom0: the kernel (only a few modules are copied) and what
# only serves tools the test never runs (pygrub's python, QEMU's libvirt driver).
KPKG=$(cat "$CACHE/kernel-package")
SKIP='^(python3|libpython3|linux-image-|libvirt-daemon-driver-qemu_|media-types_)'
while read -r deb; do
  if [[ $deb =~ $SKIP ]]; then continue; fi
  dpkg -x "$CACHE/$deb" "$ROOT"
done < "$CACHE/manifest"

# --- kernel and modules ------------------------------------------------------------------
KDEB=$(grep "^${KPKG}_" "$CACHE/manifest")
dpkg -x "$CACHE/$KDEB" "$WORK/kernel"
KVER=$(ls "$WORK/kernel/lib/modules")
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
MODS=(virtio_mmio virtio_blk virtio_net virtio_console dax xen-evtchn xen-gntdev xen-gntalloc
      xen-privcmd xenfs xen-blkback dm-mod
      8021q bridge xen-netback dummy   # the agent's VLAN networks: 802.1Q uplink, bridge, the guest's vif
      crc32c_generic dm-thin-pool dm-snapshot loop)  # images and thin clones, on a loop device (dom0-init.sh)
# crc32c_generic first: libcrc32c (dm-persistent-data's) asks the crypto API for "crc32c" when it
# loads (a softdep, not in depends=), and without it fails with ENOENT ("Unknown symbol" in insmod).
MDIR=$WORK/kernel/lib/modules/$KVER
# The package ships no modules.dep (its postinst runs depmod): dependencies come from each
# module's .modinfo "depends=" (binutils' readelf reads arm64 objects on any host).
declare -A MODPATH=()
while read -r p; do
  b=${p##*/}; b=${b%%.ko*}; MODPATH[${b//-/_}]=${p#"$MDIR"/}
done < <(find "$MDIR/kernel" -name '*.ko*')
declare -A SEEN=()
ORDER=()
add_module() {  # depth-first, so dependencies come first
  local name=${1//-/_} path dep deps
  path=${MODPATH[$name]:-}
  if [ -z "$path" ]; then
    # Built in? Then there is nothing to load.
    if grep -q "/${1//[-_]/[-_]}.ko" "$MDIR/modules.builtin" 2>/dev/null; then return; fi
    log "module $1 not found in $KVER"; exit 1
  fi
  [ -n "${SEEN[$path]:-}" ] && return
  SEEN[$path]=1
  deps=$(readelf -p .modinfo "$MDIR/$path" | sed -n 's/.*depends=//p' | tr ',' ' ')
  for dep in $deps; do add_module "$dep"; done
  ORDER+=("$path")
}
for m in "${MODS[@]}"; do add_module "$m"; done
mkdir -p "$ROOT/lib/modules/$KVER" "$ROOT/etc/hvagent-test"
: > "$ROOT/etc/hvagent-test/modules"
for p in "${ORDER[@]}"; do
  mkdir -p "$ROOT/lib/modules/$KVER/$(dirname "$p")"
  cp "$MDIR/$p" "$ROOT/lib/modules/$KVER/$p"
  echo "/lib/modules/$KVER/$p" >> "$ROOT/etc/hvagent-test/modules"
done

# --- hypervisor --------------------------------------------------------------------------
XEN=$(ls "$ROOT"/boot/xen-4.17*-arm64 2>/dev/null | head -1 || true)
[ -n "$XEN" ] || XEN=$(ls "$ROOT"/boot/xen-* | head -1)
cp "$XEN" "$OUT/xen"
rm -rf "$ROOT/boot" "$ROOT/usr/share/doc" "$ROOT/usr/share/man" "$ROOT/usr/share/locale" \
       "$ROOT/usr/share/info" "$ROOT/usr/share/lintian"

# --- busybox: only applets that no unpacked package provides -----------------------------
# (busybox's stat and flock would shadow coreutils' and util-linux's, which Xen's block
# script needs; so links go to /usr/local/busybox, last on PATH, and never over a real tool)
BB=$ROOT/bin/busybox
mkdir -p "$ROOT/usr/local/busybox"
for applet in sh ip udhcpc ifconfig route poweroff reboot insmod modprobe mount umount sleep \
              base64 cat ls ps kill mkdir ln grep sed awk tr head tail wc dd free uptime \
              mknod hostname timeout seq dmesg sync find xargs vi less tee env pidof nc losetup; do
  found=""
  for d in bin sbin usr/bin usr/sbin; do
    if [ -e "$ROOT/$d/$applet" ] || [ -L "$ROOT/$d/$applet" ]; then found=1; fi
  done
  [ -n "$found" ] || ln -sf /bin/busybox "$ROOT/usr/local/busybox/$applet"
done
[ -e "$ROOT/bin/sh" ] || ln -s bash "$ROOT/bin/sh"
# Debian 12 merges /usr (/sbin -> usr/sbin), so iproute2's /sbin/ip is /usr/sbin/ip there, the
# path the agent runs; dpkg -x makes no such merge, so the link is made here.
[ -e "$ROOT/usr/sbin/ip" ] || ln -s /bin/ip "$ROOT/usr/sbin/ip"

# --- files dpkg's maintainer scripts would have made -------------------------------------
rm -rf "$ROOT/var/run" "$ROOT/var/lock"
mkdir -p "$ROOT/var" "$ROOT/run" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" "$ROOT/tmp" \
         "$ROOT/var/lib/xen" "$ROOT/var/lib/xenstored" "$ROOT/var/log/xen/console" \
         "$ROOT/var/lib/libvirt" "$ROOT/var/log/libvirt" "$ROOT/var/cache/libvirt" "$ROOT/root" \
         "$ROOT/srv/guest" "$ROOT/etc/hvagent"
ln -s /run "$ROOT/var/run"
ln -s /run/lock "$ROOT/var/lock"
cat > "$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat > "$ROOT/etc/group" <<'EOF'
root:x:0:
kvm:x:101:
libvirt:x:102:
disk:x:6:
tty:x:5:
nogroup:x:65534:
EOF
echo "root:*:19000:0:99999:7:::" > "$ROOT/etc/shadow"
echo "dom0" > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost dom0\n' > "$ROOT/etc/hosts"
printf 'hosts: files\npasswd: files\ngroup: files\nshadow: files\n' > "$ROOT/etc/nsswitch.conf"
: > "$ROOT/etc/resolv.conf"
# lvm2 without udevd: it makes /dev/mapper nodes itself.
if [ -f "$ROOT/etc/lvm/lvm.conf" ]; then
  sed -i -e 's/^\(\s*\)# udev_sync = 1/\1udev_sync = 0/' -e 's/^\(\s*\)# udev_rules = 1/\1udev_rules = 0/' \
         -e 's/^\(\s*\)# obtain_device_list_from_udev = 1/\1obtain_device_list_from_udev = 0/' \
         -e 's/^\(\s*\)# monitoring = 1/\1monitoring = 0/' "$ROOT/etc/lvm/lvm.conf"
fi
# libvirt's libxl driver: no autoballooning of dom0 (dom0_mem is fixed on the Xen line).
mkdir -p "$ROOT/etc/libvirt"
echo 'autoballoon = 0' > "$ROOT/etc/libvirt/libxl.conf"

# --- the agent -----------------------------------------------------------------------------
if [ -n "$AGENT_DEB" ]; then
  [ -f "$AGENT_DEB" ] || { log "--agent-deb $AGENT_DEB: no such file"; exit 1; }
  [ "$(dpkg-deb -f "$AGENT_DEB" Architecture)" = arm64 ] || { log "$AGENT_DEB is not an arm64 package"; exit 1; }
  # What dom0's packages are and provide (libspdlog1.10 provides libspdlog1.10-fmt9, say).
  : > "$WORK/provided"
  while read -r deb; do
    dpkg-deb -f "$CACHE/$deb" Package Provides | sed 's/^[A-Za-z]*: //' | tr ',' '\n' |
      awk 'NF {print $1}' >> "$WORK/provided"
  done < "$CACHE/manifest"
  unsatisfied=""
  for dep in $(dpkg-deb -f "$AGENT_DEB" Depends | tr ',' '\n' | awk '{print $1}'); do
    case "$dep" in lvm2|parted|fdisk|util-linux) continue ;; esac  # tools; lvm2 is unpacked anyway
    grep -qxF "$dep" "$WORK/provided" || unsatisfied="$unsatisfied $dep"
  done
  [ -z "$unsatisfied" ] || { log "$AGENT_DEB depends on packages dom0 does not have:$unsatisfied"; exit 1; }
  mkdir -p "$WORK/agent-deb"
  dpkg-deb -x "$AGENT_DEB" "$WORK/agent-deb"
  AGENT=$WORK/agent-deb/usr/sbin/hvagentd
  log "agent from $(basename "$AGENT_DEB"); its Depends are all among dom0's packages"
fi
if [ -n "$AGENT" ] && [ -f "$AGENT" ]; then
  install -D -m 0755 "$AGENT" "$ROOT/usr/local/bin/hvagentd"
  mkdir -p "$ROOT/usr/local/lib"
  # debug_info is most of a development build; dom0's root lives in RAM.
  if command -v aarch64-linux-gnu-strip >/dev/null; then
    aarch64-linux-gnu-strip --strip-debug "$ROOT/usr/local/bin/hvagentd"
  fi
  if [ -n "$AGENT_LIBS" ] && [ -d "$AGENT_LIBS" ]; then
    mkdir -p "$ROOT/usr/local/lib"
    find "$AGENT_LIBS" -maxdepth 1 -name '*.so*' -exec cp -a {} "$ROOT/usr/local/lib/" \;
  fi
  # Every NEEDED library must be in the tree (no ldconfig cache: ld.so's default paths).
  missing=""
  for lib in $(readelf -d "$AGENT" | awk '/NEEDED/{gsub(/[\[\]]/,"",$5); print $5}'); do
    if [ -z "$(find "$ROOT/lib" "$ROOT/usr/lib" "$ROOT/usr/local/lib" -name "$lib" -print -quit 2>/dev/null)" ]; then
      missing="$missing $lib"
    fi
  done
  if [ -n "$missing" ]; then
    log "the agent needs libraries no unpacked package provides:$missing"
    echo "agent libraries missing from dom0:$missing" > "$ROOT/etc/hvagent/MISSING-LIBS"
  fi
  rm -f "$ROOT/etc/hvagent/ABSENT"
else
  echo "${AGENT:-<none given>}" > "$ROOT/etc/hvagent/ABSENT"
fi
cat > "$ROOT/etc/hvagent/hvagent.toml" <<EOF
# Written by tests/system/xen-arm64/build-dom0.sh
[hypervisor]
uri = "xen:///system"

[grpc]
listen = "127.0.0.1:50051"

[rest]
listen = "127.0.0.1:8780"

[security]
plaintext_loopback = true
kernel_dirs = ["/srv/guest"]

[log]
level = "debug"

[capacity]
reserved_memory_mib = 0

[event_channels]
interval_seconds = 2

# dummy0 (the dummy module's own device) stands in for a NIC cabled to a trunk: the VLAN test
# needs a real 802.1Q device on something, and dom0's one real NIC carries the test's traffic.
[network]
physical_interfaces = ["dummy0"]

# Serial TCP tickets listen where QEMU's user-mode network delivers the host's forwarded ports
# (run_xen.py forwards 8790-8791): the ticket, not the address, is the credential.
[console]
tcp_listen = "10.0.2.15"
tcp_port_min = 8790
tcp_port_max = 8791

[[storage.pools]]
name = "$POOL"
type = "lvm"
volume_group = "$VG"
physical_volumes = ["$PV"]
wipe = "zero"

# Images and their thin clones (issue 18): a VG of its own on /dev/loop0, a sparse file in dom0's
# RAM that dom0-init.sh attaches before the agent starts; the agent makes the thin pool in it.
[[storage.pools]]
name = "thin0"
type = "lvm"
volume_group = "hvagent_thin"
physical_volumes = ["/dev/loop0"]
thin_pool = "tpool"
wipe = "discard"
EOF

install -m 0755 "$HERE/dom0-init.sh" "$ROOT/init"

# --- the guest ------------------------------------------------------------------------------
G=$WORK/guest
mkdir -p "$G/bin" "$G/dev" "$G/proc" "$G/sys"
cp "$BB" "$G/bin/busybox"
for a in sh mount sleep echo cat insmod dd sync; do ln -s busybox "$G/bin/$a"; done
# xen-blkfront is a module in Debian's kernel (no dependencies): with it the guest reads 1 MiB
# of its LV, which the agent's statistics must then show (blkback counts it in dom0).
BLKFRONT=${MODPATH[xen_blkfront]:-}
[ -n "$BLKFRONT" ] || { log "xen-blkfront.ko not found in $KVER"; exit 1; }
cp "$MDIR/$BLKFRONT" "$G/xen-blkfront.ko"
# xen-netfront (no dependencies either): the guest connects its vif, so the VLAN test sees the
# backend in dom0 the way a real guest leaves it, and the guest says which NICs it has.
NETFRONT=${MODPATH[xen_netfront]:-}
[ -n "$NETFRONT" ] || { log "xen-netfront.ko not found in $KVER"; exit 1; }
cp "$MDIR/$NETFRONT" "$G/xen-netfront.ko"
cat > "$G/init" <<'EOF'
#!/bin/sh
mount -t devtmpfs dev /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
insmod /xen-blkfront.ko
insmod /xen-netfront.ko
n=0
while [ ! -b /dev/xvda ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
dd if=/dev/xvda of=/dev/null bs=64k count=16 2>/dev/null && echo "HVAGENT-GUEST-READ 1048576" > /dev/hvc0
# hvmark=WORD on the kernel line (the clones of the thin-pool test): write "HVMARK-WORD\n" at
# 16 MiB of the disk, flushed, so the test can find exactly which bytes the guest changed.
# What is there before (the snapshot test's revert): the first line at 16 MiB, printable only.
FOUND=$(dd if=/dev/xvda bs=1M skip=16 count=1 2>/dev/null | head -n 1 | tr -cd 'A-Za-z0-9-')
echo "HVAGENT-GUEST-FOUND [$FOUND]" > /dev/hvc0
MARK=""
for w in $(cat /proc/cmdline); do case "$w" in hvmark=*) MARK=${w#hvmark=} ;; esac; done
if [ -n "$MARK" ]; then
  echo "HVMARK-$MARK" | dd of=/dev/xvda bs=1M seek=16 conv=notrunc,fsync 2>/dev/null && sync &&
    echo "HVAGENT-GUEST-MARKED $MARK" > /dev/hvc0
fi
# netfront registers eth0 only once it has talked to the backend (seconds under TCG), so a guest
# that has a vif on xenbus waits for it; one without (sysguest1) does not.
n=0
while [ -e /sys/bus/xen/devices/vif-0 ] && [ ! -e /sys/class/net/eth0 ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
for n in /sys/class/net/eth*; do [ -e "$n" ] && echo "HVAGENT-GUEST-NIC ${n##*/}" > /dev/hvc0; done
echo "HVAGENT-GUEST-UP $(cat /proc/sys/kernel/osrelease)" > /dev/hvc0
# A shell on the PV console: what the console test types into through the agent.
while :; do sh -i < /dev/hvc0 > /dev/hvc0 2>&1; sleep 1; done
EOF
chmod 0755 "$G/init"
# Linux's Xen shutdown watcher runs /sbin/poweroff: a graceful shutdown then really ends the guest.
mkdir -p "$G/sbin"
printf '#!/bin/sh\necho HVAGENT-GUEST-POWEROFF > /dev/hvc0\nexec /bin/busybox poweroff -f\n' > "$G/sbin/poweroff"
chmod 0755 "$G/sbin/poweroff"
(cd "$G" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/guest.cpio.gz"
cp "$OUT/vmlinuz" "$ROOT/srv/guest/vmlinuz"
cp "$OUT/guest.cpio.gz" "$ROOT/srv/guest/initrd.gz"

# --- pack ---------------------------------------------------------------------------------
# Owned by root inside dom0 whoever builds it: the agent trusts kernel_dirs (and everything
# above them) only when root alone can change them.
(cd "$ROOT" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1) > "$OUT/dom0.cpio.gz.new"
mv "$OUT/dom0.cpio.gz.new" "$OUT/dom0.cpio.gz"
echo "$KVER" > "$OUT/kernel-version"
log "dom0 image $(du -m "$OUT/dom0.cpio.gz" | cut -f1) MiB compressed, $(du -sm "$ROOT" | cut -f1) MiB unpacked; kernel $KVER; agent: $( [ -f "$ROOT/usr/local/bin/hvagentd" ] && echo included || echo absent)"
du -b "$OUT/dom0.cpio.gz" | cut -f1 > "$OUT/dom0-bytes"
