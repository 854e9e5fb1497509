"""spawn -> power_off -> power_on -> destroy through HvagentDriver, against hvagentd on the real
libvirtd + QEMU (TCG) of the integration tier (tests/integration/libvirtd_fixture.sh), with the
instance's root disk on a partition pool of a loop device. Every step is checked through the
driver (get_info) and, independently, through libvirt (virsh), the QEMU process and the disk.
Root only; serialized with the other integration tests by agent_harness.lock_libvirtd()."""

import io
import os
import shutil
import subprocess
import tempfile
import time
import unittest
import xml.etree.ElementTree as ET

from nova.compute import power_state
from nova import exception
from nova import objects
from nova import test
from nova.tests import fixtures as nova_fixtures
from nova.tests.unit import utils as test_utils
from nova.virt import event as virtevent
from nova.virt import fake

from hvagent.v1 import storage_pb2

import agent_fixture
import agent_harness
from agent_harness import virsh
from hvagent_nova import driver as hv_driver

MiB = 1 << 20
POOL = "nova"
MARKER = b"hvagent-nova round trip image\n"


def run(argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout


def domain_names():
    return virsh("list", "--all", "--name").stdout.split()


def qemu_pid(name):
    with open("/run/libvirt/qemu/%s.pid" % name) as f:
        return int(f.read().strip())


def open_files(pid):
    fd_dir = "/proc/%d/fd" % pid
    paths = set()
    for fd in os.listdir(fd_dir):
        try:
            paths.add(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:
            pass
    return paths


@unittest.skipUnless(os.geteuid() == 0, "needs root: real libvirtd, loop devices")
class RoundTripTestCase(test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="hvit-nova-")
        image = os.path.join(cls.tmp, "disk.img")
        with open(image, "wb") as f:
            f.truncate(2048 * MiB)  # sparse; wipe = none writes nothing but the image
        cls.loop = run(["losetup", "--find", "--show", "--partscan", image]).strip()
        cls.lock = None
        try:
            cls.lock = agent_harness.lock_libvirtd()
            cls.agent = agent_harness.Agent(
                '[[storage.pools]]\nname = "%s"\ntype = "partition"\ndisk = "%s"\n'
                'wipe = "none"\n' % (POOL, cls.loop))
        except BaseException:
            cls._release()
            raise

    @classmethod
    def _release(cls):
        if cls.lock is not None:
            cls.lock.close()
        subprocess.run(["losetup", "-d", cls.loop], capture_output=True)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def tearDownClass(cls):
        try:
            code = cls.agent.stop()
            os.unlink(cls.agent.log.name)
        finally:
            cls._release()
        super().tearDownClass()
        agent_fixture.assert_clean_exit(code)

    def setUp(self):
        super().setUp()
        self.glance = self.useFixture(nova_fixtures.GlanceFixture(self))
        # hvit-: the integration fixture removes leftovers of that name.
        self.flags(instance_name_template="hvit-nova-%08x",
                   instances_path=os.path.join(self.tmp, "instances"))
        self.flags(address=self.agent.grpc_addr, plaintext=True, storage_pool=POOL,
                   lifecycle_event_delay=0, group="hvagent")
        self.ctxt = test_utils.get_test_admin_context()
        self.drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        self.drv.init_host("myhostname")
        self.events = []
        self.drv.register_event_listener(self.events.append)
        self.addCleanup(self.drv.cleanup_host, "myhostname")
        self.assertTrue(self.drv._watcher.wait_connected(20))

    def tearDown(self):
        for name in domain_names():
            if name.startswith("hvit-nova-"):
                virsh("destroy", name, check=False)
                virsh("undefine", name, check=False)
        super().tearDown()

    def volumes(self):
        return {v.name: v for v in self.agent.storage.ListVolumes(
            storage_pb2.ListVolumesRequest(pool=POOL)).volumes}

    def partitions(self):
        out = run(["sfdisk", "--json", self.loop])
        return out.count('"node"')

    def wait_state(self, name, want, timeout=30):
        deadline = time.time() + timeout
        while True:
            got = virsh("domstate", name).stdout.strip()
            if got == want:
                return
            self.assertLess(time.time(), deadline, "%s is %r, want %r" % (name, got, want))
            time.sleep(0.1)

    def test_spawn_power_off_power_on_destroy(self):
        flavor = test_utils.get_test_flavor(options={
            "root_gb": 1, "ephemeral_gb": 0, "swap": 0, "vcpus": 1, "memory_mb": 64})
        inst = test_utils.get_test_instance(self.ctxt, flavor=flavor, obj=True)
        image_id = self.glance.create(self.ctxt, {
            "name": "roundtrip", "disk_format": "raw", "container_format": "bare",
            "status": "active", "size": len(MARKER)}, data=io.BytesIO(MARKER))["id"]
        inst.image_ref = image_id
        image_meta = objects.ImageMeta.from_dict({
            "id": image_id, "disk_format": "raw", "container_format": "bare",
            "properties": {}})
        name = inst.name
        self.assertTrue(name.startswith("hvit-nova-"), name)

        # spawn: a running QEMU guest whose root disk is a partition holding the image.
        self.drv.spawn(self.ctxt, inst, image_meta, [], None, {}, network_info=[])
        self.assertEqual(power_state.RUNNING, self.drv.get_info(inst).state)
        self.wait_state(name, "running")
        self.assertEqual(inst.uuid, virsh("domuuid", name).stdout.strip())
        vols = [v for v in self.volumes().values() if v.attached_to == name]
        self.assertEqual(1, len(vols), self.volumes())
        root = vols[0]
        self.assertEqual(1 << 30, root.size_bytes)
        self.assertTrue(root.path.startswith(self.loop + "p"), root.path)
        disk = ET.fromstring(virsh("dumpxml", name).stdout).find("./devices/disk")
        self.assertEqual("block", disk.get("type"))
        self.assertEqual(root.path, disk.find("source").get("dev"))
        pid1 = qemu_pid(name)
        self.assertIn(root.path, open_files(pid1))
        with open(root.path, "rb") as f:
            self.assertEqual(MARKER, f.read(len(MARKER)))
        info = ET.fromstring(virsh("dumpxml", name).stdout)
        self.assertEqual("1", info.findtext("vcpu"))
        self.assertEqual(str(64 * 1024), info.findtext("memory"))

        # power_off the way nova-compute does (graceful with a timeout): SeaBIOS without an OS
        # ignores ACPI, so the agent forces the guest off when the timeout is over.
        self.drv.power_off(inst, timeout=3, retry_interval=1)
        self.assertEqual(power_state.SHUTDOWN, self.drv.get_info(inst).state)
        self.assertEqual("shut off", virsh("domstate", name).stdout.strip())
        self.assertFalse(os.path.exists("/proc/%d" % pid1), "QEMU still runs")
        self.assertIn(name, domain_names())
        self.assertEqual(name, self.volumes()[root.name].attached_to)

        # power_on: a new QEMU process on the same disk.
        self.drv.power_on(self.ctxt, inst, [])
        self.assertEqual(power_state.RUNNING, self.drv.get_info(inst).state)
        self.wait_state(name, "running")
        pid2 = qemu_pid(name)
        self.assertNotEqual(pid1, pid2)
        self.assertIn(root.path, open_files(pid2))

        # destroy: no domain, no volume, no partition, no instance directory.
        self.drv.destroy(self.ctxt, inst, [])
        self.assertNotIn(name, domain_names())
        self.assertNotEqual(0, virsh("dominfo", name, check=False).returncode)
        self.assertRaises(exception.InstanceNotFound, self.drv.get_info, inst)
        self.assertFalse(self.drv.instance_exists(inst))
        self.assertNotIn(name, self.drv.list_instances())
        deadline = time.time() + 60  # deletes answer at once; the pool removes it after
        while root.name in self.volumes():
            self.assertLess(time.time(), deadline, "volume left: %s" % self.volumes())
            time.sleep(0.1)
        self.assertEqual({}, self.volumes())
        self.assertEqual(0, self.partitions())
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "instances", inst.uuid)))

        # The same steps reached Nova as lifecycle events from the agent's stream.
        deadline = time.time() + 10
        want = [virtevent.EVENT_LIFECYCLE_STARTED, virtevent.EVENT_LIFECYCLE_STOPPED] * 2
        while True:
            got = [e.get_transition() for e in self.events if e.get_instance_uuid() == inst.uuid
                   and e.get_transition() in want]
            # A renewal of the Watch call may report a state a second time: count changes.
            got = [t for i, t in enumerate(got) if i == 0 or got[i - 1] != t]
            if got == want:
                break
            self.assertLess(time.time(), deadline, "lifecycle events: %s" % [
                e.get_name() for e in self.events])
            time.sleep(0.1)


if __name__ == "__main__":
    unittest.main()
