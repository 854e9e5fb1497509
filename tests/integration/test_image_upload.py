"""Uploads from the caller (ImageService.UploadImage, a client-streaming RPC, from Python grpcio
and from hvctl) onto a real partition pool (a GPT disk on a loop device): raw and qcow2 land byte
for byte; a stream cut short, one longer than announced, a bad checksum, an image larger than
the pool and a stream the client cancels each end in a clear error with nothing left (the
partition table, lsblk, the pool's listings, the scratch directory, no operation running)."""

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

import grpc

from hvagent.v1 import image_pb2, image_pb2_grpc
from loop_pools import LoopPoolsTestCase, run

MiB = 1 << 20
CHUNK = 256 * 1024
QEMU_IMG = "/usr/bin/qemu-img"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def device_sha256(path, length):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left > 0:
            chunk = f.read(min(4 * MiB, left))
            if not chunk:
                raise AssertionError(f"{path} is shorter than {length} bytes")
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def messages(header, data, chunk=CHUNK, pause=0.0, sent=None):
    """The upload's stream: its header, then `data` in chunks (a `sent` event after the first)."""
    yield image_pb2.UploadImageRequest(header=header)
    for i in range(0, len(data), chunk):
        yield image_pb2.UploadImageRequest(chunk=data[i:i + chunk])
        if sent is not None:
            sent.set()
        if pause:
            time.sleep(pause)


class ImageUploadTest(LoopPoolsTestCase):
    @classmethod
    def setUpClass(cls):
        cls.scratch = tempfile.mkdtemp(prefix="hvit-scratch-")
        cls.work = tempfile.mkdtemp(prefix="hvit-upload-")
        super().setUpClass()
        cls.images = image_pb2_grpc.ImageServiceStub(cls.agent.channel)

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            shutil.rmtree(cls.scratch, ignore_errors=True)
            shutil.rmtree(cls.work, ignore_errors=True)

    @classmethod
    def extra_config(cls):
        return f"""
[images]
scratch_dir = "{cls.scratch}"
max_virtual_size_mib = 512
"""

    def state(self):
        return self.image_pool_state(self.scratch)

    def header(self, name, size, fmt=image_pb2.IMAGE_FORMAT_RAW, **checksums):
        return image_pb2.UploadImageHeader(pool="disk1", name=name, format=fmt, size_bytes=size, **checksums)

    def upload_fails(self, code, message, header, data, **kw):
        before = self.state()
        with self.assertRaises(grpc.RpcError) as err:
            self.images.UploadImage(messages(header, data, **kw), timeout=120)
        self.assertEqual(err.exception.code(), code, err.exception.details())
        self.assertIn(message, err.exception.details())
        self.assertEqual(self.state(), before, "a failed upload left something behind")
        recent = [op for op in self.agent.rest("GET", "/v1/operations")[1]["operations"]
                  if op.get("image") == header.name]
        return recent

    # ---- uploads that work ----

    def test_raw_upload_lands_byte_for_byte_on_its_partition(self):
        before = self.state()
        data = os.urandom(6 * MiB + 777)  # not a whole block
        image = self.images.UploadImage(messages(self.header("up-raw", len(data), sha256=sha256(data).upper()), data),
                                        timeout=120)
        self.assertEqual(image.state, image_pb2.IMAGE_STATE_READY)
        self.assertEqual((image.sha256, image.virtual_size_bytes, image.source),
                         (sha256(data), len(data), "upload"))
        # The partition's own bytes, read back from the kernel's device.
        self.assertEqual(device_sha256(image.path, len(data)), sha256(data))
        label = [p for p in json.loads(run(["sfdisk", "--json", self.disk]).stdout)["partitiontable"]["partitions"]
                 if p["node"] == image.path]
        self.assertEqual(label[0]["name"], "hvimage:up-raw")
        ops = [op for op in self.agent.rest("GET", "/v1/operations")[1]["operations"] if op.get("image") == "up-raw"]
        self.assertEqual(ops[0]["state"], "OPERATION_STATE_SUCCEEDED", ops)
        self.assertEqual((ops[0]["bytes_done"], ops[0]["bytes_total"]), (str(len(data)),) * 2)
        # A second upload of the name is refused before its bytes are taken.
        with self.assertRaises(grpc.RpcError) as err:
            self.images.UploadImage(messages(self.header("up-raw", len(data)), data), timeout=60)
        self.assertEqual(err.exception.code(), grpc.StatusCode.ALREADY_EXISTS)
        self.assertEqual(self.agent.rest("DELETE", "/v1/pools/disk1/images/up-raw")[0], 200)
        self.assertEqual(self.state(), before)

    def test_qcow2_upload_is_converted_and_its_raw_bytes_recorded(self):
        before = self.state()
        raw_data = os.urandom(3 * MiB) + bytes(MiB) + os.urandom(MiB)  # a zero run qcow2 leaves out
        raw = os.path.join(self.work, "q.raw")
        with open(raw, "wb") as f:
            f.write(raw_data)
        qcow = os.path.join(self.work, "q.qcow2")
        run([QEMU_IMG, "convert", "-f", "raw", "-O", "qcow2", raw, qcow])
        with open(qcow, "rb") as f:
            qdata = f.read()
        image = self.images.UploadImage(
            messages(self.header("up-q", len(qdata), image_pb2.IMAGE_FORMAT_QCOW2, sha256=sha256(qdata)), qdata),
            timeout=120)
        self.assertEqual((image.state, image.source_format), (image_pb2.IMAGE_STATE_READY, image_pb2.IMAGE_FORMAT_QCOW2))
        self.assertEqual((image.virtual_size_bytes, image.sha256), (len(raw_data), sha256(raw_data)))
        self.assertEqual(device_sha256(image.path, len(raw_data)), sha256(raw_data))
        self.assertEqual(os.listdir(self.scratch), [])
        self.assertEqual(self.agent.rest("DELETE", "/v1/pools/disk1/images/up-q")[0], 200)
        self.assertEqual(self.state(), before)

    def test_hvctl_uploads_a_file_with_a_progress_bar(self):
        before = self.state()
        hvctl = os.path.join(os.path.dirname(os.environ["HVAGENTD"]), "hvctl")
        data = os.urandom(2 * MiB + 5)
        path = os.path.join(self.work, "cli.raw")
        with open(path, "wb") as f:
            f.write(data)

        def cli(*args):
            return subprocess.run([hvctl, "--server", self.agent.grpc_addr, *args], capture_output=True, text=True,
                                  timeout=120)

        r = cli("image-upload", "disk1", "cli", path, "--sha256", sha256(data))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"disk1/cli: ready (2.0 MiB, sha256 {sha256(data)})", r.stdout)
        self.assertIn(f"] {len(data)} of {len(data)} bytes", r.stderr)  # the bar, full
        r = cli("image-upload", "disk1", "bad", path, "--sha256", "0" * 64)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("FAILED_PRECONDITION: sha256: the source's bytes hash to", r.stderr)
        r = cli("image-upload", "disk1", "cli2", path, "--format", "vmdk")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertEqual(cli("image-delete", "disk1", "cli").returncode, 0)
        self.assertEqual(self.state(), before)

    # ---- uploads that fail, each leaving nothing ----

    def test_a_stream_ending_short_of_size_bytes_is_data_loss(self):
        ops = self.upload_fails(grpc.StatusCode.DATA_LOSS, "size_bytes: the upload ended after 1048576 of the 4194304",
                                self.header("short", 4 * MiB), os.urandom(MiB))
        self.assertEqual(ops[0]["state"], "OPERATION_STATE_FAILED", ops)

    def test_more_bytes_than_announced_is_invalid_argument(self):
        self.upload_fails(grpc.StatusCode.INVALID_ARGUMENT, "chunk: the upload holds more than the 1048576 bytes",
                          self.header("long", MiB), os.urandom(MiB + 1))

    def test_a_checksum_mismatch_is_refused_before_ready(self):
        data = os.urandom(2 * MiB)
        self.upload_fails(grpc.StatusCode.FAILED_PRECONDITION, "checksum mismatch",
                          self.header("badsum", len(data), sha256=sha256(data + b"x")), data)

    def test_a_qcow2_checksum_mismatch_removes_the_scratch_file(self):
        data = os.urandom(MiB)
        self.upload_fails(grpc.StatusCode.FAILED_PRECONDITION, "checksum mismatch",
                          self.header("badq", len(data), image_pb2.IMAGE_FORMAT_QCOW2, sha256="0" * 64), data)

    def test_an_image_larger_than_the_pool_is_refused(self):
        # 300 MiB announced on a 256 MiB disk: the partition cannot be made; one chunk is sent.
        self.upload_fails(grpc.StatusCode.RESOURCE_EXHAUSTED, "", self.header("huge", 300 * MiB), os.urandom(CHUNK))

    def test_size_bytes_over_the_cap_or_missing_is_refused_naming_it(self):
        self.upload_fails(grpc.StatusCode.INVALID_ARGUMENT, "size_bytes: 537919488 is over [images] max_virtual_size_mib",
                          self.header("cap", 513 * MiB), b"")
        self.upload_fails(grpc.StatusCode.INVALID_ARGUMENT, "size_bytes: the upload's length is required",
                          self.header("zero", 0), b"")

    def test_a_stream_without_its_header_first_is_refused(self):
        before = self.state()
        with self.assertRaises(grpc.RpcError) as err:
            self.images.UploadImage(iter([image_pb2.UploadImageRequest(chunk=b"abc")]), timeout=60)
        self.assertEqual(err.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("header:", err.exception.details())
        self.assertEqual(self.state(), before)

    def test_a_stream_the_client_cancels_leaves_nothing(self):
        before = self.state()
        data = os.urandom(8 * MiB)
        sent = threading.Event()
        future = self.images.UploadImage.future(messages(self.header("gone", len(data)), data, pause=0.05, sent=sent),
                                                timeout=120)
        self.assertTrue(sent.wait(30))
        time.sleep(0.5)  # a few chunks are on the partition by now
        future.cancel()
        deadline = time.time() + 60
        ops = []
        while time.time() < deadline:
            ops = [op for op in self.agent.rest("GET", "/v1/operations")[1]["operations"] if op.get("image") == "gone"]
            if ops and ops[0]["state"] != "OPERATION_STATE_RUNNING":
                break
            time.sleep(0.1)
        self.assertEqual(ops[0]["state"], "OPERATION_STATE_CANCELLED", ops)
        self.assertEqual(self.state(), before)

    # ---- REST: PUT with the image as a streamed body ----

    def put(self, name, data, query):
        return self.agent.rest("PUT", f"/v1/pools/disk1/images/{name}?{query}", raw=data,
                               headers={"Content-Type": "application/octet-stream"})

    def test_rest_put_streams_a_body_larger_than_max_body_bytes(self):
        before = self.state()
        data = os.urandom(5 * MiB + 3)  # over the 1 MiB max_body_bytes every other request is held to
        status, image = self.put("rest-raw", data, f"format=IMAGE_FORMAT_RAW&sha256={sha256(data)}")
        self.assertEqual(status, 201, image)
        self.assertEqual((image["state"], image["sha256"], image["virtual_size_bytes"]),
                         ("IMAGE_STATE_READY", sha256(data), str(len(data))))
        self.assertEqual(device_sha256(image["path"], len(data)), sha256(data))
        # The same bytes under another name with a wrong checksum: 409, nothing kept.
        mid = self.state()
        status, err = self.put("rest-bad", data, "format=IMAGE_FORMAT_RAW&sha256=" + "1" * 64)
        self.assertEqual(status, 409, err)
        self.assertIn("checksum mismatch", err["message"])
        self.assertEqual(self.state(), mid)
        # A body over max_body_bytes elsewhere is still 413: only the upload route is exempt.
        status, err = self.agent.rest("POST", "/v1/pools/disk1/volumes", raw=b"{" + b" " * (2 * MiB) + b"}")
        self.assertEqual(status, 413, err)
        self.assertEqual(self.agent.rest("DELETE", "/v1/pools/disk1/images/rest-raw")[0], 200)
        self.assertEqual(self.state(), before)

    def test_rest_put_refusals_name_the_field(self):
        before = self.state()
        status, err = self.put("rest-nofmt", b"abc", "")
        self.assertEqual(status, 400, err)
        self.assertIn("format:", err["message"])
        status, err = self.put("rest-q", b"abc", "format=IMAGE_FORMAT_RAW&colour=red")
        self.assertEqual(status, 400, err)
        self.assertIn("colour", err["message"])
        status, err = self.put("rest-sum", b"abc", "format=IMAGE_FORMAT_RAW&sha256=zz")
        self.assertEqual(status, 400, err)
        self.assertIn("sha256", err["message"])
        self.assertEqual(self.state(), before)

    def test_a_refused_rest_put_does_not_gather_its_body_in_memory(self):
        # A refused upload is answered only after its body has been read (HTTP): 512 MiB sent to
        # a name that is not a valid name must be read and dropped, not held by the agent.
        import socket
        def hwm_kib():
            with open(f"/proc/{self.agent.proc.pid}/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        before, hwm = self.state(), hwm_kib()
        host, port = self.agent.rest_addr.rsplit(":", 1)
        size = 512 * MiB
        with socket.create_connection((host, int(port)), timeout=60) as s:
            s.sendall((f"PUT /v1/pools/disk1/images/Bad~Name?format=IMAGE_FORMAT_RAW HTTP/1.1\r\n"
                       f"Host: {self.agent.rest_addr}\r\nContent-Type: application/octet-stream\r\n"
                       f"Content-Length: {size}\r\n\r\n").encode())
            block = b"\0" * MiB
            for _ in range(size // MiB):
                s.sendall(block)
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):
                got = s.recv(4096)
                if not got:
                    break
                reply += got
        reply = reply.decode(errors="replace")
        self.assertTrue(reply.startswith("HTTP/1.1 400"), reply)
        self.assertIn('"message":"name', reply.replace(" ", ""))
        grown_mib = (hwm_kib() - hwm) // 1024
        print(f"agent peak RSS grew {grown_mib} MiB over a refused 512 MiB upload")
        self.assertLess(grown_mib, 200)
        self.assertEqual(self.state(), before)

    def test_rest_put_cut_short_by_the_client_leaves_nothing(self):
        import socket
        before = self.state()
        host, port = self.agent.rest_addr.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall((f"PUT /v1/pools/disk1/images/rest-cut?format=IMAGE_FORMAT_RAW HTTP/1.1\r\n"
                   f"Host: {self.agent.rest_addr}\r\nContent-Type: application/octet-stream\r\n"
                   f"Content-Length: {4 * MiB}\r\n\r\n").encode())
        s.sendall(os.urandom(MiB))
        time.sleep(0.5)
        s.close()  # 3 MiB never come
        deadline = time.time() + 60
        ops = []
        while time.time() < deadline:
            ops = [op for op in self.agent.rest("GET", "/v1/operations")[1]["operations"]
                   if op.get("image") == "rest-cut"]
            if ops and ops[0]["state"] != "OPERATION_STATE_RUNNING":
                break
            time.sleep(0.1)
        self.assertIn(ops[0]["state"], ("OPERATION_STATE_CANCELLED", "OPERATION_STATE_FAILED"), ops)
        self.assertEqual(self.state(), before)
