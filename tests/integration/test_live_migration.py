"""Live migration between two libvirtds on this machine (issue 26, docs/migration.md).

Two "hosts" (two_hosts.py): each a full libvirtd of its own in a private mount namespace (its own
/etc/libvirt with its host_uuid, /run/libvirt, /var/lib/libvirt), its own hvagentd entering that
namespace, its own GPT partition pool on a loop device. The destination's libvirtd also runs in
a network namespace of its own, joined to this machine's by a veth pair: the source libvirtd
reaches it over qemu+tcp on the veth, and QEMU's migration stream and libvirt's NBD disk copy
cross the veth under TLS (VIR_MIGRATE_TLS, the source agent's [migration] libvirt_tls) with the
agents' own development PKI as QEMU's migrate_tls_x509_cert_dir. The agents talk over loopback (the development mode), the source's libvirtd
stays in this machine's network namespace so the test can reach both agents.

A busybox guest counting on its serial console moves live and its count goes on on the
destination (it never restarts, no boot banner appears there); its disk, filled with random bytes
here, reads back the same sha256 inside the guest on the destination. The link cut (veth down)
fails the move with the guest still counting here and nothing left on the destination. The
destination agent killed (SIGKILL) mid-copy: the source's heartbeat (KeepIncoming) goes
unanswered, it aborts libvirt's job, the guest counts on here, and the destination agent's
restart removes the empty partition it had made."""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import uuid

import grpc

from agent_harness import Agent, console_until, test_guest, with_security
from hvagent.v1 import domain_pb2, migration_pb2, migration_pb2_grpc, operation_pb2, operation_pb2_grpc
from two_hosts import LibvirtHost, Veth, partition_pool

MiB = 1 << 20
DISK = 16 * MiB
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class AgentHost:
    """A LibvirtHost, a partition pool on a loop device of its own, and an agent in its mount
    namespace."""

    def __init__(self, tag, kernel_dir, netns=None, address=None, migration="", qemu_conf=""):
        self.lv = LibvirtHost(tag, netns=netns, address=address, extra_qemu_conf=qemu_conf)
        self.dir = tempfile.mkdtemp(prefix=f"hvit-live-{tag}-")
        self.loop = None
        try:
            self.loop, config = partition_pool(self.dir, "disk1")
            config += migration
            self.config = with_security(config, kernel_dirs=[kernel_dir])
            self.start_agent()
        except BaseException:  # the caller never gets a half-made host to close: close it here
            self.lv.close()
            if self.loop:
                subprocess.run(["losetup", "-d", self.loop], capture_output=True)
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def start_agent(self):
        self.agent = Agent(self.config, uri="qemu:///system", wrapper=self.lv.wrapper)

    def kill_agent(self):
        self.agent.proc.send_signal(signal.SIGKILL)
        self.agent.proc.wait()
        self.agent.stop()

    def partitions(self):
        """The partition devices of the pool's loop device as the kernel sees them (not through
        the agent): what QEMU's NBD target is written to."""
        dev = os.path.basename(self.loop)
        return sorted(p for p in os.listdir(f"/sys/class/block/{dev}") if p.startswith(dev + "p"))

    def rest(self, method, path, body=None, expect=200):
        status, out = self.agent.rest(method, path, body)
        if status != expect:
            raise AssertionError(f"{method} {path}: {status} {out}")
        return out

    def volumes(self):
        return {v["name"]: v for v in self.rest("GET", "/v1/pools/disk1/volumes").get("volumes", [])}

    def console(self, name):
        tty = self.lv.virsh("ttyconsole", name).stdout.strip()
        return os.open(tty, os.O_RDWR | os.O_NOCTTY)

    def close(self):
        self.agent.stop()
        self.lv.close()
        subprocess.run(["losetup", "-d", self.loop], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def ticks(out):
    return [int(n) for n in re.findall(rb"tick (\d+)\r?\n", out)]


class LiveMigrationTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.kernel, cls.initrd = test_guest()
        tag = uuid.uuid4().hex[:4]
        cls.veth = Veth(tag, f"10.{200 + int(tag[0], 16)}.{int(tag[1:3], 16)}")
        cls.hosts = []
        cls.pki = tempfile.mkdtemp(prefix="hvit-live-pki-")
        try:
            ip = cls.veth.peer_ip
            qemu_tls = cls.qemu_tls_dir(ip)
            cls.src = AgentHost("src", os.path.dirname(cls.kernel), migration="[migration]\nlibvirt_tls = true\n",
                                qemu_conf=qemu_tls)
            cls.hosts.append(cls.src)
            cls.dst = AgentHost("dst", os.path.dirname(cls.kernel), netns=cls.veth.netns, address=ip,
                                migration=f'[migration]\nlibvirt_uri = "qemu+tcp://{ip}/system"\n'
                                          f'migrate_uri = "tcp://{ip}"\n', qemu_conf=qemu_tls)
            cls.hosts.append(cls.dst)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def qemu_tls_dir(cls, ip):
        """QEMU's migration TLS (VIR_MIGRATE_TLS) from the agents' own development PKI, under the
        names qemu.conf's migrate_tls_x509_cert_dir wants: the agent CA, its server pair (valid
        for the destination's veth address) and its [migration] client pair. Returns the
        qemu.conf line."""
        subprocess.run([os.path.join(REPO, "deploy", "dev-certs.sh"), cls.pki], check=True, capture_output=True,
                       env={**os.environ, "HVAGENT_DEV_CERT_SANS": f"IP:{ip}"})
        qemu = os.path.join(cls.pki, "qemu")
        os.makedirs(qemu)
        for ours, theirs in (("ca.crt", "ca-cert.pem"), ("server.crt", "server-cert.pem"),
                             ("server.key", "server-key.pem"), ("peer.crt", "client-cert.pem"),
                             ("peer.key", "client-key.pem")):
            shutil.copy(os.path.join(cls.pki, ours), os.path.join(qemu, theirs))
        return f'migrate_tls_x509_cert_dir = "{qemu}"\n'

    @classmethod
    def tearDownClass(cls):
        for h in cls.hosts:
            h.close()
        cls.veth.close()
        shutil.rmtree(cls.pki, ignore_errors=True)

    def setUp(self):
        self.veth.set_up(True)

    def define_guest(self, prefix):
        """A stopped busybox guest on the source with a DISK-sized volume of its own, removed from
        both hosts at cleanup; returns its name."""
        name = f"{prefix}{uuid.uuid4().hex[:6]}"
        spec = {"name": name, "vcpus": 1, "memory_mib": 128, "serial_console": True,
                "kernel": {"kernel_path": self.kernel, "initrd_path": self.initrd, "cmdline": "console=ttyS0"},
                "disks": [{"target": "vda", "volume": {"pool": "disk1", "name": name[5:] + "-root",
                                                       "create_size_bytes": str(DISK)}}]}
        self.src.rest("POST", "/v1/domains", {"spec": spec, "start": False}, expect=201)
        self.addCleanup(lambda: [h.agent.rest("DELETE", f"/v1/domains/{name}?force=true&delete_volumes=true")
                                 for h in self.hosts])
        return name

    def start_counting_guest(self):
        """A running guest on the source whose disk holds random bytes, counting on its console;
        returns (name, the disk's sha256, console fd, what the console showed)."""
        name = self.define_guest("hvit-l")
        content = os.urandom(DISK)
        with open(self.src.volumes()[name[5:] + "-root"]["path"], "r+b") as f:
            f.write(content)
        self.src.rest("POST", f"/v1/domains/{name}:start", {})
        fd = self.src.console(name)
        self.addCleanup(os.close, fd)
        console_until(fd, b"hv-guest-ready", 180)
        os.write(fd, b"\ni=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done\n")
        out = console_until(fd, b"tick 6\r\n", 60)
        return name, hashlib.sha256(content).hexdigest(), out

    def migrate(self, name, expect_state, on_progress=None):
        migration = migration_pb2_grpc.MigrationServiceStub(self.src.agent.channel)
        r = migration.MigrateDomain(migration_pb2.MigrateDomainRequest(
            name=name, destination=self.dst.agent.grpc_addr, live=True, max_downtime_ms=500), timeout=30)
        ops = operation_pb2_grpc.OperationServiceStub(self.src.agent.channel)
        deadline = time.time() + 240
        seen = []
        while time.time() < deadline:
            o = ops.GetOperation(operation_pb2.GetOperationRequest(id=str(r.operation_id)), timeout=10)
            seen.append((o.bytes_done, o.bytes_total))
            if on_progress:
                on_progress(o)
            if o.state != operation_pb2.OPERATION_STATE_RUNNING:
                break
            time.sleep(0.2)
        self.assertEqual(o.state, expect_state, o.message)
        return o, seen

    def test_a_counting_guest_moves_live_and_keeps_counting_with_its_disk(self):
        name, digest, before = self.start_counting_guest()
        src_fd_out = before
        t0 = time.time()
        o, seen = self.migrate(name, operation_pb2.OPERATION_STATE_SUCCEEDED)
        print(f"\nlive migration of a 128 MiB TCG guest with a {DISK // MiB} MiB disk over the veth: "
              f"{time.time() - t0:.1f} s (operation seen ended), {o.bytes_total / MiB:.1f} MiB moved")
        # From libvirt's job: at least the disk. Memory joins the total once its phase is sampled
        # (every 250 ms); a short memory phase may end between two samples (seen in CI: 16 MiB).
        self.assertGreaterEqual(o.bytes_total, DISK, "progress is the bytes of libvirt's job")
        self.assertEqual(o.bytes_done, o.bytes_total)
        self.assertTrue(any(0 < d < t for d, t in seen) or len(seen) < 3, seen)
        # Here: gone, with its volume; there: running on a volume it owns.
        # (The agent's domain view follows libvirt's undefine event: a moment later at most.)
        deadline = time.time() + 30
        while time.time() < deadline and (self.src.agent.rest("GET", f"/v1/domains/{name}")[0] != 404
                                          or name[5:] + "-root" in self.src.volumes()):
            time.sleep(0.2)
        self.assertEqual(self.src.agent.rest("GET", f"/v1/domains/{name}")[0], 404,
                         self.src.lv.virsh("list", "--all").stdout)
        self.assertNotIn(name[5:] + "-root", self.src.volumes())
        self.assertEqual(self.src.lv.virsh("list", "--all", "--name").stdout.split(), [])
        dom = self.dst.rest("GET", f"/v1/domains/{name}")
        self.assertEqual(dom["state"], "DOMAIN_STATE_RUNNING")
        vol = self.dst.volumes()[name[5:] + "-root"]
        self.assertEqual((vol["attached_to"], vol["ownership"]), (name, "VOLUME_OWNERSHIP_OWNED"))
        self.assertIn(name, self.dst.lv.virsh("list", "--persistent", "--name").stdout.split())
        # Its persistent definition (its next start there) names the destination's device too.
        self.assertIn(f"'{vol['path']}'", self.dst.lv.virsh("dumpxml", "--inactive", name).stdout)
        # The count goes on there: no restart, no boot.
        fd = self.dst.console(name)
        self.addCleanup(os.close, fd)
        last_read_here = max(ticks(src_fd_out))
        out = console_until(fd, b"\n", 60)
        while not ticks(out):
            out += console_until(fd, b"\n", 60)
        out += console_until(fd, f"tick {ticks(out)[0] + 5}\r\n".encode(), 60)
        there = ticks(out)
        self.assertGreater(min(there), last_read_here, out[-1000:])
        self.assertEqual(there, sorted(there), "the count went on in order")
        self.assertNotIn(b"hv-guest-ready", out)
        # The disk libvirt copied reads the same inside the guest over there.
        os.write(fd, b"\x03\nsha256sum /dev/vda\n")
        out = console_until(fd, b"  /dev/vda", 60)
        self.assertEqual(re.findall(rb"([0-9a-f]{64})  /dev/vda", out)[-1].decode(), digest)
        # Both journals closed: nothing still running on either side.
        for h in (self.src, self.dst):
            self.assertEqual(h.rest("GET", "/v1/operations?running_only=true").get("operations", []), [])

    def test_the_link_cut_fails_the_move_and_the_guest_counts_on_here_with_nothing_there(self):
        name, _, before = self.start_counting_guest()
        self.veth.set_up(False)
        o, _ = self.migrate(name, operation_pb2.OPERATION_STATE_FAILED)
        self.assertIn("the domain stays here", o.message)
        self.veth.set_up(True)
        dom = self.src.rest("GET", f"/v1/domains/{name}")
        self.assertEqual(dom["state"], "DOMAIN_STATE_RUNNING")
        self.assertEqual(self.dst.agent.rest("GET", f"/v1/domains/{name}")[0], 404)
        self.assertNotIn(name[5:] + "-root", self.dst.volumes())
        self.assertEqual(self.dst.lv.virsh("list", "--all", "--name").stdout.split(), [])
        fd = self.src.console(name)
        self.addCleanup(os.close, fd)
        out = console_until(fd, f"tick {max(ticks(before)) + 4}\r\n".encode(), 60)
        self.assertNotIn(b"hv-guest-ready", out)


    def test_a_device_added_with_virsh_refuses_a_cold_move_until_it_is_detached(self):
        # A cold move defines the model again over there: an RNG an operator attached with virsh
        # would be lost, so the source refuses before anything moves and keeps the domain as is.
        name = self.define_guest("hvit-c")
        rng = os.path.join(self.pki, f"{name}-rng.xml")
        with open(rng, "w") as f:
            f.write("<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\n")
        self.src.lv.virsh("attach-device", name, rng, "--config")
        migration = migration_pb2_grpc.MigrationServiceStub(self.src.agent.channel)
        request = migration_pb2.MigrateDomainRequest(name=name, destination=self.dst.agent.grpc_addr)
        with self.assertRaises(grpc.RpcError) as refused:
            migration.MigrateDomain(request, timeout=30)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("a cold move would drop: <rng model='virtio'>", refused.exception.details())
        self.assertIn("<rng model='virtio'>", self.src.lv.virsh("dumpxml", "--inactive", name).stdout)
        self.assertIn(name[5:] + "-root", self.src.volumes())
        self.assertEqual(self.dst.lv.virsh("list", "--all", "--name").stdout.split(), [])
        self.assertNotIn(name[5:] + "-root", self.dst.volumes())
        # Detached, the same request moves it.
        self.src.lv.virsh("detach-device", name, rng, "--config")
        r = migration.MigrateDomain(request, timeout=30)
        ops = operation_pb2_grpc.OperationServiceStub(self.src.agent.channel)
        deadline = time.time() + 120
        while True:
            o = ops.GetOperation(operation_pb2.GetOperationRequest(id=str(r.operation_id)), timeout=10)
            if o.state != operation_pb2.OPERATION_STATE_RUNNING or time.time() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(o.state, operation_pb2.OPERATION_STATE_SUCCEEDED, o.message)
        self.assertIn(name, self.dst.lv.virsh("list", "--all", "--name").stdout.split())

    def test_the_destination_agent_killed_mid_copy_aborts_the_move_and_its_restart_cleans_up(self):
        name, _, before = self.start_counting_guest()
        parts_before = len(self.dst.partitions())
        dst_addr = self.dst.agent.grpc_addr
        migration = migration_pb2_grpc.MigrationServiceStub(self.src.agent.channel)
        # 2 MiB/s (memory and the NBD disk copy): the copy lasts well past the 3 missed heartbeats.
        r = migration.MigrateDomain(migration_pb2.MigrateDomainRequest(
            name=name, destination=dst_addr, live=True, max_bandwidth_mib_s=2), timeout=30)
        ops = operation_pb2_grpc.OperationServiceStub(self.src.agent.channel)
        get = lambda: ops.GetOperation(operation_pb2.GetOperationRequest(id=str(r.operation_id)), timeout=10)
        deadline = time.time() + 60
        o = get()
        # libvirt copies once the step is journalled and its job reports (the plan's total is
        # the volumes' size from the start: progress alone does not say the copy began).
        copying = lambda o: "migrate-live" in o.steps and 0 < o.bytes_done < o.bytes_total
        while o.state == operation_pb2.OPERATION_STATE_RUNNING and not copying(o) and time.time() < deadline:
            time.sleep(0.1)
            o = get()
        self.assertEqual(o.state, operation_pb2.OPERATION_STATE_RUNNING, f"the copy never started: {o.message}")
        # The destination made the empty partition before libvirt began copying into it.
        self.assertEqual(len(self.dst.partitions()), parts_before + 1)
        at_kill = f"{o.bytes_done / MiB:.1f} of {o.bytes_total / MiB:.1f} MiB"
        self.dst.kill_agent()
        killed = time.time()
        while o.state == operation_pb2.OPERATION_STATE_RUNNING and time.time() < killed + 120:
            time.sleep(0.2)
            o = get()
        print(f"\ndestination agent killed {at_kill} into libvirt's job; "
              f"the move ended {time.time() - killed:.1f} s later: {o.message}")
        self.assertEqual(o.state, operation_pb2.OPERATION_STATE_FAILED, o.message)
        self.assertIn(f"the destination agent at {dst_addr} is unreachable", o.message)
        self.assertIn("the domain stays here", o.message)
        # The guest runs on here and its count goes on: no restart.
        self.assertEqual(self.src.rest("GET", f"/v1/domains/{name}")["state"], "DOMAIN_STATE_RUNNING")
        fd = self.src.console(name)
        self.addCleanup(os.close, fd)
        out = console_until(fd, f"tick {max(ticks(before)) + 4}\r\n".encode(), 60)
        self.assertNotIn(b"hv-guest-ready", out)
        self.assertEqual(ticks(out), sorted(ticks(out)), "the count went on in order")
        # The destination's libvirtd dropped the half-arrived guest when the job was aborted.
        deadline = time.time() + 30
        while self.dst.lv.virsh("list", "--all", "--name").stdout.split() and time.time() < deadline:
            time.sleep(0.2)
        self.assertEqual(self.dst.lv.virsh("list", "--all", "--name").stdout.split(), [])
        # Its partition outlived the agent; the agent's restart finds the journalled transfer and
        # no domain of that uuid running, and removes it.
        self.assertEqual(len(self.dst.partitions()), parts_before + 1, "nothing left for recovery to find")
        self.dst.start_agent()
        deadline = time.time() + 30  # a partition is deleted in the background
        while (name[5:] + "-root" in self.dst.volumes() or len(self.dst.partitions()) != parts_before) \
                and time.time() < deadline:
            time.sleep(0.2)
        self.assertNotIn(name[5:] + "-root", self.dst.volumes())
        self.assertEqual(len(self.dst.partitions()), parts_before)
        self.assertRegex(self.dst.agent.log_text(), rf"recovery: incoming domain {name} \(operation \d+\): rolled back")
        for h in (self.src, self.dst):
            self.assertEqual(h.rest("GET", "/v1/operations?running_only=true").get("operations", []), [])
        self.assertEqual(self.dst.agent.rest("GET", f"/v1/domains/{name}")[0], 404)

if __name__ == "__main__":
    unittest.main()
