"""hvagent-cloudstack round trip on a real libvirtd + QEMU (TCG): the integration tier's libvirtd
fixture (tests/integration/libvirtd_fixture.sh, CTest fixture `libvirtd`) runs the daemon; this
test starts hvagentd on qemu:///system and drives one guest through CloudStack payloads:
create (NICs on the VLAN's bridge and the untagged bridge, root disk file), status, statuses,
stop, start, reboot, delete, checked with virsh. Root only. ctest -L integration"""

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
import unittest
import uuid

from extension_harness import Agent, Extension

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
        cls.agent = Agent(URI, image_dirs=[cls.workdir])
        cls.ext = Extension(cls.agent.grpc_port)

    @classmethod
    def tearDownClass(cls):
        try:
            cls.ext.cleanup()
            cls.agent.stop()
        finally:
            for br in (BRIDGE_VLAN, BRIDGE_UNTAGGED):
                ip("link", "del", br, check=False)
            shutil.rmtree(cls.workdir, ignore_errors=True)
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
        host.update(network_bridge=BRIDGE_UNTAGGED, vlan_bridge_format="hvcsbr{vlan}", stop_timeout="3")
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
        self.assertEqual(self.run_ok("statuses", "statuses.json")["power_state"].get(self.name), "poweron")

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


if __name__ == "__main__":
    unittest.main()
