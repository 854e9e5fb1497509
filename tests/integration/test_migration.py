"""Cold migration between two agents on this machine (issue 26, docs/migration.md).

Two "hosts": two hvagentd processes, each with its own QEMU driver (libvirt's embedded driver,
`qemu:///embed?root=DIR`: its own domain list, state and run directories, no second libvirtd)
and its own partition pool on a loop device of its own. A full second libvirtd in network and
mount namespaces joined by a veth pair is what issue 26 asks for; it is not built yet, so the
link-cut fault (veth down) is not exercised here. The agents talk over loopback in the
development mode, so the peer role's TLS is covered by unit tests only
(AuthorizerTest.PeerMayOnlyReceiveTransfers)."""

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import uuid

import grpc

from agent_harness import Agent, free_port, test_guest, with_security
from hvagent.v1 import host_pb2, migration_pb2, migration_pb2_grpc, operation_pb2

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MiB = 1 << 20


def run(argv):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"{argv} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def sha256_of(path, size):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left > 0:
            b = f.read(min(left, 4 * MiB))
            if not b:
                break
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def vol(name):
    """The root volume's name of domain `name`."""
    return name[5:] + "-root"


# libvirt's embedded QEMU driver probes QEMU's capabilities in each new root, 4-10 s of an agent's
# start here (9 starts). The probe's result depends only on the QEMU binary and libvirt, which
# libvirt checks the cached file against, so every host after the first starts from a copy of
# what the first probed (a changed binary still makes libvirt probe again).
QEMU_CAPS = "cache/qemu/capabilities"
_caps = tempfile.mkdtemp(prefix="hvit-mig-qemucaps-")


def tearDownModule():
    shutil.rmtree(_caps, ignore_errors=True)


def copy_new_files(src, dst):
    """Copies the files of directory src (if any) that dst does not have yet."""
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
        for f in os.listdir(src):
            if not os.path.exists(os.path.join(dst, f)):
                shutil.copy2(os.path.join(src, f), os.path.join(dst, f))


class Host:
    """One agent with its own embedded QEMU driver, state directory and loop-device pools."""

    def __init__(self, name, pools, extra_config="", agent_options=None):
        self.agent_options = agent_options or {}
        self.dir = tempfile.mkdtemp(prefix=f"hvit-mig-{name}-")
        os.chmod(self.dir, 0o755)  # QEMU, started as libvirt's qemu user, must reach its run directory in there
        self.loops = []
        config = f'[reliability]\nstate_dir = "{self.dir}/state"\n'
        for pool, size in pools:
            img = os.path.join(self.dir, f"{pool}.img")
            with open(img, "wb") as f:
                f.truncate(size)
            loop = run(["losetup", "--find", "--show", "--partscan", img]).strip()
            self.loops.append(loop)
            config += f'[[storage.pools]]\nname = "{pool}"\ntype = "partition"\ndisk = "{loop}"\nwipe = "none"\n'
        self.config = config + extra_config
        self.libvirt_root = f"{self.dir}/libvirt"
        self.uri = f"qemu:///embed?root={self.libvirt_root}"
        self.agent = None
        self.start()

    def start(self):
        copy_new_files(_caps, os.path.join(self.libvirt_root, QEMU_CAPS))
        self.agent = Agent(self.config, uri=self.uri, **self.agent_options)
        copy_new_files(os.path.join(self.libvirt_root, QEMU_CAPS), _caps)

    def kill(self):
        self.agent.proc.send_signal(signal.SIGKILL)
        self.agent.proc.wait()
        self.agent.stop()

    def rest(self, method, path, body=None, expect=200):
        status, out = self.agent.rest(method, path, body)
        if status != expect:
            raise AssertionError(f"{method} {path}: {status} {out}")
        return out

    def volumes(self, pool="disk1"):
        return {v["name"]: v for v in self.rest("GET", f"/v1/pools/{pool}/volumes").get("volumes", [])}

    def domains(self):
        return {d["name"]: d for d in self.rest("GET", "/v1/domains").get("domains", [])}

    def close(self):
        if self.agent is not None:
            self.agent.stop()
        copy_new_files(os.path.join(self.libvirt_root, QEMU_CAPS), _caps)
        for loop in self.loops:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class MigrationTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Both hosts allow the test guest's kernel directory; the source alone also allows a
        # directory of its own, whose kernel the destination must refuse.
        cls.kernel, cls.initrd = test_guest()
        cls.own_kernels = tempfile.mkdtemp(prefix="hvit-mig-kernels-")
        os.chmod(cls.own_kernels, 0o755)
        shutil.copy(cls.kernel, cls.own_kernels)
        kdir = os.path.dirname(cls.kernel)
        cls.logs = tempfile.mkdtemp(prefix="hvit-mig-logs-")
        cls.src = Host("src", [("disk1", 512 * MiB)], with_security("", kernel_dirs=[kdir, cls.own_kernels]))
        try:
            cls.dst = Host("dst", [("disk1", 512 * MiB), ("small", 16 * MiB)],
                           with_security(f'[console]\nlog_dir = "{cls.logs}"\n', kernel_dirs=[kdir]))
        except BaseException:
            cls.src.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.src.close()
        cls.dst.close()
        shutil.rmtree(cls.own_kernels, ignore_errors=True)
        shutil.rmtree(cls.logs, ignore_errors=True)

    def make_domain(self, size, data_at=(), tag="mig", **spec_extra):
        """A shut-off domain with one owned volume of `size`, random bytes at the offsets given
        (1 MiB each, the rest zeros); returns (name, the volume's device, its sha256)."""
        name = f"hvit-{tag[0]}{uuid.uuid4().hex[:6]}"  # GPT names hold 27 characters for domain and volume
        spec = {"name": name, "vcpus": 1, "memory_mib": 64, "labels": {"tenant": "blue"},
                "disks": [{"target": "vda", "volume": {"pool": "disk1", "name": vol(name),
                                                        "create_size_bytes": str(size)}}], **spec_extra}
        d = self.src.rest("POST", "/v1/domains", {"spec": spec, "start": False}, expect=201)
        path = self.src.volumes()[vol(name)]["path"]
        with open(path, "r+b") as f:
            for off in data_at:
                f.seek(off)
                f.write(os.urandom(MiB))
            os.fsync(f.fileno())
        return name, d["uuid"], path, sha256_of(path, size)

    def migrate(self, name, **extra):
        body = {"destination": self.dst.agent.grpc_addr, **extra}
        return self.src.rest("POST", f"/v1/domains/{name}:migrate", body, expect=202)["operation_id"]

    def wait(self, op_id, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            op = self.src.rest("GET", f"/v1/operations/{op_id}")
            if op["state"] != "OPERATION_STATE_RUNNING":
                return op
            time.sleep(0.1)
        raise AssertionError(f"operation {op_id} still running after {timeout} s")

    def assert_source_kept(self, name, uuid_, path, sha, size):
        self.assertEqual(self.src.domains()[name]["uuid"], uuid_)
        self.assertEqual(self.src.volumes()[vol(name)]["ownership"], "VOLUME_OWNERSHIP_OWNED")
        self.assertEqual(sha256_of(path, size), sha)

    def assert_destination_clean(self, name):
        self.assertNotIn(name, self.dst.domains())
        for pool in ("disk1", "small"):
            self.assertNotIn(vol(name), self.dst.volumes(pool))
        self.assertEqual(self.dst.rest("GET", "/v1/operations?running_only=true").get("operations", []), [])

    def test_1_stopped_domain_moves_and_its_disk_sha256_is_unchanged(self):
        size = 64 * MiB
        name, uuid_, path, sha = self.make_domain(size, data_at=(0, 20 * MiB, 63 * MiB))
        op = self.wait(self.migrate(name))
        self.assertEqual(op["state"], "OPERATION_STATE_SUCCEEDED", op)
        self.assertEqual(op["bytes_done"], str(size))
        self.assertEqual(op["bytes_total"], str(size))
        moved = self.dst.domains()[name]
        self.assertEqual(moved["uuid"], uuid_)
        self.assertEqual(moved["labels"], {"tenant": "blue"})
        landed = self.dst.volumes()[vol(name)]
        self.assertEqual(landed["attached_to"], name)
        self.assertEqual(landed["ownership"], "VOLUME_OWNERSHIP_OWNED")
        self.assertEqual(sha256_of(landed["path"], size), sha)
        # Gone from the source, its volume too.
        self.assertNotIn(name, self.src.domains())
        self.assertNotIn(vol(name), self.src.volumes())
        steps = [s.split(" ")[0] for s in op["steps"]]
        self.assertEqual(steps, ["prepare", "send-volume", "finish", "remove-source"])
        # The bytes took the destination's volume channel ([migration] data_port), not gRPC.
        self.assertRegex(self.dst.agent.log_text(), rf"volume channel: transfer \S+ disk 0 received from local \({size} bytes\)")
        self.dst.rest("DELETE", f"/v1/domains/{name}?delete_volumes=true", expect=204)

    def test_1b_with_the_volume_channel_off_the_bytes_go_over_grpc(self):
        # A destination with [migration] data_port = -1 (or one from before the channel) offers
        # none in PrepareIncoming's answer: the source streams ReceiveVolume over gRPC instead.
        grpc_only = Host("dgrpc", [("disk1", 128 * MiB)], with_security("[migration]\ndata_port = -1\n"))
        try:
            size = 8 * MiB
            name, uuid_, path, sha = self.make_domain(size, data_at=(0, 7 * MiB))
            body = {"destination": grpc_only.agent.grpc_addr}
            op = self.wait(self.src.rest("POST", f"/v1/domains/{name}:migrate", body, expect=202)["operation_id"])
            self.assertEqual(op["state"], "OPERATION_STATE_SUCCEEDED", op)
            self.assertEqual(sha256_of(grpc_only.volumes()[vol(name)]["path"], size), sha)
            log = grpc_only.agent.log_text()
            self.assertIn(f"incoming domain {name}: volume disk1/{vol(name)} received", log)
            self.assertNotIn("volume channel", log)
        finally:
            grpc_only.close()

    def test_2_destination_pool_full_leaves_source_unchanged_and_destination_clean(self):
        size = 32 * MiB
        name, uuid_, path, sha = self.make_domain(size, data_at=(0,))
        op = self.wait(self.migrate(name, destination_pool="small"))
        self.assertEqual(op["state"], "OPERATION_STATE_FAILED", op)
        self.assertIn("the incoming volumes need", op["message"])
        self.assertIn("the domain stays here", op["message"])
        self.assert_source_kept(name, uuid_, path, sha, size)
        self.assert_destination_clean(name)

    def test_3_destination_killed_mid_transfer_then_recovered_clean(self):
        size = 256 * MiB
        name, uuid_, path, sha = self.make_domain(size, data_at=range(0, size, 2 * MiB))
        op_id = self.migrate(name)
        deadline = time.time() + 60
        while time.time() < deadline:
            op = self.src.rest("GET", f"/v1/operations/{op_id}")
            if int(op.get("bytes_done", "0")) > 0 or op["state"] != "OPERATION_STATE_RUNNING":
                break
            time.sleep(0.01)
        self.assertEqual(op["state"], "OPERATION_STATE_RUNNING", "the transfer ended before the kill")
        self.assertLess(int(op["bytes_done"]), size)
        self.dst.kill()
        op = self.wait(op_id)
        self.assertEqual(op["state"], "OPERATION_STATE_FAILED", op)
        self.assertIn("the domain stays here", op["message"])
        self.assert_source_kept(name, uuid_, path, sha, size)
        # The destination's recovery removes the half-received volume and closes its journal.
        self.dst.start()
        deadline = time.time() + 30
        while vol(name) in self.dst.volumes() and time.time() < deadline:
            time.sleep(0.2)
        self.assert_destination_clean(name)
        ended = self.dst.rest("GET", "/v1/operations").get("operations", [])
        rolled = [o for o in ended if o["kind"] == "OPERATION_KIND_MIGRATE_IN"]
        self.assertTrue(rolled, ended)
        self.assertEqual(rolled[0]["state"], "OPERATION_STATE_ROLLED_BACK", rolled)

    def test_5_hvctl_migrate_draws_progress_and_reports_the_end(self):
        size = 16 * MiB
        name, uuid_, path, sha = self.make_domain(size, data_at=(0, 8 * MiB))
        hvctl = os.path.join(os.path.dirname(os.environ["HVAGENTD"]), "hvctl")
        r = subprocess.run([hvctl, "--server", self.src.agent.grpc_addr, "migrate", name, "--to",
                            self.dst.agent.grpc_addr], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"{name} -> {self.dst.agent.grpc_addr}: SUCCEEDED", r.stdout)
        self.assertIn("[########################################] 16.0 MiB of 16.0 MiB", r.stderr)
        self.assertEqual(sha256_of(self.dst.volumes()[vol(name)]["path"], size), sha)
        # A usage error (no --to) is exit 2 and asks nothing of the agent.
        r = subprocess.run([hvctl, "--server", self.src.agent.grpc_addr, "migrate", name], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.dst.rest("DELETE", f"/v1/domains/{name}?delete_volumes=true", expect=204)

    def test_6_kernel_boot_and_vnc_travel_and_the_guest_boots_there(self):
        cmdline = f"console=ttyS0 hv.mark={uuid.uuid4().hex[:8]}"
        kernel = {"kernel_path": self.kernel, "initrd_path": self.initrd, "cmdline": cmdline}
        name, uuid_, _, _ = self.make_domain(16 * MiB, tag="kvnc", kernel=kernel, vnc=True, serial_console=True,
                                             memory_mib=128)
        op = self.wait(self.migrate(name))
        self.assertEqual(op["state"], "OPERATION_STATE_SUCCEEDED", op)
        # What the destination's libvirt keeps: the source's boot and display, not its defaults.
        with open(os.path.join(self.dst.dir, "libvirt", "etc", "qemu", f"{name}.xml")) as f:
            stored = f.read()
        self.assertIn(f"<kernel>{self.kernel}</kernel>", stored)
        self.assertIn(f"<initrd>{self.initrd}</initrd>", stored)
        self.assertIn(f"<cmdline>{cmdline}</cmdline>", stored)
        self.assertIn("<graphics type='vnc'", stored)
        # And it boots that kernel there: the guest's ready line on the destination's console
        # log, and a VNC ticket for its display.
        self.dst.rest("POST", f"/v1/domains/{name}:start", {})
        try:
            deadline, text = time.time() + 90, ""
            while "hv-guest-ready" not in text:
                self.assertLess(time.time(), deadline, text[-2000:])
                time.sleep(0.5)
                body = self.dst.rest("GET", f"/v1/domains/{name}/console-log?tail_bytes=65536")
                text = base64.b64decode(body.get("data", "")).decode(errors="replace")
            status, ticket = self.dst.agent.rest("POST", f"/v1/domains/{name}/console-tickets",
                                                 {"kind": "CONSOLE_KIND_VNC"})
            self.assertIn(status, (200, 201), ticket)
            self.assertGreater(int(ticket["port"]), 0)
        finally:
            self.dst.rest("POST", f"/v1/domains/{name}:destroy", {})
            self.dst.rest("DELETE", f"/v1/domains/{name}?delete_volumes=true", expect=204)

    def test_7_a_kernel_the_destination_does_not_allow_is_refused_before_any_byte_moves(self):
        size = 16 * MiB
        kernel = {"kernel_path": os.path.join(self.own_kernels, os.path.basename(self.kernel))}
        name, uuid_, path, sha = self.make_domain(size, data_at=(0,), tag="kref", kernel=kernel)
        op = self.wait(self.migrate(name))
        self.assertEqual(op["state"], "OPERATION_STATE_FAILED", op)
        self.assertIn("this host cannot take the domain as defined: spec.kernel.kernel_path", op["message"])
        self.assertIn("the domain stays here", op["message"])
        self.assertEqual(int(op.get("bytes_done", "0")), 0)
        self.assertNotIn("send-volume", " ".join(op["steps"]))
        self.assert_source_kept(name, uuid_, path, sha, size)
        self.assert_destination_clean(name)
        self.src.rest("DELETE", f"/v1/domains/{name}?delete_volumes=true", expect=204)

    def test_4_bad_requests_are_refused_naming_the_field(self):
        name, _, _, _ = self.make_domain(4 * MiB, data_at=(0,), tag="run")
        status, out = self.src.agent.rest("POST", f"/v1/domains/{name}:migrate", {"destination": "nohost"})
        self.assertEqual(status, 400, out)
        self.assertIn("destination: ", out["message"])
        status, out = self.src.agent.rest("POST", "/v1/domains/hvit-none:migrate", {"destination": "a:1"})
        self.assertEqual(status, 404, out)
        status, out = self.src.agent.rest("POST", "/v1/migrations/99999:cancel", {})
        self.assertEqual(status, 404, out)



class DrainTest(unittest.TestCase):
    """`hvctl drain` between two agents of their own: every domain the source lists moves (two
    owned-volume guests, two at a time), one line each; a guest on a borrowed volume cannot move,
    and the exit code and the last line name it. A destination nobody listens on is refused before
    anything starts."""

    @classmethod
    def setUpClass(cls):
        cls.src = Host("dsrc", [("disk1", 128 * MiB)])
        try:
            cls.dst = Host("ddst", [("disk1", 128 * MiB)])
        except BaseException:
            cls.src.close()
            raise
        cls.hvctl = os.path.join(os.path.dirname(os.environ["HVAGENTD"]), "hvctl")

    @classmethod
    def tearDownClass(cls):
        cls.src.close()
        cls.dst.close()

    def drain(self, *args):
        return subprocess.run([self.hvctl, "--server", self.src.agent.grpc_addr, "drain", *args],
                              capture_output=True, text=True, timeout=180)

    def test_drain_moves_every_movable_domain_and_names_the_rest(self):
        movable = {}
        for _ in range(2):
            name = f"hvit-d{uuid.uuid4().hex[:6]}"
            spec = {"name": name, "vcpus": 1, "memory_mib": 64, "disks": [{"target": "vda", "volume": {
                "pool": "disk1", "name": vol(name), "create_size_bytes": str(8 * MiB)}}]}
            self.src.rest("POST", "/v1/domains", {"spec": spec}, expect=201)
            path = self.src.volumes()[vol(name)]["path"]
            with open(path, "r+b") as f:
                f.write(os.urandom(MiB))
                os.fsync(f.fileno())
            movable[name] = sha256_of(path, 8 * MiB)
        stuck = f"hvit-b{uuid.uuid4().hex[:6]}"
        self.src.rest("POST", "/v1/pools/disk1/volumes", {"name": vol(stuck), "size_bytes": str(4 * MiB)},
                      expect=201)
        self.src.rest("POST", "/v1/domains", {"spec": {"name": stuck, "vcpus": 1, "memory_mib": 64, "disks": [
            {"target": "vda", "volume": {"pool": "disk1", "name": vol(stuck)}}]}}, expect=201)

        # Nobody listens there: refused before any domain is asked to move.
        r = self.drain("--to", f"127.0.0.1:{free_port()}")
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("cannot be reached; nothing was moved", r.stderr)
        self.assertEqual(set(self.src.domains()), set(movable) | {stuck})
        self.assertEqual([o for o in self.src.rest("GET", "/v1/operations").get("operations", [])
                          if o["kind"] == "OPERATION_KIND_MIGRATE_DOMAIN"], [])

        started = time.time()
        r = self.drain("--to", self.dst.agent.grpc_addr, "--parallel", "2")
        print(f"drain of 3 domains: {time.time() - started:.1f} s", flush=True)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        lines = r.stdout.strip().splitlines()
        self.assertEqual(len(lines), 3, r.stdout)
        for name in movable:
            self.assertTrue(any(l.startswith(f"{name} -> {self.dst.agent.grpc_addr}: SUCCEEDED (cold")
                                for l in lines), r.stdout)
        self.assertTrue(any(l.startswith(f"{stuck} -> ") and "REFUSED" in l and "borrowed volume" in l
                            for l in lines), r.stdout)
        self.assertIn(f"hvctl: not moved: {stuck}", r.stderr)
        # Where each one is now, and the bytes that moved.
        self.assertEqual(set(self.src.domains()), {stuck})
        for name, sha in movable.items():
            self.assertIn(name, self.dst.domains())
            self.assertEqual(sha256_of(self.dst.volumes()[vol(name)]["path"], 8 * MiB), sha)
        # A usage error asks nothing of the agents.
        self.assertEqual(self.drain("--parallel", "2").returncode, 2)
        self.assertEqual(self.drain("--to", "a:1", "--parallel", "0").returncode, 2)


class PeerTlsTest(unittest.TestCase):
    """The same move with real mutual TLS: the source agent presents its own client certificate
    (CN hvagent-peer), which the destination maps to the peer role; a controller asks over gRPC.
    The peer certificate reaches nothing but the incoming calls."""

    @classmethod
    def setUpClass(cls):
        cls.pki = tempfile.mkdtemp(prefix="hvit-mig-pki-")
        subprocess.run([os.path.join(REPO, "deploy", "dev-certs.sh"), cls.pki], check=True, capture_output=True)
        pem = lambda n: os.path.join(cls.pki, n)
        tls = (f'[tls]\ncert_file = "{pem("server.crt")}"\nkey_file = "{pem("server.key")}"\n'
               f'client_ca_file = "{pem("ca.crt")}"\n'
               f'[migration]\ncert_file = "{pem("peer.crt")}"\nkey_file = "{pem("peer.key")}"\n'
               '[[auth.identities]]\nname = "hvagent-controller"\nrole = "controller"\n'
               '[[auth.identities]]\nname = "hvagent-operator"\nrole = "operator"\n'
               '[[auth.identities]]\nname = "hvagent-peer"\nrole = "peer"\n')
        cls.client = staticmethod(lambda name: (pem("ca.crt"), pem(f"{name}.crt"), pem(f"{name}.key")))
        opts = {"plaintext": False, "client_tls": cls.client("controller")}
        cls.src = Host("tsrc", [("disk1", 128 * MiB)], tls, opts)
        try:
            cls.dst = Host("tdst", [("disk1", 128 * MiB)], tls, opts)
        except BaseException:
            cls.src.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.src.close()
        cls.dst.close()
        shutil.rmtree(cls.pki, ignore_errors=True)

    def test_a_domain_moves_over_mutual_tls_and_the_peer_may_only_hand_over(self):
        name = f"hvit-t{uuid.uuid4().hex[:6]}"
        from hvagent.v1 import domain_pb2
        spec = domain_pb2.DomainSpec(name=name, vcpus=1, memory_mib=64)
        disk = spec.disks.add(target="vda")
        disk.volume.pool, disk.volume.name, disk.volume.create_size_bytes = "disk1", vol(name), 8 * MiB
        self.src.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec), timeout=60)
        migration = migration_pb2_grpc.MigrationServiceStub(self.src.agent.channel)
        op = migration.MigrateDomain(migration_pb2.MigrateDomainRequest(
            name=name, destination=self.dst.agent.grpc_addr), timeout=30)
        from hvagent.v1 import operation_pb2, operation_pb2_grpc
        ops = operation_pb2_grpc.OperationServiceStub(self.src.agent.channel)
        deadline = time.time() + 60
        while time.time() < deadline:
            o = ops.GetOperation(operation_pb2.GetOperationRequest(id=str(op.operation_id)), timeout=10)
            if o.state != operation_pb2.OPERATION_STATE_RUNNING:
                break
            time.sleep(0.1)
        self.assertEqual(o.state, operation_pb2.OPERATION_STATE_SUCCEEDED, o.message)
        self.assertEqual(self.dst.agent.domains.GetDomain(domain_pb2.GetDomainRequest(name=name), timeout=10).name,
                         name)
        # The peer's certificate on the destination: the incoming calls answer (here NOT_FOUND
        # for an unknown transfer), everything else is PERMISSION_DENIED.
        peer = self.dst.agent.grpc_channel(self.client("peer"))
        incoming = migration_pb2_grpc.MigrationServiceStub(peer)
        with self.assertRaises(grpc.RpcError) as e:
            incoming.AbortIncoming(migration_pb2.IncomingRef(transfer_id="nope"), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        from hvagent.v1 import host_pb2_grpc
        for call in (lambda: host_pb2_grpc.HostServiceStub(peer).GetHost(host_pb2.GetHostRequest(), timeout=10),
                     lambda: incoming.MigrateDomain(migration_pb2.MigrateDomainRequest(name=name,
                                                                                        destination="a:1"),
                                                    timeout=10)):
            with self.assertRaises(grpc.RpcError) as e:
                call()
            self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
            self.assertIn("'hvagent-peer' is peer", e.exception.details())
        # An operator cannot pose as a peer.
        operator = migration_pb2_grpc.MigrationServiceStub(self.dst.agent.grpc_channel(self.client("operator")))
        with self.assertRaises(grpc.RpcError) as e:
            operator.AbortIncoming(migration_pb2.IncomingRef(transfer_id="nope"), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        peer.close()

    def channel_send(self, port, client, header, frames=b""):
        """Opens the destination's volume channel with the client pair `client` (None: plain
        TCP), sends `header` and `frames`, and answers the ReceiveVolumeResult (None when the
        connection ended without one)."""
        import socket, ssl, struct
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            if client is not None:
                ctx = ssl.create_default_context(cafile=self.client("controller")[0])
                ctx.load_cert_chain(client[1], client[2])
                conn = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            else:
                conn = raw
            body = header.SerializeToString()
            conn.sendall(struct.pack(">I", len(body)) + body + frames)
            length = lambda b: 4 + struct.unpack(">I", b[:4])[0] if len(b) >= 4 else None
            got = b""
            while length(got) is None or len(got) < length(got):
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                got += chunk
            return migration_pb2.ReceiveVolumeResult.FromString(got[4:length(got)])
        except (ssl.SSLError, ConnectionError):
            return None
        finally:
            raw.close()

    def test_the_volume_channel_takes_a_peer_over_tls_and_nobody_else(self):
        import struct
        from hvagent.v1 import domain_pb2, storage_pb2
        name = f"hvit-c{uuid.uuid4().hex[:6]}"
        spec = domain_pb2.DomainSpec(name=name, uuid=str(uuid.uuid4()), vcpus=1, memory_mib=64)
        disk = spec.disks.add(target="vda")
        disk.volume.pool, disk.volume.name, disk.volume.create_size_bytes = "disk1", vol(name), MiB
        peer = self.dst.agent.grpc_channel(self.client("peer"))
        incoming = migration_pb2_grpc.MigrationServiceStub(peer)
        prepared = incoming.PrepareIncoming(migration_pb2.PrepareIncomingRequest(spec=spec, source_host="test"),
                                            timeout=30)
        self.assertGreater(prepared.data_port, 0)
        header = migration_pb2.ReceiveVolumeHeader(transfer_id=prepared.transfer_id, disk=0, size_bytes=MiB)
        trailer = migration_pb2.ReceiveVolumeTrailer(sha256=hashlib.sha256(bytes(MiB)).hexdigest()).SerializeToString()
        frames = b"Z" + struct.pack(">Q", MiB) + b"T" + struct.pack(">Q", len(trailer)) + trailer
        try:
            # Plain text: the TLS handshake fails, nothing is answered.
            self.assertIsNone(self.channel_send(prepared.data_port, None, header, frames))
            # A certificate of this CA whose identity is an operator.
            r = self.channel_send(prepared.data_port, self.client("operator"), header, frames)
            self.assertEqual(r.code, grpc.StatusCode.PERMISSION_DENIED.value[0], r)
            self.assertIn("'hvagent-operator' is operator", r.message)
            # A certificate of another CA with the peer's name.
            other = tempfile.mkdtemp(prefix="hvit-mig-pki3-")
            try:
                subprocess.run([os.path.join(REPO, "deploy", "dev-certs.sh"), other], check=True, capture_output=True)
                r = self.channel_send(prepared.data_port, (None, os.path.join(other, "peer.crt"),
                                                           os.path.join(other, "peer.key")), header, frames)
            finally:
                shutil.rmtree(other, ignore_errors=True)
            self.assertEqual(r.code, grpc.StatusCode.UNAUTHENTICATED.value[0], r)
            self.assertIn("client certificate refused", r.message)
            self.assertNotIn(vol(name), [v.name for v in self.dst.agent.storage.ListVolumes(
                storage_pb2.ListVolumesRequest(pool="disk1"), timeout=10).volumes])
            # The peer: the volume is received and its sha256 answered.
            r = self.channel_send(prepared.data_port, self.client("peer"), header, frames)
            self.assertEqual(r.code, 0, r)
            self.assertEqual((r.response.sha256, r.response.size_bytes), (hashlib.sha256(bytes(MiB)).hexdigest(), MiB))
            self.assertRegex(self.dst.agent.log_text(),
                             rf"volume channel: transfer {prepared.transfer_id} disk 0 received from hvagent-peer")
        finally:
            incoming.AbortIncoming(migration_pb2.IncomingRef(transfer_id=prepared.transfer_id), timeout=60)
            peer.close()
        # The abort took the received volume away again.
        self.assertNotIn(vol(name), [v.name for v in self.dst.agent.storage.ListVolumes(
            storage_pb2.ListVolumesRequest(pool="disk1"), timeout=10).volumes])

    def move_from_bad_source(self, migration_cert, migration_key):
        """A third agent with this PKI's server side but another [migration] client pair creates
        a domain and asks to move it here; answers (the ended operation, the domain's name)."""
        tls = self.src.config.replace(os.path.join(self.pki, "peer.crt"), migration_cert).replace(
            os.path.join(self.pki, "peer.key"), migration_key)
        bad = Host("tbad", [("disk1", 64 * MiB)], tls[tls.index("[tls]"):],
                   {"plaintext": False, "client_tls": self.client("controller")})
        try:
            from hvagent.v1 import domain_pb2, operation_pb2, operation_pb2_grpc
            name = f"hvit-x{uuid.uuid4().hex[:6]}"
            spec = domain_pb2.DomainSpec(name=name, vcpus=1, memory_mib=64)
            disk = spec.disks.add(target="vda")
            disk.volume.pool, disk.volume.name, disk.volume.create_size_bytes = "disk1", vol(name), 4 * MiB
            bad.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec), timeout=60)
            r = migration_pb2_grpc.MigrationServiceStub(bad.agent.channel).MigrateDomain(
                migration_pb2.MigrateDomainRequest(name=name, destination=self.dst.agent.grpc_addr), timeout=30)
            ops = operation_pb2_grpc.OperationServiceStub(bad.agent.channel)
            deadline = time.time() + 60
            while (op := ops.GetOperation(operation_pb2.GetOperationRequest(id=str(r.operation_id)), timeout=10)
                   ).state == operation_pb2.OPERATION_STATE_RUNNING:
                self.assertLess(time.time(), deadline)
                time.sleep(0.1)
            self.assertEqual(bad.agent.domains.GetDomain(domain_pb2.GetDomainRequest(name=name), timeout=10).name,
                             name)
            return op, name
        finally:
            bad.close()

    def assert_nothing_arrived(self, name):
        from hvagent.v1 import domain_pb2, operation_pb2, operation_pb2_grpc, storage_pb2
        names = [d.name for d in self.dst.agent.domains.ListDomains(domain_pb2.ListDomainsRequest(), timeout=10).domains]
        self.assertNotIn(name, names)
        volumes = self.dst.agent.storage.ListVolumes(storage_pb2.ListVolumesRequest(pool="disk1"), timeout=10)
        self.assertNotIn(vol(name), [v.name for v in volumes.volumes])
        ops = operation_pb2_grpc.OperationServiceStub(self.dst.agent.channel).ListOperations(
            operation_pb2.ListOperationsRequest(), timeout=10)
        self.assertEqual([o for o in ops.operations if o.domain == name], [])

    def test_a_source_certificate_from_another_ca_is_refused_and_nothing_arrives(self):
        # Same names (CN hvagent-peer), another CA: the destination's TLS handshake refuses it.
        other = tempfile.mkdtemp(prefix="hvit-mig-pki2-")
        try:
            subprocess.run([os.path.join(REPO, "deploy", "dev-certs.sh"), other], check=True, capture_output=True)
            op, name = self.move_from_bad_source(os.path.join(other, "peer.crt"), os.path.join(other, "peer.key"))
        finally:
            shutil.rmtree(other, ignore_errors=True)
        self.assertEqual(op.state, operation_pb2.OPERATION_STATE_FAILED, op)
        self.assertIn("destination prepare: UNAUTHENTICATED: client certificate refused", op.message)
        self.assertIn("the domain stays here", op.message)
        self.assertNotIn("send-volume", " ".join(op.steps))
        self.assert_nothing_arrived(name)

    def test_a_source_whose_role_may_not_send_is_refused_and_nothing_arrives(self):
        # A certificate of this CA whose identity is an operator: PrepareIncoming is not its call.
        op, name = self.move_from_bad_source(os.path.join(self.pki, "operator.crt"),
                                             os.path.join(self.pki, "operator.key"))
        self.assertEqual(op.state, operation_pb2.OPERATION_STATE_FAILED, op)
        self.assertIn("destination prepare: PERMISSION_DENIED", op.message)
        self.assertIn("'hvagent-operator' is operator", op.message)
        self.assertIn("the domain stays here", op.message)
        self.assert_nothing_arrived(name)


if __name__ == "__main__":
    unittest.main()
