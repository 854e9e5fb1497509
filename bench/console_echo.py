"""Keystroke-to-echo latency on a real QEMU guest's serial console: one key typed, until the
guest's echo of it comes back, through `virsh console` (the baseline), the agent's gRPC Attach
stream, its WebSocket and a serial-tcp ticket's connection, on the same guest (the shared
busybox test guest, under TCG); then the agent's CPU while the guest floods its console:

    HVAGENTD=build/agent/hvagentd PYTHONPATH=build/proto/py:tests/integration \\
      /usr/bin/python3 bench/console_echo.py [ROUNDS [FLOOD_MIB]]   (root; default 200 rounds, 2 MiB)

Needs a running libvirtd (tests/integration/libvirtd_fixture.sh start); takes the integration
tests' lock. Prints p50/p99 per path and each path's p99 over virsh's (issue 20's goal: at most
1.2), then the flood's rate and the agent's CPU (utime + stime from /proc/PID/stat) per second
of flood and per MiB. Figures only; docs/performance.md has a run."""
import os
import pty
import re
import socket
import select
import statistics
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import websocket  # noqa: E402  python3-websocket

from agent_harness import Agent, free_port, lock_libvirtd, test_guest, virsh, with_security  # noqa: E402
from test_console import ConsoleStream, start_shell_guest  # noqa: E402
from test_console_load import AgentProcess, CountingStream  # noqa: E402

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
FLOOD_MIB = int(sys.argv[2]) if len(sys.argv) > 2 else 2
KEY = b"x"


def measure(send, received, rounds):
    """`send(bytes)` types; `received()` is all output so far. One key per round, timed until
    one more KEY has come back; every 40 keys the line is submitted (the shell answers "not
    found") and its output let settle, so that the line never grows long."""
    times = []
    for i in range(rounds):
        if i % 40 == 0:
            send(b"\r")
            time.sleep(0.5)
        before = received().count(KEY)
        t = time.perf_counter()
        send(KEY)
        deadline = t + 10
        while received().count(KEY) <= before:
            if time.perf_counter() > deadline:
                raise AssertionError(f"no echo within 10 s; output ends {received()[-200:]!r}")
            time.sleep(0.0002)
        times.append((time.perf_counter() - t) * 1000)
    send(b"\r")
    return times


def virsh_path(name, rounds):
    master, slave = pty.openpty()
    proc = subprocess.Popen(["virsh", "-c", "qemu:///system", "console", name, "--force"],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = bytearray()

    def received():
        while select.select([master], [], [], 0)[0]:
            out.extend(os.read(master, 65536))
        return bytes(out)
    try:
        time.sleep(1)
        return measure(lambda b: os.write(master, b), received, rounds)
    finally:
        os.write(master, b"\x1d")  # Ctrl-]: virsh detaches
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(master)


def grpc_path(stub, name, rounds):
    s = ConsoleStream(stub, name, write=True)
    try:
        time.sleep(0.5)
        return measure(lambda b: s.type(b.decode()), lambda: s.output, rounds)
    finally:
        s.close()


def ws_path(agent, ws_port, name, rounds):
    status, body = agent.rest("POST", f"/v1/domains/{name}/console-tickets", {"kind": "CONSOLE_KIND_SERIAL_WS"})
    assert status == 201, body
    ws = websocket.create_connection(f"ws://127.0.0.1:{ws_port}/console/{name}/ws?ticket={body['ticket']}",
                                     timeout=10)
    out = bytearray()

    def received():
        ws.settimeout(0.0005)
        try:
            while True:
                out.extend(ws.recv_data()[1])
        except (websocket.WebSocketTimeoutException, BlockingIOError):
            pass
        return bytes(out)
    try:
        time.sleep(0.5)  # attached, as the other paths wait before their first key
        return measure(ws.send_binary, received, rounds)
    finally:
        ws.close()


def tcp_path(agent, name, rounds):
    status, body = agent.rest("POST", f"/v1/domains/{name}/console-tickets", {"kind": "CONSOLE_KIND_SERIAL_TCP"})
    assert status == 201, body
    c = socket.create_connection((body["host"], body["port"]), timeout=10)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the client's side; the agent's is its own
    c.setblocking(False)
    out = bytearray()

    def received():
        try:
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    raise AssertionError("the agent closed the serial-tcp connection")
                out.extend(chunk)
        except BlockingIOError:
            pass
        return bytes(out)
    try:
        time.sleep(0.5)
        return measure(c.sendall, received, rounds)
    finally:
        c.close()


def flood_cpu(agent, stub, name, mib):
    """One gRPC reader attached while the guest prints `mib` MiB: (seconds, agent CPU seconds)."""
    proc = AgentProcess(agent.proc.pid)
    reader = CountingStream(stub, name)
    writer = ConsoleStream(stub, name, write=True, take_over=True)
    word = "hv-flood-" + uuid.uuid4().hex[:6]
    pattern = re.compile(r"(^|[\r\n])" + re.escape(word) + r"\r?\n")
    try:
        writer.type("\r")  # a fresh line: the last path may have left keys on it
        time.sleep(0.5)
        cpu, t = proc.cpu_seconds(), time.monotonic()
        writer.type(f"dd if=/dev/zero bs=65536 count={mib * 16} 2>/dev/null | tr '\\000' x; echo; echo {word[:3]}''{word[3:]}\n")
        while not pattern.search(reader.text()):
            if time.monotonic() - t > 600:
                raise AssertionError(f"flood not over in 600 s: {reader.received} bytes")
            time.sleep(0.05)
        return time.monotonic() - t, proc.cpu_seconds() - cpu, reader.received
    finally:
        writer.close()
        reader.close()


def main():
    kernel, initrd = test_guest()
    ws_port = free_port()
    lock = lock_libvirtd()
    tcp_port = free_port()
    agent = Agent(with_security(f'[console]\nws_listen = "127.0.0.1:{ws_port}"\ntcp_listen = "127.0.0.1"\n'
                                f'tcp_port_min = {tcp_port}\ntcp_port_max = {tcp_port}\n',
                                kernel_dirs=[os.path.dirname(kernel)]))
    name = "hvcon-bench-" + uuid.uuid4().hex[:6]
    try:
        stub = start_shell_guest(agent, name, kernel, initrd, timeout=180)
        results = {}
        # virsh first, while the agent holds no console (virsh --force would take it over).
        results["virsh console"] = virsh_path(name, ROUNDS)
        results["gRPC Attach"] = grpc_path(stub, name, ROUNDS)
        results["WebSocket"] = ws_path(agent, ws_port, name, ROUNDS)
        results["serial-tcp"] = tcp_path(agent, name, ROUNDS)
        base = None
        for label, ts in results.items():
            ts.sort()
            p50, p99 = statistics.median(ts), ts[min(len(ts) - 1, int(len(ts) * 0.99))]
            base = base or p99
            print(f"{label:14s} {len(ts)} keys: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {ts[-1]:.2f} ms, "
                  f"p99/virsh {p99 / base:.2f}")
        seconds, cpu, got = flood_cpu(agent, stub, name, FLOOD_MIB)
        print(f"flood of {FLOOD_MIB} MiB ({got} bytes read): {seconds:.1f} s, {got / 2**20 / seconds:.3f} MiB/s; "
              f"agent CPU {cpu:.2f} s = {100 * cpu / seconds:.1f}% of one core, {cpu / (got / 2**20):.2f} s per MiB")
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
        agent.stop()
        lock.close()


if __name__ == "__main__":
    main()
