#!/usr/bin/env bash
# Builds, once, the small x86_64 guest the integration tests boot under QEMU TCG: Debian's own
# kernel (linux-image-amd64) and a busybox-static initramfs that brings up a shell on the
# console. Tests that need a guest which *does* something (echoes on its console, pings, reads a
# disk) share it instead of each building their own.
#
#   tests/guest/build-guest.sh [OUT]     OUT defaults to $HVAGENT_GUEST_DIR or
#                                         /var/cache/hvagent-test/guest
# Leaves OUT/vmlinuz and OUT/initrd.img; prints OUT. A second run with the same inputs does
# nothing (OUT/stamp records the package versions and this script's hash).
#
# The guest reads a CD-ROM on the IDE bus as /dev/sr0 (ata_piix, sr_mod, isofs).
# The guest's /init reads from the kernel command line:
#   hv.ip=ADDR/PREFIX   configures eth0 (first virtio NIC) with that address
#   hv.ip2=ADDR/PREFIX  configures eth1 likewise
# and prints "hv-guest-ready" on the console before starting the shell, so a test can wait for
# that line. The shell restarts when it exits. Root needs nothing else: no disk is mounted.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-${HVAGENT_GUEST_DIR:-/var/cache/hvagent-test/guest}}
mkdir -p "$out/debs"
out=$(cd "$out" && pwd)

export DEBIAN_FRONTEND=noninteractive
command -v cpio >/dev/null || apt-get install -y -qq --no-install-recommends cpio

# The versions the archive offers now: Debian's linux-image-amd64 metapackage names the kernel.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [[ -z "$kpkg" ]]; then
  apt-get update -qq
  kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/{print $2}')
bver=$(apt-cache policy busybox-static | awk '/Candidate:/{print $2}')
want="$kpkg=$kver busybox-static=$bver $(sha256sum "$0" | cut -c1-16)"
if [[ -f "$out/stamp" && "$(cat "$out/stamp")" == "$want" && -s "$out/vmlinuz" && -s "$out/initrd.img" ]]; then
  echo "$out"
  exit 0
fi

echo "build-guest: $want" >&2
cd "$out/debs"
rm -f ./*.deb
# apt-get download as root warns that _apt cannot write here; the download itself is fine.
apt-get download -qq "$kpkg" busybox-static 2>/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$kpkg"_*.deb "$work/k"
dpkg-deb -x busybox-static_*.deb "$work/b"
krel=${kpkg#linux-image-}
moddir=$work/k/lib/modules/$krel/kernel

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,mnt,lib/modules}
cp "$work/b/bin/busybox" "$root/bin/busybox"
for applet in sh mount ip insmod cat echo sleep setsid cttyhack ls dd sha256sum sync poweroff \
              hostname ifconfig ping mkdir grep sed head tr; do
  ln -s busybox "$root/bin/$applet"
done
# Debian builds these as modules; order is dependency order (the kernel package carries no
# modules.dep: depmod runs at install time; each .ko names its own in "depends=").
# The last seven read a CD-ROM on the PC's IDE bus (a config drive: mount -t iso9660 /dev/sr0).
mods=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk
      failover net_failover virtio_net virtio_console
      scsi_common scsi_mod cdrom sr_mod libata ata_piix isofs)
: > "$root/lib/modules/order"
for m in "${mods[@]}"; do
  f=$(find "$moddir" -name "$m.ko" -o -name "$m.ko.xz" | head -1)
  [[ -n "$f" ]] || { echo "build-guest: module $m not in $kpkg" >&2; exit 1; }
  case $f in *.xz) xz -dc "$f" > "$root/lib/modules/$m.ko" ;; *) cp "$f" "$root/lib/modules/$m.ko" ;; esac
  echo "$m" >> "$root/lib/modules/order"
done
cp "$here/guest-init.sh" "$root/init"
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initrd.img.new"
cp "$work/k/boot/vmlinuz-$krel" "$out/vmlinuz.new"
mv "$out/initrd.img.new" "$out/initrd.img"
mv "$out/vmlinuz.new" "$out/vmlinuz"
echo "$want" > "$out/stamp"
echo "$out"
