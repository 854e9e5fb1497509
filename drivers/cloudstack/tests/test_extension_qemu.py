"""hvagent-cloudstack round trip on a real libvirtd + QEMU (TCG): the integration tier's libvirtd
fixture (tests/integration/libvirtd_fixture.sh, CTest fixture `libvirtd`) runs the daemon; this
test starts hvagentd on qemu:///system and drives one guest through CloudStack payloads:
create (NICs on the VLAN's bridge and the untagged bridge, root disk file), status, statuses,
stop, start, reboot, delete, checked with virsh. And `delete` removes only what the VM created:
with its root disk on the agent's partition pool (a loop device, wipe = zero) and a data volume
an operator attached, delete wipes and removes the root volume and leaves the data volume free
with the same bytes. Root only. ctest -L integration"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
import uuid

from extension_harness import Agent, Extension
from rfb import rfb_vnc_auth  # tests/integration/rfb.py (PYTHONPATH from CTest)

URI = "qemu:///system"
TESTS_LOCK = "/run/hvagent-tests/tests.lock"  # shared with tests/integration (one class at a time)
BRIDGE_VLAN = "hvcsbr100"
BRIDGE_UNTAGGED = "hvcsbr0"


def virsh(*args, check=True):
    r = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


class QemuRoundTripTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root (libvirtd, bridges)")
        os.makedirs(os.path.dirname(TESTS_LOCK), exist_ok=True)
        cls.lock = open(TESTS_LOCK, "w")
        deadline = time.time() + 240
        while True:
            try:
                fcntl.flock(cls.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() > deadline:
                    raise AssertionError(f"{TESTS_LOCK} held for 240 s by another run")
                time.sleep(0.2)
        for br in (BRIDGE_VLAN, BRIDGE_UNTAGGED):
            ip("link", "del", br, check=False)
            ip("link", "add", "name", br, "type", "bridge")
            ip("link", "set", br, "up")
        cls.workdir = tempfile.mkdtemp(prefix="hvit-cs-")
        os.chmod(cls.workdir, 0o755)
        cls.image = os.path.join(cls.workdir, "pool.img")
        with open(cls.image, "wb") as f:
            f.truncate(256 << 20)
        cls.loop = subprocess.run(["losetup", "--find", "--show", "--partscan", cls.image], check=True,
                                  capture_output=True, text=True).stdout.strip()
        # Golden images the reinstall test imports from a host file.
        cls.importdir = tempfile.mkdtemp(prefix="hvit-cs-import-")
        cls.agent = Agent(URI, f'[[storage.pools]]\nname = "disk1"\ntype = "partition"\ndisk = "{cls.loop}"\n'
                               f'wipe = "zero"\n\n[images]\nimport_dirs = ["{cls.importdir}"]\n'
                               f'scratch_dir = "{cls.workdir}/scratch"\nmax_virtual_size_mib = 64\n',
                          image_dirs=[cls.workdir])
        cls.ext = Extension(cls.agent.grpc_port)

    @classmethod
    def tearDownClass(cls):
        try:
            cls.ext.cleanup()
            cls.agent.stop()
        finally:
            for br in (BRIDGE_VLAN, BRIDGE_UNTAGGED):
                ip("link", "del", br, check=False)
            subprocess.run(["losetup", "-d", cls.loop], capture_output=True)
            shutil.rmtree(cls.workdir, ignore_errors=True)
            shutil.rmtree(cls.importdir, ignore_errors=True)
            cls.lock.close()

    def setUp(self):
        self.name = f"hvit-cs-{uuid.uuid4().hex[:8]}"
        self.disk = os.path.join(self.workdir, self.name + ".raw")
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", self.disk, "16M"], check=True)
        self.vm_uuid = str(uuid.uuid4())

    def tearDown(self):
        virsh("destroy", self.name, check=False)
        virsh("undefine", self.name, "--nvram", check=False)

    def edit(self, doc):
        """The fixture, pointed at this guest and this host's bridges."""
        host = doc["externaldetails"]["host"]
        # physical_interface set as on a host where the agent makes VLAN/VXLAN networks: the
        # pre-made VLAN bridge still wins, and vlan://untagged still goes to network_bridge (the
        # agent makes no untagged network; lo is not in its physical_interfaces either way).
        host.update(network_bridge=BRIDGE_UNTAGGED, vlan_bridge_format="hvcsbr{vlan}", stop_timeout="3",
                    physical_interface="lo")
        if "cloudstack.vm.details" not in doc:
            return  # statuses: a host-level payload
        doc["externaldetails"]["virtualmachine"].update(
            vm_name=self.name, firmware="bios", disk_path=self.disk, disk_target="vda")
        doc["cloudstack.vm.details"].update(uuid=self.vm_uuid, cpus=1, minRam=64 << 20, maxRam=64 << 20, arch="x86_64")

    def run_ok(self, action, fixture):
        code, out = self.ext.run(action, fixture, wait="120", edit=self.edit)
        self.assertEqual((code, out.get("status")), (0, "success"), f"{out}\n{self.agent.log_text()[-4000:]}")
        return out

    def test_round_trip(self):
        self.run_ok("prepare", "prepare.json")
        self.run_ok("create", "create.json")
        self.assertEqual(virsh("domstate", self.name), "running")
        self.assertEqual(virsh("domuuid", self.name), self.vm_uuid)
        xml = virsh("dumpxml", self.name)
        self.assertIn(f"<source bridge='{BRIDGE_VLAN}'/>", xml)
        self.assertIn(f"<source bridge='{BRIDGE_UNTAGGED}'/>", xml)
        self.assertIn("<mac address='02:00:4c:5e:00:01'/>", xml)
        self.assertIn(self.disk, xml)
        # The image is the host's file: libvirt is told never to chown it.
        self.assertRegex(xml, rf"<source file='{self.disk}'( index='\d+')?>\s*<seclabel model='dac' relabel='no'/>")
        self.assertEqual(self.run_ok("status", "status.json")["power_state"], "poweron")
        # statuses keys the domain by CloudStack's instance name (the fixture's), which create
        # put on it as a label, though vm_name named the domain otherwise.
        statuses = self.run_ok("statuses", "statuses.json")
        self.assertEqual(statuses["power_state"].get("i-2-100-VM"), "poweron", statuses)
        self.assertNotIn(self.name, statuses["other_domains"])

        out = self.run_ok("stop", "stop.json")
        self.assertTrue(out["forced"])  # SeaBIOS without an OS ignores ACPI
        self.assertEqual(virsh("domstate", self.name), "shut off")
        self.assertEqual(self.run_ok("status", "status.json")["power_state"], "poweroff")

        self.run_ok("start", "start.json")
        self.assertEqual(virsh("domstate", self.name), "running")
        self.run_ok("reboot", "reboot.json")
        self.assertEqual(self.run_ok("status", "status.json")["power_state"], "poweron")

        self.run_ok("delete", "delete.json")
        self.assertNotIn(self.name, virsh("list", "--all", "--name").split())
        self.assertIn("not present", self.run_ok("delete", "delete.json")["message"])

    def test_getconsole_of_a_vm_with_a_display_is_vnc_with_a_password_per_call(self):
        def with_vnc(doc):
            self.edit(doc)
            doc["externaldetails"]["host"]["vnc"] = "true"
        code, out = self.ext.run("create", "create.json", wait="120", edit=with_vnc)
        self.assertEqual((code, out.get("status")), (0, "success"), out)
        self.assertIn("<graphics type='vnc'", virsh("dumpxml", self.name))
        code, first = self.ext.run("getconsole", "getconsole.json", edit=self.edit)
        self.assertEqual(code, 0, first)
        console = first["console"]
        self.assertEqual(console["protocol"], "vnc")
        self.assertIs(console["passwordonetimeuseonly"], True)
        self.assertEqual(console["host"], "127.0.0.1")  # the agent's [console] vnc_listen default
        self.assertIsInstance(console["port"], str)  # CloudStack reads it as text
        self.assertRegex(console["password"], r"^[A-Za-z0-9]{8}$")
        self.assertTrue(rfb_vnc_auth(console["host"], int(console["port"]), console["password"])[0])
        # The next getconsole replaces the password: the first no longer opens the display.
        code, second = self.ext.run("getconsole", "getconsole.json", edit=self.edit)
        self.assertEqual(code, 0, second)
        self.assertNotEqual(second["console"]["password"], console["password"])
        self.assertFalse(rfb_vnc_auth(console["host"], int(console["port"]), console["password"])[0])
        self.assertTrue(rfb_vnc_auth(console["host"], int(console["port"]), second["console"]["password"])[0])
        # Nothing of it in the extension's or the agent's output but the answers themselves.
        self.assertNotIn(console["password"], self.agent.log_text())

    def test_getconsole_of_a_vm_without_a_display_falls_back_to_the_serial_console(self):
        self.run_ok("create", "create.json")
        code, out = self.ext.run("getconsole", "getconsole.json", edit=self.edit)
        # This agent has no [console] ws_listen: the serial console's web terminal is not served
        # either, which is said (before VNC, a "no display" would have been the answer).
        self.assertEqual(code, 1, out)
        self.assertEqual(out.get("code"), "UNIMPLEMENTED", out)
        self.assertIn("ws_listen", out["error"])

    def volume(self, name):
        return self.agent.rest("GET", f"/v1/pools/disk1/volumes/{name}")

    def test_delete_removes_only_what_the_vm_created(self):
        # GPT partition names hold volume and domain name in 27 characters: "<vm>-root" + "<vm>".
        self.name = f"hvit{uuid.uuid4().hex[:7]}"
        root = self.name + "-root"
        status, data = self.agent.rest("POST", "/v1/pools/disk1/volumes", {"name": "csdata", "size_bytes": str(8 << 20)})
        self.assertEqual(status, 201, data)
        payload = os.urandom(8 << 20)
        with open(data["path"], "r+b") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())

        def on_pool(doc):
            self.edit(doc)
            vm = doc["externaldetails"].get("virtualmachine")
            if vm is not None:
                vm.pop("disk_path", None)
                vm.update(storage_pool="disk1", root_disk_size_bytes=str(16 << 20))

        code, out = self.ext.run("create", "create.json", wait="120", edit=on_pool)
        self.assertEqual((code, out.get("status")), (0, "success"), f"{out}\n{self.agent.log_text()[-4000:]}")
        status, rootvol = self.volume(root)
        self.assertEqual((status, rootvol["attached_to"], rootvol["ownership"]),
                         (200, self.name, "VOLUME_OWNERSHIP_OWNED"), rootvol)
        with open(rootvol["path"], "r+b") as f:
            f.write(b"root disk of " + self.name.encode())
        table = json.loads(subprocess.run(["sfdisk", "--json", self.loop], check=True, capture_output=True,
                                          text=True).stdout)["partitiontable"]
        start = next(p["start"] * 512 for p in table["partitions"] if p.get("name", "").startswith(f"hvagent:{root}="))
        # An operator attaches a data volume to the running guest (hot-plug).
        status, attached = self.agent.rest("POST", "/v1/pools/disk1/volumes/csdata:attach", {"domain": self.name})
        self.assertEqual((status, attached["ownership"]), (200, "VOLUME_OWNERSHIP_BORROWED"), attached)
        self.assertIn(data["path"], virsh("dumpxml", self.name))

        self.run_ok("delete", "delete.json")  # delete_volumes defaults to true
        self.assertNotIn(self.name, virsh("list", "--all", "--name").split())
        deadline = time.time() + 60
        while self.volume(root)[0] != 404:
            self.assertLess(time.time(), deadline, "root volume still there")
            time.sleep(0.1)
        with open(self.image, "rb") as f:
            f.seek(start)
            self.assertEqual(bytes(1 << 20), f.read(1 << 20), "the root volume was not wiped")
        status, kept = self.volume("csdata")
        self.assertEqual((status, kept["attached_to"], kept["ownership"], kept["state"]),
                         (200, "", "VOLUME_OWNERSHIP_UNSPECIFIED", "VOLUME_STATE_AVAILABLE"), kept)
        with open(kept["path"], "rb") as f:
            self.assertEqual(hashlib.sha256(payload).hexdigest(), hashlib.sha256(f.read(len(payload))).hexdigest())
        self.assertEqual(self.agent.rest("DELETE", "/v1/pools/disk1/volumes/csdata")[0], 202)

    def import_image(self, name, data):
        path = os.path.join(self.importdir, name + ".raw")
        with open(path, "wb") as f:
            f.write(data)
        status, op = self.agent.rest("POST", "/v1/pools/disk1/images",
                                     {"name": name, "format": "IMAGE_FORMAT_RAW", "host_file": path})
        self.assertEqual(status, 202, op)
        deadline = time.time() + 120
        while op["state"] == "OPERATION_STATE_RUNNING":
            self.assertLess(time.time(), deadline, op)
            time.sleep(0.2)
            op = self.agent.rest("GET", f"/v1/operations/{op['id']}")[1]
        self.assertEqual(op["state"], "OPERATION_STATE_SUCCEEDED", op)

    def test_reinstall_rebuilds_the_root_volume_from_the_templates_image(self):
        # "<vm>-root2" and "<vm>" share a GPT partition name's 27 characters.
        self.name = f"hvcs{uuid.uuid4().hex[:5]}"
        image = f"csimg{uuid.uuid4().hex[:6]}"
        data = os.urandom(8 << 20)
        self.import_image(image, data)
        self.addCleanup(self.agent.rest, "DELETE", f"/v1/pools/disk1/images/{image}")

        def from_image(doc):
            self.edit(doc)
            vm = doc["externaldetails"].get("virtualmachine")
            if vm is not None:
                vm.pop("disk_path", None)
                vm.update(image=f"disk1/{image}", root_disk_size_bytes=str(12 << 20))

        def run_ok(action, fixture="create.json"):
            code, out = self.ext.run(action, fixture, wait="120", edit=from_image)
            self.assertEqual((code, out.get("status")), (0, "success"), f"{out}\n{self.agent.log_text()[-4000:]}")
            return out

        run_ok("create")
        self.assertEqual(virsh("domstate", self.name), "running")
        status, first = self.volume(self.name + "-root")
        self.assertEqual((status, first["attached_to"], first["size_bytes"]), (200, self.name, str(12 << 20)), first)
        self.assertIn(first["path"], virsh("dumpxml", self.name))
        with open(first["path"], "r+b") as f:
            self.assertEqual(f.read(len(data)), data)
            f.seek(0)
            f.write(b"the guest wrote this")

        run_ok("stop", "stop.json")
        out = run_ok("reinstall")
        self.assertEqual(out["message"]["root_volume"], f"disk1/{self.name}-root2")
        status, second = self.volume(self.name + "-root2")
        self.assertEqual((status, second["attached_to"], second["size_bytes"]), (200, self.name, str(12 << 20)),
                         second)
        xml = virsh("dumpxml", self.name)
        self.assertIn(second["path"], xml)
        self.assertNotIn(first["path"], xml)
        # The new volume is the guest's vda (within one <disk> element).
        self.assertRegex(xml, re.compile(rf"<source dev='{second['path']}'(?:(?!</disk>).)*<target dev='vda'", re.S))
        with open(second["path"], "rb") as f:
            self.assertEqual(f.read(len(data)), data, "the new root volume is not the image")
        deadline = time.time() + 60
        while self.volume(self.name + "-root")[0] != 404:
            self.assertLess(time.time(), deadline, "the old root volume is still there")
            time.sleep(0.1)

        run_ok("start", "start.json")
        self.assertEqual(virsh("domstate", self.name), "running")
        run_ok("delete", "delete.json")
        deadline = time.time() + 60
        while self.volume(self.name + "-root2")[0] != 404:
            self.assertLess(time.time(), deadline, "delete left the image-made root volume")
            time.sleep(0.1)


if __name__ == "__main__":
    unittest.main()
