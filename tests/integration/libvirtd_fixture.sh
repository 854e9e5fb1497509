#!/usr/bin/env bash
# Starts (or stops) a real libvirtd with the QEMU driver for the integration tier.
#   libvirtd_fixture.sh start   idempotent; prepares users, groups and qemu.conf, starts
#                               virtlogd + libvirtd unless already running, waits until
#                               qemu:///system answers (30 s)
#   libvirtd_fixture.sh stop    removes leftover hvit-* guests, then stops only the daemons
#                               this fixture started
#   libvirtd_fixture.sh pid     prints the pid of the libvirtd this fixture started (exit 1
#                               when the running libvirtd is not ours); used by test_reconnect
# Runs as root. No systemd needed (CI machines have none running). Daemons are stopped by the
# pid they wrote, never by name.
#
# Several test runs (two build trees, a CI clone) may share this machine's libvirtd at once.
# `start` records a lease for the process that called it (ctest), `stop` drops it and only
# cleans up and stops the daemons when no other live run holds a lease. The Python tests
# serialize on $STATE/tests.lock (agent_harness.py), so one run's cleanup never removes
# another run's guests mid-test.
set -euo pipefail

STATE=/run/hvagent-tests
QEMU_CONF=/etc/libvirt/qemu.conf
LOG=$STATE/libvirtd.log
OUR_LIBVIRTD_PID=$STATE/libvirtd.pid   # exists only for a libvirtd this fixture started
OUR_VIRTLOGD_PID=$STATE/virtlogd.pid   # likewise for virtlogd
LEASES=$STATE/leases                   # one file per test run using the daemons: <pid>
TESTS_LOCK=$STATE/tests.lock           # held by each Python test class while it runs
URI=qemu:///system
mkdir -p "$STATE" "$LEASES"

say() { echo "libvirtd_fixture: $*" >&2; }

ensure_accounts() {
  # libvirt's QEMU driver resolves these at start-up even when it runs guests as root.
  getent group kvm >/dev/null || groupadd --system kvm
  getent group libvirt >/dev/null || groupadd --system libvirt
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  getent passwd libvirt-qemu >/dev/null ||
    useradd --system --gid kvm --no-create-home \
      --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
}

# Guests run as root without a security driver: there is no /dev/kvm and no AppArmor/SELinux
# policy to rely on in CI. stdio_handler "file" keeps QEMU's output out of virtlogd, so a
# virtlogd hiccup cannot fail a guest start. The block is marked so it can be found and replaced.
# Returns 0 when the file was changed, 1 when it already held this block.
ensure_qemu_conf() {
  local block current
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
  mkdir -p "$(dirname "$QEMU_CONF")"
  touch "$QEMU_CONF"
  if grep -q '^# BEGIN hvagent-tests$' "$QEMU_CONF"; then
    current=$(sed -n '/^# BEGIN hvagent-tests$/,/^# END hvagent-tests$/p' "$QEMU_CONF")
    [[ "$current" == "$block" ]] && return 1
    sed -i '/^# BEGIN hvagent-tests$/,/^# END hvagent-tests$/d' "$QEMU_CONF"
  fi
  # The file may lack a final newline; never glue the marker onto its last line.
  [[ -s "$QEMU_CONF" && -n "$(tail -c1 "$QEMU_CONF")" ]] && echo >>"$QEMU_CONF"
  printf '%s\n' "$block" >>"$QEMU_CONF"
  return 0
}

# True if pid $1 runs program $2. A zombie does not count: the daemons are orphans here and
# whatever PID 1 is may take a second or two to reap them.
is_running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  [[ "$(cat "/proc/$1/comm" 2>/dev/null)" == "$2" ]] || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# Prints the pid in pidfile $1 if that process is alive and is program $2.
live_pid() {
  local pid
  [[ -s $1 ]] || return 1
  pid=$(tr -dc '0-9' <"$1")
  [[ -n $pid ]] && is_running "$pid" "$2" || return 1
  echo "$pid"
}

# The running libvirtd / virtlogd, whoever started it: ours first, then the distribution's
# pidfile, then (for a daemon started some other way) the process table, in this mount
# namespace.
running_pid() {
  local pid
  live_pid "$STATE/$1.pid" "$1" && return 0
  live_pid "/run/$1.pid" "$1" && return 0
  # Only one in this mount namespace: a private libvirtd (two_hosts.py's ns_libvirtd.sh, maybe
  # another run's, maybe left over) serves its own /run/libvirt, never qemu:///system here.
  for pid in $(pgrep -x "$1" || true); do
    [[ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" == "$(readlink /proc/self/ns/mnt)" ]] || continue
    is_running "$pid" "$1" && { echo "$pid"; return 0; }
  done
  return 1
}

# Sends SIGTERM to pid $1 (program $2) and waits up to 20 s for it to go (SIGKILL after that).
stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 200); do
    is_running "$pid" "$2" || return 0
    sleep 0.1
  done
  say "pid $pid ignored SIGTERM for 20 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.2
}

# A process's start time (clock ticks since boot): a pid plus this names a process uniquely.
starttime() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  echo "$stat" | cut -d' ' -f20
}

take_lease() {
  starttime "$PPID" >"$LEASES/$PPID" 2>/dev/null || rm -f "$LEASES/$PPID"
}

# Drops the caller's lease and those of runs that are gone; prints the pids still holding one.
other_leases() {
  local f pid
  rm -f "$LEASES/$PPID"
  for f in "$LEASES"/*; do
    [[ -e $f ]] || continue
    pid=${f##*/}
    if [[ "$(starttime "$pid" || true)" == "$(cat "$f")" ]]; then
      echo "$pid"
    else
      rm -f "$f"
    fi
  done
}

answers() { timeout 5 virsh -c "$URI" version >/dev/null 2>&1; }

start_libvirtd() {
  # Logs (warnings and errors) go to a file the fixture prints on failure; the environment
  # overrides libvirtd.conf's log_outputs.
  echo "---- libvirtd start $(date -Is) ----" >>"$LOG"
  # 9>&-: the daemon must not inherit (and so hold forever) the fixture's lock.
  LIBVIRT_LOG_OUTPUTS="3:file:$LOG" libvirtd -d -p "$1" 2>>"$LOG" 9>&-
}

start() {
  ensure_accounts
  local changed=0 pid
  ensure_qemu_conf && changed=1
  mkdir -p /var/lib/libvirt/images /var/log/libvirt/qemu /run/libvirt

  if pid=$(running_pid virtlogd); then
    :
  else
    rm -f "$OUR_VIRTLOGD_PID"
    virtlogd -d -p "$OUR_VIRTLOGD_PID" 9>&-
  fi

  if pid=$(running_pid libvirtd); then
    if [[ $changed == 1 ]]; then
      if live_pid "$OUR_LIBVIRTD_PID" libvirtd >/dev/null; then
        say "qemu.conf changed; restarting our libvirtd (pid $pid)"
        stop_pid "$pid" libvirtd
        start_libvirtd "$OUR_LIBVIRTD_PID"
      else
        # Someone else's libvirtd must see the new qemu.conf. It comes back under the
        # distribution's pidfile and is left running by `stop`, as it was found.
        say "qemu.conf changed; restarting the already running libvirtd (pid $pid, not ours)"
        stop_pid "$pid" libvirtd
        start_libvirtd /run/libvirtd.pid
      fi
    fi
  else
    rm -f "$OUR_LIBVIRTD_PID"
    start_libvirtd "$OUR_LIBVIRTD_PID"
  fi

  local deadline=$((SECONDS + 30))
  while ((SECONDS < deadline)); do
    if answers; then
      say "qemu:///system is up: $(virsh -c "$URI" version --daemon | grep -i 'running hypervisor' || true)"
      take_lease
      return 0
    fi
    sleep 0.3
  done
  say "libvirtd did not answer on $URI within 30 s; its log ($LOG):"
  tail -n 80 "$LOG" >&2 || true
  return 1
}

stop() {
  local others
  others=$(other_leases)
  if [[ -n $others ]]; then
    say "other test runs still use libvirtd (pids: ${others//$'\n'/ }); leaving it running"
    return 0
  fi
  # Leave no guests behind from the tests (names start with hvit-); wait for a test class
  # of a run without a lease (a Python file run by hand) to finish first.
  exec 8>"$TESTS_LOCK"
  flock -w 120 8 || say "$TESTS_LOCK still held after 120 s; cleaning up anyway"
  if answers; then
    local d
    for d in $(virsh -c "$URI" list --all --name | grep '^hvit-' || true); do
      virsh -c "$URI" destroy "$d" >/dev/null 2>&1 || true
      virsh -c "$URI" undefine "$d" --nvram >/dev/null 2>&1 ||
        virsh -c "$URI" undefine "$d" >/dev/null 2>&1 || true
    done
  fi
  local pid
  if pid=$(live_pid "$OUR_LIBVIRTD_PID" libvirtd); then
    stop_pid "$pid" libvirtd
  fi
  rm -f "$OUR_LIBVIRTD_PID"
  if pid=$(live_pid "$OUR_VIRTLOGD_PID" virtlogd); then
    stop_pid "$pid" virtlogd
  fi
  rm -f "$OUR_VIRTLOGD_PID"
  return 0
}

# One start or stop at a time on this machine.
lock_fixture() {
  exec 9>"$STATE/fixture.lock"
  flock -w 120 9 || { say "another libvirtd_fixture.sh held $STATE/fixture.lock for 120 s"; exit 1; }
}

case "${1:-}" in
  start) lock_fixture; start ;;
  stop) lock_fixture; stop ;;
  pid) live_pid "$OUR_LIBVIRTD_PID" libvirtd ;;
  *) echo "usage: $0 start|stop|pid" >&2; exit 2 ;;
esac
