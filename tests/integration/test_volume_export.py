"""Volumes streamed out (StorageService.ExportVolume) and images made from volumes
(ImageService.CreateImageFromVolume) on a real partition pool: a GPT disk on a loop device.

- A 1 GiB volume that is 90% zeros moves about 10% of its size over gRPC as data (the rest as
  zero-run messages); the stream's sha256 trailer is the device's, and so is the hash of the
  bytes the client rebuilt. The figures are printed.
- An export cancelled half-way leaves nothing (no partition, volume, image, operation or file)
  and the next export works; one cancelled while qemu-img converts it to qcow2 kills qemu-img and
  leaves no scratch file; unknown volumes and names with path characters are clear errors.
- hvctl volume-export writes a sparse file whose sha256 it checked against the trailer, or the
  bytes to stdout (-o -), raw or qcow2; against a Python gRPC server that sends a wrong sha256 it
  exits non-zero (the file removed), and it passes --snapshot and --format on.
- An image made from a running QEMU guest's volume pauses that guest for the copy only (it runs
  again after) and boots another guest, which reads the same bytes from its disk."""

import base64
import hashlib
import os
import socket
import re
import shutil
import subprocess
import tempfile
import time

from concurrent import futures

import grpc

from hvagent.v1 import image_pb2, image_pb2_grpc, storage_pb2, storage_pb2_grpc
from agent_harness import console_until, test_guest, unique_name, domstate
from loop_pools import LoopPoolsTestCase, run

MiB = 1 << 20
GiB = 1 << 30


def fill_one_in_ten(fd):
    """1 MiB of random data at the start of every 10 MiB of a 1 GiB volume: 103 MiB of the 1024."""
    for off in range(0, GiB, 10 * MiB):
        os.pwrite(fd, os.urandom(MiB), off)


def sha256_device(path, length):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left:
            b = f.read(min(left, 8 * MiB))
            if not b:
                raise AssertionError(f"{path} ended {left} bytes early")
            h.update(b)
            left -= len(b)
    return h.hexdigest()


class VolumeExportTest(LoopPoolsTestCase):
    pool_image_bytes = 1536 * MiB  # a 1 GiB volume, and room for small volumes and images

    @classmethod
    def setUpClass(cls):
        cls.kernel, cls.initrd = test_guest()
        cls.scratch = tempfile.mkdtemp(prefix="hvit-scratch-")
        cls.addClassCleanup(shutil.rmtree, cls.scratch, ignore_errors=True)
        super().setUpClass()
        cls.storage = storage_pb2_grpc.StorageServiceStub(cls.agent.channel)
        cls.images = image_pb2_grpc.ImageServiceStub(cls.agent.channel)

    @classmethod
    def extra_config(cls):
        return f"""
[security]
kernel_dirs = ["{os.path.dirname(cls.kernel)}"]

[images]
scratch_dir = "{cls.scratch}"
max_virtual_size_mib = 1100
"""

    # ---- helpers ----

    def volume(self, name, size, fill):
        """A volume of `size` bytes, zeroed (blkdiscard -z: the loop file keeps its holes), then
        fill(fd) writes what it wants."""
        status, vol = self.agent.rest("POST", "/v1/pools/disk1/volumes", {"name": name, "size_bytes": str(size)})
        self.assertEqual(status, 201, vol)
        self.addCleanup(self.delete_volume, name)
        run(["blkdiscard", "-z", vol["path"]])
        fd = os.open(vol["path"], os.O_WRONLY)
        try:
            fill(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        return vol

    def delete_volume(self, name):
        """Deletes until gone (a domain being deleted may still hold it for a moment); a volume
        still there after 120 s fails the test instead of passing silently."""
        deadline = time.time() + 120
        while (status := self.agent.rest("GET", f"/v1/pools/disk1/volumes/{name}"))[0] != 404 \
                and time.time() < deadline:
            self.agent.rest("DELETE", f"/v1/pools/disk1/volumes/{name}")
            time.sleep(0.2)
        self.assertEqual(status[0], 404, f"volume {name} not deleted within 120 s: {status[1]}")

    def export(self, name, **kw):
        """Reads a whole export: (rebuilt bytes' sha256, data bytes received, messages, trailer)."""
        h = hashlib.sha256()
        data = zeros = messages = 0
        header = trailer = None
        for chunk in self.storage.ExportVolume(storage_pb2.ExportVolumeRequest(pool="disk1", name=name, **kw),
                                               timeout=300):
            messages += 1
            part = chunk.WhichOneof("part")
            if part == "header":
                header = chunk.header
            elif part == "data":
                h.update(chunk.data)
                data += len(chunk.data)
            elif part == "zeros":
                zeros += chunk.zeros
                left = chunk.zeros
                while left:
                    n = min(left, 8 * MiB)
                    h.update(bytes(n))
                    left -= n
            else:
                trailer = chunk.trailer
        self.assertIsNotNone(header)
        self.assertIsNotNone(trailer, "no trailer")
        self.assertEqual(data + zeros, header.size_bytes)
        self.assertEqual(zeros, trailer.zero_bytes)
        return h.hexdigest(), data, messages, trailer

    def pool_state(self):
        return self.image_pool_state(self.scratch)

    # ---- export ----

    def test_a_1gib_volume_of_90_percent_zeros_moves_about_10_percent_and_its_sha256_matches(self):
        vol = self.volume("big", GiB, fill_one_in_ten)
        device_sha = sha256_device(vol["path"], GiB)
        t0 = time.monotonic()
        rebuilt, data, messages, trailer = self.export("big")
        took = time.monotonic() - t0
        print(f"\nexport of 1 GiB (90% zeros): {data} bytes received as data ({100 * data / GiB:.1f}%), "
              f"{trailer.zero_bytes} as zero runs, {messages} messages, {took:.2f} s", flush=True)
        self.assertEqual(trailer.sha256, device_sha)
        self.assertEqual(rebuilt, device_sha)
        self.assertEqual(trailer.size_bytes, GiB)
        self.assertEqual(data, 103 * MiB)  # only the random MiBs crossed as bytes
        self.assertLess(messages, 103 * 2 + 10)

    def rest_export(self, path):
        """GET path on the REST port over a raw socket, the chunked body parsed here so that every
        byte on the wire is counted: (headers, body sha256, body bytes, wire bytes, complete,
        the agent's peak RSS growth in KiB while it streamed)."""
        host, port = self.agent.rest_addr.split(":")
        sock = socket.create_connection((host, int(port)), timeout=300)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        f = sock.makefile("rb")
        wire = 0

        def line():
            nonlocal wire
            b = f.readline()
            wire += len(b)
            return b.decode("latin-1").rstrip("\r\n")

        status = line()
        headers = {}
        while (h := line()):
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
        rss0 = peak = self.rss_kib()
        h = hashlib.sha256()
        body = 0
        complete = False
        while True:
            size_line = line()
            if not size_line:
                break  # the connection closed before the last chunk
            n = int(size_line.split(";")[0], 16)
            if n == 0:
                line()
                complete = True
                break
            b = f.read(n)
            wire += len(b)
            crlf = f.read(2)
            wire += len(crlf)
            if len(b) < n or crlf != b"\r\n":
                break
            h.update(b)
            body += n
            if body % (64 * MiB) < n:
                peak = max(peak, self.rss_kib())
        sock.close()
        headers["status"] = status
        return headers, h.hexdigest(), body, wire, complete, peak - rss0

    def rss_kib(self):
        with open(f"/proc/{self.agent.proc.pid}/status") as st:
            return int(next(l for l in st if l.startswith("VmRSS:")).split()[1])

    def test_rest_export_of_the_1gib_volume_streams_all_its_bytes_with_a_checked_digest(self):
        vol = self.volume("bigrest", GiB, fill_one_in_ten)
        device_sha = sha256_device(vol["path"], GiB)
        t0 = time.monotonic()
        headers, body_sha, body, wire, complete, rss_growth = self.rest_export("/v1/pools/disk1/volumes/bigrest:export")
        took = time.monotonic() - t0
        print(f"\nREST export of 1 GiB (90% zeros): {wire} bytes on the wire ({100 * wire / GiB:.1f}% of the size; "
              f"chunked, zeros sent as bytes), {took:.2f} s (a hashing read, then the stream), "
              f"agent RSS +{rss_growth} KiB at its peak", flush=True)
        self.assertIn("200", headers["status"])
        self.assertEqual(headers.get("transfer-encoding"), "chunked")
        self.assertTrue(complete, "no last chunk")
        self.assertEqual(body, GiB)
        self.assertEqual(body_sha, device_sha)
        self.assertEqual(headers["x-hvagent-sha256"], device_sha)
        digest = base64.b64encode(bytes.fromhex(device_sha)).decode()
        self.assertEqual(headers["repr-digest"], f"sha-256=:{digest}:")
        self.assertLess(rss_growth, 64 * 1024)  # never the volume in memory

    def test_rest_qcow2_export_goes_through_scratch_and_is_a_valid_qcow2(self):
        vol = self.volume("qc", 64 * MiB, lambda fd: os.pwrite(fd, os.urandom(MiB), 8 * MiB))
        headers, body_sha, body, wire, complete, _ = self.rest_export(
            "/v1/pools/disk1/volumes/qc:export?format=IMAGE_FORMAT_QCOW2")
        self.assertTrue(complete)
        self.assertEqual(headers["x-hvagent-format"], "qcow2")
        self.assertEqual(headers["x-hvagent-sha256"], body_sha)
        self.assertLess(body, 8 * MiB)  # the zeros are unallocated clusters, not bytes
        self.assertEqual(os.listdir(self.scratch), [])
        # The same bytes, kept this time, convert back to the volume's content.
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "qc.qcow2")
            host, port = self.agent.rest_addr.split(":")
            run(["curl", "-sS", "-o", out, f"http://{host}:{port}/v1/pools/disk1/volumes/qc:export?format=IMAGE_FORMAT_QCOW2"])
            raw = os.path.join(d, "qc.raw")
            run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", out, raw])
            self.assertEqual(sha256_device(raw, 64 * MiB), sha256_device(vol["path"], 64 * MiB))
        # Refusals are JSON before any byte.
        status, err = self.agent.rest("GET", "/v1/pools/disk1/volumes/nosuch:export")
        self.assertEqual(status, 404, err)
        status, err = self.agent.rest("GET", "/v1/pools/disk1/volumes/qc:export?format=IMAGE_FORMAT_VMDK")
        self.assertEqual(status, 400, err)

    def test_an_export_cancelled_half_way_leaves_nothing_and_the_next_one_works(self):
        vol = self.volume("half", 256 * MiB, lambda fd: [os.pwrite(fd, os.urandom(MiB), o)
                                                        for o in range(0, 256 * MiB, 2 * MiB)])
        before = self.pool_state()
        call = self.storage.ExportVolume(storage_pb2.ExportVolumeRequest(pool="disk1", name="half"), timeout=120)
        received = 0
        for chunk in call:
            received += len(chunk.data)
            if received >= 64 * MiB:
                call.cancel()
                break
        with self.assertRaises(grpc.RpcError) as e:
            for _ in call:
                pass
        self.assertEqual(e.exception.code(), grpc.StatusCode.CANCELLED)
        deadline = time.time() + 10
        while "the caller went away" not in self.agent.log_text() and time.time() < deadline:
            time.sleep(0.1)
        self.assertIn("export of volume disk1/half stopped", self.agent.log_text())
        self.assertEqual(self.pool_state(), before)
        rebuilt, _, _, trailer = self.export("half")
        self.assertEqual(rebuilt, sha256_device(vol["path"], 256 * MiB))

    def qemu_img_into_scratch(self):
        """Pids of qemu-img processes writing into this test's scratch directory."""
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"qemu-img") and any(a.startswith(self.scratch.encode()) for a in argv):
                pids.append(int(pid))
        return pids

    def test_a_qcow2_export_cancelled_while_qemu_img_converts_kills_it_and_leaves_nothing(self):
        self.volume("conv", 512 * MiB, lambda fd: [os.pwrite(fd, os.urandom(MiB), o)
                                                   for o in range(0, 512 * MiB, 2 * MiB)])
        before = self.pool_state()
        call = self.storage.ExportVolume(storage_pb2.ExportVolumeRequest(
            pool="disk1", name="conv", format=image_pb2.IMAGE_FORMAT_QCOW2), timeout=300)
        deadline = time.time() + 60
        while not (pids := self.qemu_img_into_scratch()) and time.time() < deadline:
            time.sleep(0.02)
        self.assertTrue(pids, "qemu-img never ran")
        # qemu-img creates its output a moment after it starts (it opens and probes the source
        # first): the poll above can see the process before the file.
        deadline = time.time() + 10
        while not os.listdir(self.scratch) and self.qemu_img_into_scratch() and time.time() < deadline:
            time.sleep(0.02)
        self.assertTrue(os.listdir(self.scratch), "no scratch file while converting")
        call.cancel()
        with self.assertRaises(grpc.RpcError) as e:
            next(call)
        self.assertEqual(e.exception.code(), grpc.StatusCode.CANCELLED)
        deadline = time.time() + 10
        while (self.qemu_img_into_scratch() or os.listdir(self.scratch)) and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.qemu_img_into_scratch(), [], "qemu-img still runs")
        for pid in pids:  # killed: gone, or a zombie its parent has not reaped yet
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().split()[2]
            except OSError:
                state = "gone"
            self.assertIn(state, ("gone", "Z"), f"qemu-img {pid} alive")
        self.assertEqual(os.listdir(self.scratch), [])
        deadline = time.time() + 10
        while "stopped while converting" not in self.agent.log_text() and time.time() < deadline:
            time.sleep(0.1)
        self.assertIn("export of volume disk1/conv stopped while converting to qcow2", self.agent.log_text())
        self.assertIn("cancelled and killed", self.agent.log_text())
        self.assertEqual(self.pool_state(), before)

    def test_unknown_volumes_and_path_characters_are_clear_errors(self):
        before = self.pool_state()
        cases = [(dict(name="nosuch"), grpc.StatusCode.NOT_FOUND, "nosuch"),
                 (dict(name="nosuch", image=True), grpc.StatusCode.NOT_FOUND, "nosuch"),
                 (dict(name="../../etc/shadow"), grpc.StatusCode.INVALID_ARGUMENT, "name: '../../etc/shadow'"),
                 (dict(name="a/b", image=True), grpc.StatusCode.INVALID_ARGUMENT, "name: 'a/b'")]
        for kw, code, text in cases:
            with self.subTest(**kw), self.assertRaises(grpc.RpcError) as e:
                list(self.storage.ExportVolume(storage_pb2.ExportVolumeRequest(pool="disk1", **kw), timeout=30))
            self.assertEqual(e.exception.code(), code, e.exception.details())
            self.assertIn(text, e.exception.details())
        with self.assertRaises(grpc.RpcError) as e:
            list(self.storage.ExportVolume(storage_pb2.ExportVolumeRequest(pool="nopool", name="x"), timeout=30))
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(grpc.RpcError) as e:
            self.images.CreateImageFromVolume(image_pb2.CreateImageFromVolumeRequest(
                pool="disk1", volume="../x", name="t"), timeout=30)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("volume: ", e.exception.details())
        self.assertEqual(self.pool_state(), before)

    def test_hvctl_writes_a_sparse_file_and_checks_its_sha256(self):
        vol = self.volume("cli", 64 * MiB, lambda fd: os.pwrite(fd, os.urandom(3 * MiB), 5 * MiB))
        hvctl = os.path.join(os.path.dirname(os.environ["HVAGENTD"]), "hvctl")
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "cli.raw")
            r = subprocess.run([hvctl, "--server", self.agent.grpc_addr, "volume-export", "disk1", "cli", out],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("sha256", r.stdout)
            self.assertIn("] 67108864 of 67108864 bytes", r.stderr)  # the bar, full
            self.assertEqual(os.path.getsize(out), 64 * MiB)
            self.assertLess(os.stat(out).st_blocks * 512, 8 * MiB, "the zero runs were written, not skipped")
            self.assertEqual(sha256_device(out, 64 * MiB), sha256_device(vol["path"], 64 * MiB))
            missing = os.path.join(d, "none.raw")
            r = subprocess.run([hvctl, "--server", self.agent.grpc_addr, "volume-export", "disk1", "nosuch", missing],
                               capture_output=True, text=True, timeout=60)
            self.assertNotEqual(r.returncode, 0)
            self.assertFalse(os.path.exists(missing), "a failed export left its file")

    def hvctl(self, *argv, server=None, timeout=120):
        hvctl = os.path.join(os.path.dirname(os.environ["HVAGENTD"]), "hvctl")
        return subprocess.run([hvctl, "--server", server or self.agent.grpc_addr, "volume-export", *argv],
                              capture_output=True, timeout=timeout)

    def test_hvctl_exports_to_stdout_and_as_qcow2(self):
        vol = self.volume("clio", 32 * MiB, lambda fd: os.pwrite(fd, os.urandom(2 * MiB), 9 * MiB))
        want = sha256_device(vol["path"], 32 * MiB)
        r = self.hvctl("disk1", "clio", "-o", "-")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout), 32 * MiB)  # zero runs written as bytes: a pipe has no holes
        self.assertEqual(hashlib.sha256(r.stdout).hexdigest(), want)
        self.assertIn(b"-> stdout", r.stderr)
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "clio.qcow2")
            r = self.hvctl("disk1", "clio", "--format", "qcow2", "-o", out)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(out, "rb") as f:
                self.assertEqual(f.read(4), b"QFI\xfb")  # qcow2's magic
            raw = os.path.join(d, "clio.raw")
            run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", out, raw])
            self.assertEqual(sha256_device(raw, 32 * MiB), want)
            # A partition pool has no snapshots: the agent's refusal is hvctl's, and no file stays.
            snap = os.path.join(d, "snap.raw")
            r = self.hvctl("disk1", "clio", "--snapshot", "s1", "-o", snap)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(b"UNIMPLEMENTED", r.stderr)
            self.assertFalse(os.path.exists(snap))
            self.assertEqual(self.hvctl("disk1", "clio", "--format", "vmdk", "-o", snap).returncode, 2)
            self.assertEqual(self.hvctl("disk1", "clio").returncode, 2)  # no output named
        self.assertEqual(os.listdir(self.scratch), [])

    def test_hvctl_exits_non_zero_when_the_sha256_does_not_match(self):
        """A real Python gRPC server stands in for an agent whose stream is corrupt: the trailer's
        sha256 is not that of the bytes sent. It also records the request hvctl sent."""
        payload = os.urandom(256 << 10)
        asked = []

        class BadExport(storage_pb2_grpc.StorageServiceServicer):
            def ExportVolume(self, request, context):
                asked.append(request)
                yield storage_pb2.ExportVolumeChunk(header=storage_pb2.ExportHeader(size_bytes=len(payload) + MiB))
                yield storage_pb2.ExportVolumeChunk(data=payload)
                yield storage_pb2.ExportVolumeChunk(zeros=MiB)
                yield storage_pb2.ExportVolumeChunk(trailer=storage_pb2.ExportTrailer(
                    sha256=hashlib.sha256(b"something else").hexdigest(), size_bytes=len(payload) + MiB))

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        storage_pb2_grpc.add_StorageServiceServicer_to_server(BadExport(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.addCleanup(server.stop, None)
        addr = f"127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "bad.raw")
            r = self.hvctl("p9", "vol9", "--snapshot", "s9", "--format", "qcow2", "-o", out, server=addr)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(b"DATA_LOSS: sha256 mismatch", r.stderr)
            self.assertFalse(os.path.exists(out), "a mismatched export left its file")
            r = self.hvctl("p9", "vol9", "-o", "-", server=addr)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(b"sha256 mismatch", r.stderr)
            self.assertIn(b"not to be used", r.stderr)
            self.assertEqual(len(r.stdout), len(payload) + MiB)
        self.assertEqual((asked[0].pool, asked[0].name, asked[0].snapshot, asked[0].format),
                         ("p9", "vol9", "s9", image_pb2.IMAGE_FORMAT_QCOW2))
        self.assertEqual((asked[1].snapshot, asked[1].format), ("", image_pb2.IMAGE_FORMAT_RAW))

    # ---- images from volumes ----

    def boot(self, name, volume):
        spec = {"name": name, "vcpus": 1, "memory_mib": 256, "serial_console": True,
                "kernel": {"kernel_path": self.kernel, "initrd_path": self.initrd, "cmdline": "console=ttyS0"},
                "disks": [{"target": "vda", "volume": {"pool": "disk1", "name": volume}}]}
        status, dom = self.agent.rest("POST", "/v1/domains", {"spec": spec, "start": True})
        self.assertEqual(status, 201, dom)
        self.addCleanup(self.agent.rest, "DELETE", f"/v1/domains/{name}?force=true")

    def console_sha256(self, name):
        tty = run(["virsh", "-c", "qemu:///system", "ttyconsole", name]).stdout.strip()
        fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
        try:
            console_until(fd, b"hv-guest-ready", 300)
            os.write(fd, b"\nsha256sum /dev/vda\n")
            out = console_until(fd, b"  /dev/vda", 60)
        finally:
            os.close(fd)
        return [f.decode() for f in re.findall(rb"([0-9a-f]{64})  /dev/vda", out)][-1]


    def test_an_image_of_a_running_guests_volume_boots_another_guest(self):
        src = self.volume("src-root", 8 * MiB, lambda fd: os.pwrite(fd, os.urandom(6 * MiB), 0))
        digest = sha256_device(src["path"], 8 * MiB)
        first = unique_name("exp")
        self.boot(first, "src-root")
        self.assertEqual(domstate(first), "running")
        r = self.images.CreateImageFromVolume(image_pb2.CreateImageFromVolumeRequest(
            pool="disk1", volume="src-root", name="tmpl"), timeout=120)
        self.addCleanup(self.agent.rest, "DELETE", "/v1/pools/disk1/images/tmpl")
        print(f"\nimage of a running guest's 8 MiB volume: paused {r.paused_ms} ms", flush=True)
        self.assertTrue(r.paused)
        self.assertEqual(domstate(first), "running")  # resumed
        self.assertEqual(r.image.state, image_pb2.IMAGE_STATE_READY)
        self.assertEqual(r.image.sha256, digest)
        self.assertEqual(r.image.source, "volume:disk1/src-root")
        # The first guest is done with: one TCG guest at a time boots faster on a busy host.
        status, body = self.agent.rest("DELETE", f"/v1/domains/{first}?force=true")
        self.assertEqual(status, 204, body)
        status, vol = self.agent.rest("POST", "/v1/pools/disk1/volumes", {"name": "copy-root", "image": "tmpl"})
        self.assertEqual(status, 201, vol)
        self.addCleanup(self.delete_volume, "copy-root")
        second = unique_name("exp")
        self.boot(second, "copy-root")
        self.assertEqual(self.console_sha256(second), digest)
        # Deleted by the agent here, not only by the cleanup: the harness's tearDown (which runs
        # before cleanups) undefines hvit- domains behind the agent's back, and the agent then
        # keeps copy-root attached to the vanished domain; its cleanup waited 120 s for nothing.
        status, body = self.agent.rest("DELETE", f"/v1/domains/{second}?force=true")
        self.assertEqual(status, 204, body)
        # The image exports to the same bytes.
        rebuilt, _, _, trailer = self.export("tmpl", image=True)
        self.assertEqual((rebuilt, trailer.sha256), (digest, digest))
