"""CloudStack templates from golden images, on a real partition pool (a GPT disk on a loop device)
and a real HTTP server on loopback: the template's image_url + image_checksum make the agent
import the image once per host, concurrent first creates share that one import, each VM's root
volume holds the image's bytes, importimage pre-seeds a host, `image` names an existing image,
a reinstall that cannot finish puts the VM back as it was, and every failure
(checksum mismatch, a URL outside the agent's allowed sources, a VM the host has no room for,
reinstall of a running VM or from a missing image) leaves the host as it was. The agent runs on
libvirt's test:///default driver (the domains are bookkeeping; the disks are real). Root only
(loop devices), so ctest label integration. ctest -R cloudstack_extension_images"""

import fcntl
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
import uuid
from concurrent.futures import ThreadPoolExecutor

from extension_harness import Agent, Extension

MiB = 1 << 20
TESTS_LOCK = "/run/hvagent-tests/tests.lock"  # shared with tests/integration (one class at a time)
IMAGE_BYTES = 6 * MiB + 4096  # not a multiple of the copy's 4 MiB block


class CountingServer(http.server.ThreadingHTTPServer):
    """Serves the files of `root` under /images/ and counts the GETs of each."""
    daemon_threads = True

    def __init__(self, root):
        self.root = root
        self.gets = {}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        name = os.path.basename(self.path)
        path = os.path.join(self.server.root, name)
        with self.server.lock:
            self.server.gets[name] = self.server.gets.get(name, 0) + 1
        if not self.path.startswith("/images/") or not os.path.isfile(path):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(os.path.getsize(path)))
        self.end_headers()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(256 * 1024):
                    self.wfile.write(chunk)
                    time.sleep(0.02)  # slow enough that concurrent creates meet the import under way
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def sha256_of(path, length):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left:
            chunk = f.read(min(MiB, left))
            if not chunk:
                raise AssertionError(f"{path} is shorter than {length} bytes")
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


class TemplateImageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root (loop devices)")
        os.makedirs(os.path.dirname(TESTS_LOCK), exist_ok=True)
        cls.lock = open(TESTS_LOCK, "w")
        deadline = time.time() + 600
        while True:
            try:
                fcntl.flock(cls.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() > deadline:
                    raise AssertionError(f"{TESTS_LOCK} held for 600 s by another run")
                time.sleep(0.2)
        cls.workdir = tempfile.mkdtemp(prefix="hvit-csimg-")
        cls.served = os.path.join(cls.workdir, "served")
        cls.scratch = os.path.join(cls.workdir, "scratch")
        os.makedirs(cls.served)
        cls.pool_file = os.path.join(cls.workdir, "pool.img")
        with open(cls.pool_file, "wb") as f:
            f.truncate(256 * MiB)
        cls.loop = subprocess.run(["losetup", "--find", "--show", "--partscan", cls.pool_file], check=True,
                                  capture_output=True, text=True).stdout.strip()
        cls.server = CountingServer(cls.served)
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        cls.base = f"http://127.0.0.1:{cls.server.server_address[1]}/images/"
        try:
            cls.agent = Agent("test:///default", f"""
[[storage.pools]]
name = "disk1"
type = "partition"
disk = "{cls.loop}"
wipe = "zero"

[images]
allowed_sources = ["{cls.base}"]
scratch_dir = "{cls.scratch}"
max_virtual_size_mib = 64
""")
        except BaseException:
            cls._release()
            raise
        cls.ext = Extension(cls.agent.grpc_port)

    @classmethod
    def _release(cls):
        cls.server.shutdown()
        subprocess.run(["losetup", "-d", cls.loop], capture_output=True)
        shutil.rmtree(cls.workdir, ignore_errors=True)
        cls.lock.close()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.ext.cleanup()
            cls.agent.stop()
        finally:
            cls._release()

    def setUp(self):
        self.made = []  # (name, uuid) of the VMs this test made

    def tearDown(self):
        for name, _ in self.made:
            self.agent.rest("DELETE", f"/v1/domains/{name}?force=true")
        for v in self.volumes():
            self.agent.rest("DELETE", f"/v1/pools/disk1/volumes/{v}")
        for i in self.images():
            self.agent.rest("DELETE", f"/v1/pools/disk1/images/{i}")
        deadline = time.time() + 60
        while self.volumes() or self.images():
            self.assertLess(time.time(), deadline, "volumes or images not removed")
            time.sleep(0.1)

    # ---- helpers ----

    def image_file(self, name, size=IMAGE_BYTES):
        data = os.urandom(size)
        with open(os.path.join(self.served, name), "wb") as f:
            f.write(data)
        return self.base + name, hashlib.sha256(data).hexdigest(), hashlib.sha512(data).hexdigest()

    def volumes(self):
        status, body = self.agent.rest("GET", "/v1/pools/disk1/volumes")
        self.assertEqual(status, 200, body)
        return {v["name"]: v for v in body.get("volumes", []) if v.get("state") != "VOLUME_STATE_DELETING"}

    def images(self):
        status, body = self.agent.rest("GET", "/v1/pools/disk1/images")
        self.assertEqual(status, 200, body)
        return {i["name"]: i for i in body.get("images", [])}

    def partitions(self):
        table = json.loads(subprocess.run(["sfdisk", "--json", self.loop], capture_output=True, text=True,
                                          check=False).stdout or '{"partitiontable": {}}')
        return sorted(p.get("name", "") for p in table["partitiontable"].get("partitions", []))

    def host(self):
        """What a failed call must leave as it was."""
        doms = {n: d["state"] for n, d in self.agent.domains().items()}
        return doms, sorted(self.volumes()), sorted(self.images()), self.partitions()

    def vm(self, n, **template):
        """An edit() for the create fixture: VM number n with the template's external details."""
        name, vm_uuid = f"i-2-{n}-VM", str(uuid.UUID(int=n))
        if (name, vm_uuid) not in self.made:
            self.made.append((name, vm_uuid))

        def edit(doc):
            doc["externaldetails"]["virtualmachine"] = dict(template)
            doc["externaldetails"]["virtualmachine"].setdefault("storage_pool", "disk1")
            doc["virtualmachinename"] = name
            doc["virtualmachineid"] = vm_uuid
            vmd = doc["cloudstack.vm.details"]
            vmd.update(name=name, uuid=vm_uuid, cpus=1, minRam=64 * MiB, maxRam=64 * MiB, nics=[])
        return edit

    def run_ok(self, action, edit, fixture="create.json", **kw):
        code, out = self.ext.run(action, fixture, wait="120", edit=edit, **kw)
        self.assertEqual((code, out.get("status")), (0, "success"), f"{out}\n{self.agent.log_text()[-3000:]}")
        return out

    def run_fails(self, action, edit, expect, code_name, fixture="create.json"):
        before = self.host()
        code, out = self.ext.run(action, fixture, wait="120", edit=edit)
        self.assertEqual((code, out.get("status")), (1, "error"), out)
        self.assertIn(expect, out["error"])
        self.assertEqual(out.get("code"), code_name, out)
        self.assertEqual(self.host(), before, "a failed call changed the host")
        return out

    def root_of(self, name):
        """The volume attached to domain `name` (its root volume), by the agent's record."""
        mine = [v for v in self.volumes().values() if v["attached_to"] == name]
        self.assertEqual(len(mine), 1, mine)
        return mine[0]

    # ---- tests ----

    def test_first_creates_share_one_import_and_get_the_images_bytes(self):
        url, sha256, _ = self.image_file("deb-a.raw")
        template = {"image_url": url, "image_checksum": "sha256:" + sha256.upper()}
        with ThreadPoolExecutor(max_workers=4) as pool:
            runs = list(pool.map(lambda n: self.ext.run("create", "create.json", wait="120",
                                                        edit=self.vm(n, **template)), (11, 12, 13, 14)))
        for code, out in runs:
            self.assertEqual((code, out.get("status")), (0, "success"), f"{out}\n{self.agent.log_text()[-3000:]}")
        self.assertEqual(self.server.gets.get("deb-a.raw"), 1, "the image was fetched more than once")
        image = self.images()[f"cs-{sha256[:17]}"]
        self.assertEqual((image["state"], image["sha256"], image["source"]), ("IMAGE_STATE_READY", sha256, url))
        for n in (11, 12, 13, 14):
            name = f"i-2-{n}-VM"
            self.assertEqual(self.agent.domains()[name]["state"], "DOMAIN_STATE_RUNNING")
            root = self.root_of(name)
            self.assertEqual(root["name"], name + "-root")
            # Made by CreateDomain from the image (DiskVolume.image): the domain owns it.
            self.assertEqual(root["ownership"], "VOLUME_OWNERSHIP_OWNED")
            self.assertGreaterEqual(int(root["size_bytes"]), IMAGE_BYTES)
            self.assertEqual(sha256_of(root["path"], IMAGE_BYTES), sha256, f"{name}'s root volume")
        # A later VM reuses the image: no fetch.
        self.run_ok("create", self.vm(15, **template))
        self.assertEqual(self.server.gets.get("deb-a.raw"), 1)
        # delete removes the VM's root volume (owned by the domain), never the image.
        for n in (11, 12, 13, 14, 15):
            self.run_ok("delete", self.vm(n, **template), fixture="delete.json")
        self.assertEqual(self.volumes(), {})
        self.assertIn(f"cs-{sha256[:17]}", self.images())

    def test_twenty_concurrent_first_creates_on_room_for_ten(self):
        """Issue 23's capacity test with a template image: one fetch for all twenty, exactly ten
        admitted (6 vCPUs each of the 62 the test driver's host has free), and no refused one
        leaves a root volume: the agent refuses before it copies anything."""
        url, sha256, _ = self.image_file("deb-e.raw")
        template = {"image_url": url, "image_checksum": sha256}
        numbers = list(range(51, 71))

        def create(n):
            def edit(doc):
                self.vm(n, **template)(doc)
                doc["cloudstack.vm.details"].update(cpus=6)
            return self.ext.run("create", "create.json", wait="240", edit=edit)
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = dict(zip(numbers, pool.map(create, numbers)))
        created = [n for n, (code, _) in results.items() if code == 0]
        refused = {n: out for n, (code, out) in results.items() if code != 0}
        self.assertEqual(len(created), 10, results)
        for n, out in refused.items():
            self.assertEqual(out.get("code"), "RESOURCE_EXHAUSTED", out)
            self.assertIn("not enough vCPUs on this host: asked 6", out["error"])
        self.assertEqual(self.server.gets.get("deb-e.raw"), 1, "the image was fetched more than once")
        domains = self.agent.domains()
        self.assertEqual({n for n in domains if n.startswith("i-2-")}, {f"i-2-{n}-VM" for n in created})
        self.assertEqual(set(self.volumes()), {f"i-2-{n}-VM-root" for n in created})
        for n in created:
            self.assertEqual(self.root_of(f"i-2-{n}-VM")["name"], f"i-2-{n}-VM-root")
        # The GPT table holds the image and the ten root volumes, nothing else.
        parts = self.partitions()
        self.assertEqual(len(parts), 11, parts)

    def test_importimage_preseeds_and_image_names_it(self):
        url, sha256, sha512 = self.image_file("deb-b.raw")
        host_payload = lambda doc: doc["externaldetails"]["host"].update(storage_pool="disk1")
        code, out = self.ext.run_raw(["importimage", self.ext.payload("hostcapacity.json", edit=lambda d: (
            host_payload(d), d.update(parameters={"image_url": url, "image_checksum": sha512}))), "120"])
        self.assertEqual((code, out.get("status")), (0, "success"), out)
        name = f"cs-{sha512[:17]}"
        self.assertEqual((out["message"]["name"], out["message"]["state"], out["message"]["sha256"]),
                         (name, "IMAGE_STATE_READY", sha256))
        self.assertEqual(out["message"]["template_detail"], f"image=disk1/{name}")
        self.assertEqual(self.server.gets.get("deb-b.raw"), 1)
        # Again: answered from the host, no second fetch.
        code, again = self.ext.run_raw(["importimage", self.ext.payload("hostcapacity.json", edit=lambda d: (
            host_payload(d), d.update(parameters={"image_url": url, "image_checksum": "{SHA-512}" + sha512}))), "120"])
        self.assertEqual((code, again["message"]["name"]), (0, name), again)
        self.assertEqual(self.server.gets.get("deb-b.raw"), 1)
        # A template naming the image by pool/name; the root disk larger than the image.
        self.run_ok("create", self.vm(21, image=f"disk1/{name}",
                                      root_disk_size_bytes=str(16 * MiB)))
        root = self.root_of("i-2-21-VM")
        self.assertEqual(int(root["size_bytes"]), 16 * MiB)
        self.assertEqual(sha256_of(root["path"], IMAGE_BYTES), sha256)

    def test_createtemplate_makes_an_image_of_the_vms_root_that_a_new_vm_gets(self):
        url, _, sha512 = self.image_file("deb-t.raw")
        first = self.vm(31, image_url=url, image_checksum=sha512)
        self.run_ok("create", first)
        root = self.root_of("i-2-31-VM")
        with open(root["path"], "r+b") as f:  # what the VM wrote since: the image must have it
            f.write(b"written-by-vm-31")
        want = sha256_of(root["path"], int(root["size_bytes"]))
        state = self.agent.domains()["i-2-31-VM"]["state"]

        def with_params(edit, **params):
            return lambda d: (edit(d), d.update(parameters=params))
        out = self.run_ok("createtemplate", with_params(first, name="tmpl-31"))
        msg = out["message"]
        self.assertEqual((msg["name"], msg["state"], msg["sha256"], msg["template_detail"]),
                         ("tmpl-31", "IMAGE_STATE_READY", want, "image=disk1/tmpl-31"))
        self.assertEqual(msg["source"], f"volume:disk1/{root['name']}")
        self.assertEqual(msg["paused"], state == "DOMAIN_STATE_RUNNING")
        self.assertEqual(self.agent.domains()["i-2-31-VM"]["state"], state)  # resumed
        # A VM of a template naming that image starts with the first VM's bytes.
        self.run_ok("create", self.vm(32, image="disk1/tmpl-31"))
        self.assertEqual(sha256_of(self.root_of("i-2-32-VM")["path"], int(root["size_bytes"])), want)
        # Bad input: a clear error and the host as it was.
        self.run_fails("createtemplate", with_params(first), "parameter name", "INVALID_ARGUMENT")
        self.run_fails("createtemplate", with_params(first, name="../x"), "name: '../x'", "INVALID_ARGUMENT")
        self.run_fails("createtemplate", with_params(first, name="tmpl-31"), "already exists", "ALREADY_EXISTS")

    def test_snapshot_actions_reach_the_agent_and_a_partition_pool_says_it_has_none(self):
        """The four snapshot actions resolve the VM's root volume and call StorageService; this
        pool is a GPT disk, which has no snapshots (the real ones: tests/system/xen-arm64)."""
        url, _, sha512 = self.image_file("deb-s.raw")
        vm = self.vm(41, image_url=url, image_checksum=sha512)
        self.run_ok("create", vm)

        def with_params(edit, **params):
            return lambda d: (edit(d), d.update(parameters=params))
        for action in ("createsnapshot", "revertsnapshot", "deletesnapshot"):
            self.run_fails(action, with_params(vm), "parameter name", "INVALID_ARGUMENT")
            self.run_fails(action, with_params(vm, name="s1"), "partition pool", "UNIMPLEMENTED")
        self.run_fails("listsnapshots", with_params(vm), "partition pool", "UNIMPLEMENTED")
        # A template from a snapshot reaches the agent as one (a template of the volume itself
        # would succeed here) and leaves no image.
        self.run_fails("createtemplate", with_params(vm, name="tmpl-41", snapshot="s1"), "partition pool",
                       "UNIMPLEMENTED")
        self.assertNotIn("tmpl-41", self.images())
        self.run_fails("createsnapshot", with_params(vm, name="s1", pool="../x"), "pool '../x'", "INVALID_ARGUMENT")
        self.run_fails("listsnapshots", with_params(self.vm(42), pool="disk1"), "not defined on this host",
                       "NOT_FOUND")

    def test_reinstall_that_fails_leaves_the_vm_as_it_was(self):
        """libvirt's test driver cannot detach a disk: reinstall gets as far as the new root volume,
        fails to swap it in, and must put everything back: the old root volume attached with the
        guest's bytes, the new one deleted. (The swap itself: test_extension_qemu, real QEMU.)"""
        url, sha256, _ = self.image_file("deb-c.raw")
        edit = self.vm(31, image_url=url, image_checksum=sha256)
        self.run_ok("create", edit)
        first = self.root_of("i-2-31-VM")
        with open(first["path"], "r+b") as f:
            f.write(b"written by the guest")
        # Running: refused before anything is touched.
        self.run_fails("reinstall", edit, "stop it first", "FAILED_PRECONDITION")
        self.run_ok("stop", edit, fixture="stop.json")
        # From an image the host does not have (and no URL to fetch it from): refused, unchanged.
        self.run_fails("reinstall", self.vm(31, image="disk1/missing"), "is not on this host", "NOT_FOUND")
        out = self.run_fails("reinstall", edit, "the VM was left as it was", "UNIMPLEMENTED")
        self.assertIn("detaching disk1/i-2-31-VM-root", out["error"])
        root = self.root_of("i-2-31-VM")
        self.assertEqual(root["name"], "i-2-31-VM-root")
        with open(root["path"], "rb") as f:
            self.assertEqual(f.read(20), b"written by the guest")
        self.assertEqual(self.agent.domains()["i-2-31-VM"]["state"], "DOMAIN_STATE_SHUTOFF")
        self.run_ok("delete", edit, fixture="delete.json")
        self.assertEqual(self.volumes(), {})

    def test_failures_leave_the_host_as_it_was(self):
        url, sha256, _ = self.image_file("deb-d.raw")
        wrong = hashlib.sha256(b"another image").hexdigest()
        # The bytes do not match the checksum: the agent's import fails and removes its partition.
        self.run_fails("create", self.vm(41, image_url=url, image_checksum=wrong), "failed", "ABORTED")
        self.assertNotIn(41, [n for n in self.agent.domains()])
        # A URL outside the agent's [images] allowed_sources.
        self.run_fails("create", self.vm(42, image_url="http://127.0.0.1:9/images/x.raw", image_checksum=sha256),
                       "", "PERMISSION_DENIED")
        # A VM the host has no room for: refused before its root volume is made.
        big = self.vm(43, image_url=url, image_checksum=sha256)

        def too_big(doc):
            big(doc)
            doc["cloudstack.vm.details"].update(cpus=4096)
        self.run_ok("importimage", lambda d: (d["externaldetails"]["host"].update(storage_pool="disk1"),
                                              d.update(parameters={"image_url": url, "image_checksum": sha256})),
                    fixture="hostcapacity.json")
        out = self.run_fails("create", too_big, "not enough vCPUs", "RESOURCE_EXHAUSTED")
        self.assertIn("vCPU", out["error"])
        # The instance's own details cannot name an image.
        def user_image(doc):
            self.vm(44, image_url=url, image_checksum=sha256)(doc)
            doc["cloudstack.vm.details"]["details"]["image"] = f"disk1/cs-{sha256[:17]}"
        self.run_fails("create", user_image, "not taken from the instance's details", "INVALID_ARGUMENT")


if __name__ == "__main__":
    unittest.main()
