"""Cold migration throughput (issue 26's benchmark): one volume moved agent to agent against
the same device copied with `dd` through a plain TCP socket.

    /usr/bin/python3 bench/migration_throughput.py HVAGENTD [MiB]               (root; default 256 MiB)
    /usr/bin/python3 bench/migration_throughput.py --namespaces HVAGENTD [MiB]
      --perf DIR   also runs each agent under `perf record -g` during the migration (DIR/perf.src.data,
                   DIR/perf.dst.data); each agent's CPU seconds in it are printed either way
      --over-grpc  the destination offers no volume channel ([migration] data_port = -1): the
                   volume goes as gRPC's ReceiveVolume stream, as before the channel
      --keep-logs  keep each agent's log (its path is printed) for the steps' times; by default the
                   logs go with the hosts
      --pin        each "host" on a core of its own, as on two machines: the source side (its agent
                   with its embedded QEMU driver and helpers, the baseline's dd reader and Python
                   sender) on CPU 0, the destination side (its agent, the baseline's sink and its
                   dd) on CPU 1, for the baseline and the migration alike

Two agents on this machine, each on libvirt's embedded QEMU driver (qemu:///embed?root=DIR)
with its own GPT partition pool on a loop device. By default both are in the development mode
on loopback (plain text). With `--namespaces` the agents are two hosts joined by a veth pair
(tests/integration/two_hosts.py's Veth): the source in this machine's network namespace, the
destination in a namespace of its own listening on the veth's far address, and the agents talk
with their **mutual TLS** (a development PKI from deploy/dev-certs.sh: the source's [migration]
client certificate is the destination's `peer` identity), exactly as two real hosts would; the
baseline's socket crosses the same veth. The hosts are test_migration.py's `Host` (needs the
build's Python stubs: found next to HVAGENTD, build/proto/py).

The volume is all random bytes, so every byte crosses as data. Baseline: `dd if=SRC bs=4M
iflag=direct` read by this script and sent with Python sockets to a receiver (this script's
`--sink` mode, in the destination's namespace) that pipes it into `dd of=DST bs=4M oflag=direct
conv=fsync` on a free volume of the destination pool: the migration must have the bytes on the
destination's disk before it deletes the source, so the baseline flushes too (a loop device's
writes sit in its backing file's page cache until then). The migration is timed from the
request to the operation's end (prepare, stream, sha256 on both ends, fsync, define, removal of
the source); the stream phase alone is timed from the operation's bytes_done. Page cache
dropped before each. The CPU seconds of each side are printed for both: the agents' from
/proc/PID/stat, the baseline's from its processes' rusage.

`--pin` runs each process the bench starts under `taskset` (children inherit the affinity) and
pins the bench's own sending thread during the baseline; what it cannot pin is the kernel's share
(the loop devices' workers, the veth's softirqs, udev) and the bench's polling of the operation
(every 10 ms, a controller's job). Prints figures only; docs/performance.md has runs."""
import json, os, resource, shutil, socket, subprocess, sys, tempfile, time, urllib.request, uuid
from types import SimpleNamespace

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
INTEGRATION = os.path.join(REPO, "tests", "integration")


def taskset(cpu):
    """The argv prefix that runs a command, and every process it starts, on CPU `cpu` alone
    ([] for None: unpinned)."""
    return [] if cpu is None else ["taskset", "--cpu-list", str(cpu)]


def affinity(pid):
    """The CPUs the threads of process `pid` may run on, as text ("0", "0,1", or "0 | 1" when
    its threads differ)."""
    sets = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            sets.add(tuple(sorted(os.sched_getaffinity(int(tid)))))
        except ProcessLookupError:
            pass
    return " | ".join(",".join(map(str, cpus)) for cpus in sorted(sets))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def rest(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            data = r.read()
            return r.status, json.loads(data) if data else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def drop_caches():
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


class LoopbackAgent:
    """An agent in the development mode (plain text on loopback)."""

    def __init__(self, binary, work, name, size, cpu=None, extra_config=""):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        img = os.path.join(self.dir, "disk.img")
        with open(img, "wb") as f:
            f.truncate(size)
        self.loop = subprocess.run(["losetup", "--find", "--show", "--partscan", img], capture_output=True,
                                   text=True, check=True).stdout.strip()
        cfg = os.path.join(self.dir, "agent.toml")
        with open(cfg, "w") as f:
            f.write(f'[hypervisor]\ndomain_type = "qemu"\n[reliability]\nstate_dir = "{self.dir}/state"\n'
                    f'[[storage.pools]]\nname = "disk1"\ntype = "partition"\ndisk = "{self.loop}"\nwipe = "none"\n'
                    + extra_config)
        self.grpc, self.port = free_port(), free_port()
        self.grpc_addr = f"127.0.0.1:{self.grpc}"
        self.log = open(os.path.join(self.dir, "agent.log"), "w")
        self.proc = subprocess.Popen(taskset(cpu) + [binary, "--hypervisor-uri", f"qemu:///embed?root={self.dir}/libvirt",
                                      "--grpc-listen", self.grpc_addr, "--rest-listen",
                                      f"127.0.0.1:{self.port}", "--plaintext-loopback", "--config", cfg],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        for _ in range(300):
            try:
                if self.rest("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"agent {name} did not come up; see {self.log.name}")

    def rest(self, method, path, body=None):
        return rest(self.port, method, path, body)

    def operation(self, op_id):
        """(state name, bytes_done) of an operation."""
        o = self.rest("GET", f"/v1/operations/{op_id}")[1]
        return o["state"], int(o.get("bytes_done", 0)), o.get("message", "")

    def close(self):
        self.proc.terminate(); self.proc.wait(timeout=30)
        subprocess.run(["losetup", "-d", self.loop])


def loopback_hosts(binary, work, size, cpus, over_grpc=False):
    """The hosts: source, destination, the destination's netns (None here), the address the
    baseline's receiver listens on, the link's interface here (None: loopback), the CPU of each
    side (`cpus`), what to close."""
    src = LoopbackAgent(binary, work, "src", size + 64 * MiB, cpus.src)
    try:
        dst = LoopbackAgent(binary, work, "dst", 2 * size + 64 * MiB, cpus.dst,
                            "[migration]\ndata_port = -1\n" if over_grpc else "")
    except BaseException:
        src.close()
        raise
    return SimpleNamespace(src=src, dst=dst, netns=None, address="127.0.0.1", link=None, cpus=cpus,
                           closing=[src, dst])


class TlsHost:
    """test_migration.Host with mutual TLS and a REST token, optionally in a network namespace
    (the agent runs under `ip netns exec` and listens on `listen_host`), optionally on CPU `cpu`."""

    def __init__(self, name, pool_bytes, tls, client, token, netns=None, listen_host="127.0.0.1", cpu=None):
        from test_migration import Host
        opts = {"plaintext": False, "client_tls": client, "token": token, "listen_host": listen_host,
                "wrapper": (["ip", "netns", "exec", netns] if netns else []) + taskset(cpu)}
        self.host = Host(name, [("disk1", pool_bytes)], tls, opts)
        self.grpc_addr = self.host.agent.grpc_addr
        # `ip netns exec` and `taskset` exec what follows: the agent is this very process.
        self.pid = self.host.agent.proc.pid

    def rest(self, method, path, body=None):
        return self.host.agent.rest(method, path, body)

    def operation(self, op_id):
        """As LoopbackAgent.operation, over the harness's gRPC channel: polled every 10 ms, REST
        over TLS would cost the agent a TLS handshake per poll (urllib keeps no connection)."""
        from hvagent.v1 import operation_pb2, operation_pb2_grpc
        o = operation_pb2_grpc.OperationServiceStub(self.host.agent.channel).GetOperation(
            operation_pb2.GetOperationRequest(id=str(op_id)), timeout=10)
        return operation_pb2.OperationState.Name(o.state), o.bytes_done, o.message

    def close(self, keep_log=False):
        log = self.host.agent.log.name
        self.host.close()
        if keep_log:
            print(f"agent log kept: {log}")
        else:
            os.unlink(log)


def dev_pki(directory, peer_ip):
    """A development PKI whose server certificate also names `peer_ip`; answers (agent config
    text for [tls], [migration] and the identities, the controller's client files, the
    controller's REST token)."""
    subprocess.run([os.path.join(REPO, "deploy", "dev-certs.sh"), directory], check=True, capture_output=True,
                   env={**os.environ, "HVAGENT_DEV_CERT_SANS": f"IP:{peer_ip}"})
    pem = lambda n: os.path.join(directory, n)
    with open(pem("tokens.txt")) as f:
        role, token, digest = next(line.split() for line in f if line.startswith("controller "))
    tls = (f'[tls]\ncert_file = "{pem("server.crt")}"\nkey_file = "{pem("server.key")}"\n'
           f'client_ca_file = "{pem("ca.crt")}"\n'
           f'[migration]\ncert_file = "{pem("peer.crt")}"\nkey_file = "{pem("peer.key")}"\n'
           '[[auth.identities]]\nname = "hvagent-controller"\nrole = "controller"\n'
           '[[auth.identities]]\nname = "hvagent-peer"\nrole = "peer"\n'
           f'[[auth.tokens]]\nname = "bench"\nsha256 = "{digest}"\nrole = "{role}"\n'
           # The bench polls the operation every 10 ms: above the default 50 requests a second.
           '[limits]\nrequests_per_second = 1000\nburst = 1000\n')
    return tls, (pem("ca.crt"), pem("controller.crt"), pem("controller.key")), token


def stubs_dir(binary):
    """The build's Python stubs: next to HVAGENTD's build tree (build/agent/hvagentd ->
    build/proto/py), else this checkout's build/ (a copied binary, e.g. an older one to compare)."""
    near = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(binary))), "proto", "py")
    return near if os.path.isdir(near) else os.path.join(REPO, "build", "proto", "py")


def namespace_hosts(binary, work, size, cpus, over_grpc=False):
    """Two TLS agents joined by a veth: the source here, the destination in its own network
    namespace. Same answer as loopback_hosts (`link`: this end of the veth)."""
    sys.path[:0] = [stubs_dir(binary), INTEGRATION]
    os.environ["HVAGENTD"] = os.path.abspath(binary)
    from two_hosts import Veth
    tag = uuid.uuid4().hex[:4]
    veth = Veth(tag, f"10.{220 + int(tag[0], 16) % 16}.{int(tag[1:3], 16)}")
    closing = [veth]
    try:
        tls, client, token = dev_pki(os.path.join(work, "pki"), veth.peer_ip)
        if over_grpc:
            tls = tls.replace("[migration]\n", "[migration]\ndata_port = -1\n")
        src = TlsHost("bsrc", size + 64 * MiB, tls, client, token, cpu=cpus.src)
        closing.insert(0, src)
        dst = TlsHost("bdst", 2 * size + 64 * MiB, tls, client, token, netns=veth.netns,
                      listen_host=veth.peer_ip, cpu=cpus.dst)
        closing.insert(0, dst)
    except BaseException:
        for c in closing:
            c.close()
        raise
    return SimpleNamespace(src=src, dst=dst, netns=veth.netns, address=veth.peer_ip, link=veth.here,
                           cpus=cpus, closing=closing)


def sink(address, dev):
    """The baseline's receiver (`--sink ADDRESS DEV`): listens on ADDRESS, prints its port, takes
    one connection and pipes it into dd (flushed before it exits); then prints the CPU seconds it
    and its dd used from the connection on, and the CPUs it may run on."""
    srv = socket.socket(); srv.bind((address, 0)); srv.listen(1)
    print(srv.getsockname()[1], flush=True)
    conn, _ = srv.accept()
    before = rusage_seconds(resource.RUSAGE_SELF)
    dd = subprocess.Popen(["dd", f"of={dev}", "bs=4M", "oflag=direct", "conv=fsync", "iflag=fullblock",
                           "status=none"], stdin=subprocess.PIPE)
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            break
        dd.stdin.write(view[:n])
    dd.stdin.close()
    status = dd.wait()
    used = rusage_seconds(resource.RUSAGE_SELF) - before + rusage_seconds(resource.RUSAGE_CHILDREN)
    print(f"{used:.3f} {affinity(os.getpid())}", flush=True)
    sys.exit(status)


def rusage_seconds(who):
    """User and system CPU seconds of getrusage(`who`)."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def dd_over_tcp(src, dst, size, hosts):
    """Copies SRC to DST: dd reads, this process sends over a plain TCP socket to the sink (in
    the destination's netns when there is one), whose dd writes and flushes. With hosts.cpus
    set, the sink runs on the destination's CPU, this thread and its dd on the source's.
    Answers (seconds, CPU seconds of the sending side, of the receiving side, the sink's CPUs)."""
    argv = ([] if hosts.netns is None else ["ip", "netns", "exec", hosts.netns]) + taskset(hosts.cpus.dst)
    receiver = subprocess.Popen(argv + [sys.executable, os.path.abspath(__file__), "--sink", hosts.address, dst],
                                stdout=subprocess.PIPE, text=True)
    port = int(receiver.stdout.readline())
    unpinned = os.sched_getaffinity(0)
    if hosts.cpus.src is not None:
        os.sched_setaffinity(0, {hosts.cpus.src})  # this thread, and the dd it starts
    try:
        start, thread0 = time.perf_counter(), time.thread_time()
        out = socket.create_connection((hosts.address, port))
        reader = subprocess.Popen(["dd", f"if={src}", "bs=4M", "iflag=direct", f"count={size // (4 * MiB)}",
                                   "status=none"], stdout=subprocess.PIPE)
        while True:
            b = reader.stdout.read(4 * MiB)
            if not b:
                break
            out.sendall(b)
        out.close()
        sender_cpu = time.thread_time() - thread0
        _, status, usage = os.wait4(reader.pid, 0)  # wait4 for dd's rusage
        reader.returncode = os.waitstatus_to_exitcode(status)
    finally:
        os.sched_setaffinity(0, unpinned)
    sink_cpu, _, sink_cpus = receiver.stdout.readline().strip().partition(" ")
    if receiver.wait() != 0 or reader.returncode != 0:
        raise SystemExit("the baseline's dd or receiver failed")
    seconds = time.perf_counter() - start
    return seconds, sender_cpu + usage.ru_utime + usage.ru_stime, float(sink_cpu), sink_cpus


def migrate(src, dst, size):
    """(seconds from the request to the operation's end, seconds of the stream phase or None)."""
    t = time.perf_counter()
    status, op = src.rest("POST", "/v1/domains/benchmig:migrate", {"destination": dst.grpc_addr})
    assert status == 202, op
    first_bytes = all_bytes = None  # when bytes_done was first seen above 0, and at the total
    while True:
        state, done, message = src.operation(op["operation_id"])
        if done > 0 and first_bytes is None:
            first_bytes = (time.perf_counter(), done)
        if done >= size and all_bytes is None:
            all_bytes = time.perf_counter()
        if state != "OPERATION_STATE_RUNNING":
            break
        time.sleep(0.01)
    mig_s = time.perf_counter() - t
    assert state == "OPERATION_STATE_SUCCEEDED", (state, message)
    stream_s = None
    if first_bytes and all_bytes and all_bytes > first_bytes[0]:
        # The stream alone (polled every 10 ms): without the request, prepare, define and the
        # source's removal, which do not grow with the volume.
        stream_s = (all_bytes - first_bytes[0]) * size / (size - first_bytes[1])
    return mig_s, stream_s


def link_mib(link):
    """MiB sent plus received so far on interface `link` (0 without one): shows that a copy
    crossed the veth."""
    if not link:
        return 0.0
    total = 0
    for direction in ("tx_bytes", "rx_bytes"):
        with open(f"/sys/class/net/{link}/statistics/{direction}") as f:
            total += int(f.read())
    return total / MiB


def cpu_seconds(pid):
    """User and system CPU seconds process `pid` (all its threads) has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profiled(hosts, perf_dir, run):
    """Runs `run()` with each agent's CPU seconds counted and, with `perf_dir`, each agent under
    `perf record -g` (perf.src.data, perf.dst.data there). Answers (run()'s answer, CPU seconds of
    the source, of the destination)."""
    agents = {"src": hosts.src.pid, "dst": hosts.dst.pid}
    before = {k: cpu_seconds(pid) for k, pid in agents.items()}
    cpus = {"src": hosts.cpus.src, "dst": hosts.cpus.dst}  # each side's profiler on its own CPU
    perfs = [subprocess.Popen(taskset(cpus[k]) + ["perf", "record", "-q", "-g", "-p", str(pid), "-o",
                               os.path.join(perf_dir, f"perf.{k}.data")], stderr=subprocess.DEVNULL)
             for k, pid in agents.items()] if perf_dir else []
    time.sleep(0.5 if perfs else 0)  # perf attaches to every thread before the run starts
    try:
        answer = run()
    finally:
        for p in perfs:
            p.send_signal(2)
            p.wait(60)
    return answer, cpu_seconds(agents["src"]) - before["src"], cpu_seconds(agents["dst"]) - before["dst"]


def measure(hosts, size, label, perf_dir=None):
    src, dst = hosts.src, hosts.dst
    spec = {"name": "benchmig", "vcpus": 1, "memory_mib": 64,
            "disks": [{"target": "vda", "volume": {"pool": "disk1", "name": "benchmig-root",
                                                    "create_size_bytes": str(size)}}]}
    status, out = src.rest("POST", "/v1/domains", {"spec": spec})
    assert status == 201, out
    src_path = src.rest("GET", "/v1/pools/disk1/volumes/benchmig-root")[1]["path"]
    subprocess.run(["dd", "if=/dev/urandom", f"of={src_path}", "bs=4M", f"count={size // (4 * MiB)}",
                    "oflag=direct", "status=none"], check=True)
    # The fill's dirty pages sit in the loop disk's backing file (oflag=direct bypasses only the
    # loop device's cache). Written back now: otherwise whichever fsync comes first in a timed
    # part pays for them (on ext4, data=ordered, even an agent's journal fsync in the same
    # filesystem), and a guest shut down before a real migration has flushed its disk.
    os.sync()
    status, scratch = dst.rest("POST", "/v1/pools/disk1/volumes", {"name": "ddcopy", "size_bytes": str(size)})
    assert status in (200, 201), scratch
    drop_caches()
    link0 = link_mib(hosts.link)
    dd_s, dd_src_cpu, dd_dst_cpu, sink_cpus = dd_over_tcp(src_path, scratch["path"], size, hosts)
    link1 = link_mib(hosts.link)
    dst.rest("DELETE", "/v1/pools/disk1/volumes/ddcopy")
    drop_caches()
    link2 = link_mib(hosts.link)
    (mig_s, stream_s), src_cpu, dst_cpu = profiled(hosts, perf_dir, lambda: migrate(src, dst, size))
    link3 = link_mib(hosts.link)
    mib = size / MiB
    print(f"volume {mib:.0f} MiB, all data; {label}; load average {os.getloadavg()[0]:.1f}")
    print(f"dd over TCP:                 {dd_s:6.2f} s  {mib / dd_s:7.1f} MiB/s")
    print(f"hvagent cold migration:      {mig_s:6.2f} s  {mib / mig_s:7.1f} MiB/s  (request to operation end)")
    print(f"ratio (migration / dd rate): {dd_s / mig_s:.2f}x")
    print(f"baseline's CPU (dd, Python): source {dd_src_cpu:.2f} s, destination {dd_dst_cpu:.2f} s "
          f"(the sink ran on CPUs {sink_cpus})")
    print(f"agents' CPU in the migration: source {src_cpu:.2f} s, destination {dst_cpu:.2f} s")
    if hosts.link:
        print(f"crossed the veth:            dd {link1 - link0:.0f} MiB, migration {link3 - link2:.0f} MiB")
    if stream_s:
        print(f"stream phase (bytes_done):   {stream_s:6.2f} s  {mib / stream_s:7.1f} MiB/s  "
              f"ratio {dd_s / stream_s:.2f}x; fixed costs {mig_s - stream_s:.2f} s")


def main():
    if sys.argv[1:2] == ["--sink"]:
        return sink(sys.argv[2], sys.argv[3])
    import argparse
    p = argparse.ArgumentParser(description="cold migration throughput against dd over a TCP socket")
    p.add_argument("hvagentd")
    p.add_argument("mib", nargs="?", type=int, default=256, help="the volume's size in MiB")
    p.add_argument("--namespaces", action="store_true", help="two hosts joined by a veth, agents with mutual TLS")
    p.add_argument("--perf", metavar="DIR", help="each agent under perf record -g during the migration")
    p.add_argument("--keep-logs", action="store_true", help="keep the agents' logs (namespaces: /tmp/hvagentd-*.log)")
    p.add_argument("--over-grpc", action="store_true",
                   help="the destination offers no volume channel: the volume goes over gRPC")
    p.add_argument("--pin", action="store_true",
                   help="the source side on CPU 0, the destination side on CPU 1 (baseline and migration)")
    a = p.parse_args()
    cpus = SimpleNamespace(src=0, dst=1) if a.pin else SimpleNamespace(src=None, dst=None)
    if a.pin and not {0, 1} <= os.sched_getaffinity(0):
        p.error(f"--pin needs CPUs 0 and 1; this process may use {sorted(os.sched_getaffinity(0))}")
    size = a.mib * MiB
    work = tempfile.mkdtemp(prefix="hvbench-mig-")
    hosts = None
    try:
        hosts = (namespace_hosts if a.namespaces else loopback_hosts)(a.hvagentd, work, size, cpus, a.over_grpc)
        label = ("two network namespaces over a veth, agents with mutual TLS" if a.namespaces
                 else "loopback, plain text")
        label += "; volume over gRPC" if a.over_grpc else "; volume over the volume channel"
        if a.pin:
            label += (f"; pinned: source agent on CPUs {affinity(hosts.src.pid)}, destination agent on "
                      f"CPUs {affinity(hosts.dst.pid)}; dd sender on CPU {cpus.src}, sink on CPU {cpus.dst}")
        measure(hosts, size, label, a.perf)
    finally:
        for c in hosts.closing if hosts else []:
            if isinstance(c, TlsHost):
                c.close(keep_log=a.keep_logs)
            else:
                c.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
