"""Cold migration throughput (issue 26's benchmark): one volume moved agent to agent against
the same device copied with `dd` through a plain TCP socket.

    /usr/bin/python3 bench/migration_throughput.py HVAGENTD [MiB]      (root; default 256 MiB)

Two agents on this
machine, each on libvirt's embedded QEMU driver (qemu:///embed?root=DIR) with its own GPT
partition pool on a loop device, in the development mode on loopback (no TLS: the issue's
"TLS included" figure needs the two-namespace setup, not built). The volume is all random
bytes, so every byte crosses as data. Baseline: `dd if=SRC bs=4M iflag=direct` into a TCP
socket on loopback, read into `dd of=DST bs=4M oflag=direct conv=fsync` on a free volume of
the destination pool: the migration must have the bytes on the destination's disk before it
deletes the source, so the baseline flushes too (a loop device's writes sit in its backing
file's page cache until then). The migration is timed from the request to the operation's end
(prepare, stream, sha256 on both ends, fsync, define, removal of the source); the stream phase
alone is timed from the operation's bytes_done. Page cache dropped before each.
Prints figures only; docs/performance.md has a run."""
import json, os, shutil, socket, subprocess, sys, tempfile, threading, time, urllib.request

MiB = 1 << 20


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


class Agent:
    def __init__(self, binary, work, name, size):
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
                    f'[[storage.pools]]\nname = "disk1"\ntype = "partition"\ndisk = "{self.loop}"\nwipe = "none"\n')
        self.grpc, self.port = free_port(), free_port()
        self.log = open(os.path.join(self.dir, "agent.log"), "w")
        self.proc = subprocess.Popen([binary, "--hypervisor-uri", f"qemu:///embed?root={self.dir}/libvirt",
                                      "--grpc-listen", f"127.0.0.1:{self.grpc}", "--rest-listen",
                                      f"127.0.0.1:{self.port}", "--plaintext-loopback", "--config", cfg],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                if rest(self.port, "GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"agent {name} did not come up; see {self.log.name}")

    def close(self):
        self.proc.terminate(); self.proc.wait(timeout=30)
        subprocess.run(["losetup", "-d", self.loop])


def dd_over_tcp(src, dst, size):
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
    port = srv.getsockname()[1]

    def receive():
        conn, _ = srv.accept()
        sink = subprocess.Popen(["dd", f"of={dst}", "bs=4M", "oflag=direct", "conv=fsync", "iflag=fullblock",
                                 "status=none"],
                                stdin=subprocess.PIPE)
        while True:
            b = conn.recv(4 * MiB)
            if not b:
                break
            sink.stdin.write(b)
        sink.stdin.close(); sink.wait(); conn.close()

    t = threading.Thread(target=receive); t.start()
    start = time.perf_counter()
    out = socket.create_connection(("127.0.0.1", port))
    reader = subprocess.Popen(["dd", f"if={src}", "bs=4M", "iflag=direct", f"count={size // (4 * MiB)}",
                               "status=none"], stdout=subprocess.PIPE)
    while True:
        b = reader.stdout.read(4 * MiB)
        if not b:
            break
        out.sendall(b)
    out.close(); reader.wait(); t.join()
    return time.perf_counter() - start


def main():
    binary = sys.argv[1]
    size = int(sys.argv[2]) * MiB if len(sys.argv) > 2 else 256 * MiB
    work = tempfile.mkdtemp(prefix="hvbench-mig-")
    agents = []
    try:
        src = Agent(binary, work, "src", size + 64 * MiB); agents.append(src)
        dst = Agent(binary, work, "dst", 2 * size + 64 * MiB); agents.append(dst)
        spec = {"name": "benchmig", "vcpus": 1, "memory_mib": 64,
                "disks": [{"target": "vda", "volume": {"pool": "disk1", "name": "benchmig-root",
                                                        "create_size_bytes": str(size)}}]}
        assert rest(src.port, "POST", "/v1/domains", {"spec": spec})[0] == 201
        src_path = rest(src.port, "GET", "/v1/pools/disk1/volumes/benchmig-root")[1]["path"]
        subprocess.run(["dd", "if=/dev/urandom", f"of={src_path}", "bs=4M", f"count={size // (4 * MiB)}",
                        "oflag=direct", "status=none"], check=True)
        status, scratch = rest(dst.port, "POST", "/v1/pools/disk1/volumes", {"name": "ddcopy", "size_bytes": str(size)})
        assert status in (200, 201), scratch
        drop_caches()
        dd_s = dd_over_tcp(src_path, scratch["path"], size)
        rest(dst.port, "DELETE", "/v1/pools/disk1/volumes/ddcopy")
        drop_caches()
        t = time.perf_counter()
        status, op = rest(src.port, "POST", "/v1/domains/benchmig:migrate",
                          {"destination": f"127.0.0.1:{dst.grpc}"})
        assert status == 202, op
        first_bytes = all_bytes = None  # when bytes_done was first seen above 0, and at the total
        while True:
            o = rest(src.port, "GET", f"/v1/operations/{op['operation_id']}")[1]
            done = int(o.get("bytes_done", 0))
            if done > 0 and first_bytes is None:
                first_bytes = (time.perf_counter(), done)
            if done >= size and all_bytes is None:
                all_bytes = time.perf_counter()
            if o["state"] != "OPERATION_STATE_RUNNING":
                break
            time.sleep(0.01)
        mig_s = time.perf_counter() - t
        assert o["state"] == "OPERATION_STATE_SUCCEEDED", o
        mib = size / MiB
        print(f"volume {mib:.0f} MiB, all data")
        print(f"dd over TCP (loopback):      {dd_s:6.2f} s  {mib / dd_s:7.1f} MiB/s")
        print(f"hvagent cold migration:      {mig_s:6.2f} s  {mib / mig_s:7.1f} MiB/s  (request to operation end)")
        print(f"ratio (migration / dd rate): {dd_s / mig_s:.2f}x")
        if first_bytes and all_bytes and all_bytes > first_bytes[0]:
            # The stream alone (polled every 10 ms): without the request, prepare, define and the
            # source's removal, which do not grow with the volume.
            stream_s = (all_bytes - first_bytes[0]) * size / (size - first_bytes[1])
            print(f"stream phase (bytes_done):   {stream_s:6.2f} s  {mib / stream_s:7.1f} MiB/s  "
                  f"ratio {dd_s / stream_s:.2f}x; fixed costs {mig_s - stream_s:.2f} s")
    finally:
        for a in agents:
            a.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
