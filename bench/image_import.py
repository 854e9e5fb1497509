"""Image import and copy through the agent against the plain tools on the same loop-device
partitions (issue 18's benchmarks, small sizes):

    /usr/bin/python3 bench/image_import.py HVAGENTD [MiB]      (root; default 256 MiB)

A GPT disk on a loop device is the agent's partition pool (test:///default: no libvirtd). One
random raw file of MiB is imported (raw, from a host file) and as qcow2, then copied to a new
volume; the baselines write the same bytes onto a volume of the same size with
`dd bs=4M oflag=direct` and `qemu-img convert -n -t none` directly. Each figure is the best of 3.
Also: a domain whose root CreateDomain makes from the image (DiskVolume.image), request to
answer, and the agent's resident set (VmRSS, sampled every 5 ms) before and at its peak during a
raw import, so that runs at two sizes show whether it grows with the image.
Prints figures only; docs/performance.md has a run."""
import hashlib, json, os, shutil, socket, subprocess, sys, tempfile, threading, time, urllib.error, urllib.request

MiB = 1 << 20


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def call(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            t = r.read().decode(); return r.status, (json.loads(t) if t else None)
    except urllib.error.HTTPError as e:
        t = e.read().decode(); return e.code, (json.loads(t) if t else None)


def run(argv):
    subprocess.run(argv, check=True, capture_output=True)


def timed(fn):
    t = time.perf_counter(); fn(); return time.perf_counter() - t


def best(fn, cleanup):
    out = []
    for _ in range(3):
        out.append(timed(fn)); cleanup()
    return min(out)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class PeakRss:
    """The highest VmRSS of `pid` while the with-block runs."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def __enter__(self):
        self.before = rss_kib(self.pid)
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def main():
    binary, size = sys.argv[1], int(sys.argv[2]) * MiB if len(sys.argv) > 2 else 256 * MiB
    work = tempfile.mkdtemp(prefix="hvbench-img-")
    imports = os.path.join(work, "import"); os.mkdir(imports, 0o700)
    disk_file = os.path.join(work, "disk.img")
    with open(disk_file, "wb") as f:
        f.truncate(4 * size + 64 * MiB)
    loop = subprocess.run(["losetup", "--find", "--show", "--partscan", disk_file], check=True, capture_output=True,
                          text=True).stdout.strip()
    raw = os.path.join(imports, "img.raw")
    with open(raw, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    qcow2 = os.path.join(imports, "img.qcow2")
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2])
    cfg = os.path.join(work, "agent.toml")
    with open(cfg, "w") as f:
        # test:///default's own domain defines 8 GiB: room for the benchmark's small one.
        f.write(f'[capacity]\nmemory_allocation_ratio = 16\n'
                f'[images]\nimport_dirs = ["{imports}"]\nscratch_dir = "{work}/scratch"\n'
                f'[[storage.pools]]\nname = "p"\ntype = "partition"\ndisk = "{loop}"\nwipe = "none"\n')
    port = free_port()
    agent = subprocess.Popen([binary, "--plaintext-loopback", "--hypervisor-uri", "test:///default", "--config", cfg,
                              "--grpc-listen", f"127.0.0.1:{free_port()}", "--rest-listen", f"127.0.0.1:{port}",
                              "--log-level", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1); break
            except Exception:
                time.sleep(0.1)

        def import_image(fmt, path):
            s, op = call(port, "POST", "/v1/pools/p/images", {"name": "img", "format": fmt, "host_file": path})
            assert s == 202, op
            while True:
                s, op = call(port, "GET", f"/v1/operations/{op['id']}")
                if op["state"] != "OPERATION_STATE_RUNNING":
                    assert op["state"] == "OPERATION_STATE_SUCCEEDED", op
                    return
                time.sleep(0.02)

        def drop_image():
            call(port, "DELETE", "/v1/pools/p/images/img")

        def volume(name):
            s, v = call(port, "POST", "/v1/pools/p/volumes", {"name": name, "size_bytes": str(size)})
            assert s == 201, v
            return v["path"]

        def drop_volume(name):
            call(port, "DELETE", f"/v1/pools/p/volumes/{name}")
            while call(port, "GET", f"/v1/pools/p/volumes/{name}")[0] != 404:
                time.sleep(0.05)

        rows = []
        rows.append(("  (create + delete an empty volume: parted, sfdisk)", best(
            lambda: volume("empty"), lambda: drop_volume("empty"))))

        def hash_raw():
            h = hashlib.sha256()
            with open(raw, "rb") as f:
                for chunk in iter(lambda: f.read(4 * MiB), b""):
                    h.update(chunk)
        rows.append(("  (sha256 of the bytes, hashlib: what every import adds)", best(hash_raw, lambda: None)))
        rows.append(("import raw (host file)", best(lambda: import_image("IMAGE_FORMAT_RAW", raw), drop_image)))
        target = volume("dd")
        rows.append(("dd bs=4M oflag=direct, same bytes", best(
            lambda: run(["dd", f"if={raw}", f"of={target}", "bs=4M", "oflag=direct", "status=none"]), lambda: None)))
        rows.append(("import qcow2 (host file)", best(lambda: import_image("IMAGE_FORMAT_QCOW2", qcow2), drop_image)))
        rows.append(("qemu-img convert -n -t none, same qcow2", best(
            lambda: run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-n", "-t", "none", qcow2, target]),
            lambda: None)))
        import_image("IMAGE_FORMAT_RAW", raw)
        s, image = call(port, "GET", "/v1/pools/p/images/img")

        def copy():
            s, v = call(port, "POST", "/v1/pools/p/volumes", {"name": "copy", "image": "img"})
            assert s == 201, v
        rows.append(("volume from image (copy)", best(copy, lambda: drop_volume("copy"))))

        def domain():
            spec = {"name": "bench-dom", "vcpus": 1, "memory_mib": 64,
                    "disks": [{"target": "vda", "volume": {"pool": "p", "name": "droot", "image": "img"}}]}
            s, d = call(port, "POST", "/v1/domains", {"spec": spec, "start": False})
            assert s == 201, d

        def drop_domain():
            s, d = call(port, "DELETE", "/v1/domains/bench-dom?force=true&delete_volumes=true")
            assert s in (200, 204), d
            while call(port, "GET", "/v1/pools/p/volumes/droot")[0] != 404:
                time.sleep(0.05)
        rows.append(("CreateDomain, root made from the image (owned)", best(domain, drop_domain)))
        rows.append(("dd bs=4M iflag=direct oflag=direct, image -> volume", best(
            lambda: run(["dd", f"if={image['path']}", f"of={target}", "bs=4M", f"count={size // (4 * MiB)}",
                         "iflag=direct", "oflag=direct", "status=none"]), lambda: None)))
        drop_image()
        with PeakRss(agent.pid) as rss:
            import_image("IMAGE_FORMAT_RAW", raw)
        print(f"{size // MiB} MiB image, best of 3 (s, MiB/s):")
        for name, secs in rows:
            print(f"  {name:55s} {secs:7.3f} s  {size / MiB / secs:8.1f} MiB/s")
        print(f"  agent VmRSS before a raw import {rss.before / 1024:.1f} MiB, peak during it {rss.peak / 1024:.1f} MiB")
    finally:
        agent.terminate(); agent.wait()
        subprocess.run(["losetup", "-d", loop])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
