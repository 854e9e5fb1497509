"""spawn -> power_off -> power_on -> destroy through HvagentDriver, against hvagentd on the real
libvirtd + QEMU (TCG) of the integration tier (tests/integration/libvirtd_fixture.sh), with the
instance's root disk on a partition pool of a loop device. Every step is checked through the
driver (get_info) and, independently, through libvirt (virsh), the QEMU process and the disk.
Root only; serialized with the other integration tests by agent_harness.lock_libvirtd()."""

import hashlib
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

import os_vif
from vif_plug_linux_bridge import privsep as lb_privsep
from vif_plug_ovs import privsep as ovs_privsep

from hvagent.v1 import image_pb2, storage_pb2

import agent_fixture
import agent_harness
from agent_harness import console_until, virsh
from hvagent_nova import driver as hv_driver
from hvagent_nova import config_drive
from hvagent_nova import image_cache
from test_networking import OVS_RUN, OvsDaemons, ovs

MiB = 1 << 20
POOL = "nova"
MARKER = b"hvagent-nova round trip image\n"
OVS_BRIDGE = "hvbr-int"  # made and removed by the test


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
            # The instances' kernels (test_config_drive_...) are downloaded under
            # instances_path, which the agent's kernel policy must name.
            os.makedirs(os.path.join(cls.tmp, "instances"))
            cls.agent = agent_harness.Agent(agent_harness.with_security(
                '[[storage.pools]]\nname = "%s"\ntype = "partition"\ndisk = "%s"\n'
                'wipe = "none"\n' % (POOL, cls.loop),
                kernel_dirs=[os.path.join(cls.tmp, "instances")]))
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
        agent_fixture.stream_glance_downloads(self.glance)
        # InstanceMetadata (config drives) asks Neutron for the instance's security groups;
        # there is no Neutron here: none.
        self.stub_out("nova.network.security_group_api.get_instance_security_groups",
                      lambda context, instance, detailed=False: [])
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

    def glance_file(self, name, path, disk_format):
        with open(path, "rb") as f:
            blob = f.read()
        return self.glance.create(self.ctxt, {
            "name": name, "disk_format": disk_format, "container_format": disk_format,
            "status": "active", "size": len(blob), "checksum": hashlib.md5(blob).hexdigest()},
            data=io.BytesIO(blob))["id"]

    def test_config_drive_meta_data_is_readable_in_the_guest(self):
        """An instance with config_drive boots the busybox test guest (its kernel pair from
        Glance, no root disk); the CD-ROM Nova's ConfigDriveBuilder made is mounted on the
        guest's console: meta_data.json names the instance and carries the admin password,
        and the injected file is there. The temporary agent image is gone once the domain
        exists; the config volume is the domain's and goes with it."""
        kernel, initrd = agent_harness.test_guest()
        flavor = test_utils.get_test_flavor(options={
            "root_gb": 0, "ephemeral_gb": 0, "swap": 0, "vcpus": 1, "memory_mb": 256})
        inst = test_utils.get_test_instance(self.ctxt, flavor=flavor, obj=True)
        inst.kernel_id = self.glance_file("kernel", kernel, "aki")
        inst.ramdisk_id = self.glance_file("ramdisk", initrd, "ari")
        inst.config_drive = "True"
        agent_fixture.with_metadata_fields(inst)
        image_meta = objects.ImageMeta.from_dict({
            "id": inst.kernel_id, "disk_format": "aki", "container_format": "aki",
            "properties": {"os_command_line": "console=ttyS0"}})
        name = inst.name
        self.drv.spawn(self.ctxt, inst, image_meta, [("/etc/hv-injected", b"hv-injected-bytes")],
                       "hv-admin-pass", {}, network_info=[])
        self.addCleanup(self.drv.destroy, self.ctxt, inst, [])
        self.wait_state(name, "running")
        cd = [d for d in ET.fromstring(virsh("dumpxml", name).stdout).findall("./devices/disk")
              if d.get("device") == "cdrom"]
        self.assertEqual(1, len(cd), virsh("dumpxml", name).stdout)
        self.assertIsNotNone(cd[0].find("readonly"))
        self.assertEqual("ide", cd[0].find("target").get("bus"))
        vols = [v for v in self.volumes().values() if v.attached_to == name]
        self.assertEqual(1, len(vols), self.volumes())
        self.assertEqual(storage_pb2.VOLUME_OWNERSHIP_OWNED, vols[0].ownership)
        self.assertEqual(vols[0].path, cd[0].find("source").get("dev"))
        self.assertNotIn(config_drive.image_name(inst), [i.name for i in self.drv.agent.images.ListImages(
            image_pb2.ListImagesRequest(pool=POOL)).images], "the temporary image is deleted")

        tty = virsh("ttyconsole", name).stdout.strip()
        fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
        try:
            console_until(fd, b"hv-guest-ready", 300)
            os.write(fd, b"\nmkdir -p /mnt/cd; mount -t iso9660 -o ro /dev/sr0 /mnt/cd; "
                         b"cat /mnt/cd/openstack/latest/meta_data.json; echo; "
                         b"cat /mnt/cd/openstack/content/0000; echo; echo cd-done\n")
            out = console_until(fd, b"\ncd-done", 60).decode(errors="replace")
        finally:
            os.close(fd)
        self.assertIn('"uuid": "%s"' % inst.uuid, out)
        self.assertIn('"admin_pass": "hv-admin-pass"', out)
        self.assertIn('"path": "/etc/hv-injected"', out)
        self.assertIn("hv-injected-bytes", out)

        self.drv.destroy(self.ctxt, inst, [])
        deadline = time.time() + 60
        while vols[0].name in self.volumes():
            self.assertLess(time.time(), deadline, "config volume left: %s" % self.volumes())
            time.sleep(0.1)

    def test_spawn_power_off_power_on_destroy(self):
        flavor = test_utils.get_test_flavor(options={
            "root_gb": 1, "ephemeral_gb": 0, "swap": 0, "vcpus": 1, "memory_mb": 64})
        inst = test_utils.get_test_instance(self.ctxt, flavor=flavor, obj=True)
        # The image reaches the agent's image cache (one upload, md5 checked by the driver) and
        # the root volume is made from it by the agent.
        blob = MARKER.ljust(MiB, b"\0")
        image_id = self.glance.create(self.ctxt, {
            "name": "roundtrip", "disk_format": "raw", "container_format": "bare",
            "status": "active", "size": len(blob), "checksum": hashlib.md5(blob).hexdigest()},
            data=io.BytesIO(blob))["id"]
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
        # Made by CreateDomain from the agent's image: the domain owns it (deleted with it).
        self.assertEqual(storage_pb2.VOLUME_OWNERSHIP_OWNED, root.ownership)
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
        # The image stays cached for the next spawn, until manage_image_cache finds it unused
        # for [image_cache] remove_unused_original_minimum_age_seconds.
        cached = image_cache.image_name(image_id)
        self.assertEqual([cached], [i.name for i in self.drv.agent.images.ListImages(
            image_pb2.ListImagesRequest(pool=POOL)).images])
        self.assertEqual(1, self.partitions())
        self.flags(remove_unused_original_minimum_age_seconds=0, group="image_cache")
        self.drv.manage_image_cache(self.ctxt, [])
        deadline = time.time() + 60
        while self.partitions():
            self.assertLess(time.time(), deadline, "image partition left")
            time.sleep(0.1)
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

    # -- VIFs through os-vif on a real Open vSwitch --------------------------------------------

    def vif(self, port_id, mac):
        """An OVS hybrid VIF (Neutron's iptables firewall) on the test's bridge, userspace
        datapath, MTU 1400."""
        vif = test_utils.get_test_network_info()[0]
        vif.update(id=port_id, address=mac, active=True,
                   details={"port_filter": False, "ovs_hybrid_plug": True,
                            "datapath_type": "netdev"})
        vif["network"]["bridge"] = OVS_BRIDGE
        vif["network"]["meta"]["mtu"] = 1400
        return vif

    def taps(self, name):
        """The guest's NICs as libvirt sees them: {mac: host tap device}."""
        xml = ET.fromstring(virsh("dumpxml", name).stdout)
        return {i.find("mac").get("address"): i.find("target").get("dev")
                for i in xml.findall("./devices/interface")}

    def test_ovs_hybrid_vifs_plugged_and_unplugged_with_os_vif(self):
        """spawn, attach_interface, detach_interface and destroy with real os-vif (its ovs
        plugin, hybrid: qbr bridge + qvb/qvo veth pair into OVS) and a real QEMU guest: every
        step is checked in the kernel (sysfs) and in OVS's database, and host networking and
        OVS are as found afterwards."""
        links_before = run(["ip", "-d", "link"])
        daemons = OvsDaemons()
        self.addCleanup(daemons.stop)
        ovs("--may-exist", "add-br", OVS_BRIDGE, "--", "set", "bridge", OVS_BRIDGE,
            "datapath_type=netdev")
        self.addCleanup(ovs, "--if-exists", "del-br", OVS_BRIDGE, check=False)
        ovs_before = ovs("show")
        # os-vif as nova-compute would run it, but its privileged helpers in this (root)
        # process instead of a privsep daemon started through sudo, and its OVS database at
        # the socket of the daemons above (read when its plugins load: reloaded).
        for ctx in (ovs_privsep.vif_plug, lb_privsep.vif_plug):
            ctx.set_client_mode(False)
            self.addCleanup(ctx.set_client_mode, True)
        self.flags(ovsdb_connection="unix:%s/db.sock" % OVS_RUN, group="os_vif_ovs")
        os_vif.initialize(reset=True)
        self.addCleanup(os_vif.initialize, reset=True)

        flavor = test_utils.get_test_flavor(options={
            "root_gb": 0, "ephemeral_gb": 0, "swap": 0, "vcpus": 1, "memory_mb": 64})
        inst = test_utils.get_test_instance(self.ctxt, flavor=flavor, obj=True)
        inst.image_ref = ""
        image_meta = objects.ImageMeta.from_dict({"disk_format": "raw", "properties": {}})
        first = self.vif("5f0c1e2d-3b4a-4c5d-8e6f-7a8b9c0d1e2f", "fa:16:3e:00:00:01")
        second = self.vif("6a1d2f3e-4c5b-4d6e-9f70-8b9cad0e1f30", "fa:16:3e:00:00:02")

        def remove_links():
            # Only after a failure: what os-vif made for this test's VIFs (tearDown, which runs
            # first, has removed the guest).
            for vif in (first, second):
                for p in ("qvb", "qbr"):
                    dev = (p + vif["id"])[:14]
                    if os.path.exists("/sys/class/net/" + dev):
                        subprocess.run(["ip", "link", "del", dev], capture_output=True)
        self.addCleanup(remove_links)

        def plugged(vif, tap):
            qbr, qvb, qvo = [(p + vif["id"])[:14] for p in ("qbr", "qvb", "qvo")]
            self.assertEqual(qbr, os.path.basename(os.readlink("/sys/class/net/%s/master" % tap)))
            self.assertEqual(qbr, os.path.basename(os.readlink("/sys/class/net/%s/master" % qvb)))
            for dev in (tap, qvb, qvo):
                # cat: Nova's test base forbids open() under /sys.
                self.assertEqual("1400", run(["cat", "/sys/class/net/%s/mtu" % dev]).strip(), dev)
            self.assertEqual(OVS_BRIDGE, ovs("port-to-br", qvo))
            self.assertEqual('"%s"' % vif["id"],
                             ovs("get", "Interface", qvo, "external_ids:iface-id"))
            self.assertEqual('"%s"' % vif["address"],
                             ovs("get", "Interface", qvo, "external_ids:attached-mac"))

        def gone(vif):
            for p in ("qbr", "qvb", "qvo"):
                self.assertFalse(os.path.exists("/sys/class/net/" + (p + vif["id"])[:14]), p)
            self.assertEqual("", ovs("--bare", "--columns=name", "find", "Interface",
                                     "external_ids:iface-id=" + vif["id"]))

        self.drv.spawn(self.ctxt, inst, image_meta, [], None, {}, network_info=[first])
        self.wait_state(inst.name, "running")
        taps = self.taps(inst.name)
        self.assertEqual([first["address"]], list(taps))
        plugged(first, taps[first["address"]])

        # Hot-plug into the running guest.
        self.drv.attach_interface(self.ctxt, inst, image_meta, second)
        taps = self.taps(inst.name)
        self.assertEqual(sorted([first["address"], second["address"]]), sorted(taps))
        plugged(second, taps[second["address"]])
        # SeaBIOS without an OS ignores the ACPI eject: the guest keeps the NIC, so the detach
        # fails and the VIF stays plugged (the guest still uses it); the persistent definition
        # is already without it.
        self.assertRaises(exception.InterfaceDetachFailed, self.drv.detach_interface,
                          self.ctxt, inst, second)
        plugged(second, taps[second["address"]])
        # Stopped, the guest holds nothing: detaching again finds no NIC (logged) and unplugs.
        self.drv.power_off(inst)
        self.drv.detach_interface(self.ctxt, inst, second)
        gone(second)
        # power_on plugs again what the instance has (os-vif keeps what exists) and starts it
        # with its one NIC.
        self.drv.power_on(self.ctxt, inst, [first])
        self.wait_state(inst.name, "running")
        taps = self.taps(inst.name)
        self.assertEqual([first["address"]], list(taps))
        plugged(first, taps[first["address"]])
        gone(second)

        self.drv.destroy(self.ctxt, inst, [first])
        self.assertNotIn(inst.name, domain_names())
        gone(first)
        self.assertEqual(ovs_before, ovs("show"))
        ovs("del-br", OVS_BRIDGE)
        daemons.stop()
        deadline = time.time() + 20  # ovs-vswitchd removes its netdev taps as it exits
        while run(["ip", "-d", "link"]) != links_before and time.time() < deadline:
            time.sleep(0.2)
        self.assertEqual(links_before, run(["ip", "-d", "link"]))


if __name__ == "__main__":
    unittest.main()
