"""GET /v1/domains, /v1/host/capacity and /metrics with N domains defined on a real libvirtd
(qemu:///system), for two hvagentd binaries in turn (e.g. before and after a change):

    /usr/bin/python3 bench/qemu_list_scale.py 1000 OLD_HVAGENTD NEW_HVAGENTD

Defines hvit-m0..N-1 through the agent (not started), prints p50 and min per path and binary,
then deletes them. Needs a running libvirtd (tests/integration/libvirtd_fixture.sh start). Prints
figures only; docs/performance.md has a run."""
import json, os, statistics, subprocess, sys, time, urllib.request, socket

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def start(binary):
    g, r = free_port(), free_port()
    p = subprocess.Popen([binary, "--plaintext-loopback", "--hypervisor-uri", "qemu:///system",
                          "--grpc-listen", f"127.0.0.1:{g}", "--rest-listen", f"127.0.0.1:{r}", "--log-level", "warn"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{r}/healthz", timeout=1); break
        except Exception: time.sleep(0.1)
    return p, r

def get(port, path):
    t = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=120) as resp: resp.read()
    return (time.perf_counter() - t) * 1000

n = int(sys.argv[1]); old, new = sys.argv[2], sys.argv[3]
p, port = start(new)
for i in range(n):
    body = json.dumps({"spec": {"name": f"hvit-m{i}", "vcpus": 1, "memory_mib": 64, "firmware": {"type": "TYPE_BIOS"}}}).encode()
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/domains", data=body, method="POST",
                                                  headers={"Content-Type": "application/json"}), timeout=60).read()
p.terminate(); p.wait()
try:
    for label, binary in (("old", old), ("new", new)):
        p, port = start(binary)
        for path in ("/v1/domains", "/v1/host/capacity", "/metrics"):
            ts = []
            for _ in range(8):
                if path == "/metrics":
                    time.sleep(1.1)  # past metrics.max_age_ms: every scrape takes a fresh sample
                ts.append(get(port, path))
            print(f"{label} {path} {n} domains: p50 {statistics.median(ts):.1f} ms (min {min(ts):.1f})")
        p.terminate(); p.wait()
finally:
    p, port = start(new)
    for i in range(n):
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/domains/hvit-m{i}", method="DELETE"), timeout=60).read()
    p.terminate(); p.wait()
