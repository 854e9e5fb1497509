#!/usr/bin/env bash
# Runs a private libvirtd, one "host" of the two-host migration tests (test_live_migration.py).
# Called already inside a new mount namespace (unshare --mount --propagation private), possibly
# inside a network namespace of its own: binds DIR's own directories over libvirt's fixed
# system paths, so this daemon has its own configuration (libvirtd.conf with its host_uuid,
# qemu.conf), domain list, run and state directories and sockets, and never sees the machine's
# libvirtd or the other host's; then execs libvirtd (same pid: the caller enters its namespace
# with nsenter --mount=/proc/PID/ns/mnt to run the host's agent).
#   ns_libvirtd.sh DIR     DIR holds etc/ (libvirtd.conf, qemu.conf), run/, lib/, cache/, log/
set -euo pipefail
dir=$1
for pair in etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt cache:/var/cache/libvirt log:/var/log/libvirt; do
  src=$dir/${pair%%:*} dst=${pair#*:}
  mkdir -p "$src" "$dst"
  mount --bind "$src" "$dst"
done
exec libvirtd --config /etc/libvirt/libvirtd.conf --pid-file /run/libvirt/hvit-libvirtd.pid --listen
