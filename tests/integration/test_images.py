"""Golden images on a real partition pool (a GPT disk on a loop device): imports from an HTTP
server this test runs on loopback and from a host file, raw and qcow2 (made by qemu-img from
random data), each checked byte for byte on the partition; volumes copied from an image, alone
and as a domain's disk (DiskVolume.image: owned, deleted with the domain, nothing left by a
failpoint kill mid-create); and every way an import can go wrong, each a clear error with nothing left behind (the partition
table, lsblk, the pool's listings, the scratch directory, no operation left running)."""

import hashlib
import re
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

from hvagent.v1 import event_pb2, event_pb2_grpc, image_pb2, image_pb2_grpc, operation_pb2, operation_pb2_grpc
from agent_harness import console_until, Agent, test_guest, unique_name
from loop_pools import LoopPoolsTestCase, run

MiB = 1 << 20
QEMU_IMG = "/usr/bin/qemu-img"


def sha256_file(path, length=None):
    h = hashlib.sha256()
    left = length
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(4 * MiB if left is None else min(4 * MiB, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    if left:
        raise AssertionError(f"{path} is shorter than {length} bytes")
    return h.hexdigest()


class ImageServer(http.server.ThreadingHTTPServer):
    """Serves files of `root` under /images/; /images/truncated/NAME announces 1 MiB more than
    it sends; /images/slow/NAME trickles (64 KiB every 50 ms) so an import can be cancelled."""
    daemon_threads = True

    def __init__(self, root):
        self.root = root
        super().__init__(("127.0.0.1", 0), ImageHandler)


class ImageHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = self.path.split("/")
        if len(parts) < 3 or parts[1] != "images":
            self.send_error(404)
            return
        mode, name = ("plain", parts[2]) if len(parts) == 3 else (parts[2], parts[3])
        path = os.path.join(self.server.root, os.path.basename(name))
        if not os.path.isfile(path):
            self.send_error(404)
            return
        size = os.path.getsize(path)
        self.send_response(200)
        self.send_header("Content-Length", str(size + (MiB if mode == "truncated" else 0)))
        self.end_headers()
        try:
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(64 * 1024 if mode == "slow" else MiB)
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    if mode == "slow":
                        time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


class ImagesTest(LoopPoolsTestCase):
    @classmethod
    def setUpClass(cls):
        cls.served = tempfile.mkdtemp(prefix="hvit-served-")
        cls.server = ImageServer(cls.served)
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        cls.base = f"http://127.0.0.1:{cls.server.server_address[1]}/images/"
        # Files the agent may import: root's alone (mkdtemp: 0700).
        cls.importdir = tempfile.mkdtemp(prefix="hvit-import-")
        cls.scratch = tempfile.mkdtemp(prefix="hvit-scratch-")
        cls.statedir = tempfile.mkdtemp(prefix="hvit-state-")  # the journal, kept across restarts
        cls.kernel, cls.initrd = test_guest()
        try:
            super().setUpClass()
        except BaseException:
            cls.server.shutdown()
            raise
        cls.images = image_pb2_grpc.ImageServiceStub(cls.agent.channel)
        cls.operations = operation_pb2_grpc.OperationServiceStub(cls.agent.channel)

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.server.shutdown()
            for d in (cls.served, cls.importdir, cls.scratch, cls.statedir):
                shutil.rmtree(d, ignore_errors=True)

    @classmethod
    def extra_config(cls):
        return f"""
[security]
kernel_dirs = ["{os.path.dirname(cls.kernel)}"]

[images]
allowed_sources = ["{cls.base}"]
import_dirs = ["{cls.importdir}"]
scratch_dir = "{cls.scratch}"
max_virtual_size_mib = 512

[reliability]
state_dir = "{cls.statedir}"
"""

    # ---- helpers ----

    def random_file(self, directory, name, size):
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        return path

    def qcow2_of(self, raw, directory, name):
        path = os.path.join(directory, name)
        run([QEMU_IMG, "convert", "-f", "raw", "-O", "qcow2", raw, path])
        return path

    def state(self):
        return self.image_pool_state(self.scratch)

    def wait_operation(self, op_id, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, op = self.agent.rest("GET", f"/v1/operations/{op_id}")
            self.assertEqual(status, 200, op)
            if op["state"] != "OPERATION_STATE_RUNNING":
                return op
            time.sleep(0.1)
        self.fail(f"operation {op_id} still running after {timeout} s")

    def import_grpc(self, name, fmt, **source):
        req = image_pb2.ImportImageRequest(pool="disk1", name=name, format=fmt, **source)
        return self.images.ImportImage(req, timeout=60)

    def import_fails(self, name, fmt, message, **source):
        before = self.state()
        op = self.import_grpc(name, fmt, **source)
        self.assertEqual(op.kind, operation_pb2.OPERATION_KIND_IMPORT_IMAGE)
        self.assertEqual((op.pool, op.image), ("disk1", name))
        done = self.wait_operation(op.id)
        self.assertEqual(done["state"], "OPERATION_STATE_FAILED", done)
        self.assertIn(message, done["message"])
        self.assertEqual(self.state(), before, "a failed import left something behind")
        return done

    def image_bytes_hash(self, image):
        return sha256_file(image["path"], int(image["virtual_size_bytes"]))

    # ---- imports that work ----

    def test_raw_over_http_lands_byte_for_byte_and_a_volume_copies_it(self):
        before = self.state()
        raw = self.random_file(self.served, "rnd.raw", 8 * MiB + 12345)  # not a whole block
        digest = sha256_file(raw)
        status, op = self.agent.rest("POST", "/v1/pools/disk1/images",
                                     {"name": "rnd", "format": "IMAGE_FORMAT_RAW", "url": self.base + "rnd.raw",
                                      "sha256": digest.upper()})
        self.assertEqual(status, 202, op)
        self.assertEqual(op["state"], "OPERATION_STATE_RUNNING")
        done = self.wait_operation(op["id"])
        self.assertEqual(done["state"], "OPERATION_STATE_SUCCEEDED", done)
        self.assertEqual((done["bytes_done"], done["bytes_total"]), (str(8 * MiB + 12345),) * 2)
        status, image = self.agent.rest("GET", "/v1/pools/disk1/images/rnd")
        self.assertEqual(status, 200, image)
        self.assertEqual((image["state"], image["sha256"], image["virtual_size_bytes"], image["source_format"]),
                         ("IMAGE_STATE_READY", digest, str(8 * MiB + 12345), "IMAGE_FORMAT_RAW"))
        # The partition's own bytes, read back from the kernel's device.
        self.assertEqual(self.image_bytes_hash(image), digest)
        label = [p for p in json.loads(run(["sfdisk", "--json", self.disk]).stdout)["partitiontable"]["partitions"]
                 if p["node"] == image["path"]]
        self.assertEqual(label[0]["name"], "hvimage:rnd")
        # An image is no volume, and a second import of its name is refused.
        self.assertEqual(self.agent.rest("GET", "/v1/pools/disk1/volumes")[1]["volumes"], before["volumes"])
        status, err = self.agent.rest("POST", "/v1/pools/disk1/images",
                                      {"name": "rnd", "format": "IMAGE_FORMAT_RAW", "url": self.base + "rnd.raw",
                                       "sha256": digest})
        self.assertEqual(status, 409, err)

        # A volume from it: larger than the image, its first bytes the image's.
        status, vol = self.agent.rest("POST", "/v1/pools/disk1/volumes", {"name": "from-rnd", "size_bytes": str(16 * MiB),
                                                                          "image": "rnd"})
        self.assertEqual(status, 201, vol)
        self.assertEqual(vol["size_bytes"], str(16 * MiB))
        self.assertEqual(sha256_file(vol["path"], 8 * MiB + 12345), digest)
        status, err = self.agent.rest("POST", "/v1/pools/disk1/volumes", {"name": "small", "size_bytes": str(MiB),
                                                                          "image": "rnd"})
        self.assertEqual(status, 400, err)
        self.assertIn("size_bytes", err["message"])
        status, err = self.agent.rest("POST", "/v1/pools/disk1/volumes", {"name": "ghost", "image": "nope"})
        self.assertEqual(status, 404, err)
        self.assertIn("image: 'nope'", err["message"])

        # Deleting the image leaves the volume; deleting both restores the pool.
        status, gone = self.agent.rest("DELETE", "/v1/pools/disk1/images/rnd")
        self.assertEqual(status, 200, gone)
        self.assertEqual(self.agent.rest("GET", "/v1/pools/disk1/images/rnd")[0], 404)
        self.assertEqual(sha256_file(vol["path"], 8 * MiB + 12345), digest)
        self.assertEqual(self.agent.rest("DELETE", "/v1/pools/disk1/volumes/from-rnd")[0], 202)
        deadline = time.time() + 60
        while self.agent.rest("GET", "/v1/pools/disk1/volumes/from-rnd")[0] != 404 and time.time() < deadline:
            time.sleep(0.2)
        self.assertEqual(self.state(), before)

    def test_qcow2_host_file_is_converted_and_its_raw_bytes_recorded(self):
        before = self.state()
        raw = self.random_file(tempfile.gettempdir(), f"hvit-{os.getpid()}.raw", 6 * MiB)
        try:
            raw_digest = sha256_file(raw)
            qcow2 = self.qcow2_of(raw, self.importdir, "rnd.qcow2")
        finally:
            os.unlink(raw)
        op = self.import_grpc("q", image_pb2.IMAGE_FORMAT_QCOW2, host_file=qcow2, sha256=sha256_file(qcow2))
        done = self.wait_operation(op.id)
        self.assertEqual(done["state"], "OPERATION_STATE_SUCCEEDED", done)
        image = self.images.GetImage(image_pb2.ImageRef(pool="disk1", name="q"), timeout=30)
        self.assertEqual(image.state, image_pb2.IMAGE_STATE_READY)
        self.assertEqual(image.source_format, image_pb2.IMAGE_FORMAT_QCOW2)
        self.assertEqual(image.virtual_size_bytes, 6 * MiB)
        self.assertEqual(image.sha256, raw_digest)
        self.assertEqual(sha256_file(image.path, 6 * MiB), raw_digest)
        self.assertEqual(os.listdir(self.scratch), [], "the scratch file was not removed")
        listed = self.images.ListImages(image_pb2.ListImagesRequest(pool="disk1"), timeout=30)
        self.assertEqual([i.name for i in listed.images], ["q"])
        self.images.DeleteImage(image_pb2.ImageRef(pool="disk1", name="q"), timeout=60)
        self.assertEqual(self.state(), before)

    def test_an_import_is_seen_on_watch_with_growing_bytes_and_its_end(self):
        """EventService.Watch with operations: the import's RUNNING event, progress at most every
        500 ms with growing bytes, and SUCCEEDED with the whole size, read by a real gRPC client
        while the agent fetches a slow HTTP source (64 KiB every 50 ms: about 3 s for 4 MiB)."""
        before = self.state()
        size = 4 * MiB
        raw = self.random_file(self.served, "watched.raw", size)
        events = event_pb2_grpc.EventServiceStub(self.agent.channel)
        stream = events.Watch(event_pb2.WatchEventsRequest(operations=event_pb2.WATCH_OPERATIONS_ONLY), timeout=120)
        stream.initial_metadata()  # subscribed: every later event reaches this stream
        op = self.import_grpc("watched", image_pb2.IMAGE_FORMAT_RAW, url=self.base + "slow/watched.raw",
                              sha256=sha256_file(raw))
        seen = []
        for e in stream:
            self.assertEqual(e.type, event_pb2.DOMAIN_EVENT_TYPE_OPERATION, e)
            if e.operation.id != op.id:
                continue  # another test's operation (none should run, but the stream is the host's)
            seen.append(e)
            if e.operation.state != operation_pb2.OPERATION_STATE_RUNNING:
                break
        stream.cancel()
        states = [e.operation.state for e in seen]
        self.assertEqual(states[0], operation_pb2.OPERATION_STATE_RUNNING)
        self.assertEqual(states[-1], operation_pb2.OPERATION_STATE_SUCCEEDED, seen[-1])
        self.assertEqual(seen[-1].detail, "succeeded")
        self.assertEqual((seen[-1].operation.bytes_done, seen[-1].operation.bytes_total), (size, size))
        self.assertEqual((seen[-1].operation.pool, seen[-1].operation.image), ("disk1", "watched"))
        progress = [e for e in seen[1:-1] if e.operation.bytes_done > 0]
        self.assertGreaterEqual(len(progress), 3, f"too few progress events for a 3 s import: {seen}")
        done = [e.operation.bytes_done for e in progress]
        self.assertEqual(done, sorted(set(done)), f"bytes did not grow: {done}")
        self.assertLess(done[-1], size)
        self.assertTrue(all(e.operation.bytes_total == size for e in progress))
        # Rate: at most one progress event per 500 ms (the agent's clock stamps each event).
        times = [e.time.ToNanoseconds() / 1e9 for e in seen[:-1]]
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertTrue(all(g >= 0.45 for g in gaps), f"events closer than 500 ms: {gaps}")
        self.assertLessEqual(len(seen), 2 + (times[-1] - times[0]) / 0.5 + 1)
        self.assertEqual(self.agent.rest("DELETE", "/v1/pools/disk1/images/watched")[0], 200)
        self.assertEqual(self.state(), before)

    def test_hvctl_imports_with_a_progress_bar_and_lists_and_deletes(self):
        before = self.state()
        hvctl = os.path.join(os.path.dirname(os.environ["HVAGENTD"]), "hvctl")
        raw = self.random_file(self.importdir, "cli.raw", 3 * MiB)

        def cli(*args):
            return subprocess.run([hvctl, "--server", self.agent.grpc_addr, *args], capture_output=True, text=True,
                                  timeout=120)

        r = cli("image-import", "disk1", "cli", "raw", raw, "--sha256", sha256_file(raw), "--wait")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("disk1/cli: SUCCEEDED", r.stdout)
        self.assertIn("] 3.0 MiB of 3.0 MiB", r.stderr)  # the bar, full
        r = cli("images", "disk1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(sha256_file(raw), r.stdout)
        r = cli("image-import", "disk1", "bad", "raw", raw, "--sha256", "0" * 64, "--wait")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("FAILED: sha256: the source's bytes hash to", r.stdout)
        self.assertEqual(cli("image-delete", "disk1", "cli").returncode, 0)
        self.assertEqual(self.state(), before)

    def test_a_guest_boots_from_a_root_its_create_made_from_an_image_which_goes_with_it(self):
        """QEMU (TCG) boots the shared busybox guest whose /dev/vda CreateDomain made from an
        image (DiskVolume.image); the guest's own sha256sum of /dev/vda, on its serial console, is
        the image's. The domain owns the volume: DeleteDomain delete_volumes removes it, wiped, and
        its partition; the image stays."""
        raw = self.random_file(self.served, "boot.raw", 8 * MiB)  # whole MiB: the volume is exactly it
        digest = sha256_file(raw)
        op = self.import_grpc("boot", image_pb2.IMAGE_FORMAT_RAW, url=self.base + "boot.raw", sha256=digest)
        self.assertEqual(self.wait_operation(op.id)["state"], "OPERATION_STATE_SUCCEEDED")
        before = self.state()
        name = unique_name("img")
        spec = {"name": name, "vcpus": 1, "memory_mib": 256, "serial_console": True,
                "kernel": {"kernel_path": self.kernel, "initrd_path": self.initrd, "cmdline": "console=ttyS0"},
                "disks": [{"target": "vda", "volume": {"pool": "disk1", "name": "boot-root", "image": "boot"}}]}
        status, dom = self.agent.rest("POST", "/v1/domains", {"spec": spec, "start": True})
        self.assertEqual(status, 201, dom)
        try:
            status, vol = self.agent.rest("GET", "/v1/pools/disk1/volumes/boot-root")
            self.assertEqual(status, 200, vol)
            self.assertEqual((vol["attached_to"], vol["ownership"], vol["size_bytes"]),
                             (name, "VOLUME_OWNERSHIP_OWNED", str(8 * MiB)))
            tty = run(["virsh", "-c", "qemu:///system", "ttyconsole", name]).stdout.strip()
            fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
            try:
                out = console_until(fd, b"hv-guest-ready", 180)
                os.write(fd, b"\nsha256sum /dev/vda\n")
                out = console_until(fd, b"  /dev/vda", 60)
            finally:
                os.close(fd)
            found = re.findall(rb"([0-9a-f]{64})  /dev/vda", out)
            self.assertEqual([f.decode() for f in found][-1:], [digest], out[-2000:])
            status, body = self.agent.rest("DELETE", f"/v1/domains/{name}?force=true&delete_volumes=true")
            self.assertIn(status, (200, 204), body)
            self.wait_volume_gone("boot-root")
            self.assertEqual(self.state(), before, "the domain's volume or partition was left")
            self.assertIn("boot", [i["name"] for i in self.agent.rest("GET", "/v1/pools/disk1/images")[1]["images"]])
        finally:
            self.agent.rest("DELETE", f"/v1/domains/{name}?force=true&delete_volumes=true")
            self.wait_volume_gone("boot-root")
            self.agent.rest("DELETE", "/v1/pools/disk1/images/boot")

    def wait_volume_gone(self, volume, timeout=60):
        deadline = time.time() + timeout
        while self.agent.rest("GET", f"/v1/pools/disk1/volumes/{volume}")[0] != 404:
            self.assertLess(time.time(), deadline, f"volume {volume} still there")
            time.sleep(0.2)

    def test_a_create_killed_after_its_image_copy_leaves_nothing_after_the_restart(self):
        """A failpoint kills the agent (SIGKILL) right after the volume was made from the image,
        before the domain is defined; the next start's recovery deletes the volume: no domain, no
        volume, no partition beyond the image's."""
        out = subprocess.run([os.environ["HVAGENTD"], "--version"], capture_output=True, text=True, timeout=10).stdout
        if "failpoints" not in out:
            self.skipTest("hvagentd built without -DHVAGENT_FAILPOINTS=ON")
        self.random_file(self.served, "fp.raw", 4 * MiB)
        op = self.import_grpc("fp", image_pb2.IMAGE_FORMAT_RAW, url=self.base + "fp.raw",
                              sha256=sha256_file(os.path.join(self.served, "fp.raw")))
        self.assertEqual(self.wait_operation(op.id)["state"], "OPERATION_STATE_SUCCEEDED")
        before = self.state()
        self.restart_agent(env={"HVAGENT_FAILPOINTS": "create.after_claim"})
        name = unique_name("fp")
        spec = {"name": name, "vcpus": 1, "memory_mib": 64,
                "kernel": {"kernel_path": self.kernel, "initrd_path": self.initrd},
                "disks": [{"target": "vda", "volume": {"pool": "disk1", "name": "fp-root", "image": "fp",
                                                       "create_size_bytes": str(8 * MiB)}}]}
        names = self.post_until_killed("/v1/domains", {"spec": spec, "start": True})
        self.assertIn(f"hvagent:fp-root={name}", names, "the volume was not made (owned) before the kill")
        self.restart_agent()
        self.assertIn("rolled back", self.agent.log_text())
        self.wait_volume_gone("fp-root")
        self.assertEqual(self.state(), before)
        self.assertNotEqual(run(["virsh", "-c", "qemu:///system", "domstate", name], check=False).returncode, 0,
                            "the domain was defined")
        self.agent.rest("DELETE", "/v1/pools/disk1/images/fp")

    def test_a_volume_from_an_image_is_an_operation_a_delete_cancels_and_a_crash_rolls_back(self):
        """ImageService.CreateVolumeFromImage answers at once with an operation that copies the
        image onto a new volume (a partition pool copies); the volume's bytes are the image's.
        Refusals come before anything starts. With failpoints: a DeleteVolume mid-copy cancels
        it, and a SIGKILL mid-copy leaves a volume the next start deletes."""
        size = 12 * MiB + 4096
        raw = self.random_file(self.importdir, "vfi.raw", size)
        digest = sha256_file(raw)
        op = self.import_grpc("vfi", image_pb2.IMAGE_FORMAT_RAW, host_file=raw, sha256=digest)
        self.assertEqual(self.wait_operation(op.id)["state"], "OPERATION_STATE_SUCCEEDED")
        before = self.state()

        status, op = self.agent.rest("POST", "/v1/pools/disk1/images/vfi:create-volume",
                                     {"volume": "vfi-root", "size_bytes": str(16 * MiB)})
        self.assertEqual(status, 202, op)
        self.assertEqual((op["kind"], op["pool"], op["image"], op["volume"]),
                         ("OPERATION_KIND_VOLUME_FROM_IMAGE", "disk1", "vfi", "vfi-root"))
        done = self.wait_operation(op["id"])
        self.assertEqual(done["state"], "OPERATION_STATE_SUCCEEDED", done)
        self.assertEqual((done["bytes_done"], done["bytes_total"]), (str(size), str(size)))
        status, vol = self.agent.rest("GET", "/v1/pools/disk1/volumes/vfi-root")
        self.assertEqual((status, vol["size_bytes"]), (200, str(16 * MiB)), vol)
        self.assertEqual(sha256_file(vol["path"], size), digest)

        # Refused before anything starts, naming the field.
        for body, code, says in (({"volume": "vfi-root"}, 409, "volume: volume 'vfi-root' already exists"),
                                 ({"volume": "x", "size_bytes": str(MiB)}, 400, "size_bytes: "),
                                 ({"volume": "a/b"}, 400, "volume: 'a/b'")):
            status, err = self.agent.rest("POST", "/v1/pools/disk1/images/vfi:create-volume", body)
            self.assertEqual(status, code, err)
            self.assertIn(says, err["message"])
        status, err = self.agent.rest("POST", "/v1/pools/disk1/images/nope:create-volume", {"volume": "x"})
        self.assertEqual(status, 404, err)
        self.assertIn("image: 'nope'", err["message"])
        self.assertEqual(self.agent.rest("DELETE", "/v1/pools/disk1/volumes/vfi-root")[0], 202)
        self.wait_volume_gone("vfi-root")
        self.assertEqual(self.state(), before)

        hvctl = os.path.join(os.path.dirname(os.environ["HVAGENTD"]), "hvctl")
        r = subprocess.run([hvctl, "--server", self.agent.grpc_addr, "volume-from-image", "disk1", "vfi", "vfi-cli",
                            "--wait"], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("disk1/vfi-cli: SUCCEEDED", r.stdout)
        self.assertEqual(self.agent.rest("DELETE", "/v1/pools/disk1/volumes/vfi-cli")[0], 202)
        self.wait_volume_gone("vfi-cli")

        out = subprocess.run([os.environ["HVAGENTD"], "--version"], capture_output=True, text=True, timeout=10).stdout
        if "failpoints" not in out:
            self.skipTest("hvagentd built without -DHVAGENT_FAILPOINTS=ON: cancel and crash not exercised")
        # Cancel: the copy pauses after its first block; the volume's delete cancels it.
        self.restart_agent(env={"HVAGENT_FAILPOINTS": "volume_from_image.mid_copy=sleep:3000"})
        status, op = self.agent.rest("POST", "/v1/pools/disk1/images/vfi:create-volume", {"volume": "vfi-cancel"})
        self.assertEqual(status, 202, op)
        deadline = time.time() + 30
        while int(self.agent.rest("GET", f"/v1/operations/{op['id']}")[1]["bytes_done"]) == 0:
            self.assertLess(time.time(), deadline, "the copy never started writing")
            time.sleep(0.05)
        status, vol = self.agent.rest("DELETE", "/v1/pools/disk1/volumes/vfi-cancel")
        self.assertEqual((status, vol.get("state")), (202, "VOLUME_STATE_DELETING"), vol)
        done = self.wait_operation(op["id"])
        self.assertEqual(done["state"], "OPERATION_STATE_CANCELLED", done)
        self.wait_volume_gone("vfi-cancel")
        self.assertEqual(self.state(), before)

        # Crash: SIGKILL after the first block; the next start deletes the half-written volume.
        self.restart_agent(env={"HVAGENT_FAILPOINTS": "volume_from_image.mid_copy"})
        names = self.post_until_killed("/v1/pools/disk1/images/vfi:create-volume", {"volume": "vfi-crash"})
        self.assertTrue(any("vfi-crash" in n for n in names), f"no half-written volume to recover: {names}")
        self.restart_agent()
        self.assertIn("the partial volume is wiped and deleted", self.agent.log_text())
        self.wait_volume_gone("vfi-crash")
        self.assertEqual(self.state(), before)
        self.agent.rest("DELETE", "/v1/pools/disk1/images/vfi")

    def post_until_killed(self, path, body):
        """POSTs `body` to an agent armed with a SIGKILL failpoint on the request's way, checks that
        the agent died by it, and returns the names of disk1's partitions as the kill left them."""
        try:
            self.agent.rest("POST", path, body)
        except Exception:  # the connection drops with the agent
            pass
        try:
            self.agent.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.fail(f"the agent did not reach its failpoint:\n{self.agent.log_text()[-3000:]}")
        self.assertEqual(self.agent.proc.returncode, -9, self.agent.log_text()[-3000:])
        return [p.get("name", "") for p in
                json.loads(run(["sfdisk", "--json", self.disk]).stdout)["partitiontable"]["partitions"]]

    def restart_agent(self, env=None):
        """Stops the agent (or reaps one a failpoint killed) and starts a new one on the same
        pools and state directory."""
        old = self.agent
        if old.proc.poll() is None:
            old.proc.terminate()
        old.proc.wait()
        old.channel.close()
        os.unlink(old.log.name)
        if old.config is not None:
            os.unlink(old.config.name)
        cls = type(self)
        cls.agent = Agent(cls.agent_config(), image_dirs=[cls.workdir], env=env)
        cls.images = image_pb2_grpc.ImageServiceStub(cls.agent.channel)
        cls.operations = operation_pb2_grpc.OperationServiceStub(cls.agent.channel)


    # ---- imports that fail, leaving nothing ----

    def test_checksum_mismatch_fails_and_leaves_nothing(self):
        self.random_file(self.served, "bad.raw", 3 * MiB)
        done = self.import_fails("bad", image_pb2.IMAGE_FORMAT_RAW, "checksum mismatch", url=self.base + "bad.raw",
                                 sha256="0" * 64)
        self.assertIn("sha256: the source's bytes hash to", done["message"])

    def test_qcow2_checksum_mismatch_removes_the_scratch_file(self):
        raw = self.random_file(self.served, "q.raw", 2 * MiB)
        self.qcow2_of(raw, self.served, "q.qcow2")
        self.import_fails("badq", image_pb2.IMAGE_FORMAT_QCOW2, "checksum mismatch", url=self.base + "q.qcow2",
                          sha512="0" * 128)

    def test_truncated_body_fails_and_leaves_nothing(self):
        self.random_file(self.served, "cut.raw", 2 * MiB)
        self.import_fails("cut", image_pb2.IMAGE_FORMAT_RAW, "fetching", url=self.base + "truncated/cut.raw",
                          sha256="0" * 64)

    def test_qcow2_with_a_backing_file_is_refused_without_opening_it(self):
        evil = os.path.join(self.importdir, "evil.qcow2")
        # -u: qemu-img itself does not open the backing file to make this one.
        run([QEMU_IMG, "create", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow", "-u", evil, "1M"])
        done = self.import_fails("evil", image_pb2.IMAGE_FORMAT_QCOW2, "backing file", host_file=evil)
        self.assertIn("/etc/shadow", done["message"])

    def test_qcow2_over_the_virtual_size_cap_is_refused(self):
        big = os.path.join(self.importdir, "big.qcow2")
        run([QEMU_IMG, "create", "-f", "qcow2", big, "1G"])  # a few KiB of file, 1 GiB of disk
        self.import_fails("big", image_pb2.IMAGE_FORMAT_QCOW2, "max_virtual_size_mib", host_file=big)

    def test_image_larger_than_the_pool_fails_and_leaves_nothing(self):
        sparse = os.path.join(self.importdir, "huge.raw")
        with open(sparse, "wb") as f:
            f.truncate(300 * MiB)  # the pool's disk is 256 MiB
        self.import_fails("huge", image_pb2.IMAGE_FORMAT_RAW, "is full", host_file=sparse)

    def test_cancel_by_delete_removes_the_partial_image(self):
        before = self.state()
        self.random_file(self.served, "slow.raw", 16 * MiB)
        op = self.import_grpc("slow", image_pb2.IMAGE_FORMAT_RAW, url=self.base + "slow/slow.raw", sha256="0" * 64)
        deadline = time.time() + 30
        while time.time() < deadline:
            status, seen = self.agent.rest("GET", f"/v1/operations/{op.id}")
            if int(seen["bytes_done"]) > 0:
                break
            time.sleep(0.05)
        self.assertGreater(int(seen["bytes_done"]), 0, seen)
        self.assertEqual(int(seen["bytes_total"]), 16 * MiB)
        status, image = self.agent.rest("GET", "/v1/pools/disk1/images/slow")
        self.assertEqual((status, image["state"], image["operation_id"]), (200, "IMAGE_STATE_IMPORTING", str(op.id)))
        self.assertEqual(self.agent.rest("DELETE", "/v1/pools/disk1/images/slow")[0], 200)
        done = self.wait_operation(op.id)
        self.assertEqual(done["state"], "OPERATION_STATE_CANCELLED", done)
        self.assertEqual(self.state(), before)

    def test_a_crash_mid_import_leaves_nothing_after_the_restart(self):
        before = self.state()
        self.random_file(self.served, "crash.raw", 16 * MiB)
        op = self.import_grpc("crash", image_pb2.IMAGE_FORMAT_RAW, url=self.base + "slow/crash.raw", sha256="0" * 64)
        deadline = time.time() + 30
        while int(self.agent.rest("GET", f"/v1/operations/{op.id}")[1]["bytes_done"]) == 0:
            self.assertLess(time.time(), deadline, "the import never started writing")
            time.sleep(0.05)
        names = [p.get("name") for p in
                 json.loads(run(["sfdisk", "--json", self.disk]).stdout)["partitiontable"]["partitions"]]
        self.assertIn("hvimage~crash", names)
        old = self.agent
        old.proc.kill()  # SIGKILL: no clean-up of its own
        old.proc.wait()
        old.channel.close()
        os.unlink(old.log.name)
        if old.config is not None:
            os.unlink(old.config.name)
        cls = type(self)
        cls.agent = Agent(cls.agent_config(), image_dirs=[cls.workdir])
        cls.images = image_pb2_grpc.ImageServiceStub(cls.agent.channel)
        cls.operations = operation_pb2_grpc.OperationServiceStub(cls.agent.channel)
        # With the journal kept (state_dir) the import's own entry is recovered; without it, the
        # unsealed slot is found by its name. Either way the partial image is wiped and removed.
        self.assertRegex(self.agent.log_text(), r"(unfinished image disk1/crash|import of disk1/crash \(operation \d+\)):"
                                                r" (the partial image was )?wiped and removed")
        self.assertEqual(self.state(), before)

    # ---- refused before anything starts ----

    def test_refusals_name_the_field_and_start_nothing(self):
        before = self.state()
        status, ops_before = self.agent.rest("GET", "/v1/operations")
        cases = [
            ({"name": "x", "format": "IMAGE_FORMAT_RAW", "url": "http://127.0.0.1:1/elsewhere/x.raw",
              "sha256": "0" * 64}, 403, "url: "),
            ({"name": "x", "format": "IMAGE_FORMAT_RAW", "url": self.base + "x.raw"}, 400, "sha256: "),
            ({"name": "x", "format": "IMAGE_FORMAT_RAW", "host_file": "/etc/shadow"}, 403, "host_file: "),
            ({"name": "x", "url": self.base + "x.raw", "sha256": "0" * 64}, 400, "format: "),
            ({"name": "a/b", "format": "IMAGE_FORMAT_RAW", "url": self.base + "x.raw", "sha256": "0" * 64}, 400,
             "name: "),
        ]
        for body, want, field in cases:
            with self.subTest(body=body):
                status, err = self.agent.rest("POST", "/v1/pools/disk1/images", body)
                self.assertEqual(status, want, err)
                self.assertTrue(err["message"].startswith(field), err)
        # An LVM pool on this host (no device-mapper: an image LV could be neither written nor read)
        # holds no images.
        status, err = self.agent.rest("POST", "/v1/pools/vg/images", {"name": "x", "format": "IMAGE_FORMAT_RAW",
                                                                      "url": self.base + "x.raw", "sha256": "0" * 64})
        self.assertEqual(status, 409, err)
        self.assertIn("cannot hold images", err["message"])
        self.assertEqual(self.agent.rest("GET", "/v1/operations")[1], ops_before)
        self.assertEqual(self.agent.rest("GET", "/v1/operations/999999")[0], 404)
        self.assertEqual(self.agent.rest("GET", "/v1/operations/seven")[0], 400)
        self.assertEqual(self.state(), before)


if __name__ == "__main__":
    import unittest
    unittest.main()
