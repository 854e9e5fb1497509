"""ConsoleService under load, on a real guest (the busybox test guest under QEMU TCG through real
libvirtd) and a real Python gRPC client: 1000 idle console streams, and a guest flooding its
serial console while a slow reader falls behind. The agent's threads, resident memory and CPU
(from /proc) and other calls' latency are printed to the test's log; latency is never asserted
on (the machine is shared), the agent's behaviour and bounds are."""

import os
import re
import socket
import statistics
import threading
import time
import uuid

import grpc

from agent_harness import AgentTestCase, free_port, test_guest, virsh, with_security
from hvagent.v1 import console_pb2, console_pb2_grpc, domain_pb2, host_pb2
from test_console import GUEST_PREFIX, ConsoleStream, start_shell_guest, token

STREAMS = 1000
CHANNELS = 4  # HTTP/2 connections the streams are spread over (a proxy would hold a few)
# What the guest prints in the flood test: as fast as its emulated 16550 UART goes under TCG
# (tens of KiB/s on a loaded machine: docs/performance.md), so a few MiB.
FLOOD_MIB = int(os.environ.get("HVAGENT_FLOOD_MIB", "3"))
SLOW_READERS = 8
DROPPED_MARKER = re.compile(rb"\[hvagent: (\d+) bytes of console output dropped\]")


class AgentProcess:
    """What /proc says about the agent: threads, resident memory, CPU seconds used."""

    def __init__(self, pid):
        self.pid = pid

    def threads(self):
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def rss_mib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def summary(times_ms):
    ts = sorted(times_ms)
    return (f"{len(ts)} calls: p50 {statistics.median(ts):.1f} ms, p99 {ts[min(len(ts) - 1, int(len(ts) * 0.99))]:.1f} ms,"
            f" max {ts[-1]:.1f} ms")


class CountingStream(ConsoleStream):
    """An Attach stream that counts what arrives and keeps only its tail (a flood would make
    ConsoleStream's whole-output buffer quadratic). With `gate`, it reads nothing until the
    gate is set: a reader that has fallen behind."""

    TAIL = 64 * 1024

    def __init__(self, stub, name, gate=None, **kw):
        self.gate = gate
        self.received = 0
        self.messages = []  # (bytes, dropped_bytes) of messages that said something was dropped
        self.first_byte = None
        super().__init__(stub, name, **kw)

    def _read(self):
        if self.gate is not None:
            self.gate.wait()
        try:
            for out in self.call:
                with self.lock:
                    self.first_byte = self.first_byte or time.monotonic()
                    self.received += len(out.data)
                    self.dropped += out.dropped_bytes
                    if out.dropped_bytes:
                        self.messages.append((len(out.data), out.dropped_bytes))
                    self.output = (self.output + out.data)[-self.TAIL:]
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.done.set()


class ConsoleLoadTest(AgentTestCase):
    @classmethod
    def agent_config(cls):
        cls.kernel, cls.initrd = test_guest()
        cls.port_min = free_port()
        return with_security(f"""[console]
tcp_listen = "127.0.0.1"
tcp_port_min = {cls.port_min}
tcp_port_max = {cls.port_min}
""", kernel_dirs=[os.path.dirname(cls.kernel)])

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.guest = GUEST_PREFIX + "load-" + uuid.uuid4().hex[:8]
        cls.proc = AgentProcess(cls.agent.proc.pid)
        try:
            cls.stub = start_shell_guest(cls.agent, cls.guest, cls.kernel, cls.initrd)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        virsh("destroy", cls.guest, check=False)
        virsh("undefine", cls.guest, check=False)
        super().tearDownClass()

    def other_calls(self, rounds=20):
        """Times GetHost and ListDomains (unary calls a controller makes all the time), `rounds`
        of each; every one must succeed."""
        times = []
        for _ in range(rounds):
            for call in (lambda: self.agent.host.GetHost(host_pb2.GetHostRequest(), timeout=30),
                         lambda: self.agent.domains.ListDomains(domain_pb2.ListDomainsRequest(), timeout=30)):
                t = time.perf_counter()
                call()
                times.append((time.perf_counter() - t) * 1000)
        return times

    def report(self, label):
        line = f"  {label}: agent threads {self.proc.threads()}, VmRSS {self.proc.rss_mib():.1f} MiB"
        print(line, flush=True)

    # ---- 1000 idle streams ----

    def idle_streams(self, word):
        """Opens STREAMS reader streams over CHANNELS connections (each sends its attach message
        and half-closes, as a reader may: no client thread per stream), measures the other calls
        while they sit idle, then has one writer type `echo word` and reads the line from every
        reader; cancels them all. Returns (seconds to open, latencies, threads, rss)."""
        channels = [grpc.insecure_channel(self.agent.grpc_addr) for _ in range(CHANNELS)]
        stubs = [console_pb2_grpc.ConsoleServiceStub(c) for c in channels]
        attach = console_pb2.ConsoleInput(attach=console_pb2.ConsoleAttach(domain_name=self.guest))
        calls = []
        readers = f"attached to the console of {self.guest} as reader"
        readers_before = self.agent.log_text().count(readers)
        try:
            t = time.monotonic()
            calls = [stubs[i % CHANNELS].Attach(iter([attach]), timeout=600) for i in range(STREAMS)]
            opened = time.monotonic() - t
            # Every attach message handled (one read each), as the agent logs them: a fixed 3 s
            # wait before; the line typed below must reach every stream.
            self.wait_for_log_count(readers, readers_before + STREAMS, 60)
            self.report(f"with {STREAMS} idle streams")
            threads, rss = self.proc.threads(), self.proc.rss_mib()
            latencies = self.other_calls()
            writer = ConsoleStream(self.stub, self.guest, write=True)
            try:
                writer.wait_for_line(word, retype=f"echo {word}\n")
            finally:
                writer.close()
            # Every stream is attached and live: the line typed reached each of them.
            pattern = re.compile(rb"(^|[\r\n])" + word.encode() + rb"\r?\n")
            for call in calls:
                got = b""
                while not pattern.search(got):
                    got += next(call).data  # StopIteration / RpcError: that stream ended
            return opened, latencies, threads, rss
        finally:
            for call in calls:
                call.cancel()
            for c in channels:
                c.close()

    def wait_for_log_count(self, text, count, timeout, why=""):
        """Until the agent's log holds `text` at least `count` times; fails after `timeout` s,
        saying `why` when given."""
        deadline = time.time() + timeout
        while (n := self.agent.log_text().count(text)) < count:
            self.assertLess(time.time(), deadline,
                            f"{why + ': ' if why else ''}{n} of {count} {text!r} in the agent's log")
            time.sleep(0.05)

    def test_1000_idle_streams_cost_no_thread_each_and_everything_returns_when_they_close(self):
        # The class's first stream (start_shell_guest's writer) has ended in the agent too (a
        # fixed 1 s wait before): as many streams closed as were attached.
        self.wait_for_log_count("console stream closed",
                                self.agent.log_text().count("attached to the console of"), 10)
        closed_before = self.agent.log_text().count("console stream closed")
        detached_before = self.agent.log_text().count(f"console of {self.guest} detached")
        self.report("before")
        threads_before, rss_before = self.proc.threads(), self.proc.rss_mib()
        baseline = self.other_calls()
        word = token()
        opened, under_load, threads, rss = self.idle_streams(word)
        print(f"  opened {STREAMS} streams over {CHANNELS} connections in {opened:.1f} s;"
              f" {(rss - rss_before) * 1024 / STREAMS:.1f} KiB of VmRSS per stream", flush=True)
        print(f"  GetHost+ListDomains, no streams:      {summary(baseline)}", flush=True)
        print(f"  GetHost+ListDomains, {STREAMS} streams: {summary(under_load)}", flush=True)
        # A thread per stream would be 1000 more; the agent's pools may grow by a few.
        self.assertLess(threads - threads_before, 32, f"{threads_before} threads before, {threads} with {STREAMS} streams")
        # Every stream's end reaches the agent, which then lets the guest's console go.
        self.wait_for_log_count("console stream closed", closed_before + STREAMS + 1, 60,
                                "the agent did not see every stream end")
        self.wait_for_log_count(f"console of {self.guest} detached", detached_before + 1, 20,
                                "the guest's console stayed open with no stream attached")
        # The agent's pools shrink back (a fixed 2 s wait before): polled, then checked.
        deadline = time.time() + 10
        while self.proc.threads() > threads_before + 8 and time.time() < deadline:
            time.sleep(0.1)
        self.report("after they closed")
        self.assertLessEqual(self.proc.threads(), threads_before + 8)
        after = self.other_calls()
        print(f"  GetHost+ListDomains, after:          {summary(after)}", flush=True)
        # glibc keeps freed memory, so VmRSS does not fall back; but what the first 1000 streams
        # held is reused by the next 1000 rather than added to (a leak would add it again).
        rss_after = self.proc.rss_mib()
        self.idle_streams(token())
        self.report(f"after {STREAMS} more came and went")
        self.assertLess(self.proc.rss_mib() - rss_after, (rss - rss_before) / 2,
                        f"VmRSS {rss_before:.1f} MiB before, {rss:.1f} with {STREAMS} streams, {rss_after:.1f} after them,"
                        f" {self.proc.rss_mib():.1f} after {STREAMS} more")
        # And the console is still there for the next caller.
        s = ConsoleStream(self.stub, self.guest, write=True)
        self.addCleanup(s.close)
        word = token()
        s.wait_for_line(word, retype=f"echo {word}\n")

    # ---- a guest flooding its console ----

    def flood(self, mib, word):
        """The shell command that prints `mib` MiB of 'x' (no newline), then `word` on a line.
        The word is typed with '' inside it: the command's echo, however the terminal wraps it,
        never holds the word alone on a line."""
        return f"dd if=/dev/zero bs=65536 count={mib * 16} 2>/dev/null | tr '\\000' x; echo; echo {word[:3]}''{word[3:]}\n"

    def tcp_writer(self):
        """A serial-tcp ticket's connection (the console's writer) whose receive buffer is
        small: it reads nothing until told, so the agent's side fills up behind it."""
        status, t = self.agent.rest("POST", f"/v1/domains/{self.guest}/console-tickets",
                                    {"kind": "CONSOLE_KIND_SERIAL_TCP"})
        self.assertEqual(status, 201, t)
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.settimeout(30)
        c.connect((t["host"], t["port"]))
        self.addCleanup(c.close)
        return c

    def test_a_flooding_guest_drops_a_slow_readers_oldest_bytes_with_a_marker_and_memory_stays_bounded(self):
        mib = FLOOD_MIB
        fast = CountingStream(self.stub, self.guest)
        self.addCleanup(fast.close)
        # Slow readers on a connection whose HTTP/2 window stays at its initial 64 KiB (no BDP
        # probing), so that what they do not read backs up into the agent.
        slow_channel = grpc.insecure_channel(self.agent.grpc_addr, options=[("grpc.http2.bdp_probe", 0)])
        self.addCleanup(slow_channel.close)
        gate = threading.Event()
        slow_readers = [CountingStream(console_pb2_grpc.ConsoleServiceStub(slow_channel), self.guest, gate=gate)
                        for _ in range(SLOW_READERS)]
        for slow in slow_readers:
            self.addCleanup(slow.close)
        self.addCleanup(gate.set)
        tcp = self.tcp_writer()
        time.sleep(1)
        baseline = self.other_calls()
        rss_before, cpu_before = self.proc.rss_mib(), self.proc.cpu_seconds()
        peak = [rss_before]
        sampling = threading.Event()

        def sample():
            while not sampling.is_set():
                peak[0] = max(peak[0], self.proc.rss_mib())
                time.sleep(0.02)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        word = token()
        start = time.monotonic()
        tcp.sendall(self.flood(mib, word).encode())
        during = []
        pattern = re.compile(r"(^|[\r\n])" + re.escape(word) + r"\r?\n")
        while not pattern.search(fast.text()):
            self.assertLess(time.monotonic() - start, 150, f"no end of the flood; fast reader: {fast.received} bytes")
            self.assertFalse(fast.done.is_set(), f"the fast reader's stream ended: {fast.error}")
            during += self.other_calls(rounds=1)
            time.sleep(0.1)
        elapsed = time.monotonic() - start
        cpu = self.proc.cpu_seconds() - cpu_before
        sampling.set()
        sampler.join()
        print(f"  flood of {mib} MiB: the fast reader got {fast.received / 2**20:.1f} MiB"
              f" ({fast.dropped} bytes dropped) in {elapsed:.1f} s, {fast.received / 2**20 / elapsed:.2f} MiB/s", flush=True)
        print(f"  agent CPU {cpu:.1f} s over {elapsed:.1f} s ({100 * cpu / elapsed:.0f}% of one core);"
              f" VmRSS {rss_before:.1f} MiB before, peak {peak[0]:.1f} MiB", flush=True)
        print(f"  GetHost+ListDomains, idle console:  {summary(baseline)}", flush=True)
        print(f"  GetHost+ListDomains, during flood:  {summary(during)}", flush=True)
        self.assertGreaterEqual(fast.received + fast.dropped, mib * 2**20)
        # Each slow gRPC reader is told how much it lost, and then gets the newest output.
        gate.set()
        for slow in slow_readers:
            slow.wait_for_line(word, timeout=60)
            self.assertGreater(slow.dropped, 0)
            self.assertGreaterEqual(slow.received + slow.dropped, mib * 2**20)
        print(f"  {SLOW_READERS} slow gRPC readers: {slow.received} bytes each, {slow.dropped} dropped"
              f" (messages with dropped_bytes, as (bytes, dropped): {slow.messages[:3]})", flush=True)
        # The slow TCP client gets an in-band marker line where bytes were dropped.
        got = b""
        while not re.search(rb"(^|[\r\n])" + word.encode() + rb"\r?\n", got):
            chunk = tcp.recv(1 << 20)
            self.assertNotEqual(chunk, b"", "the agent closed the serial-tcp connection")
            got += chunk
        markers = [int(n) for n in DROPPED_MARKER.findall(got)]
        print(f"  slow TCP reader: {len(got)} bytes, markers for {sum(markers)} dropped bytes", flush=True)
        self.assertTrue(markers, got[:300])
        # The slow readers' backlog is bounded (256 KiB each in the agent, one message in flight,
        # what the kernel holds): unbounded, the agent would have held the whole flood
        # SLOW_READERS + 1 times.
        self.assertLess(peak[0] - rss_before, (SLOW_READERS + 1) * mib / 2,
                        f"VmRSS {rss_before:.1f} MiB before, peak {peak[0]:.1f} MiB")

    # Last (it stops the class's agent): a serial-tcp client that reads nothing while the guest
    # floods must not keep the agent from stopping.
    def test_z_the_agent_stops_promptly_under_a_flood_with_a_serial_tcp_client_that_does_not_read(self):
        tcp = self.tcp_writer()
        tcp.sendall(self.flood(FLOOD_MIB, token()).encode())
        time.sleep(5)  # by now the agent's sends to it wait: 4 KiB receive buffer, small send buffer
        t = time.monotonic()
        code = self.agent.stop()  # SIGTERM; SIGKILL after 10 s
        print(f"  the agent stopped in {time.monotonic() - t:.1f} s with {code}", flush=True)
        self.assertEqual(code, 0, "the agent did not stop on SIGTERM within 10 s")
