"""Moves through the Nova driver between two real hosts (issue 26): each host a private libvirtd
(tests/integration/two_hosts.py: its own mount namespace, host B's also behind a veth pair), a
partition pool on a loop device of its own and its own hvagentd; one HvagentDriver per host,
called in Nova 26's order with Nova's objects, nova.conf switched to the calling host's
(`my_ip`, `[hvagent] address`) as two nova-computes would have it. The agents listen on
127.0.0.3 (A) and 127.0.0.2 (B) at one port, as every host's agent listens on its my_ip at
[hvagent] migration_port.

The instance boots the project's busybox guest (direct kernel boot; the kernel files under
instances_path are on both hosts, as libvirt needs for a live move) with one owned 16 MiB volume
(its swap disk, filled with random bytes here), and counts on its serial console:
- a live move A -> B aborted by Nova's live_migration_abort while it runs: recover_method
  with "cancelled", the guest counts on in A, nothing on B;
- a live move A -> B: the count goes on on B without a reboot, the disk reads the same sha256
  inside the guest there, A keeps no domain and no volume;
- a cold migration B -> A (migrate_disk_and_power_off, finish_migration, confirm_migration):
  the domain runs on A with its volume's bytes unchanged, B keeps nothing. (A cold move does not
  carry a direct-kernel boot, docs/migration.md: the guest's firmware finds nothing to boot,
  which this test does not look at);
- a live move A -> B again, with Nova's live_migration_force_complete while it runs: the guest
  is paused on A, the move completes, and it runs on B."""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
import uuid

import eventlet
import fixtures

from nova.compute import power_state
from nova import objects
from nova import test
from nova.tests.unit import utils as test_utils
from nova.virt import fake

from agent_harness import Agent, console_until, free_port, test_guest, with_security
from two_hosts import LibvirtHost, Veth, partition_pool
from hvagent_nova import driver as hv_driver

MiB = 1 << 20
SWAP_MIB = 16


def ticks(out):
    return [int(n) for n in re.findall(rb"tick (\d+)\r?\n", out)]


class NovaHost(object):
    """A LibvirtHost, a partition pool "nova" on a loop device, an agent on `ip`:`port` in the
    libvirtd's mount namespace, and the nova-compute driver of that host."""

    def __init__(self, tag, ip, port, instances_path, netns=None, address=None, migration=""):
        self.ip = ip
        self.lv = LibvirtHost(tag, netns=netns, address=address)
        self.dir = tempfile.mkdtemp(prefix=f"hvnova-2h-{tag}-")
        self.loop = None
        try:
            self.loop, config = partition_pool(self.dir, "nova")
            config += migration
            self.agent = Agent(with_security(config, kernel_dirs=[instances_path]),
                               uri="qemu:///system", wrapper=self.lv.wrapper, listen_host=ip,
                               grpc_port=port)
        except BaseException:
            self.close()
            raise
        self.driver = None

    def volumes(self):
        status, body = self.agent.rest("GET", "/v1/pools/nova/volumes")
        assert status == 200, body
        return {v["name"]: v for v in (body or {}).get("volumes", [])
                if v.get("state") != "VOLUME_STATE_DELETING"}

    def domain(self, name):
        """The agent's domain state name, or None when it has no such domain."""
        status, body = self.agent.rest("GET", f"/v1/domains/{name}")
        return body["state"] if status == 200 else None

    def console(self, name):
        tty = self.lv.virsh("ttyconsole", name).stdout.strip()
        return os.open(tty, os.O_RDWR | os.O_NOCTTY)

    def close(self):
        if getattr(self, "agent", None) is not None:
            self.agent.stop()
        self.lv.close()
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class TwoHostsTestCase(test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root: libvirtds, network namespaces, loop devices")
        cls.kernel, cls.initrd = test_guest()
        cls.instances = tempfile.mkdtemp(prefix="hvnova-2h-instances-")
        tag = uuid.uuid4().hex[:4]
        cls.veth = Veth(tag, f"10.{200 + int(tag[0], 16)}.{int(tag[1:3], 16)}")
        cls.hosts = []
        port = free_port()
        try:
            cls.a = NovaHost("a", "127.0.0.3", port, cls.instances)
            cls.hosts.append(cls.a)
            ip = cls.veth.peer_ip
            cls.b = NovaHost("b", "127.0.0.2", port, cls.instances, netns=cls.veth.netns,
                             address=ip,
                             migration=f'[migration]\nlibvirt_uri = "qemu+tcp://{ip}/system"\n'
                                       f'migrate_uri = "tcp://{ip}"\n')
            cls.hosts.append(cls.b)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for h in cls.hosts:
            h.close()
        cls.veth.close()
        shutil.rmtree(cls.instances, ignore_errors=True)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.ctxt = test_utils.get_test_admin_context()
        self.flags(instances_path=self.instances)
        self.flags(plaintext=True, storage_pool="nova", migration_poll_interval=0.2,
                   group="hvagent")
        self.flags(live_migration_downtime=500, group="libvirt")
        files = {"k-guest": self.kernel, "r-guest": self.initrd}
        # Glance's part (the kernel pair's bytes) is not what this test is about.
        self.useFixture(fixtures.MockPatchObject(
            hv_driver.HvagentDriver, "_download",
            side_effect=lambda ctxt, image_id, path: shutil.copy(files[image_id], path)))
        for h in self.hosts:
            self.on(h)
            h.driver = hv_driver.HvagentDriver(fake.FakeVirtAPI())
            h.driver.init_host("host-" + h.ip)

    # The flavor's swap disk as Nova hands it over (its swap BDM).
    bdi = {"root_device_name": None, "ephemerals": [], "block_device_mapping": [],
           "swap": {"device_name": "/dev/vda", "swap_size": SWAP_MIB}}

    def on(self, host):
        """nova.conf as on `host`'s nova-compute; returns its driver."""
        self.flags(my_ip=host.ip)
        self.flags(address=host.agent.grpc_addr, group="hvagent")
        return host.driver

    # -- the instance ----------------------------------------------------------------------

    def spawn_counting(self):
        """An instance spawned on A through the driver, its swap volume filled with random
        bytes before it starts, counting on its console. Returns (instance, the volume's
        sha256, its volume name, what A's console showed)."""
        flavor = test_utils.get_test_flavor(options={
            "root_gb": 0, "ephemeral_gb": 0, "swap": SWAP_MIB, "vcpus": 1, "memory_mb": 128})
        inst = test_utils.get_test_instance(self.ctxt, flavor=flavor, obj=True)
        inst.kernel_id, inst.ramdisk_id = "k-guest", "r-guest"
        inst.save()
        self.addCleanup(self.remove_everywhere, inst)
        image = objects.ImageMeta.from_dict({"id": inst.image_ref, "disk_format": "raw",
                                             "properties": {"os_command_line": "console=ttyS0"}})
        drv = self.on(self.a)
        drv.spawn(self.ctxt, inst, image, [], None, {}, network_info=[],
                  block_device_info=self.bdi, power_on=False)
        (name, vol), = self.a.volumes().items()
        self.assertEqual((inst.name, "VOLUME_OWNERSHIP_OWNED"),
                         (vol["attached_to"], vol["ownership"]))
        content = os.urandom(SWAP_MIB * MiB)
        with open(vol["path"], "r+b") as f:
            f.write(content)
        drv.power_on(self.ctxt, inst, [], self.bdi)
        fd = self.a.console(inst.name)
        try:
            console_until(fd, b"hv-guest-ready", 180)
            os.write(fd, b"\ni=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done\n")
            out = console_until(fd, b"tick 6\r\n", 60)
        finally:
            os.close(fd)
        self.a_path = vol["path"]
        return inst, hashlib.sha256(content).hexdigest(), name, out

    def remove_everywhere(self, inst):
        for h in self.hosts:
            h.agent.rest("DELETE", f"/v1/domains/{inst.name}?force=true&delete_volumes=true")

    # -- Nova's live migration, in its order -----------------------------------------------

    def live(self, inst, during=None):
        """check_can_live_migrate_destination (B), _source (A), the destination check's
        cleanup (B), pre_live_migration (B), live_migration (A, on a greenthread of its own,
        `during(inst)` called on this one once the move runs), then what Nova's post_method
        or recover_method would run (_post_live_migration: post_live_migration,
        post_live_migration_at_source, cleanup at A, post_live_migration_at_destination at B;
        _rollback_live_migration: rollback at A, then at B). Returns ("post" | "recover", its
        keyword arguments)."""
        data = self.on(self.b).check_can_live_migrate_destination(
            self.ctxt, inst, {}, {}, block_migration=True, disk_over_commit=False)
        data = self.on(self.a).check_can_live_migrate_source(self.ctxt, inst, data, self.bdi)
        self.on(self.b).cleanup_live_migration_destination_check(self.ctxt, data)
        data = self.b.driver.pre_live_migration(self.ctxt, inst, self.bdi, [], None, data)
        ended = []
        post = lambda *a, **k: ended.append(("post", k))
        recover = lambda *a, **k: ended.append(("recover", k))
        self.on(self.a)
        mover = eventlet.spawn(self.a.driver.live_migration, self.ctxt, inst, "host-b", post,
                               recover, True, data)
        if during:
            deadline = time.time() + 30
            while not self.a.driver._live_moves._moves and time.time() < deadline:
                eventlet.sleep(0.05)
            during(inst)
        mover.wait()
        self.assertEqual(1, len(ended), ended)
        if ended[0][0] == "post":
            self.a.driver.post_live_migration(self.ctxt, inst, self.bdi, data)
            self.a.driver.post_live_migration_at_source(self.ctxt, inst, [])
            self.a.driver.cleanup(self.ctxt, inst, [], self.bdi, True, data)
            self.on(self.b).post_live_migration_at_destination(self.ctxt, inst, [], True,
                                                               self.bdi)
        else:
            self.a.driver.rollback_live_migration_at_source(self.ctxt, inst, data)
            self.on(self.b).rollback_live_migration_at_destination(self.ctxt, inst, [],
                                                                   self.bdi, True, data)
        return ended[0]

    def assert_counts_on(self, host, inst, after, boot_banner_allowed=False):
        """The guest's console on `host` shows the count going on, in order, past `after`."""
        fd = host.console(inst.name)
        try:
            out = console_until(fd, b"\n", 60)
            while not ticks(out):
                out += console_until(fd, b"\n", 60)
            out += console_until(fd, f"tick {ticks(out)[0] + 4}\r\n".encode(), 60)
        finally:
            os.close(fd)
        seen = ticks(out)
        self.assertGreater(min(seen), after, out[-1000:])
        self.assertEqual(seen, sorted(seen), "the count went on in order")
        self.assertNotIn(b"hv-guest-ready", out)
        return out

    def test_live_abort_live_move_cold_move_back_forced_live_move(self):
        inst, digest, vol, out = self.spawn_counting()

        # 1. Nova aborts the running live move: the agent aborts libvirt's job.
        aborted = []
        how, kwargs = self.live(inst, during=lambda i: aborted.append(
            self.a.driver.live_migration_abort(i)))
        self.assertEqual(("recover", {"migration_status": "cancelled"}), (how, kwargs))
        self.assertEqual("DOMAIN_STATE_RUNNING", self.a.domain(inst.name))
        self.assertIsNone(self.b.domain(inst.name))
        self.assertEqual({}, self.b.volumes())
        self.assertEqual([], self.b.lv.virsh("list", "--all", "--name").stdout.split())
        out = self.assert_counts_on(self.a, inst, max(ticks(out)))

        # 2. The live move.
        how, _ = self.live(inst)
        self.assertEqual("post", how)
        deadline = time.time() + 30
        while time.time() < deadline and (self.a.domain(inst.name) or self.a.volumes()):
            time.sleep(0.2)
        self.assertIsNone(self.a.domain(inst.name))
        self.assertEqual({}, self.a.volumes())
        self.assertEqual([], self.a.lv.virsh("list", "--all", "--name").stdout.split())
        self.assertEqual("DOMAIN_STATE_RUNNING", self.b.domain(inst.name))
        self.assertEqual(power_state.RUNNING, self.on(self.b).get_info(inst).state)
        self.assertIn(inst.uuid, self.b.driver.list_instance_uuids())
        self.assertNotIn(inst.uuid, self.on(self.a).list_instance_uuids())
        there = self.b.volumes()[vol]
        self.assertEqual((inst.name, "VOLUME_OWNERSHIP_OWNED"),
                         (there["attached_to"], there["ownership"]))
        self.assertIn(inst.name, self.b.lv.virsh("list", "--persistent", "--name").stdout.split())
        # B's guest runs on B's volume (both hosts' devices are on this one machine).
        blk = self.b.lv.virsh("domblklist", inst.name).stdout
        self.assertIn(there["path"], blk, (self.a.loop, self.b.loop, blk))
        # ... and so does its persistent definition, which its next start there uses (libvirt
        # persists the source's own unless told otherwise: the cold move below caught that).
        persistent = self.b.lv.virsh("dumpxml", "--inactive", inst.name).stdout
        self.assertIn(f"'{there['path']}'", persistent)
        self.assertNotIn(f"'{self.a_path}'", persistent)
        self.assert_counts_on(self.b, inst, max(ticks(out)))
        fd = self.b.console(inst.name)
        try:
            os.write(fd, b"\x03\nsha256sum /dev/vda\n")
            out = console_until(fd, b"  /dev/vda", 60)
        finally:
            os.close(fd)
        self.assertEqual(digest, re.findall(rb"([0-9a-f]{64})  /dev/vda", out)[-1].decode())

        # 3. Cold migration back to A: Nova's resize/migrate to another host, same flavor.
        drv_b = self.on(self.b)
        self.assertEqual("[]", drv_b.migrate_disk_and_power_off(
            self.ctxt, inst, self.a.ip, inst.flavor, [], self.bdi, 0, 0))
        self.assertIsNone(self.b.domain(inst.name))
        self.assertEqual({}, self.b.volumes())
        self.assertEqual("DOMAIN_STATE_SHUTOFF", self.a.domain(inst.name))
        migration = objects.Migration(source_compute="host-b", dest_compute="host-a",
                                      dest_host=self.a.ip, migration_type="migration")
        self.on(self.a).finish_migration(self.ctxt, migration, inst, "[]", [], None, False, {},
                                         self.bdi)
        self.on(self.b).confirm_migration(self.ctxt, migration, inst, [])
        self.assertEqual("DOMAIN_STATE_RUNNING", self.a.domain(inst.name))
        self.assertEqual(power_state.RUNNING, self.on(self.a).get_info(inst).state)
        self.assertIsNone(self.b.domain(inst.name))
        self.assertEqual([], self.b.lv.virsh("list", "--all", "--name").stdout.split())
        here = self.a.volumes()[vol]
        self.assertEqual((inst.name, "VOLUME_OWNERSHIP_OWNED"),
                         (here["attached_to"], here["ownership"]))
        with open(here["path"], "rb") as f:
            self.assertEqual(digest, hashlib.sha256(f.read(SWAP_MIB * MiB)).hexdigest())
        # 4. Live again, A -> B, and Nova's live_migration_force_complete while it runs: the
        # guest is paused on A (no post-copy in the agent), the move completes, and the guest
        # runs on B.
        moves = []

        def force(i):
            moves.append(self.a.driver._live_moves.of(i))
            self.a.driver.live_migration_force_complete(i)
        how, _ = self.live(inst, during=force)
        self.assertEqual("post", how)
        self.assertTrue(moves[0].paused)
        self.assertEqual("DOMAIN_STATE_RUNNING", self.b.domain(inst.name))
        self.assertIsNone(self.a.domain(inst.name))
        self.assertEqual({}, self.a.volumes())
        # Neither agent has an operation left running.
        for h in self.hosts:
            status, body = h.agent.rest("GET", "/v1/operations?running_only=true")
            self.assertEqual((200, []), (status, (body or {}).get("operations", [])))


if __name__ == "__main__":
    unittest.main()
