"""Live migration of a 512 MiB guest (issue 26's benchmark): total time and downtime.

    /usr/bin/python3 bench/live_migration.py HVAGENTD [--runs N] [--memory-mib M] [--disk-mib D]
                                             [--max-downtime-ms MS] [--loads idle,dirty]   (root)

The two hosts are integration_live_migration's (tests/integration/test_live_migration.py, whose
class setup this script calls rather than copying it): each a private libvirtd in its own mount
namespace with its agent, the destination's in a network namespace behind a veth, QEMU's
migration stream and NBD disk copy under TLS. Each run boots the busybox test guest (TCG) with
M MiB of memory (default 512) and a D MiB disk of random bytes (default 32), makes it print
`tick N UPTIME` on its serial console every 0.1 s, and moves it live through the source agent
(MigrationService.MigrateDomain, live, max_downtime_ms). Loads: `idle` (the counter alone) and
`dirty` (a loop copying a 64 MiB file of random bytes inside the guest's RAM over another; one copy is
timed by the guest's clock first, the rate it dirties memory at; auto-converge, always on,
throttles the guest when its memory does not converge).

Figures per run:
- total: the request until the agent's operation was seen ended (polled every 0.1 s);
- libvirt's downtime and elapsed time: `virsh domjobinfo --completed` on the destination (the
  source's domain is gone: UNDEFINE_SOURCE), with the memory moved, iterations and dirty rate;
- the pause the guest's console shows: both consoles are read with this machine's clock (the
  destination's as soon as its paused incoming QEMU exists); between the last tick read on the
  source and the first read on the destination, the host's clock advanced by H and the guest's
  /proc/uptime by G (a TCG guest's clock stops while it is paused), so the guest stood still
  H - G seconds (±10 ms of uptime's resolution, plus the consoles' read latency).
Prints figures only; docs/performance.md has runs."""
import os
import re
import sys
import threading
import time
import uuid

MiB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = re.compile(rb"tick (\d+) (\d+\.\d+)\r?\n")
COPY = re.compile(rb"copy-took (\d+\.\d+) (\d+\.\d+)")


def setup_paths(binary):
    sys.path[:0] = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(binary))), "proto", "py"),
                    os.path.join(REPO, "tests", "integration")]
    os.environ["HVAGENTD"] = os.path.abspath(binary)


class ConsoleClock:
    """Reads a console fd on a thread; records (host time, tick number, guest uptime) per tick."""

    def __init__(self, fd):
        self.fd, self.ticks, self.stopped = fd, [], threading.Event()
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        import select
        pending = b""
        while not self.stopped.is_set():
            if not select.select([self.fd], [], [], 0.05)[0]:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # the source's QEMU exited: its pty is gone
                return
            if not data:
                return
            now = time.monotonic()
            pending += data
            for m in TICK.finditer(pending):
                self.ticks.append((now, int(m.group(1)), float(m.group(2))))
            pending = pending[pending.rfind(b"\n") + 1:]

    def stop(self):
        self.stopped.set()
        self.thread.join(5)


def open_destination_console(dst, name, found, stop):
    """Opens the destination's console as soon as its incoming QEMU has a pty."""
    while not stop.is_set():
        r = dst.lv.virsh("ttyconsole", name, check=False)
        if r.returncode == 0 and r.stdout.strip():
            found.append(ConsoleClock(os.open(r.stdout.strip(), os.O_RDWR | os.O_NOCTTY)))
            return
        time.sleep(0.05)


def domjobinfo(host, name):
    r = host.lv.virsh("domjobinfo", "--completed", name, check=False)
    info = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = " ".join(value.split())
    return info


def boot_guest(hosts, memory_mib, disk_mib, load):
    """A running guest on the source, counting; answers (name, its console fd)."""
    from agent_harness import console_until
    src = hosts.src
    name = f"hvit-b{uuid.uuid4().hex[:6]}"
    spec = {"name": name, "vcpus": 1, "memory_mib": memory_mib, "serial_console": True,
            "kernel": {"kernel_path": hosts.kernel, "initrd_path": hosts.initrd, "cmdline": "console=ttyS0"},
            "disks": [{"target": "vda", "volume": {"pool": "disk1", "name": name[5:] + "-root",
                                                   "create_size_bytes": str(disk_mib * MiB)}}]}
    src.rest("POST", "/v1/domains", {"spec": spec, "start": False}, expect=201)
    with open(src.volumes()[name[5:] + "-root"]["path"], "r+b") as f:
        f.write(os.urandom(disk_mib * MiB))
    src.rest("POST", f"/v1/domains/{name}:start", {})
    fd = src.console(name)
    console_until(fd, b"hv-guest-ready", 240)
    dirty_mib_s = None
    if load == "dirty":
        # One copy timed by the guest's clock first: the rate the loop dirties memory at.
        os.write(fd, b"\ndd if=/dev/urandom of=/tmp/a bs=1M count=64 2>/dev/null; read a r < /proc/uptime; "
                     b"dd if=/tmp/a of=/tmp/b bs=1M conv=notrunc 2>/dev/null; read b r < /proc/uptime; "
                     b"echo copy-took $a $b; "
                     b"(while true; do dd if=/tmp/a of=/tmp/b bs=1M conv=notrunc 2>/dev/null; done) &\n")
        out = console_until(fd, b"\r\n", 240)
        while not COPY.search(out):
            out += console_until(fd, b"\n", 240)
        start, end = map(float, COPY.search(out).groups())
        dirty_mib_s = 64 / max(end - start, 0.01)
    os.write(fd, b"\ni=0; while true; do i=$((i+1)); read u r < /proc/uptime; echo tick $i $u; sleep 0.1; done\n")
    console_until(fd, b"tick 5 ", 60)
    return name, fd, dirty_mib_s


def migrate(hosts, name, max_downtime_ms):
    """Seconds from the request until the operation was seen ended."""
    from hvagent.v1 import migration_pb2, migration_pb2_grpc, operation_pb2, operation_pb2_grpc
    channel = hosts.src.agent.channel
    t0 = time.monotonic()
    r = migration_pb2_grpc.MigrationServiceStub(channel).MigrateDomain(migration_pb2.MigrateDomainRequest(
        name=name, destination=hosts.dst.agent.grpc_addr, live=True, max_downtime_ms=max_downtime_ms), timeout=30)
    ops = operation_pb2_grpc.OperationServiceStub(channel)
    while True:
        o = ops.GetOperation(operation_pb2.GetOperationRequest(id=str(r.operation_id)), timeout=10)
        if o.state != operation_pb2.OPERATION_STATE_RUNNING:
            break
        time.sleep(0.1)
    if o.state != operation_pb2.OPERATION_STATE_SUCCEEDED:
        raise SystemExit(f"migration of {name} ended {o.state}: {o.message}")
    return time.monotonic() - t0


def one_run(hosts, memory_mib, disk_mib, load, max_downtime_ms):
    name, fd, dirty_mib_s = boot_guest(hosts, memory_mib, disk_mib, load)
    try:
        here = ConsoleClock(fd)
        there, stop = [], threading.Event()
        opener = threading.Thread(target=open_destination_console, args=(hosts.dst, name, there, stop), daemon=True)
        opener.start()
        total = migrate(hosts, name, max_downtime_ms)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (there and len(there[0].ticks) >= 5):
            time.sleep(0.1)
        stop.set(); opener.join(5); here.stop()
        if not there or not there[0].ticks or not here.ticks:
            raise SystemExit(f"no ticks read on the {'destination' if here.ticks else 'source'}")
        there[0].stop(); os.close(there[0].fd)
        (t_l, n_l, u_l), (t_m, n_m, u_m) = here.ticks[-1], there[0].ticks[0]
        job = domjobinfo(hosts.dst, name)
        return {"load": load, "dirty_mib_s": dirty_mib_s, "total_s": total, "job": job,
                "host_gap_s": t_m - t_l, "guest_gap_s": u_m - u_l, "pause_s": (t_m - t_l) - (u_m - u_l),
                "ticks": (n_l, n_m)}
    finally:
        os.close(fd)
        for h in (hosts.src, hosts.dst):
            h.agent.rest("DELETE", f"/v1/domains/{name}?force=true&delete_volumes=true")


def print_run(i, r, memory_mib):
    job = r["job"]
    print(f"run {i} {r['load']:5s} {memory_mib} MiB guest: total {r['total_s']:.2f} s (request to operation end); "
          f"libvirt: downtime {job.get('Total downtime', '?')}, elapsed {job.get('Time elapsed', '?')}, "
          f"memory {job.get('Memory processed', '?')}, iterations {job.get('Iteration', '?')}, "
          f"throttle {job.get('Auto converge throttle', '-')}; "
          + (f"guest dirties {r['dirty_mib_s']:.0f} MiB/s; " if r["dirty_mib_s"] else "") +
          f"console: last tick here {r['ticks'][0]}, first there {r['ticks'][1]}, host {r['host_gap_s'] * 1000:.0f} ms "
          f"vs guest {r['guest_gap_s'] * 1000:.0f} ms: paused {r['pause_s'] * 1000:.0f} ms; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)


def main():
    args = sys.argv[1:]
    opt = lambda flag, default: args[args.index(flag) + 1] if flag in args else default
    setup_paths(args[0])
    runs, memory_mib = int(opt("--runs", 1)), int(opt("--memory-mib", 512))
    disk_mib, max_downtime_ms = int(opt("--disk-mib", 32)), int(opt("--max-downtime-ms", 300))
    loads = opt("--loads", "idle,dirty").split(",")
    from test_live_migration import LiveMigrationTest as hosts
    hosts.setUpClass()
    try:
        hosts.veth.set_up(True)
        for i in range(1, runs + 1):
            for load in loads:
                print_run(i, one_run(hosts, memory_mib, disk_mib, load, max_downtime_ms), memory_mib)
    finally:
        hosts.tearDownClass()


if __name__ == "__main__":
    main()
