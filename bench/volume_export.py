"""Volume export through the agent (StorageService.ExportVolume over gRPC, loopback) against
`dd` of the same device to /dev/null (issue 19's benchmark):

    /usr/bin/python3 bench/volume_export.py HVAGENTD [MiB]      (root; default 512 MiB)

PYTHONPATH must hold the Python stubs (build/proto/python). A GPT disk on a loop device is the
agent's partition pool (test:///default: no libvirtd). One volume of MiB is filled twice: all
random (every byte crosses as data), then 10% random and 90% zeros (the zeros cross as zero-run
messages). For each: the export read to its end by a Python client (bytes counted, not kept),
`dd bs=4M iflag=direct of=/dev/null` and `dd bs=4M of=/dev/null` (buffered). Best of 3; the page
cache is dropped before each run. Prints figures only; docs/performance.md has a run."""
import json, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request

import grpc
from hvagent.v1 import storage_pb2, storage_pb2_grpc

MiB = 1 << 20


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def drop_caches():
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


def best(fn):
    out = []
    for _ in range(3):
        drop_caches()
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return min(out)


def main():
    binary, size = sys.argv[1], int(sys.argv[2]) * MiB if len(sys.argv) > 2 else 512 * MiB
    work = tempfile.mkdtemp(prefix="hvbench-exp-")
    disk_file = os.path.join(work, "disk.img")
    with open(disk_file, "wb") as f:
        f.truncate(size + 64 * MiB)
    loop = subprocess.run(["losetup", "--find", "--show", "--partscan", disk_file], check=True, capture_output=True,
                          text=True).stdout.strip()
    cfg = os.path.join(work, "agent.toml")
    with open(cfg, "w") as f:
        f.write(f'[[storage.pools]]\nname = "p"\ntype = "partition"\ndisk = "{loop}"\nwipe = "none"\n')
    rest, grpc_port = free_port(), free_port()
    agent = subprocess.Popen([binary, "--plaintext-loopback", "--hypervisor-uri", "test:///default", "--config", cfg,
                              "--grpc-listen", f"127.0.0.1:{grpc_port}", "--rest-listen", f"127.0.0.1:{rest}",
                              "--log-level", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{rest}/healthz", timeout=1); break
            except Exception:
                time.sleep(0.1)
        req = urllib.request.Request(f"http://127.0.0.1:{rest}/v1/pools/p/volumes", method="POST",
                                     data=json.dumps({"name": "v", "size_bytes": str(size)}).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            path = json.loads(r.read())["path"]
        stub = storage_pb2_grpc.StorageServiceStub(grpc.insecure_channel(
            f"127.0.0.1:{grpc_port}", options=[("grpc.max_receive_message_length", 8 * MiB)]))
        sent = {}

        def export():
            data = zeros = 0
            for c in stub.ExportVolume(storage_pb2.ExportVolumeRequest(pool="p", name="v"), timeout=600):
                if c.WhichOneof("part") == "data":
                    data += len(c.data)
                elif c.WhichOneof("part") == "zeros":
                    zeros += c.zeros
            sent["data"], sent["zeros"] = data, zeros

        def dd(*flags):
            subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4M", *flags, "status=none"], check=True)

        for label, random_share in (("all random", 1.0), ("10% random, 90% zeros", 0.1)):
            subprocess.run(["blkdiscard", "-z", path], check=True)
            with open(path, "r+b") as f:
                step = int(10 * MiB / (random_share * 10))  # 1 MiB of random every `step` bytes
                for off in range(0, size, step):
                    f.seek(off); f.write(os.urandom(MiB))
                os.fsync(f.fileno())
            rows = [("ExportVolume (gRPC, Python client)", best(export)),
                    ("dd bs=4M iflag=direct of=/dev/null", best(lambda: dd("iflag=direct"))),
                    ("dd bs=4M of=/dev/null (buffered)", best(dd))]
            print(f"{size // MiB} MiB volume, {label}: {sent['data'] // MiB} MiB sent as data, "
                  f"{sent['zeros'] // MiB} MiB as zero runs; best of 3 (s, MiB/s, x dd direct):")
            for name, secs in rows:
                print(f"  {name:40s} {secs:7.3f} s  {size / MiB / secs:8.1f} MiB/s  {rows[1][1] / secs:5.2f}x")
    finally:
        agent.terminate(); agent.wait()
        subprocess.run(["losetup", "-d", loop])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
