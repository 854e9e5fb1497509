"""Open vSwitch ports through the agent on real parts: Debian's openvswitch-switch with the
userspace datapath (datapath_type=netdev, no kernel module), real libvirtd + QEMU TCG guests
(the shared busybox guest, static IPs from hv.ip= on its kernel command line). The agent asks
libvirt for <virtualport type='openvswitch'>; OVS's own database is what the tests read back.

ovsdb-server and ovs-vswitchd are started here when none answer (their database in a temporary
directory, the socket at OVS's default path, which libvirt's ovs-vsctl calls use) and stopped
again; the bridge is made here and removed after."""

import os
import re
import select
import shutil
import subprocess
import tempfile
import time
import uuid

import grpc

from agent_harness import AgentTestCase, virsh, with_security, test_guest
from hvagent.v1 import console_pb2_grpc, domain_pb2
from test_console import ConsoleStream

GUEST_PREFIX = "hvnet-"  # not hvit-: AgentTestCase.tearDown removes those after every test
OVS_RUN = "/var/run/openvswitch"
BRIDGE = "hvovs0"
MTU = 1400


def ovs(*args, check=True):
    r = subprocess.run(["ovs-vsctl", "--timeout=10", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"ovs-vsctl {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout.strip()


def ovs_answers():
    """Whether an Open vSwitch answers at the default socket. A running ovsdb-server is given
    30 s: on a loaded host 3 s can pass before it answers, and a second server started then
    would take its socket (and delete it when stopped)."""
    running = subprocess.run(["pgrep", "-x", "ovsdb-server"], capture_output=True).returncode == 0
    wait = 30 if running else 3
    return subprocess.run(["ovs-vsctl", f"--timeout={wait}", "show"], capture_output=True,
                          timeout=wait + 10).returncode == 0


class OvsDaemons:
    """The switch's two daemons, started only when none answer; stop() ends only those."""

    def __init__(self):
        self.dir = None
        if ovs_answers():
            return
        self.dir = tempfile.mkdtemp(prefix="hvnet-ovs-")
        os.makedirs(OVS_RUN, exist_ok=True)
        db = os.path.join(self.dir, "conf.db")
        subprocess.run(["ovsdb-tool", "create", db, "/usr/share/openvswitch/vswitch.ovsschema"], check=True)
        subprocess.run(["ovsdb-server", f"--remote=punix:{OVS_RUN}/db.sock",
                        f"--pidfile={self.dir}/ovsdb-server.pid", "--detach",
                        f"--log-file={self.dir}/ovsdb-server.log", db], check=True, timeout=30)
        ovs("--no-wait", "init")
        subprocess.run(["ovs-vswitchd", f"--pidfile={self.dir}/ovs-vswitchd.pid", "--detach",
                        f"--log-file={self.dir}/ovs-vswitchd.log", f"unix:{OVS_RUN}/db.sock"],
                       check=True, timeout=30)

    def stop(self):
        if self.dir is None:
            return
        for name in ("ovs-vswitchd", "ovsdb-server"):
            try:
                with open(os.path.join(self.dir, name + ".pid")) as f:
                    os.kill(int(f.read().strip()), 15)
            except (OSError, ValueError):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def port_of(iface_id):
    """The OVS interface (libvirt's tap, vnetN) whose external_ids:iface-id is iface_id."""
    out = ovs("--bare", "--columns=name", "find", "Interface", f"external_ids:iface-id={iface_id}")
    return out.split()[0] if out else None


def tcpdump_listening(dump, timeout=20):
    """Reads tcpdump's stderr until its 'listening on' line, which it prints once its capture
    socket is open (a fixed 2 s wait before); returns what it read (tcpdump's exit or the
    timeout end the wait, and the caller's check of that line fails). Read from the descriptor,
    unbuffered, so that communicate() later gets the rest."""
    fd, head = dump.stderr.fileno(), b""
    deadline = time.time() + timeout
    while b"listening on" not in head and (left := deadline - time.time()) > 0:
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            head += chunk
    return head.decode(errors="replace")


class OvsNetworkingTest(AgentTestCase):
    @classmethod
    def agent_config(cls):
        cls.kernel, cls.initrd = test_guest()
        return with_security(f'[network]\novs_bridges = ["{BRIDGE}"]\nbridges = []\n',
                             kernel_dirs=[os.path.dirname(cls.kernel)])

    @classmethod
    def setUpClass(cls):
        cls.daemons = OvsDaemons()
        cls.guests = []
        try:
            ovs("--may-exist", "add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev")
            subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
            super().setUpClass()
            cls.console = console_pb2_grpc.ConsoleServiceStub(cls.agent.channel)
            # a and b on VLAN 100, c on VLAN 200; the same subnet, so only the tag keeps c apart.
            cls.ports = {k: str(uuid.uuid4()) for k in "abc"}
            cls.ips = {"a": "10.77.0.1", "b": "10.77.0.2", "c": "10.77.0.3"}
            cls.names = {k: GUEST_PREFIX + k + "-" + uuid.uuid4().hex[:6] for k in "abc"}
            for k, vlan in (("a", 100), ("b", 100), ("c", 200)):
                cls.create_guest(k, vlan)
            cls.streams = {k: ConsoleStream(cls.console, cls.names[k], write=True) for k in "abc"}
            for k in "abc":
                word = "ready-" + uuid.uuid4().hex[:6]
                cls.streams[k].wait_for_line(word, timeout=240, retype=f"echo {word}\n")
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def create_guest(cls, k, vlan):
        spec = domain_pb2.DomainSpec(name=cls.names[k], vcpus=1, memory_mib=192, serial_console=True)
        spec.kernel.kernel_path = cls.kernel
        spec.kernel.initrd_path = cls.initrd
        spec.kernel.cmdline = f"console=ttyS0 quiet hv.ip={cls.ips[k]}/24"
        nic = spec.nics.add(model="virtio", mtu=MTU)
        nic.ovs.bridge = BRIDGE
        nic.ovs.interface_id = cls.ports[k]
        nic.ovs.vlan = vlan
        cls.guests.append(cls.names[k])
        cls.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec, start=True))

    @classmethod
    def tearDownClass(cls):
        for s in getattr(cls, "streams", {}).values():
            s.close()
        for name in cls.guests:
            virsh("destroy", name, check=False)
            virsh("undefine", name, check=False)
        if hasattr(cls, "agent"):
            super().tearDownClass()
        try:
            ovs("--if-exists", "del-br", BRIDGE, check=False)
        finally:
            cls.daemons.stop()

    def run_on(self, k, command, timeout=60):
        """Runs `command` in guest k's shell; True when it exited 0."""
        tag = uuid.uuid4().hex[:8]
        s = self.streams[k]
        s.type(f"if {command} >/dev/null 2>&1; then echo ok-{tag}; else echo fail-{tag}; fi\n")
        pattern = re.compile(r"(^|[\r\n])(ok|fail)-" + tag + r"\r?\n")
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = pattern.search(s.text())
            if m:
                return m.group(2) == "ok"
            time.sleep(0.1)
        raise AssertionError(f"no answer to {command!r} from {k} in {timeout} s: {s.text()[-1500:]!r}")

    def test_ports_carry_the_requested_iface_id_tag_and_mtu(self):
        for k, vlan in (("a", 100), ("b", 100), ("c", 200)):
            port = port_of(self.ports[k])
            self.assertIsNotNone(port, f"no OVS interface with iface-id {self.ports[k]}: {ovs('show')}")
            # Named by its port, as Nova names a Neutron port's tap: the same at every start.
            self.assertEqual(port, "tap" + self.ports[k][:11])
            self.assertEqual(ovs("get", "Port", port, "tag"), str(vlan))
            self.assertEqual(ovs("port-to-br", port), BRIDGE)
            link = subprocess.run(["ip", "-o", "link", "show", port], capture_output=True, text=True).stdout
            self.assertIn(f" mtu {MTU} ", link)
            # GetDomain lists the NIC as the spec gave it, with that tap as its host device.
            d = self.agent.domains.GetDomain(domain_pb2.GetDomainRequest(name=self.names[k]))
            self.assertEqual([(n.nic.ovs.bridge, n.nic.ovs.interface_id, n.nic.ovs.vlan, n.nic.mtu, n.host_device)
                              for n in d.nics], [(BRIDGE, self.ports[k], vlan, MTU, port)])
        # The guest's side of the MTU (virtio's host_mtu).
        self.assertTrue(self.run_on("a", f"grep -qx {MTU} /sys/class/net/eth0/mtu"))

    def test_same_vlan_reaches_other_vlan_does_not(self):
        # The userspace datapath under TCG is slow to learn: a few tries before judging.
        reached = any(self.run_on("a", "ping -c 1 -W 3 10.77.0.2") for _ in range(5))
        self.assertTrue(reached, "a cannot ping b on VLAN 100")
        self.assertTrue(self.run_on("b", "ping -c 2 -W 3 10.77.0.1"))
        self.assertFalse(self.run_on("a", "ping -c 3 -W 2 10.77.0.3"), "a reached c across VLANs")
        self.assertFalse(self.run_on("c", "ping -c 3 -W 2 10.77.0.2"), "c reached b across VLANs")

    def capture_on_trunk(self, act):
        """A veth pair: one end an untagged (trunk) port of the OVS bridge, as a host's uplink to
        the physical network would be; the other end in a namespace of its own, where tcpdump
        reads what the switch sends out while act(ns, ns_end) runs. Returns tcpdump's lines."""
        ns = "hvnet-trk-" + uuid.uuid4().hex[:6]
        host_end, ns_end = "hvtrk" + uuid.uuid4().hex[:4], "hvtrp" + uuid.uuid4().hex[:4]
        subprocess.run(["ip", "netns", "add", ns], check=True)
        dump = None
        try:
            subprocess.run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end,
                            "netns", ns], check=True)
            subprocess.run(["ip", "link", "set", host_end, "up"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", ns_end, "up"], check=True)
            ovs("add-port", BRIDGE, host_end)
            self.assertEqual(ovs("get", "Port", host_end, "tag"), "[]")
            dump = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", ns_end, "-e", "-n",
                                     "-l", "--immediate-mode", "-Z", "root"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            err_head = tcpdump_listening(dump)  # its socket open before anything is sent
            act(ns, ns_end)
            time.sleep(1)
            dump.terminate()
            out, err = dump.communicate(timeout=20)
            err = err_head + err
        finally:
            if dump and dump.poll() is None:
                dump.kill()
                dump.wait()
            ovs("--if-exists", "del-port", BRIDGE, host_end, check=False)
            subprocess.run(["ip", "link", "del", host_end], check=False)
            subprocess.run(["ip", "netns", "del", ns], check=False)
        self.assertIn("listening on", err)
        return out.splitlines()

    def test_trunk_uplink_in_another_namespace_sees_the_agent_s_tags(self):
        # Broadcast ARP for an address nobody has is flooded to the trunk, so each guest's frames
        # show up there with its port's tag.
        def act(ns, ns_end):
            self.run_on("a", "ping -c 3 -W 1 10.77.0.201")
            self.run_on("c", "ping -c 3 -W 1 10.77.0.203")
        lines = self.capture_on_trunk(act)
        from_a = [l for l in lines if "who-has 10.77.0.201 tell 10.77.0.1" in l]
        from_c = [l for l in lines if "who-has 10.77.0.203 tell 10.77.0.3" in l]
        self.assertTrue(from_a, f"no ARP from guest a on the trunk: {lines[-30:]}")
        self.assertTrue(from_c, f"no ARP from guest c on the trunk: {lines[-30:]}")
        # Every one of them tagged: 802.1Q with a's port tag (100) and c's (200), none untagged.
        for line in from_a:
            self.assertIn("ethertype 802.1Q (0x8100)", line)
            self.assertRegex(line, r"vlan 100,")
        for line in from_c:
            self.assertIn("ethertype 802.1Q (0x8100)", line)
            self.assertRegex(line, r"vlan 200,")

    def test_tagged_frames_from_the_trunk_reach_only_that_vlan_s_guests(self):
        # The other way: ARP requests sent into the trunk with an 802.1Q header (a raw socket in
        # the namespace; this kernel has no VLAN devices). Guest b (VLAN 100) answers one tagged
        # 100 for its address and c (VLAN 200) one tagged 200 for its own; asked for b's address
        # on VLAN 200, or for c's on VLAN 100, nobody answers.
        sender = os.path.join(os.path.dirname(os.path.abspath(__file__)), "send_tagged_arp.py")
        asks = [(100, "10.77.0.2", "02:00:00:77:00:64"), (200, "10.77.0.2", "02:00:00:77:00:c8"),
                (100, "10.77.0.3", "02:00:00:77:01:64"), (200, "10.77.0.3", "02:00:00:77:01:c8")]

        def act(ns, ns_end):
            for _ in range(3):  # the userspace datapath under TCG can drop the first
                for vlan, target, mac in asks:
                    subprocess.run(["ip", "netns", "exec", ns, "python3", sender, ns_end, str(vlan), mac,
                                    "10.77.0.254", target], check=True, timeout=30)
                time.sleep(1)
        lines = self.capture_on_trunk(act)
        replies = [l for l in lines if "Reply 10.77.0." in l]
        b_on_100 = [l for l in replies if "Reply 10.77.0.2 is-at" in l and "> 02:00:00:77:00:64" in l]
        self.assertTrue(b_on_100, f"guest b did not answer on VLAN 100: {lines[-30:]}")
        for line in b_on_100:
            self.assertRegex(line, r"ethertype 802\.1Q \(0x8100\).*vlan 100,")
        # The control: VLAN 200's frames do get through, to c.
        c_on_200 = [l for l in replies if "Reply 10.77.0.3 is-at" in l and "> 02:00:00:77:01:c8" in l]
        self.assertTrue(c_on_200, f"guest c did not answer on VLAN 200: {lines[-30:]}")
        for line in c_on_200:
            self.assertRegex(line, r"ethertype 802\.1Q \(0x8100\).*vlan 200,")
        self.assertFalse([l for l in replies if "> 02:00:00:77:00:c8" in l], "b answered on VLAN 200")
        self.assertFalse([l for l in replies if "> 02:00:00:77:01:64" in l], "c answered on VLAN 100")

    def test_hotplug_into_a_running_guest_and_unplug(self):
        c = self.names["c"]
        iface_id = str(uuid.uuid4())
        nic = domain_pb2.Nic(model="virtio")
        nic.ovs.bridge = BRIDGE
        nic.ovs.interface_id = iface_id
        nic.ovs.vlan = 100
        attached = self.agent.domains.AttachNic(domain_pb2.AttachNicRequest(domain=c, nic=nic))
        self.assertRegex(attached.mac, r"^52:54:00(:[0-9a-f]{2}){3}$")
        port = port_of(iface_id)
        self.assertIsNotNone(port)
        self.assertEqual(ovs("get", "Port", port, "tag"), "100")
        listed = {n.nic.mac: n for n in self.agent.domains.GetDomain(domain_pb2.GetDomainRequest(name=c)).nics}
        self.assertEqual((listed[attached.mac].nic.ovs.interface_id, listed[attached.mac].host_device), (iface_id, port))
        # The guest sees a second interface, and it is in the persistent definition too.
        seen = any(self.run_on("c", "test -e /sys/class/net/eth1") or time.sleep(1) for _ in range(20))
        self.assertTrue(seen, "guest c never saw eth1")
        self.assertIn(attached.mac, virsh("dumpxml", "--inactive", c).stdout)
        # On VLAN 100 through the new NIC, c now reaches a.
        self.assertTrue(self.run_on("c", "ip addr add 10.77.1.3/24 dev eth1 && ip link set eth1 up"))
        self.assertTrue(self.run_on("a", "ip addr add 10.77.1.1/24 dev eth0"))
        self.assertTrue(any(self.run_on("c", "ping -c 1 -W 3 10.77.1.1") for _ in range(5)))

        self.agent.domains.DetachNic(domain_pb2.DetachNicRequest(domain=c, mac=attached.mac))
        gone = any(self.run_on("c", "test ! -e /sys/class/net/eth1") or time.sleep(1) for _ in range(30))
        self.assertTrue(gone, "eth1 still in guest c")
        self.assertIsNone(port_of(iface_id), ovs("show"))
        nics = self.agent.domains.GetDomain(domain_pb2.GetDomainRequest(name=c)).nics
        self.assertNotIn(attached.mac, [n.nic.mac for n in nics])
        self.assertNotIn(attached.mac, virsh("dumpxml", "--inactive", c).stdout)
        with self.assertRaises(grpc.RpcError) as e:
            self.agent.domains.DetachNic(domain_pb2.DetachNicRequest(domain=c, mac=attached.mac))
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_a_tap_name_a_host_interface_has_already_is_refused_and_left_alone(self):
        """target_dev names only taps, and libvirt will not take over one that exists (an
        operator's persistent tap here): the start fails, no domain is left, and the tap stays
        off the bridge."""
        tap = "taphv" + uuid.uuid4().hex[:8]
        subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
        name = GUEST_PREFIX + "x-" + uuid.uuid4().hex[:6]
        try:
            spec = domain_pb2.DomainSpec(name=name, vcpus=1, memory_mib=128)
            spec.kernel.kernel_path = self.kernel
            spec.kernel.initrd_path = self.initrd
            nic = spec.nics.add(model="virtio", target_dev=tap)
            nic.ovs.bridge = BRIDGE
            nic.ovs.interface_id = str(uuid.uuid4())
            with self.assertRaises(grpc.RpcError) as e:
                self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec, start=True))
            self.assertIn(tap, e.exception.details())
            self.assertNotEqual(virsh("domstate", name, check=False).returncode, 0)
            self.assertNotIn(tap, ovs("list-ports", BRIDGE).split())
        finally:
            subprocess.run(["ip", "link", "del", tap], check=False)
            virsh("undefine", name, check=False)

    def test_bad_input_is_refused_naming_the_field_and_changes_nothing(self):
        before_ovs, before_links = ovs("show"), self.links()
        a = self.names["a"]
        port = str(uuid.uuid4())

        def ovs_nic(bridge=BRIDGE, vlan=100, mtu=0, interface_id=port):
            n = domain_pb2.Nic(mtu=mtu)
            n.ovs.bridge = bridge
            n.ovs.interface_id = interface_id
            n.ovs.vlan = vlan
            return n

        cases = [
            (ovs_nic(vlan=0), grpc.StatusCode.INVALID_ARGUMENT, "ovs.vlan"),
            (ovs_nic(vlan=4095), grpc.StatusCode.INVALID_ARGUMENT, "ovs.vlan"),
            (ovs_nic(vlan=5000), grpc.StatusCode.INVALID_ARGUMENT, "ovs.vlan"),
            (ovs_nic(bridge="br;reboot"), grpc.StatusCode.INVALID_ARGUMENT, "ovs.bridge"),
            (ovs_nic(bridge="br/../x"), grpc.StatusCode.INVALID_ARGUMENT, "ovs.bridge"),
            (ovs_nic(bridge="a" * 16), grpc.StatusCode.INVALID_ARGUMENT, "ovs.bridge"),
            (ovs_nic(mtu=100), grpc.StatusCode.INVALID_ARGUMENT, "mtu"),
            (ovs_nic(mtu=100000), grpc.StatusCode.INVALID_ARGUMENT, "mtu"),
            (ovs_nic(interface_id="not-a-uuid"), grpc.StatusCode.INVALID_ARGUMENT, "ovs.interface_id"),
            (ovs_nic(bridge="hvovs9"), grpc.StatusCode.PERMISSION_DENIED, "ovs.bridge"),
            (domain_pb2.Nic(bridge="br0"), grpc.StatusCode.PERMISSION_DENIED, "bridge"),
            # The agent makes VLAN/VXLAN networks only on [network] physical_interfaces (none
            # here), and checks the ids and names before that.
            (domain_pb2.Nic(vlan=domain_pb2.VlanNetwork(physical="eth0", id=100)),
             grpc.StatusCode.PERMISSION_DENIED, "vlan.physical"),
            (domain_pb2.Nic(vxlan=domain_pb2.VxlanNetwork(physical="eth0", id=100)),
             grpc.StatusCode.PERMISSION_DENIED, "vxlan.physical"),
            (domain_pb2.Nic(vlan=domain_pb2.VlanNetwork(physical="eth0", id=0)),
             grpc.StatusCode.INVALID_ARGUMENT, "vlan.id"),
            (domain_pb2.Nic(vlan=domain_pb2.VlanNetwork(physical="eth0", id=4095)),
             grpc.StatusCode.INVALID_ARGUMENT, "vlan.id"),
            (domain_pb2.Nic(vxlan=domain_pb2.VxlanNetwork(physical="eth0", id=16777216)),
             grpc.StatusCode.INVALID_ARGUMENT, "vxlan.id"),
            (domain_pb2.Nic(vlan=domain_pb2.VlanNetwork(physical="eth0;reboot", id=10)),
             grpc.StatusCode.INVALID_ARGUMENT, "vlan.physical"),
        ]
        for nic, code, field in cases:
            with self.subTest(nic=str(nic).replace("\n", " "), via="AttachNic"):
                with self.assertRaises(grpc.RpcError) as e:
                    self.agent.domains.AttachNic(domain_pb2.AttachNicRequest(domain=a, nic=nic))
                self.assertEqual(e.exception.code(), code, e.exception.details())
                self.assertIn(f"nic.{field}", e.exception.details())
            with self.subTest(nic=str(nic).replace("\n", " "), via="CreateDomain"):
                name = GUEST_PREFIX + "bad-" + uuid.uuid4().hex[:6]
                spec = domain_pb2.DomainSpec(name=name, vcpus=1, memory_mib=64)
                spec.kernel.kernel_path = self.kernel
                spec.nics.add().CopyFrom(nic)
                with self.assertRaises(grpc.RpcError) as e:
                    self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec, start=True))
                self.assertEqual(e.exception.code(), code, e.exception.details())
                self.assertIn(f"spec.nics[0].{field}", e.exception.details())
                self.assertNotEqual(virsh("domstate", name, check=False).returncode, 0)
        self.assertEqual(ovs("show"), before_ovs)
        self.assertEqual(self.links(), before_links)

    @staticmethod
    def links():
        """The host's tap devices and this test's bridge (other worktrees' tests may add and
        remove unrelated links meanwhile; guests' taps are this class's alone under the lock)."""
        out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
        names = (line.split(":")[1].strip() for line in out.splitlines())
        return sorted(n for n in names if n.startswith(("vnet", "tap", "hvovs")))
