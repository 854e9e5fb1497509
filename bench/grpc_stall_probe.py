#!/usr/bin/python3
"""Counts slow unary gRPC calls made one at a time with a pause between them (issue 25).

The synchronous gRPC server stalled some calls by ~90 ms; a tight loop hides it, a pause of a
few hundred milliseconds between calls shows it. Prints every call over --slow-ms with its time
since the start, then the count.

  bench/grpc_stall_probe.py 127.0.0.1:50051 /hvagent.v1.DomainService/GetDomain --request-hex 0a0474657374
"""
import argparse
import time

import grpc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("address", help="host:port of a plaintext (loopback) agent")
    ap.add_argument("method", help="full method name, /package.Service/Method")
    ap.add_argument("--request-hex", default="", help="the serialized request, hex (default: empty message)")
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--gap", type=float, default=0.3, help="seconds between calls")
    ap.add_argument("--slow-ms", type=float, default=20.0)
    a = ap.parse_args()
    call = grpc.insecure_channel(a.address).unary_unary(a.method)
    body = bytes.fromhex(a.request_hex)
    start, slow, times = time.monotonic(), [], []
    for _ in range(a.calls):
        t0 = time.perf_counter()
        call(body, timeout=10)
        ms = (time.perf_counter() - t0) * 1e3
        times.append(ms)
        if ms > a.slow_ms:
            slow.append(f"{time.monotonic() - start:.1f}s:{ms:.0f}ms")
        time.sleep(a.gap)
    times.sort()
    print(f"{a.method}: {a.calls} calls, p50 {times[len(times) // 2]:.2f} ms, max {times[-1]:.2f} ms; "
          f"{len(slow)} over {a.slow_ms:g} ms: {' '.join(slow)}")


if __name__ == "__main__":
    main()
