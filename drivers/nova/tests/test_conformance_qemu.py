"""Nova's conformance suite (test_conformance.py) against hvagentd on the integration tier's
real libvirtd + QEMU (qemu:///system, TCG; fixture `libvirtd` of tests/integration), so that
what libvirt's test driver cannot do (hot-plugging a disk into a running guest and unplugging
it) is done for real. What differs from the test-driver run, and why:
- the suite's Glance images hold a real guest: each is a whole-disk raw image of its declared
  size that boots the project's test guest (agent_harness.bootable_disk: Debian's kernel, whose
  ACPI PCI hotplug is built in, and a busybox initramfs), so a detach is acknowledged by a Linux
  guest as Nova's libvirt driver expects, never by a firmware that ignores it. Tests that need
  the guest to act wait for its hv-guest-ready line in the serial console log the agent keeps
  ([console] log_dir), read through the driver's get_console_output;
- the suite's VIF (Open vSwitch, not hybrid) is put on a bridge of this test's own Open vSwitch
  (userspace datapath) instead of br0, which libvirt would need to exist;
- a soft reboot waits 3 s, not Nova's 120, for the guest (which has no ACPI daemon) before
  the driver's fallback to a hard reboot;
- instances are named hvit-conf-*, the prefix the integration fixture cleans up after a crash;
  one test class at a time on this libvirtd (agent_harness.lock_libvirtd).
Only the tests whose outcome depends on a real hypervisor run here (ON_QEMU, each with why); the
others' outcome is the driver's and the agent's logic alone, which nova_conformance checks on
libvirt's test driver, where every test of the suite runs. A guest boots in most of these, so
each costs seconds under TCG (24 tests of 65).
Root only."""

import os
import shutil
import tempfile
import time
import unittest
from unittest import mock

from nova.tests.unit import utils as test_utils

import agent_harness
import test_conformance
from test_networking import OvsDaemons, ovs

MiB = 1 << 20
OVS_BRIDGE = "hvbr-conf"  # made and removed by this test
GUEST_READY = "hv-guest-ready"
INSTANCE_IMAGE = "cedef40a-ed67-4d10-800e-17455edce175"  # test_utils.get_test_instance's image_ref
SOFT_REBOOT_WAIT_S = 3
GUEST_BOOT_S = 180  # Debian's kernel under TCG on a shared 2-core machine: ~10 s when quiet


# The suite's tests that run here, and why a real hypervisor changes their outcome.
ON_QEMU = {
    # a real guest and its power state
    "test_spawn": "a QEMU guest starts from the image on a real partition",
    "test_destroy_instance": "the QEMU process is killed and its disks released",
    "test_reboot": "a soft reboot a real guest does not answer, then the hard-reboot fallback",
    "test_power_off": "QEMU stops for real",
    "test_power_on_powered_off": "a new QEMU process from the stopped domain",
    "test_pause": "QEMU's vCPUs stop",
    "test_unpause_paused_instance": "QEMU's vCPUs run again",
    "test_suspend": "managed save: the guest's memory written to disk by QEMU",
    "test_resume_suspended_instance": "QEMU restored from its managed-save image",
    "test_migrate_disk_and_power_off": "a real guest stopped, restarted on the rollback",
    # real disks
    "test_rescue": "the guest restarted on a rescue disk from the image cache",
    "test_unrescue_rescued_instance": "and back on its own root",
    "test_snapshot_running": "a running guest paused while its real root is copied",
    "test_attach_detach_volume": "hot-plug and unplug acknowledged by a Linux guest "
                                 "(libvirt's test driver cannot attach)",
    "test_attach_detach_different_power_states": "the same across power-off and power-on",
    "test_swap_volume": "needs a disk hot-plugged into a running guest",
    # stats and consoles of a live domain
    "test_get_info": "state, memory and CPU time of a running QEMU domain",
    "test_get_diagnostics": "QEMU's counters (CPU, disks, NICs)",
    "test_get_instance_diagnostics": "the same in the versioned shape",
    "test_block_stats": "per-disk counters, which libvirt's test driver has none of",
    "test_get_console_output": "the serial console log QEMU writes",
    "test_get_serial_console": "a serial-tcp ticket for a QEMU guest's console",
    # the host as libvirt's QEMU driver reports it
    "test_get_available_resource": "capabilities, hypervisor type and version of QEMU",
    "test_get_host_cpu_stats": "virNodeGetCPUStats of the real host",
}


def load_tests(loader, tests, pattern):
    """The suite's tests of ON_QEMU only; a name in it that is no test of the suite (a typo, a
    test Nova removed) fails loading instead of going unrun."""
    names = set(loader.getTestCaseNames(HvagentConformanceQemuTestCase))
    unknown = sorted(set(ON_QEMU) - names)
    if unknown:
        raise AssertionError("ON_QEMU names no test of the suite: %s" % ", ".join(unknown))
    return unittest.TestSuite(HvagentConformanceQemuTestCase(n) for n in sorted(ON_QEMU))


class QemuPoolAgent(test_conformance.ConformancePoolAgent):
    URI = agent_harness.URI
    OVS_BRIDGES = (OVS_BRIDGE,)

    def _hypervisor_config(self):
        return ('[hypervisor]\ndomain_type = "qemu"\n'
                '[console]\nlog_dir = "%s"\n' % os.path.join(self.tmp, "consoles"))


def _network_info_on_test_bridge(plain):
    def network_info(*args, **kwargs):
        info = plain(*args, **kwargs)
        for vif in info:
            vif["network"]["bridge"] = OVS_BRIDGE
            vif["details"] = dict(vif.get("details") or {}, datapath_type="netdev")
        return info
    return network_info


@unittest.skipUnless(os.geteuid() == 0, "needs root: real libvirtd, loop devices, Open vSwitch")
class HvagentConformanceQemuTestCase(test_conformance.HvagentConformanceTestCase):
    AGENT = QemuPoolAgent
    NAME_PREFIX = "hvit-conf-"

    @classmethod
    def setUpClass(cls):
        cls.lock = agent_harness.lock_libvirtd()
        cls.ovs = None
        cls.images = tempfile.mkdtemp(prefix="hvit-conf-img-")
        try:
            cls.ovs = OvsDaemons()
            ovs("--may-exist", "add-br", OVS_BRIDGE, "--", "set", "bridge", OVS_BRIDGE,
                "datapath_type=netdev")
            super().setUpClass()
        except BaseException:
            cls._release()
            raise

    @classmethod
    def _release(cls):
        if cls.ovs is not None:
            ovs("--if-exists", "del-br", OVS_BRIDGE, check=False)
            cls.ovs.stop()
        shutil.rmtree(cls.images, ignore_errors=True)
        cls.lock.close()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls._release()

    def setUp(self):
        patcher = mock.patch.object(
            test_utils, "get_test_network_info",
            _network_info_on_test_bridge(test_utils.get_test_network_info))
        patcher.start()
        self.addCleanup(patcher.stop)
        super().setUp()
        self.flags(instance_name_template=self.NAME_PREFIX + "%08x")
        # The test guest runs no ACPI daemon, so a soft reboot is never honoured: the driver
        # falls back to a hard reboot after this wait (Nova's default is 120 s).
        self.flags(wait_soft_reboot_seconds=SOFT_REBOOT_WAIT_S, group="libvirt")

    def _image_bytes(self, meta):
        """The image the suite's instances boot from (test_utils.get_test_instance's
        image_ref) is a bootable disk of its declared size, built once; the others keep the
        zeros of the test-driver run."""
        if meta["id"] != INSTANCE_IMAGE:
            return super()._image_bytes(meta)
        cls = type(self)
        if getattr(cls, "boot_image", None) is None:
            path = os.path.join(self.images, "boot.raw")
            agent_harness.bootable_disk(path, int(meta["size"]))
            with open(path, "rb") as f:
                cls.boot_image = f.read()
        return cls.boot_image

    def _guest_up(self, instance):
        deadline = time.time() + GUEST_BOOT_S
        out = ""
        while GUEST_READY not in out:
            self.assertLess(time.time(), deadline, "no %s on %s's console within %d s:\n%s"
                            % (GUEST_READY, instance.name, GUEST_BOOT_S, out[-3000:]))
            time.sleep(0.5)
            out = self.connection.get_console_output(None, instance)


if __name__ == "__main__":
    unittest.main()
