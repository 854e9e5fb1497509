#!/bin/sh
# /init of the test guest (tests/guest/build-guest.sh): busybox only, no disk mounted.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko 2>/dev/null; done
hostname hvguest
ip link set lo up
n=0
for word in $(cat /proc/cmdline); do
  case $word in
    hv.ip=*)  dev=eth0; addr=${word#hv.ip=} ;;
    hv.ip2=*) dev=eth1; addr=${word#hv.ip2=} ;;
    *) continue ;;
  esac
  # The NIC's driver may still be probing right after insmod.
  while [ ! -e /sys/class/net/$dev ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
  ip link set "$dev" up
  ip addr add "$addr" dev "$dev"
done
echo hv-guest-ready
while true; do setsid cttyhack sh; done
