#!/usr/bin/env bash
# Starts (or stops) a real libvirtd with the QEMU driver for the integration tier.
#   libvirtd_fixture.sh start   idempotent; prepares users, groups and qemu.conf, starts
#                               virtlogd + libvirtd unless already running, waits until
#                               qemu:///system answers
#   libvirtd_fixture.sh stop    stops only the daemons this fixture started
# Runs as root. No systemd needed (CI machines have none running).
set -euo pipefail

STATE=/run/hvagent-tests
QEMU_CONF=/etc/libvirt/qemu.conf
LOG=$STATE/libvirtd.log
mkdir -p "$STATE"

ensure_accounts() {
  # libvirt's QEMU driver resolves these at start-up even when it runs guests as root.
  getent group kvm >/dev/null || groupadd --system kvm
  getent group libvirt >/dev/null || groupadd --system libvirt
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  getent passwd libvirt-qemu >/dev/null ||
    useradd --system --gid kvm --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
}

# Guests run as root without a security driver: there is no /dev/kvm and no AppArmor/SELinux
# policy to rely on in CI. The block is marked so it can be found and replaced.
ensure_qemu_conf() {
  local block
  block=$(cat <<'CONF'
# BEGIN hvagent-tests
user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
stdio_handler = "file"
# END hvagent-tests
CONF
)
  mkdir -p /etc/libvirt
  touch "$QEMU_CONF"
  if grep -q "BEGIN hvagent-tests" "$QEMU_CONF"; then
    local current
    current=$(sed -n '/# BEGIN hvagent-tests/,/# END hvagent-tests/p' "$QEMU_CONF")
    [[ "$current" == "$block" ]] && return 1
    sed -i '/# BEGIN hvagent-tests/,/# END hvagent-tests/d' "$QEMU_CONF"
  fi
  printf '%s\n' "$block" >>"$QEMU_CONF"
  return 0
}

answers() { timeout 10 virsh -c qemu:///system version >/dev/null 2>&1; }

start() {
  ensure_accounts
  local changed=0
  ensure_qemu_conf && changed=1
  if pgrep -x libvirtd >/dev/null; then
    if [[ $changed == 1 ]] && [[ -f $STATE/started-libvirtd ]]; then
      pkill -x libvirtd; sleep 1
    elif [[ $changed == 1 ]]; then
      echo "libvirtd_fixture: qemu.conf changed but libvirtd was not started by us; restarting it" >&2
      pkill -x libvirtd; sleep 1
      touch "$STATE/started-libvirtd"
    fi
  fi
  mkdir -p /var/lib/libvirt/images /var/log/libvirt/qemu /run/libvirt
  if ! pgrep -x virtlogd >/dev/null; then
    virtlogd -d && touch "$STATE/started-virtlogd"
  fi
  if ! pgrep -x libvirtd >/dev/null; then
    libvirtd -d 2>>"$LOG"
    touch "$STATE/started-libvirtd"
  fi
  for _ in $(seq 60); do
    if answers; then
      echo "libvirtd_fixture: qemu:///system is up ($(virsh -c qemu:///system version --daemon | grep -i 'running hypervisor' || true))"
      return 0
    fi
    sleep 0.5
  done
  echo "libvirtd_fixture: libvirtd did not answer within 30 s" >&2
  tail -50 "$LOG" >&2 || true
  return 1
}

stop() {
  # Leave no guests behind from the tests.
  if answers; then
    for d in $(virsh -c qemu:///system list --all --name | grep '^hvit-' || true); do
      virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true
      virsh -c qemu:///system undefine "$d" --nvram >/dev/null 2>&1 ||
        virsh -c qemu:///system undefine "$d" >/dev/null 2>&1 || true
    done
  fi
  if [[ -f $STATE/started-libvirtd ]]; then
    pkill -x libvirtd || true
    rm -f "$STATE/started-libvirtd"
  fi
  if [[ -f $STATE/started-virtlogd ]]; then
    pkill -x virtlogd || true
    rm -f "$STATE/started-virtlogd"
  fi
  return 0
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
