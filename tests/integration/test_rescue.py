"""Rescue and unrescue on real libvirtd + QEMU (TCG) with real partition volumes: a guest whose
root is a volume of a GPT pool on a loop device is rescued with a rescue disk made from an image
(raw, random bytes, imported from a host file) and the shared busybox kernel; on its serial
console the rescue guest sees the rescue disk as vda (its bytes are the image's: sha256sum)
and the root volume as vdb. Unrescue boots the original definition: the root alone as vda. The
rescue volume is gone afterwards, the root volume still owned. Refusals (rescue twice, unrescue
of a domain not rescued, a kernel outside kernel_dirs) change nothing. `hvctl rescue
--config-drive` uploads an ISO made by genisoimage and the rescue gets it as a read-only CD-ROM."""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time

from hvagent.v1 import image_pb2, image_pb2_grpc
from agent_harness import console_until, test_guest, unique_name
from loop_pools import LoopPoolsTestCase, run

MiB = 1 << 20
ROOT_MIB = 16
IMAGE_MIB = 4


class RescueTest(LoopPoolsTestCase):

    @classmethod
    def setUpClass(cls):
        cls.importdir = tempfile.mkdtemp(prefix="hvit-import-")
        cls.scratch = tempfile.mkdtemp(prefix="hvit-scratch-")
        cls.kernel, cls.initrd = test_guest()
        super().setUpClass()
        cls.images = image_pb2_grpc.ImageServiceStub(cls.agent.channel)

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            for d in (cls.importdir, cls.scratch):
                shutil.rmtree(d, ignore_errors=True)

    @classmethod
    def extra_config(cls):
        return f"""
[security]
kernel_dirs = ["{os.path.dirname(cls.kernel)}"]

[images]
import_dirs = ["{cls.importdir}"]
scratch_dir = "{cls.scratch}"
max_virtual_size_mib = 64
"""

    # ---- helpers ----

    def import_image(self, name, size):
        path = os.path.join(self.importdir, name + ".raw")
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        op = self.images.ImportImage(image_pb2.ImportImageRequest(
            pool="disk1", name=name, format=image_pb2.IMAGE_FORMAT_RAW, host_file=path, sha256=digest), timeout=60)
        deadline = time.time() + 120
        while time.time() < deadline:
            status, done = self.agent.rest("GET", f"/v1/operations/{op.id}")
            self.assertEqual(status, 200, done)
            if done["state"] != "OPERATION_STATE_RUNNING":
                self.assertEqual(done["state"], "OPERATION_STATE_SUCCEEDED", done)
                return digest
            time.sleep(0.1)
        self.fail("the import did not end")

    def console(self, name, command, marker, fresh, timeout=300):
        """Types `command` on the guest's serial console (a new pty after every boot) and
        returns what it printed up to `marker`; `fresh`: a guest just started, whose shell is
        waited for first (hv-guest-ready)."""
        tty = run(["virsh", "-c", "qemu:///system", "ttyconsole", name]).stdout.strip()
        fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
        try:
            if fresh:
                console_until(fd, b"hv-guest-ready", timeout)
            os.write(fd, b"\n" + command.encode() + b"\n")
            return console_until(fd, marker.encode(), 60).decode(errors="replace")
        finally:
            os.close(fd)


    def partitions(self, name):
        """{device: size in KiB} of the /proc/partitions of a guest just started."""
        out = self.console(name, "cat /proc/partitions; echo parts-done", "\nparts-done", fresh=True)
        return {m.group(2): int(m.group(1)) for m in re.finditer(r"\d+\s+\d+\s+(\d+)\s+(vd[a-z])\b", out)}

    def volume(self, name):
        return self.agent.rest("GET", f"/v1/pools/disk1/volumes/{name}")

    def wait_gone(self, name):
        deadline = time.time() + 60
        while self.volume(name)[0] != 404:
            self.assertLess(time.time(), deadline, f"volume {name} still there")
            time.sleep(0.2)

    def boot(self):
        """The test guest's direct kernel boot, for a domain's spec or a rescue."""
        return {"kernel_path": self.kernel, "initrd_path": self.initrd, "cmdline": "console=ttyS0"}

    def guest_spec(self, name, memory_mib, root, *more_disks):
        """A kernel-booted guest with a new ROOT_MIB root volume `root` as vda, and `more_disks`."""
        return {"name": name, "vcpus": 1, "memory_mib": memory_mib, "serial_console": True, "kernel": self.boot(),
                "disks": [{"target": "vda", "volume": {"pool": "disk1", "name": root,
                                                       "create_size_bytes": str(ROOT_MIB * MiB)}}, *more_disks]}

    # ---- the test ----

    def test_rescue_boots_the_rescue_disk_with_the_root_second_and_unrescue_boots_the_original(self):
        digest = self.import_image("rescue", IMAGE_MIB * MiB)
        name = unique_name("rsc")
        spec = self.guest_spec(name, 256, "rsc-root")
        status, dom = self.agent.rest("POST", "/v1/domains", {"spec": spec, "start": True})
        self.assertEqual(status, 201, dom)
        try:
            self.assertEqual(self.partitions(name), {"vda": ROOT_MIB * 1024})
            # Bad input first: nothing changes.
            status, err = self.agent.rest("POST", f"/v1/domains/{name}:rescue",
                                          {"kernel": {"kernel_path": "/etc/passwd"}})
            self.assertEqual(status, 403, err)
            self.assertIn("kernel.kernel_path", err["message"])
            status, err = self.agent.rest("POST", f"/v1/domains/{name}:unrescue", {})
            self.assertEqual(status, 409, err)
            self.assertIn("is not rescued", err["message"])

            rescue = {"image": {"pool": "disk1", "image": "rescue", "volume": "rsc-resc"},
                      "kernel": self.boot()}
            status, dom = self.agent.rest("POST", f"/v1/domains/{name}:rescue", rescue)
            self.assertEqual(status, 200, dom)
            self.assertEqual(dom["state"], "DOMAIN_STATE_RUNNING")
            self.assertTrue(dom.get("rescued"), dom)
            status, listed = self.agent.rest("GET", "/v1/domains")
            self.assertEqual([True], [d.get("rescued") for d in listed["domains"] if d["name"] == name])
            hvctl = os.path.join(os.path.dirname(os.environ["HVAGENTD"]), "hvctl")
            listing = run([hvctl, "--server", self.agent.grpc_addr, "list"]).stdout
            self.assertIn("running (rescued)", listing)
            self.assertEqual(self.partitions(name), {"vda": IMAGE_MIB * 1024, "vdb": ROOT_MIB * 1024})
            out = self.console(name, "sha256sum /dev/vda", "  /dev/vda", fresh=False)
            self.assertEqual(re.findall(r"([0-9a-f]{64})  /dev/vda", out)[-1:], [digest], out[-2000:])
            status, vol = self.volume("rsc-resc")
            self.assertEqual(status, 200, vol)
            self.assertEqual(vol["attached_to"], name)
            status, err = self.agent.rest("POST", f"/v1/domains/{name}:rescue", rescue)
            self.assertEqual(status, 409, err)
            self.assertIn("already rescued", err["message"])

            status, dom = self.agent.rest("POST", f"/v1/domains/{name}:unrescue", {})
            self.assertEqual(status, 200, dom)
            self.assertFalse(dom.get("rescued", False), dom)
            self.assertEqual(self.partitions(name), {"vda": ROOT_MIB * 1024})
            self.wait_gone("rsc-resc")
            status, root = self.volume("rsc-root")
            self.assertEqual(status, 200, root)
            self.assertEqual((root["ownership"], root["attached_to"]), ("VOLUME_OWNERSHIP_OWNED", name))
            self.assertEqual(self.agent.rest("POST", f"/v1/domains/{name}:unrescue", {})[0], 409)
        finally:
            self.agent.rest("DELETE", f"/v1/domains/{name}?force=true&delete_volumes=true")
            for v in ("rsc-root", "rsc-resc"):
                if self.volume(v)[0] == 200:
                    self.agent.rest("DELETE", f"/v1/pools/disk1/volumes/{v}")
                self.wait_gone(v)
            self.agent.rest("DELETE", "/v1/pools/disk1/images/rescue")

    def test_deleting_a_rescued_domain_deletes_the_rescue_volume_and_only_owned_volumes(self):
        self.import_image("rescue2", IMAGE_MIB * MiB)
        status, data = self.agent.rest("POST", "/v1/pools/disk1/volumes", {"name": "rsc-data", "size_bytes": str(MiB)})
        self.assertEqual(status, 201, data)
        name = unique_name("rsd")
        spec = self.guest_spec(name, 128, "rsd-root",
                               {"target": "vdb", "volume": {"pool": "disk1", "name": "rsc-data"}})
        status, dom = self.agent.rest("POST", "/v1/domains", {"spec": spec, "start": False})
        self.assertEqual(status, 201, dom)
        try:
            status, dom = self.agent.rest("POST", f"/v1/domains/{name}:rescue", {
                "image": {"pool": "disk1", "image": "rescue2", "volume": "rsd-resc"},
                "kernel": self.boot()})
            self.assertEqual(status, 200, dom)
            status, body = self.agent.rest("DELETE", f"/v1/domains/{name}?force=true&delete_volumes=true")
            self.assertEqual(status, 204, body)
            self.wait_gone("rsd-resc")
            self.wait_gone("rsd-root")
            status, data = self.volume("rsc-data")
            self.assertEqual(status, 200, "a borrowed volume is never deleted with its domain")
            self.assertEqual(data.get("attached_to", ""), "", data)
        finally:
            self.agent.rest("DELETE", f"/v1/domains/{name}?force=true")
            for v in ("rsd-root", "rsd-resc", "rsc-data"):
                if self.volume(v)[0] == 200:
                    self.agent.rest("DELETE", f"/v1/pools/disk1/volumes/{v}")
                self.wait_gone(v)
            self.agent.rest("DELETE", "/v1/pools/disk1/images/rescue2")

    def test_hvctl_rescue_with_a_config_drive_file_attaches_it_read_only(self):
        """hvctl rescue --config-drive POOL FILE VOLUME: the ISO is uploaded as image cfg-VOLUME,
        the rescue makes VOLUME from it (its bytes the ISO's) attached as a read-only CD-ROM, and
        the uploaded image is gone afterwards; unrescue deletes the volume."""
        hvctl = os.path.join(os.path.dirname(os.environ["HVAGENTD"]), "hvctl")

        def cli(*args):
            return subprocess.run([hvctl, "--server", self.agent.grpc_addr, *args], capture_output=True, text=True,
                                  timeout=300)

        tree = tempfile.mkdtemp(prefix="hvit-cfg-")
        os.makedirs(os.path.join(tree, "openstack", "latest"))
        with open(os.path.join(tree, "openstack", "latest", "meta_data.json"), "w") as f:
            f.write('{"uuid": "hvctl-rescue"}')
        iso = os.path.join(tree, "cfg.iso")
        run(["genisoimage", "-quiet", "-o", iso, "-V", "config-2", "-J", "-r", os.path.join(tree, "openstack")])
        with open(iso, "rb") as f:
            iso_bytes = f.read()
        name = unique_name("rsh")
        spec = self.guest_spec(name, 128, "rsh-root")
        status, dom = self.agent.rest("POST", "/v1/domains", {"spec": spec, "start": False})
        self.assertEqual(status, 201, dom)
        try:
            r = cli("rescue", name, "--config-drive", "disk1", iso)  # VOLUME missing
            self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
            r = cli("rescue", name, "--kernel", self.kernel, "--initrd", self.initrd, "--cmdline", "console=ttyS0",
                    "--config-drive", "disk1", iso, "rsh-cfg")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn(f"{name}: rescued, running", r.stdout)
            status, vol = self.volume("rsh-cfg")
            self.assertEqual(status, 200, vol)
            self.assertEqual(vol["attached_to"], name)
            with open(vol["path"], "rb") as dev:
                self.assertEqual(hashlib.sha256(dev.read(len(iso_bytes))).hexdigest(),
                                 hashlib.sha256(iso_bytes).hexdigest(), "the config drive holds the ISO's bytes")
            xml = run(["virsh", "-c", "qemu:///system", "dumpxml", name]).stdout
            cdrom = re.search(r"<disk[^>]*device=.cdrom.*?</disk>", xml, re.S)
            self.assertIsNotNone(cdrom, xml)
            self.assertIn(vol["path"], cdrom.group(0))
            self.assertIn("<readonly/>", cdrom.group(0))
            self.assertEqual(self.agent.rest("GET", "/v1/pools/disk1/images/cfg-rsh-cfg")[0], 404,
                             "the uploaded image is deleted once the rescue answered")
            r = cli("unrescue", name)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.wait_gone("rsh-cfg")
            # A config drive image that does not exist: refused, naming the field, nothing made.
            r = cli("rescue", name, "--kernel", self.kernel, "--config-drive-image", "disk1", "nosuch", "rsh-cfg")
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("config_drive", r.stderr)
            self.assertEqual(self.volume("rsh-cfg")[0], 404)
        finally:
            shutil.rmtree(tree, ignore_errors=True)
            self.agent.rest("DELETE", f"/v1/domains/{name}?force=true&delete_volumes=true")
            for v in ("rsh-root", "rsh-cfg"):
                if self.volume(v)[0] == 200:
                    self.agent.rest("DELETE", f"/v1/pools/disk1/volumes/{v}")
                self.wait_gone(v)
            self.agent.rest("DELETE", "/v1/pools/disk1/images/cfg-rsh-cfg")
