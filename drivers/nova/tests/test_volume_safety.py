"""A Nova data volume is never deleted with the instance (issue 22), on the integration tier's
real libvirtd + QEMU with a partition pool on a loop device (wipe = "zero", so deleting writes
real zeros): a volume holding known random bytes is attached to a running instance, and after
each way of removing the instance - destroy, cleanup, a detach the guest refuses (an agent
failpoint, and QEMU for real), an agent killed with SIGKILL in the middle of DeleteDomain - the
volume's sha256 is unchanged and it is free, while the instance's own root volume is gone and
its blocks read back as zeros. Root only; serialized with the other integration tests by
agent_harness.lock_libvirtd()."""

import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import grpc

from nova import exception
from nova import objects
from nova import test
from nova.tests import fixtures as nova_fixtures
from nova.tests.unit import utils as test_utils
from nova.virt import fake

from hvagent.v1 import domain_pb2, storage_pb2

import agent_fixture
import agent_harness
from agent_harness import virsh
from hvagent_nova import driver as hv_driver

MiB = 1 << 20
POOL = "nova"
DATA = "data"
DATA_BYTES = 16 * MiB
MARKER = b"hvagent-nova root volume, to be wiped\n"


def run(argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout


@functools.lru_cache(maxsize=None)
def failpoints_compiled_in():
    out = subprocess.run([os.environ["HVAGENTD"], "--version"], capture_output=True, text=True,
                         timeout=10).stdout
    return "failpoints" in out


def sha256_of(path, size):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(size))
    return h.hexdigest()


@unittest.skipUnless(os.geteuid() == 0, "needs root: real libvirtd, loop devices")
class VolumeSafetyTestCase(test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="hvit-novavol-")
        cls.image = os.path.join(cls.tmp, "disk.img")
        with open(cls.image, "wb") as f:
            f.truncate(2048 * MiB)  # sparse; zeroing a partition punches holes again
        cls.loop = run(["losetup", "--find", "--show", "--partscan", cls.image]).strip()
        cls.state_dir = os.path.join(cls.tmp, "state")
        cls.lock = None
        cls.agent = None
        try:
            cls.lock = agent_harness.lock_libvirtd()
            cls.agent = agent_harness.Agent(cls.config())
        except BaseException:
            cls._release()
            raise

    @classmethod
    def config(cls):
        return ('[reliability]\nstate_dir = "%s"\n'
                '[[storage.pools]]\nname = "%s"\ntype = "partition"\ndisk = "%s"\nwipe = "zero"\n'
                % (cls.state_dir, POOL, cls.loop))

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
        self.flags(instance_name_template="hvit-nova-%08x",
                   instances_path=os.path.join(self.tmp, "instances"))
        # The root volume here is one the domain owns (created with it), whose deletion by the
        # agent, also across an agent crash, these tests check; a root made from the image
        # cache is the driver's to delete (test_roundtrip, test_image_cache).
        self.flags(device_detach_attempts=2, device_detach_timeout=1, image_cache=False,
                   group="hvagent")
        self.ctxt = test_utils.get_test_admin_context()
        self.connect()
        self.addCleanup(self.remove_everything)

    def connect(self):
        self.flags(address=self.agent.grpc_addr, plaintext=True, storage_pool=POOL,
                   lifecycle_event_delay=0, group="hvagent")
        self.drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        self.drv.init_host("myhostname")

    def restart(self, env=None):
        """A new agent on the same pool and journal (after a SIGKILL: recovery runs first). Its
        config and log live in the class's directory: nova's TestCase gives each test its own
        TMPDIR and removes it when the test ends."""
        old = type(self).agent
        if old.proc.poll() is None:
            self.assertEqual(0, old.stop(), old.log_text()[-3000:])
        else:
            old.stop()
        os.unlink(old.log.name)
        saved, tempfile.tempdir = tempfile.tempdir, self.tmp
        try:
            type(self).agent = agent_harness.Agent(self.config(), env=env)
        finally:
            tempfile.tempdir = saved
        self.connect()

    def remove_everything(self):
        if self.agent.proc.poll() is not None:
            self.restart()
        for name in virsh("list", "--all", "--name").stdout.split():
            if name.startswith("hvit-nova-"):
                virsh("destroy", name, check=False)
                virsh("undefine", name, check=False)
        deadline = time.time() + 60
        while True:
            vols = self.volumes()
            if not vols:
                return
            self.assertLess(time.time(), deadline, "volumes left: %s" % vols)
            for v in vols.values():
                try:
                    if v.attached_to:
                        self.agent.storage.DetachVolume(storage_pb2.DetachVolumeRequest(
                            pool=POOL, name=v.name))
                    if v.state != storage_pb2.VOLUME_STATE_DELETING:
                        self.agent.storage.DeleteVolume(storage_pb2.VolumeRef(pool=POOL, name=v.name))
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.NOT_FOUND:
                        raise
            time.sleep(0.2)

    # ---- helpers ----

    def volumes(self):
        return {v.name: v for v in self.agent.storage.ListVolumes(
            storage_pb2.ListVolumesRequest(pool=POOL)).volumes}

    def partition(self, volume):
        """(start, size) in bytes of a volume's partition on the loop device."""
        table = json.loads(run(["sfdisk", "--json", self.loop]))["partitiontable"]
        for p in table.get("partitions", []):
            label = p.get("name", "").split(":", 1)[-1]
            if label.replace("=", "@").split("@", 1)[0] == volume:
                return p["start"] * 512, p["size"] * 512
        self.fail("no partition for %s in %s" % (volume, table))

    def data_volume(self):
        """The data volume: 16 MiB of random bytes; returns their sha256."""
        vol = self.agent.storage.CreateVolume(storage_pb2.CreateVolumeRequest(
            pool=POOL, name=DATA, size_bytes=DATA_BYTES))
        with open(vol.path, "r+b") as f:
            f.write(os.urandom(DATA_BYTES))
            f.flush()
            os.fsync(f.fileno())
        return sha256_of(vol.path, DATA_BYTES)

    def connection_info(self):
        return {"driver_volume_type": "hvagent", "serial": DATA,
                "data": {"pool": POOL, "name": DATA}}

    def block_device_info(self):
        return {"root_device_name": "/dev/vda", "swap": None, "ephemerals": [],
                "block_device_mapping": [{"connection_info": self.connection_info(),
                                          "mount_device": "/dev/vdb", "boot_index": None}]}

    def spawn_with_data(self):
        """A running instance (SeaBIOS, no OS) whose 1 GiB root volume holds MARKER at its
        start and its end, with the data volume hot-plugged into it; returns (instance, root
        volume name, root partition (start, size), data sha256)."""
        flavor = test_utils.get_test_flavor(options={
            "root_gb": 1, "ephemeral_gb": 0, "swap": 0, "vcpus": 1, "memory_mb": 64})
        inst = test_utils.get_test_instance(self.ctxt, flavor=flavor, obj=True)
        image_id = self.glance.create(self.ctxt, {
            "name": "safety", "disk_format": "raw", "container_format": "bare",
            "status": "active", "size": len(MARKER)}, data=io.BytesIO(MARKER))["id"]
        inst.image_ref = image_id
        image_meta = objects.ImageMeta.from_dict({
            "id": image_id, "disk_format": "raw", "container_format": "bare", "properties": {}})
        digest = self.data_volume()
        self.drv.spawn(self.ctxt, inst, image_meta, [], None, {}, network_info=[])
        self.assertEqual("running", virsh("domstate", inst.name).stdout.strip())
        self.drv.attach_volume(self.ctxt, self.connection_info(), inst, "/dev/vdb")
        vols = self.volumes()
        root = [v for v in vols.values() if v.name != DATA][0]
        self.assertEqual((inst.name, storage_pb2.VOLUME_OWNERSHIP_OWNED), (root.attached_to, root.ownership))
        self.assertEqual((inst.name, storage_pb2.VOLUME_OWNERSHIP_BORROWED),
                         (vols[DATA].attached_to, vols[DATA].ownership))
        self.assertIn(vols[DATA].path, virsh("dumpxml", inst.name).stdout)  # in the running guest
        with open(root.path, "r+b") as f:
            f.seek(root.size_bytes - len(MARKER))
            f.write(MARKER)
            f.flush()
            os.fsync(f.fileno())
        return inst, root.name, self.partition(root.name), digest

    def assert_data_safe(self, digest):
        """The data volume is still there, free, with the same bytes."""
        vol = self.volumes()[DATA]
        self.assertEqual(("", storage_pb2.VOLUME_OWNERSHIP_UNSPECIFIED, storage_pb2.VOLUME_STATE_AVAILABLE),
                         (vol.attached_to, vol.ownership, vol.state))
        self.assertEqual(digest, sha256_of(vol.path, DATA_BYTES))

    def assert_root_wiped(self, root, extent):
        """The root volume is gone, and its blocks on the disk read back as zeros."""
        deadline = time.time() + 60
        while root in self.volumes():
            self.assertLess(time.time(), deadline, "root volume left: %s" % self.volumes())
            time.sleep(0.1)
        start, size = extent
        with open(self.image, "rb") as f:
            for offset in (start, start + size - MiB):
                f.seek(offset)
                self.assertEqual(bytes(MiB), f.read(MiB), "not wiped at %d" % offset)

    def killed(self, call):
        """Runs `call`, which a SIGKILL failpoint interrupts, and waits for the agent to die."""
        try:
            call()
        except Exception:  # the connection drops with the agent
            pass
        proc = self.agent.proc
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.fail("the agent did not reach its failpoint:\n" + self.agent.log_text()[-3000:])
        self.assertEqual(-9, proc.returncode, self.agent.log_text()[-3000:])

    # ---- tests ----

    def test_destroy_keeps_the_data_volume_and_wipes_the_root(self):
        inst, root, extent, digest = self.spawn_with_data()
        self.drv.destroy(self.ctxt, inst, [], block_device_info=self.block_device_info())
        self.assertNotIn(inst.name, virsh("list", "--all", "--name").stdout.split())
        self.assert_data_safe(digest)
        self.assert_root_wiped(root, extent)

    def test_cleanup_detaches_the_data_volume_before_deleting(self):
        inst, root, extent, digest = self.spawn_with_data()
        self.drv.cleanup(self.ctxt, inst, [], block_device_info=self.block_device_info(),
                         destroy_disks=True)
        self.assertNotIn(inst.name, virsh("list", "--all", "--name").stdout.split())
        self.assert_data_safe(digest)
        self.assert_root_wiped(root, extent)

    def test_destroy_without_the_volumes_still_keeps_the_data_volume(self):
        """Nova passed no block_device_info: the agent itself releases the borrowed volume."""
        inst, root, extent, digest = self.spawn_with_data()
        self.drv.destroy(self.ctxt, inst, [], block_device_info=None)
        self.assert_data_safe(digest)
        self.assert_root_wiped(root, extent)

    def test_a_guest_that_keeps_the_device_fails_the_detach_and_the_destroy(self):
        """QEMU for real: SeaBIOS without an OS never answers the ACPI eject, so libvirt's unplug
        request stays pending; the agent says ABORTED, the driver retries, then raises."""
        inst, root, extent, digest = self.spawn_with_data()
        t = time.monotonic()
        e = self.assertRaises(exception.DeviceDetachFailed, self.drv.detach_volume,
                              self.ctxt, self.connection_info(), inst, "/dev/vdb")
        self.assertIn("did not release", str(e))
        self.assertGreaterEqual(time.monotonic() - t, 1)  # two attempts, a second at least each
        self.assertEqual(inst.name, self.volumes()[DATA].attached_to)
        # destroy powers the guest off first: then nothing holds the device, the detach
        # completes, and only the root volume is deleted.
        self.drv.destroy(self.ctxt, inst, [], block_device_info=self.block_device_info())
        self.assert_data_safe(digest)
        self.assert_root_wiped(root, extent)

    def test_a_failed_detach_stops_destroy_and_the_agent_still_keeps_the_volume(self):
        if not failpoints_compiled_in():
            self.skipTest("hvagentd built without -DHVAGENT_FAILPOINTS=ON")
        self.restart(env={"HVAGENT_FAILPOINTS": "detach.guest_keeps_disk=fail"})
        inst, root, extent, digest = self.spawn_with_data()
        for call in (lambda: self.drv.detach_volume(self.ctxt, self.connection_info(), inst, "/dev/vdb"),
                     lambda: self.drv.destroy(self.ctxt, inst, [], block_device_info=self.block_device_info()),
                     lambda: self.drv.cleanup(self.ctxt, inst, [], block_device_info=self.block_device_info())):
            self.assertRaises(exception.DeviceDetachFailed, call)
            self.assertIn(inst.name, virsh("list", "--all", "--name").stdout.split())  # not deleted
            vol = self.volumes()[DATA]
            self.assertEqual((inst.name, storage_pb2.VOLUME_OWNERSHIP_BORROWED), (vol.attached_to, vol.ownership))
            self.assertEqual(digest, sha256_of(vol.path, DATA_BYTES))
        # Had the driver gone on regardless, the agent would still only release the volume.
        self.agent.domains.DeleteDomain(domain_pb2.DeleteDomainRequest(
            name=inst.name, force=True, delete_volumes=True))
        self.assert_data_safe(digest)
        self.assert_root_wiped(root, extent)
        self.restart()

    def crash_delete(self, failpoint):
        if not failpoints_compiled_in():
            self.skipTest("hvagentd built without -DHVAGENT_FAILPOINTS=ON")
        self.restart(env={"HVAGENT_FAILPOINTS": failpoint})
        inst, root, extent, digest = self.spawn_with_data()
        # Without block_device_info the data volume is still attached when DeleteDomain runs.
        self.killed(lambda: self.drv.destroy(self.ctxt, inst, [], block_device_info=None))
        self.restart()
        self.assertIn("recovered interrupted delete", self.agent.log_text())
        self.assertNotIn(inst.name, virsh("list", "--all", "--name").stdout.split())
        self.assert_data_safe(digest)
        self.assert_root_wiped(root, extent)

    def test_agent_killed_after_undefine_in_delete(self):
        self.crash_delete("delete.after_undefine")

    def test_agent_killed_after_releasing_the_first_volume_in_delete(self):
        self.crash_delete("delete.after_release")


if __name__ == "__main__":
    unittest.main()
