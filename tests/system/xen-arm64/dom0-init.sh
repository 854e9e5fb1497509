#!/bin/bash
# /init of the system test's dom0 (copied there by build-dom0.sh). Brings up what a Debian dom0's
# init scripts would, in the order Xen needs, prints one line per step on the console
#   HVAGENT-STEP <name> ok|FAILED <detail>
# then HVAGENT-DOM0-READY, and serves the host's control channel (see ctl_loop) until the host
# asks for POWEROFF. Nothing here is fatal: a failed step is reported and the rest still runs.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin:/usr/local/busybox
export HOME=/root LANG=C
[ -d /usr/local/lib ] && export LD_LIBRARY_PATH=/usr/local/lib

step() {  # step NAME COMMAND...: runs it, reports, returns its status
  local name=$1; shift
  local out rc
  out=$("$@" 2>&1); rc=$?
  if [ $rc -eq 0 ]; then echo "HVAGENT-STEP $name ok"
  else echo "HVAGENT-STEP $name FAILED rc=$rc: $(echo "$out" | tail -3 | tr '\n' ' ')"; fi
  echo "$name $rc" >> /run/hvagent-steps
  return $rc
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /run/lock /run/xen /run/xenstored /run/libvirt
# A bare devtmpfs lacks these; Xen's block script's locking spins without /dev/fd.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
hostname dom0
echo "HVAGENT-STEP init ok kernel $(uname -r) uptime $(cut -d' ' -f1 /proc/uptime)"

load_modules() {
  local m rc=0
  while read -r m; do
    insmod "$m" 2>/tmp/insmod.err || { grep -q 'File exists' /tmp/insmod.err || { cat /tmp/insmod.err; rc=1; }; }
  done < /etc/hvagent-test/modules
  return $rc
}
step modules load_modules
step xenfs mount -t xenfs xenfs /proc/xen
step xenstored oxenstored --pid-file=/run/xenstored.pid
step xen-init-dom0 xen-init-dom0
step xenconsoled xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
step xl-info xl info

# --- control channel: a command runner on the virtio-serial port named hvagent.ctl ----------
# Protocol (lines; the host never sends a newline inside an argument):
#   host:  RUN <id> <argc> <timeout_s>\n then argc lines, one argument each  (an argv: no shell)
#   dom0:  BEGIN <id>\n base64(stdout)\n base64(stderr)\n END <id> <exit status>\n
#   host:  POWEROFF\n  ->  dom0: BYE\n, then stops the agent and libvirtd and powers off.
ctl_port() {
  local d
  for d in /sys/class/virtio-ports/*; do
    [ "$(cat "$d/name" 2>/dev/null)" = hvagent.ctl ] && { echo "/dev/${d##*/}"; return 0; }
  done
  return 1
}
poweroff_dom0() {
  echo "HVAGENT-STEP poweroff requested"
  pkill_pidfile() { [ -f "$1" ] && kill "$(cat "$1")" 2>/dev/null; }
  pkill_pidfile /run/hvagentd.pid
  sleep 1
  [ -f /run/libvirtd.pid ] && kill "$(cat /run/libvirtd.pid)" 2>/dev/null
  sleep 1
  sync
  echo "HVAGENT-DOM0-POWEROFF"
  poweroff -f
}
ctl_loop() {
  local port line cmd id argc tmo a i rc
  for i in $(seq 100); do port=$(ctl_port) && [ -e "$port" ] && break; sleep 0.1; done
  [ -e "$port" ] || { echo "HVAGENT-STEP control-channel FAILED: no virtio port named hvagent.ctl"; return 1; }
  echo "HVAGENT-STEP control-channel ok $port"
  while :; do
    exec 3<>"$port"
    while IFS= read -r line <&3; do
      read -r cmd id argc tmo <<<"$line"
      case "$cmd" in
        RUN)
          args=()
          for ((i = 0; i < argc; i++)); do IFS= read -r a <&3; args+=("$a"); done
          timeout -k 5 "$tmo" "${args[@]}" </dev/null >/tmp/ctl.out 2>/tmp/ctl.err; rc=$?
          { echo "BEGIN $id"; base64 -w0 /tmp/ctl.out; echo; base64 -w0 /tmp/ctl.err; echo
            echo "END $id $rc"; } >&3
          ;;
        POWEROFF) echo BYE >&3; exec 3>&-; poweroff_dom0 ;;
        "") ;;
        *) echo "ERROR unknown command" >&3 ;;
      esac
    done
    exec 3>&-
    sleep 0.2  # host not connected: reads return EOF until it is
  done
}
ctl_loop &

# --- network: QEMU user-mode networking (10.0.2.0/24, gateway 10.0.2.2) ----------------------
net_up() {
  local ifc
  ip link set lo up
  # The virtio NIC: the only interface with a device behind it (dummy0 has none).
  for ifc in /sys/class/net/*; do [ -e "$ifc/device" ] && break; done
  ifc=${ifc##*/}
  [ -e "/sys/class/net/$ifc/device" ] || ifc=""
  [ -n "$ifc" ] || { echo "no network interface"; return 1; }
  ip link set "$ifc" up && ip addr add 10.0.2.15/24 dev "$ifc" && ip route add default via 10.0.2.2
}
step network net_up
# The agent's VLAN networks go on dummy0 ([network] physical_interfaces); up, so that the 802.1Q
# devices on it have a carrier as they would on a cabled trunk.
step uplink ip link set dummy0 up

# --- libvirt -------------------------------------------------------------------------------------
step virtlogd virtlogd -d
step libvirtd libvirtd -d --pid-file=/run/libvirtd.pid
virsh_caps() {
  local i
  for i in $(seq 50); do
    virsh -c xen:///system capabilities >/tmp/caps.xml 2>/tmp/caps.err && grep -q '<os_type>xen</os_type>' /tmp/caps.xml && return 0
    sleep 0.2
  done
  cat /tmp/caps.err
  return 1
}
step libvirt-xen virsh_caps

# --- the thin pool's disk: a 1 GiB sparse file in RAM on /dev/loop0 (only written blocks cost) ---
thin_disk() {
  [ -b /dev/loop0 ] || mknod /dev/loop0 b 7 0
  truncate -s 1G /run/hvthin.img && losetup /dev/loop0 /run/hvthin.img
}
step thin-disk thin_disk

# --- the agent -------------------------------------------------------------------------------
if [ -x /usr/local/bin/hvagentd ]; then
  start_agent() {
    hvagentd --config /etc/hvagent/hvagent.toml --plaintext-loopback >/var/log/hvagentd.log 2>&1 &
    echo $! > /run/hvagentd.pid
    sleep 1
    kill -0 "$(cat /run/hvagentd.pid)" || { tail -5 /var/log/hvagentd.log; return 1; }
  }
  step hvagentd start_agent
  # --plaintext-loopback keeps the agent on 127.0.0.1; QEMU's user-mode network delivers the
  # host's forwarded connections to 10.0.2.15, so socat relays them (plain TCP, HTTP/2 intact).
  step relay-grpc socat -lf /var/log/socat-grpc.log TCP-LISTEN:50051,bind=10.0.2.15,fork,reuseaddr TCP:127.0.0.1:50051 &
  step relay-rest socat -lf /var/log/socat-rest.log TCP-LISTEN:8780,bind=10.0.2.15,fork,reuseaddr TCP:127.0.0.1:8780 &
else
  echo "HVAGENT-STEP hvagentd skipped: no arm64 hvagentd at $(cat /etc/hvagent/ABSENT 2>/dev/null)"
fi

echo "HVAGENT-DOM0-READY uptime $(cut -d' ' -f1 /proc/uptime)"
while :; do wait; sleep 3600; done
