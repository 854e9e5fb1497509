"""A table of hostile inputs across both APIs (docs/security.md): XML and shell metacharacters in
string fields, path traversal, overflowing integers, huge repeated fields, invalid UTF-8, deep
JSON nesting, unknown enum values, wrongly typed JSON. Each gets its expected code, and after
each the domains libvirt has and the storage pool (a GPT disk on a loop device) are checked
unchanged. Then host paths: the host's disks, /etc/shadow, /proc, a pool's own loop device and
symbolic links out of the allowed directory never reach a guest, and their owner and mode never
change; allowed images are defined with libvirt told never to chown them."""

import json
import os
import shutil
import stat
import subprocess
import tempfile

import grpc

from agent_harness import AgentTestCase, Agent, all_domain_names, virsh
from hvagent.v1 import domain_pb2, storage_pb2

MiB = 1 << 20
XML = "a'/><devices><disk type='block'><source dev='/dev/sda'/></disk></devices><x a='"
SHELL = "x; rm -rf / #"
SUBST = "$(reboot)"
TICKS = "`id`"
TRAVERSAL = "../../etc/passwd"
NUL = "a\x00b"
NEWLINE = "a\nb"


def spec_json(**overrides):
    spec = {"name": "hvit-hostile", "vcpus": 1, "memory_mib": 64, "firmware": {"type": "TYPE_BIOS"}}
    spec.update(overrides)
    return spec


def rest_cases():
    """(what, method, path, raw body bytes, expected HTTP status)."""
    j = lambda obj: json.dumps(obj).encode()
    create = lambda **o: j({"spec": spec_json(**o)})
    disk = lambda **d: create(disks=[{"target": "vda", **d}])
    vol = lambda **v: create(disks=[{"target": "vda", "volume": {"pool": "disk1", "name": "v", **v}}])
    deep = b"[" * 20000 + b"]" * 20000
    return [
        ("XML in the name", "POST", "/v1/domains", create(name=XML), 400),
        ("shell in the name", "POST", "/v1/domains", create(name=SHELL), 400),
        ("command substitution in the name", "POST", "/v1/domains", create(name=SUBST), 400),
        ("backticks in the name", "POST", "/v1/domains", create(name=TICKS), 400),
        ("NUL in the name", "POST", "/v1/domains", create(name=NUL), 400),
        ("newline in the name", "POST", "/v1/domains", create(name=NEWLINE), 400),
        ("traversal as the name", "POST", "/v1/domains", create(name=TRAVERSAL), 400),
        ("invalid UTF-8 in the body", "POST", "/v1/domains",
         b'{"spec": {"name": "\xff\xfe", "vcpus": 1, "memory_mib": 64}}', 400),
        ("deep JSON nesting", "POST", "/v1/domains", deep, 400),
        ("unknown enum value", "POST", "/v1/domains", create(firmware={"type": "TYPE_COREBOOT"}), 400),
        ("unknown enum number", "POST", "/v1/domains", create(firmware={"type": 77}), 400),
        ("negative vcpus", "POST", "/v1/domains", create(vcpus=-1), 400),
        ("vcpus past uint32", "POST", "/v1/domains", create(vcpus=2 ** 32), 400),
        ("memory past uint64", "POST", "/v1/domains", create(memory_mib=str(2 ** 64)), 400),
        ("float memory", "POST", "/v1/domains", create(memory_mib=1.5), 400),
        ("huge repeated disks", "POST", "/v1/domains",
         create(disks=[{"target": "vda", "source_path": "/x"}] * 5000), 400),
        ("huge repeated NICs", "POST", "/v1/domains", create(nics=[{"network": "default"}] * 5000), 400),
        ("body over the limit", "POST", "/v1/domains", b" " * (2 * MiB), 413),
        ("XML in a disk path", "POST", "/v1/domains", disk(source_path="/tmp/" + XML), 400),
        ("traversal in a disk path", "POST", "/v1/domains", disk(source_path=TRAVERSAL, type="TYPE_BLOCK"), 400),
        ("relative disk path", "POST", "/v1/domains", disk(source_path="disk.img"), 400),
        ("shell in a disk target", "POST", "/v1/domains", disk(source_path="/x", target=SHELL), 400),
        ("XML in the kernel cmdline path", "POST", "/v1/domains",
         j({"spec": {**spec_json(), "firmware": None, "kernel": {"kernel_path": "/boot/" + XML}}}), 400),
        ("XML in a bridge", "POST", "/v1/domains", create(nics=[{"bridge": XML}]), 400),
        ("shell in a MAC", "POST", "/v1/domains", create(nics=[{"network": "default", "mac": SHELL}]), 400),
        ("XML in the uuid", "POST", "/v1/domains", create(uuid=XML), 400),
        ("shell in the machine", "POST", "/v1/domains", create(machine=SHELL), 400),
        ("shell in the cpu model", "POST", "/v1/domains", create(cpu_model=SHELL), 400),
        ("bad gic version", "POST", "/v1/domains", create(gic_version="4"), 400),
        ("volume in a pool that is not configured", "POST", "/v1/domains",
         create(disks=[{"target": "vda", "volume": {"pool": "nope", "name": "v", "create_size_bytes": "1048576"}}]),
         404),
        ("shell in a volume name", "POST", "/v1/domains", vol(name=SHELL, create_size_bytes="1048576"), 400),
        ("traversal as a volume name", "POST", "/v1/domains", vol(name=TRAVERSAL, create_size_bytes="1048576"), 400),
        ("negative volume size", "POST", "/v1/domains", vol(create_size_bytes="-1"), 400),
        ("volume size past uint64", "POST", "/v1/domains", vol(create_size_bytes=str(2 ** 64)), 400),
        ("volume bigger than the disk", "POST", "/v1/domains", vol(create_size_bytes=str(2 ** 50)), 507),
        ("volume and path at once", "POST", "/v1/domains",
         create(disks=[{"target": "vda", "source_path": "/x", "volume": {"pool": "disk1", "name": "v"}}]), 400),
        ("XML in a domain path segment", "POST", "/v1/domains/" + "%3Cdomain%3E" + ":start", b"", 400),
        ("traversal in a domain path", "DELETE", "/v1/domains/..%2F..%2Fetc", b"", 404),
        ("unknown action", "POST", "/v1/domains/x:format", b"", 404),
        ("create volume: shell name", "POST", "/v1/pools/disk1/volumes", j({"name": SHELL, "size_bytes": "1048576"}),
         400),
        ("create volume: traversal name", "POST", "/v1/pools/disk1/volumes",
         j({"name": TRAVERSAL, "size_bytes": "1048576"}), 400),
        ("create volume: zero size", "POST", "/v1/pools/disk1/volumes", j({"name": "v", "size_bytes": "0"}), 400),
        ("create volume: unknown field", "POST", "/v1/pools/disk1/volumes", j({"name": "v", "sise": 1}), 400),
        ("create volume: pool that is not configured", "POST", "/v1/pools/..%2Fdev%2Fsda/volumes",
         j({"name": "v", "size_bytes": "1048576"}), 404),
        ("resize: negative", "POST", "/v1/pools/disk1/volumes/none:resize", j({"size_bytes": "-5"}), 400),
        ("attach: XML domain", "POST", "/v1/pools/disk1/volumes/none:attach", j({"domain": XML}), 404),
        ("force is not a boolean", "DELETE", "/v1/domains/x?force=yes%3Breboot", b"", 400),
        # protobuf's JSON parser takes "yes" for a bool and "2" for an int32; REST does not.
        ("start given as a string", "POST", "/v1/domains", j({"spec": spec_json(), "start": "yes"}), 400),
        ("start given as a number", "POST", "/v1/domains", j({"spec": spec_json(), "start": 1}), 400),
        ("vcpus given as a string", "POST", "/v1/domains", create(vcpus="1"), 400),
        ("serial_console given as a string", "POST", "/v1/domains", create(serial_console="true"), 400),
        ("enum given as a boolean", "POST", "/v1/domains", create(firmware={"type": True}), 400),
        ("disks given as an object", "POST", "/v1/domains", create(disks={"target": "vda"}), 400),
    ]


def grpc_cases(stubs):
    """(what, callable, expected gRPC code)."""
    d, s = stubs.domains, stubs.storage
    spec = lambda **o: domain_pb2.DomainSpec(**{"name": "hvit-hostile", "vcpus": 1, "memory_mib": 64, **o})
    create = lambda sp: (lambda: d.CreateDomain(domain_pb2.CreateDomainRequest(spec=sp)))
    big_disks = spec()
    for _ in range(5000):
        big_disks.disks.add(target="vda", source_path="/x")
    unknown_enum = spec()
    unknown_enum.firmware.type = 42  # not a FirmwareBoot.Type value
    return [
        ("XML name", create(spec(name=XML)), grpc.StatusCode.INVALID_ARGUMENT),
        ("shell name", create(spec(name=SHELL)), grpc.StatusCode.INVALID_ARGUMENT),
        ("NUL name", create(spec(name=NUL)), grpc.StatusCode.INVALID_ARGUMENT),
        ("max vcpus", create(spec(vcpus=2 ** 32 - 1)), grpc.StatusCode.INVALID_ARGUMENT),
        ("max memory", create(spec(memory_mib=2 ** 64 - 1)), grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown enum", create(unknown_enum), grpc.StatusCode.INVALID_ARGUMENT),
        ("5000 disks", create(big_disks), grpc.StatusCode.INVALID_ARGUMENT),
        ("traversal disk path", create(spec(disks=[domain_pb2.Disk(target="vda", source_path=TRAVERSAL)])),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("volume size past lvm's reach", create(spec(disks=[domain_pb2.Disk(
            target="vda", volume=domain_pb2.DiskVolume(pool="disk1", name="v", create_size_bytes=2 ** 64 - 1))])),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("create volume with shell name",
         lambda: s.CreateVolume(storage_pb2.CreateVolumeRequest(pool="disk1", name=SUBST, size_bytes=MiB)),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("create volume in an unknown pool",
         lambda: s.CreateVolume(storage_pb2.CreateVolumeRequest(pool=TRAVERSAL, name="v", size_bytes=MiB)),
         grpc.StatusCode.NOT_FOUND),
        ("delete a volume by traversal",
         lambda: s.DeleteVolume(storage_pb2.VolumeRef(pool="disk1", name=TRAVERSAL)), grpc.StatusCode.INVALID_ARGUMENT),
        ("attach a missing volume to an XML domain", lambda: s.AttachVolume(storage_pb2.AttachVolumeRequest(
            pool="disk1", name="none", domain=XML)), grpc.StatusCode.NOT_FOUND),
        ("shutdown with an absurd timeout",
         lambda: d.ShutdownDomain(domain_pb2.ShutdownDomainRequest(name="hvit-none", timeout_seconds=2 ** 32 - 1)),
         None),  # NOT_FOUND or INVALID_ARGUMENT: either way nothing happens
    ]


def owner_and_mode(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), stat.S_IFMT(st.st_mode)


class HostPathTest:
    """Paths on the host a caller names for a disk, kernel, initrd or firmware (mixed into
    HostileInputTest, whose pool is on a loop device). Only files in the agent's [security]
    image_dirs (the class's workdir) are taken, and only as disk images; block devices only as
    pool volumes. Refusals are PERMISSION_DENIED / 403 naming the field."""

    @classmethod
    def make_host_files(cls):
        d = cls.workdir
        cls.good = os.path.join(d, "good.raw")
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", cls.good, "16M"], check=True)
        os.symlink("/etc/shadow", os.path.join(d, "shadow.raw"))
        os.symlink("../../etc/shadow", os.path.join(d, "relative.raw"))
        os.mknod(os.path.join(d, "sda.raw"), 0o600 | stat.S_IFBLK, os.makedev(8, 0))
        shared = os.path.join(d, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)  # anyone could swap the file after the agent looked
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", os.path.join(shared, "x.raw"), "1M"], check=True)

    def targets(self):
        paths = ["/etc/shadow", "/dev/vda", "/dev/sda", self.loop, self.good, "/root/.ssh/id_rsa"]
        return {p: owner_and_mode(p) for p in paths if os.path.lexists(p)}

    def hostile(self):
        """(what, spec overrides, field named)."""
        d = self.workdir
        disk = lambda path, **kw: {"disks": [{"target": "vda", "source_path": path, **kw}]}
        return [
            ("the host's disk", disk("/dev/vda", type="TYPE_BLOCK"), "spec.disks[0].source_path"),
            ("the host's disk as a file", disk("/dev/sda"), "spec.disks[0].source_path"),
            ("a pool's loop device", disk(self.loop, type="TYPE_BLOCK"), "spec.disks[0].source_path"),
            ("/etc/shadow", disk("/etc/shadow"), "spec.disks[0].source_path"),
            ("/etc/shadow through /proc", disk("/proc/self/root/etc/shadow"), "spec.disks[0].source_path"),
            ("a symlink out of the allowed directory", disk(f"{d}/shadow.raw"), "spec.disks[0].source_path"),
            ("a relative symlink out of it", disk(f"{d}/relative.raw"), "spec.disks[0].source_path"),
            ("a device node inside it", disk(f"{d}/sda.raw"), "spec.disks[0].source_path"),
            ("a file under a directory others can write", disk(f"{d}/shared/x.raw"), "spec.disks[0].source_path"),
            ("a non-canonical path", disk(f"{d}//good.raw"), "spec.disks[0].source_path"),
            ("an allowed image handed over as a block device", disk(self.good, type="TYPE_BLOCK"),
             "spec.disks[0].type"),
            ("the second disk", {"disks": [{"target": "vda", "source_path": self.good},
                                           {"target": "vdb", "source_path": "/etc/shadow"}]},
             "spec.disks[1].source_path"),
            ("/etc/shadow as the kernel", {"firmware": None, "kernel": {"kernel_path": "/etc/shadow",
                                                                       "initrd_path": "/root/.ssh/id_rsa"}},
             "spec.kernel.kernel_path"),
            ("an image as the kernel", {"firmware": None, "kernel": {"kernel_path": self.good}},
             "spec.kernel.kernel_path"),
            ("/etc/shadow as the firmware", {"firmware": {"type": "TYPE_UEFI", "loader_path": "/etc/shadow"}},
             "spec.firmware.loader_path"),
        ]

    def test_paths_outside_the_allowed_directories_are_refused(self):
        before, domains = self.targets(), all_domain_names()
        for what, overrides, field in self.hostile():
            with self.subTest(what=what):
                status, reply = self.agent.rest("POST", "/v1/domains",
                                                {"spec": spec_json(**overrides), "start": True})
                self.assertEqual(status, 403, reply)
                self.assertEqual(reply["code"], "PERMISSION_DENIED", reply)
                self.assertTrue(reply["message"].startswith(field + ": "), reply)
                message = reply["message"]
                if field.endswith(".type"):
                    self.assertIn("pool volumes", message)
                elif ".disks[" in field:
                    self.assertIn(f"allowed for disk images: {self.workdir} (security.image_dirs)", message)
                else:
                    self.assertIn("security.kernel_dirs" if ".kernel." in field else "security.firmware_dirs", message)
                self.assertEqual(self.targets(), before)
                self.assertEqual(all_domain_names(), domains)
        # ".." is refused as malformed before any lookup.
        status, reply = self.agent.rest("POST", "/v1/domains", {"spec": spec_json(
            disks=[{"target": "vda", "source_path": f"{self.workdir}/../../etc/shadow"}])})
        self.assertEqual(status, 400, reply)
        self.assertIn("spec.disks[0].source_path", reply["message"])
        self.assertEqual(self.targets(), before)

    def test_grpc_refuses_the_same(self):
        before = self.targets()
        spec = domain_pb2.DomainSpec(name="hvit-hostile", vcpus=1, memory_mib=64)
        spec.disks.add(target="vda", source_path="/dev/vda", type=domain_pb2.Disk.TYPE_BLOCK)
        with self.assertRaises(grpc.RpcError) as cm:
            self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec, start=True))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertIn("spec.disks[0].source_path", cm.exception.details())
        spec = domain_pb2.DomainSpec(name="hvit-hostile", vcpus=1, memory_mib=64)
        spec.kernel.kernel_path = "/proc/self/root/etc/shadow"
        with self.assertRaises(grpc.RpcError) as cm:
            self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec, start=True))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertIn("spec.kernel.kernel_path", cm.exception.details())
        self.assertEqual(self.targets(), before)

    def test_allowed_image_is_never_relabelled(self):
        before = owner_and_mode(self.good)
        status, reply = self.agent.rest("POST", "/v1/domains", {"spec": spec_json(
            disks=[{"target": "vda", "source_path": self.good}]), "start": True})
        self.assertEqual(status, 201, reply)
        # This libvirtd runs with dynamic_ownership = 0, so it would not chown anyway: what
        # protects a host where it does is in the definition.
        xml = virsh("dumpxml", "hvit-hostile").stdout
        self.assertRegex(xml, rf"<source file='{self.good}'( index='\d+')?>\s*<seclabel model='dac' relabel='no'/>")
        self.assertEqual(owner_and_mode(self.good), before)
        status, reply = self.agent.rest("DELETE", "/v1/domains/hvit-hostile?force=true")
        self.assertIn(status, (200, 204), reply)
        self.assertEqual(owner_and_mode(self.good), before)


class HostileInputTest(HostPathTest, AgentTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="hvit-hostile-")
        cls.img = os.path.join(cls.dir, "disk.img")
        with open(cls.img, "wb") as f:
            f.truncate(64 * MiB)
        cls.loop = subprocess.run(["losetup", "--find", "--show", "--partscan", cls.img], check=True,
                                  capture_output=True, text=True).stdout.strip()
        try:
            super().setUpClass()
            cls.make_host_files()
        except BaseException:
            cls.cleanup_loop()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.cleanup_loop()

    @classmethod
    def cleanup_loop(cls):
        subprocess.run(["losetup", "-d", cls.loop], check=False)
        os.unlink(cls.img)
        os.rmdir(cls.dir)

    @classmethod
    def agent_config(cls):
        return f'[[storage.pools]]\nname = "disk1"\ntype = "partition"\ndisk = "{cls.loop}"\nwipe = "zero"\n'

    def state(self):
        table = subprocess.run(["sfdisk", "--json", self.loop], capture_output=True, text=True).stdout
        volumes = [v.name for v in self.agent.storage.ListVolumes(storage_pb2.ListVolumesRequest(pool="disk1")).volumes]
        return all_domain_names(), table, volumes

    def test_at_least_fifty_hostile_inputs_change_nothing(self):
        before = self.state()
        rest, rpc = rest_cases(), grpc_cases(self.agent)
        self.assertGreaterEqual(len(rest) + len(rpc), 50)
        for what, method, path, body, want in rest:
            with self.subTest(api="rest", what=what):
                status, reply = self.agent.rest(method, path, raw=body)
                self.assertEqual(status, want, reply)
                if status != 413:
                    self.assertIsInstance(reply, dict)
                    self.assertTrue(reply.get("message"), reply)
                self.assertEqual(self.state(), before)
        for what, call, want in rpc:
            with self.subTest(api="grpc", what=what):
                with self.assertRaises(grpc.RpcError) as cm:
                    call()
                if want is not None:
                    self.assertEqual(cm.exception.code(), want, cm.exception.details())
                self.assertEqual(self.state(), before)
        status, _ = self.agent.rest("GET", "/healthz")
        self.assertEqual(status, 200)  # and the agent is still serving

    def test_wrong_json_types_name_the_field(self):
        for body, field in [({"spec": spec_json(), "start": "yes"}, "start"),
                            ({"spec": spec_json(vcpus="2")}, "spec.vcpus"),
                            ({"spec": spec_json(disks=[{"target": "vda", "source_path": "/x", "readonly": "no"}])},
                             "spec.disks[0].readonly")]:
            with self.subTest(field=field):
                status, reply = self.agent.rest("POST", "/v1/domains", body)
                self.assertEqual(status, 400, reply)
                self.assertEqual(reply["code"], "INVALID_ARGUMENT", reply)
                self.assertIn(f"{field}: must be a JSON", reply["message"])
        self.assertNotIn("hvit-hostile", all_domain_names())


class UnsafeImageDirectoryTest(AgentTestCase):
    """An allowed directory others could write (or one under such a directory, or not root's)
    would let them swap a file between the agent's check and libvirt's open: the agent refuses
    to start, naming the directory."""

    def start_fails(self, directory, expect):
        with self.assertRaises(AssertionError) as cm:
            Agent(image_dirs=[directory]).stop()
        text = str(cm.exception)
        self.assertIn("exited with 1", text)
        self.assertIn(f"security.image_dirs: {directory}", text)
        self.assertIn(expect, text)

    def test_refuses_to_start(self):
        base = tempfile.mkdtemp(prefix="hvit-unsafe-")
        try:
            open_dir = os.path.join(base, "open")
            os.mkdir(open_dir)
            os.chmod(open_dir, 0o777)
            self.start_fails(open_dir, f"{open_dir} is writable by group or others (mode 0777)")
            group_dir = os.path.join(base, "group")
            os.mkdir(group_dir)
            os.chmod(group_dir, 0o775)
            self.start_fails(group_dir, f"{group_dir} is writable by group or others (mode 0775)")
            below = os.path.join(open_dir, "images")
            os.mkdir(below, 0o755)
            self.start_fails(below, f"the directory above it, {open_dir} is writable by group or others")
            foreign = os.path.join(base, "foreign")
            os.mkdir(foreign, 0o755)
            os.chown(foreign, 65534, 65534)
            self.start_fails(foreign, f"{foreign} is owned by uid 65534, not root")
            link = os.path.join(base, "link")
            os.symlink(self.workdir, link)
            self.start_fails(link, f"{link} is a symbolic link")
            self.start_fails("/dev", "never handed to a guest")
        finally:
            shutil.rmtree(base, ignore_errors=True)
