"""A real OpenStack boots a server through hvagent: the openstack CLI as a user types it, against
the cloud run.sh stood up (Keystone, Glance, Placement, Neutron, Nova with the hvagent driver).
Each step is checked twice: by what OpenStack answers and by what the agent itself holds (hvctl
over mutual TLS): its domain, the domain's volumes in the pool, its capacity; the server's port
also by Open vSwitch's own database (ovs-vsctl).

The tests run in name order and build on each other (one server's life); a failed step fails
the ones after it. Needs run.sh's environment (OS_* variables, HVOS_*)."""

import json
import os
import re
import shlex
import subprocess
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
HVCTL = shlex.split(os.environ["HVOS_HVCTL"])
POOL = "nova"
MiB = 1 << 20
GiB = 1 << 30
NETWORK = "hvos-net"
BRIDGE = "br-int"  # Neutron's OVS agent's integration bridge (run.sh)


def run(argv, timeout=600):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def openstack(*args, timeout=600):
    return run(["openstack", *args], timeout=timeout)


def openstack_json(*args, timeout=600):
    return json.loads(openstack(*args, "-f", "json", timeout=timeout))


def hvctl(*args):
    return json.loads(run([*HVCTL, "--json", *args]))


def ovs_vsctl(*args):
    return run(["ovs-vsctl", "--timeout=10", *args]).strip()


def ovs_interface(iface_id):
    """{name, mac, vm-id} of the OVS interface whose external_ids:iface-id is iface_id, or None."""
    out = ovs_vsctl("--format=json", "--columns=name,external_ids", "find", "Interface",
                    f"external_ids:iface-id={iface_id}")
    rows = json.loads(out)["data"]
    if not rows:
        return None
    name, (_, ids) = rows[0]
    ids = dict(ids)
    # libvirt's names (virNetDevOpenvswitchAddPort): attached-mac, iface-id, vm-id.
    return {"name": name, "mac": ids.get("attached-mac"), "vm-id": ids.get("vm-id")}


def peak_rss_mib():
    """Sum of the RSS of every process of the services run.sh started (their sessions)."""
    total = 0
    for leader in os.environ.get("HVOS_RSS_PIDS", "").split():
        r = subprocess.run(["pgrep", "-s", leader], capture_output=True, text=True)
        for pid in r.stdout.split():
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            except (OSError, StopIteration):
                pass
    return total // 1024


def build_disk_image(path):
    """A whole-disk raw image that boots by itself (firmware boot, no kernel pair in Glance):
    a FAT file system holding the project's test guest (Debian's kernel, busybox initramfs) and
    SYSLINUX in its boot sector, the kernel's console on the serial port."""
    guest = run([os.path.join(REPO, "tests", "guest", "build-guest.sh"),
                 os.environ["HVOS_GUEST_DIR"]]).strip().splitlines()[-1]
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    run(["mkfs.vfat", "-n", "HVGUEST", path])
    cfg = os.path.join(os.path.dirname(path), "syslinux.cfg")
    with open(cfg, "w") as f:
        f.write("DEFAULT guest\nPROMPT 0\nTIMEOUT 1\nLABEL guest\n  LINUX /vmlinuz\n"
                "  INITRD /initrd.img\n  APPEND console=ttyS0 quiet\n")
    run(["mcopy", "-i", path, os.path.join(guest, "vmlinuz"), os.path.join(guest, "initrd.img"), cfg, "::/"])
    run(["syslinux", "--install", path])


class OpenStackThroughAgent(unittest.TestCase):
    server = "hvos-server"
    peak = 0

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="hvos-test-", dir=os.environ.get("HVOS_WORK"))
        image = os.path.join(cls.tmp, "busybox.img")
        build_disk_image(image)
        cls.image_id = openstack_json("image", "create", "--disk-format", "raw", "--container-format",
                                      "bare", "--file", image, "--public", "hvos-busybox")["id"]
        cls.image_bytes = os.path.getsize(image)
        openstack("flavor", "create", "--vcpus", "1", "--ram", "128", "--disk", "1", "hvos.small")
        openstack("flavor", "create", "--vcpus", "2", "--ram", "192", "--disk", "2", "hvos.big")
        # A flat provider network on run.sh's physnet1 (br-phys), shared; no DHCP agent runs, so
        # its subnet has DHCP off (the port still gets a fixed address).
        openstack("network", "create", "--provider-network-type", "flat",
                  "--provider-physical-network", "physnet1", "--share", NETWORK)
        openstack("subnet", "create", "--network", NETWORK, "--subnet-range", "10.99.0.0/24",
                  "--no-dhcp", NETWORK + "-v4")

    @classmethod
    def tearDownClass(cls):
        print(f"services peak RSS: {max(cls.peak, peak_rss_mib())} MiB", flush=True)

    def setUp(self):
        self.t0 = time.monotonic()

    def tearDown(self):
        type(self).peak = max(type(self).peak, peak_rss_mib())
        print(f"  ({self._testMethodName}: {time.monotonic() - self.t0:.1f} s)", flush=True)

    # -- helpers -----------------------------------------------------------------------------

    def show(self):
        return openstack_json("server", "show", self.server)

    def domain_name(self):
        return self.show()["OS-EXT-SRV-ATTR:instance_name"]

    def agent_domain(self, name):
        for d in hvctl("list").get("domains", []):
            if d["name"] == name:
                return d
        return None

    def agent_volumes(self):
        return hvctl("volumes", POOL).get("volumes", [])

    def wait(self, what, check, timeout=180):
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                self.fail(f"{what}: not within {timeout} s")
            time.sleep(2)

    def wait_status(self, status, timeout=300):
        def check():
            s = self.show()
            self.assertNotEqual(s["status"], "ERROR", s.get("fault"))
            return s if s["status"] == status and not s.get("OS-EXT-STS:task_state") else None
        return self.wait(f"server {status}", check, timeout)

    def wait_agent_state(self, state, timeout=120):
        name = self.domain_name()
        return self.wait(f"agent domain {name} {state}",
                         lambda: (self.agent_domain(name) or {}).get("state") == state, timeout)

    def console_readies(self):
        return openstack("console", "log", "show", self.server).count("hv-guest-ready")

    # -- the server's life -------------------------------------------------------------------

    def test_10_hypervisor_reports_the_agents_capacity(self):
        cap = hvctl("capacity")
        hv = openstack_json("hypervisor", "list", "--long")
        self.assertEqual(len(hv), 1, hv)
        shown = openstack_json("hypervisor", "show", str(hv[0]["ID"]))
        self.assertEqual(shown["state"], "up")
        self.assertEqual(shown["status"], "enabled")
        self.assertEqual(int(shown["vcpus"]), cap["cpus"])
        self.assertEqual(int(shown["memory_mb"]), int(cap["memory_total_bytes"]) // MiB)
        pool = next(p for p in cap["pools"] if p["name"] == POOL)
        self.assertEqual(int(shown["local_gb"]), int(pool["capacity_bytes"]) // GiB)
        self.assertEqual(shown["hypervisor_type"].lower(), cap["hypervisor_type"].lower())
        # Placement holds the same inventory, with the agent's own ratios and reservations.
        rp = openstack_json("resource", "provider", "list")
        self.assertEqual(len(rp), 1, rp)
        inv = {i["resource_class"]: i for i in
               openstack_json("resource", "provider", "inventory", "list", rp[0]["uuid"])}
        pol = cap["policy"]
        self.assertEqual(inv["VCPU"]["total"], cap["cpus"])
        self.assertEqual(inv["VCPU"]["allocation_ratio"], pol["cpu_allocation_ratio"])
        self.assertEqual(inv["VCPU"]["reserved"], pol["reserved_cpus"])
        self.assertEqual(inv["MEMORY_MB"]["total"], int(cap["memory_total_bytes"]) // MiB)
        self.assertEqual(inv["MEMORY_MB"]["reserved"], int(pol["reserved_memory_bytes"]) // MiB)
        self.assertEqual(inv["DISK_GB"]["total"], int(pool["capacity_bytes"]) // GiB)

    def port(self, server_id):
        ports = openstack_json("port", "list", "--server", server_id)
        self.assertEqual(len(ports), 1, ports)
        return openstack_json("port", "show", ports[0]["ID"])

    def wait_port_wired(self, after, timeout=90):
        """After a step that replugs the guest's tap (stop/start, reboots, resize), Neutron's OVS
        agent sees the tap leave and come back: it reports the port DOWN, rewires it (a local
        VLAN tag again) and reports it ACTIVE, a few seconds later and on its own polling
        cycle; Nova's libvirt driver waits for none of that on these steps either. So the port
        must be ACTIVE again within the bound, not at the instant the server is."""
        s = self.show()
        pid = self.port(s["id"])["id"]

        def wired():
            port = openstack_json("port", "show", pid)
            iface = ovs_interface(pid)
            if port["status"] != "ACTIVE" or iface is None:
                return None
            tag = ovs_vsctl("get", "Port", iface["name"], "tag")
            return port if re.fullmatch(r"[0-9]+", tag) and int(tag) != 4095 else None
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            port = wired()
            if port:
                print(f"  (port ACTIVE and tagged {time.monotonic() - t0:.1f} s after {after})",
                      flush=True)
                return port
            if time.monotonic() > deadline:
                break
            time.sleep(2)
        # Say why: what Neutron's server and OVS agent logged about this port.
        lines = []
        for log in ("neutron-server.log", "neutron-openvswitch-agent.log"):
            path = os.path.join(os.environ["HVOS_WORK"], "log", log)
            try:
                with open(path, errors="replace") as f:
                    lines += [f"{log}: {l.rstrip()}" for l in f if pid in l][-15:]
            except OSError as e:
                lines.append(f"{log}: {e}")
        self.fail(f"port {pid} not ACTIVE and tagged within {timeout} s after {after}:\n"
                  + "\n".join(lines))

    def agent_nics(self, name):
        """{MAC: host-side interface} of the agent's domain, as GetDomain (hvctl get) lists
        its NICs."""
        return {n["nic"]["mac"]: n["host_device"] for n in hvctl("get", name).get("nics", [])}

    def test_20_create_boots_the_guest_on_the_agent(self):
        # With vif_plugging_is_fatal (run.sh), ACTIVE means Neutron's OVS agent wired the port
        # and Neutron told Nova so (network-vif-plugged) before the guest was resumed.
        s = openstack_json("server", "create", "--image", "hvos-busybox", "--flavor", "hvos.small",
                           "--network", NETWORK, "--wait", self.server, timeout=900)
        self.assertEqual(s["status"], "ACTIVE", s.get("fault"))
        name = s["OS-EXT-SRV-ATTR:instance_name"]
        dom = self.agent_domain(name)
        self.assertIsNotNone(dom, f"no agent domain {name}")
        self.assertEqual(dom["state"], "DOMAIN_STATE_RUNNING")
        self.assertEqual(dom["uuid"], s["id"])
        self.assertEqual(dom["vcpus"], 1)
        self.assertEqual(int(dom["memory_mib"]), 128)
        owned = [v for v in self.agent_volumes() if v.get("attached_to") == name]
        self.assertEqual(len(owned), 1, self.agent_volumes())  # the root disk, from the image
        self.assertEqual(owned[0]["ownership"], "VOLUME_OWNERSHIP_OWNED")
        self.assertEqual(int(owned[0]["size_bytes"]), 1 * GiB)
        # The guest ran: its serial console, read through Nova, shows the init's line.
        self.wait("hv-guest-ready in the console log", lambda: self.console_readies() >= 1, 240)
        # Nova's view of the host follows the agent's: what its domains hold.
        cap = hvctl("capacity")
        self.assertEqual(cap["defined_vcpus"], 1)
        hv = openstack_json("hypervisor", "show", str(openstack_json("hypervisor", "list")[0]["ID"]))
        self.wait("vcpus_used in the hypervisor's record",
                  lambda: int(openstack_json("hypervisor", "show", str(hv["id"]))["vcpus_used"]) == 1, 120)

    def test_25_port_bound_on_br_int(self):
        s = self.show()
        port = self.port(s["id"])
        self.assertEqual(port["status"], "ACTIVE")
        self.assertEqual(port["binding_vif_type"], "ovs")
        self.assertEqual(port["binding_host_id"], s["OS-EXT-SRV-ATTR:host"])
        details = port["binding_vif_details"]  # a dict or, from some osc versions, its repr
        self.assertIn(BRIDGE, str(details))
        self.assertNotRegex(str(details), r"ovs_hybrid_plug'?[=:] ?'?True")
        # Open vSwitch's own record: libvirt's tap on br-int carries the port id, MAC and server.
        iface = ovs_interface(port["id"])
        self.assertIsNotNone(iface, f"no OVS interface with iface-id {port['id']}")
        self.assertEqual(iface["mac"], port["mac_address"])
        self.assertEqual(iface["vm-id"], s["id"])
        self.assertEqual(ovs_vsctl("port-to-br", iface["name"]), BRIDGE)
        # Named as Nova names a port's tap (devname), so it is the same after every restart:
        # Neutron's OVS agent recognises a tap that left and came back only by its name.
        self.assertEqual(iface["name"], ("tap" + port["id"])[:14])
        # Neutron's agent wired it: a local VLAN tag, not the dead VLAN (4095) of unbound ports.
        tag = ovs_vsctl("get", "Port", iface["name"], "tag")
        self.assertRegex(tag, r"^[0-9]+$")
        self.assertNotEqual(int(tag), 4095)
        # And the agent's domain is the one with that interface, on the port's MAC, as an OVS
        # port on br-int carrying Neutron's port id.
        name = s["OS-EXT-SRV-ATTR:instance_name"]
        self.assertEqual(self.agent_nics(name).get(port["mac_address"]), iface["name"])
        nic = [n["nic"] for n in hvctl("get", name)["nics"] if n["nic"]["mac"] == port["mac_address"]][0]
        self.assertEqual((nic["ovs"]["bridge"], nic["ovs"]["interface_id"]), (BRIDGE, port["id"]))

    def test_30_stop_and_start(self):
        openstack("server", "stop", self.server)
        self.wait_status("SHUTOFF")
        self.wait_agent_state("DOMAIN_STATE_SHUTOFF")
        openstack("server", "start", self.server)
        self.wait_status("ACTIVE")
        self.wait_agent_state("DOMAIN_STATE_RUNNING")
        self.wait("the guest boots again", lambda: self.console_readies() >= 1, 240)
        self.wait_port_wired("stop and start")

    def test_40_hard_reboot(self):
        before = hvctl("get", self.domain_name())
        openstack("server", "reboot", "--hard", "--wait", self.server)
        self.wait_status("ACTIVE")
        self.wait_agent_state("DOMAIN_STATE_RUNNING")
        self.wait("the guest boots again", lambda: self.console_readies() >= 1, 240)
        self.assertEqual(hvctl("get", self.domain_name())["uuid"], before["uuid"])
        self.wait_port_wired("the hard reboot")

    def test_45_soft_reboot_falls_back_to_hard(self):
        # The busybox guest ignores the ACPI power button: the driver waits [libvirt]
        # wait_soft_reboot_seconds (run.sh: 5) for it to stop, then reboots it hard.
        name = self.domain_name()
        log = os.path.join(os.environ["HVOS_WORK"], "log", "nova-compute.log")
        mark = os.path.getsize(log)
        t0 = time.monotonic()
        openstack("server", "reboot", "--wait", self.server)
        self.wait_status("ACTIVE")
        took = time.monotonic() - t0
        self.wait_agent_state("DOMAIN_STATE_RUNNING")
        with open(log, errors="replace") as f:
            f.seek(mark)
            self.assertIn("did not shut down within 5 seconds", f.read())
        self.assertGreaterEqual(took, 5)
        # A new boot: the agent saw the domain start after the reboot was asked for, and the
        # console log (QEMU's, started afresh with the guest) shows the guest's init again.
        uptime = float(hvctl("get", name)["uptime"].rstrip("s"))
        self.assertLess(uptime, time.monotonic() - t0)
        self.wait("the guest boots again", lambda: self.console_readies() >= 1, 240)
        self.wait_port_wired("the soft reboot")

    def test_50_resize_on_this_host(self):
        name = self.domain_name()
        openstack("server", "resize", "--flavor", "hvos.big", "--wait", self.server, timeout=900)
        self.wait_status("VERIFY_RESIZE")
        openstack("server", "resize", "confirm", self.server)
        s = self.wait_status("ACTIVE")
        self.assertEqual(s["flavor"]["original_name"] if isinstance(s["flavor"], dict) else
                         s["flavor"].split()[0], "hvos.big")
        dom = self.agent_domain(name)
        self.assertEqual(dom["vcpus"], 2)
        self.assertEqual(int(dom["memory_mib"]), 192)
        root = [v for v in self.agent_volumes() if v.get("attached_to") == name]
        self.assertEqual([int(v["size_bytes"]) for v in root], [2 * GiB])
        self.wait_port_wired("the resize")

    def test_60_snapshot_to_glance(self):
        snap = openstack_json("server", "image", "create", "--name", "hvos-snap", "--wait", self.server,
                              timeout=900)
        img = openstack_json("image", "show", snap["id"])
        self.assertEqual(img["status"], "active")
        self.assertEqual(img["disk_format"], "raw")
        self.assertEqual(int(img["size"]), 2 * GiB)  # the root volume, grown by the resize
        # The agent's temporary image is gone once Glance holds the copy.
        images = run([*HVCTL, "--json", "images", POOL])
        self.assertNotIn("snap-", images)
        self.wait_status("ACTIVE")

    def test_65_boot_from_the_snapshot(self):
        other = "hvos-from-snap"
        s = openstack_json("server", "create", "--image", "hvos-snap", "--flavor", "hvos.big",
                           "--network", NETWORK, "--wait", other, timeout=900)
        self.assertEqual(s["status"], "ACTIVE", s.get("fault"))
        name = s["OS-EXT-SRV-ATTR:instance_name"]
        self.assertEqual(self.agent_domain(name)["state"], "DOMAIN_STATE_RUNNING")
        root = [v for v in self.agent_volumes() if v.get("attached_to") == name]
        self.assertEqual([int(v["size_bytes"]) for v in root], [2 * GiB])
        # The snapshot holds the first server's disk: the same guest boots from it.
        self.wait("hv-guest-ready in the snapshot server's console log",
                  lambda: "hv-guest-ready" in openstack("console", "log", "show", other), 240)
        openstack("server", "delete", "--wait", other)
        self.assertIsNone(self.agent_domain(name))
        self.wait("the snapshot server's volumes deleted",
                  lambda: not [v for v in self.agent_volumes() if v.get("attached_to") == name], 120)

    def test_70_delete_removes_domain_and_volumes(self):
        s = self.show()
        name = s["OS-EXT-SRV-ATTR:instance_name"]
        # Still wired after stop/start, the reboots, the resize, the snapshot and another
        # server's life and deletion on the same network.
        port = self.wait_port_wired("the snapshot and the second server")
        openstack("server", "delete", "--wait", self.server)
        self.assertNotIn(self.server, openstack("server", "list", "-f", "value", "-c", "Name").split())
        self.assertIsNone(self.agent_domain(name))
        self.wait("the domain's volumes deleted",
                  lambda: not [v for v in self.agent_volumes() if v.get("attached_to") == name], 120)
        # The OVS port went with the guest's tap; Nova deleted the port it made.
        self.assertIsNone(ovs_interface(port["id"]))
        self.wait("the server's Neutron port deleted",
                  lambda: port["id"] not in openstack("port", "list", "-f", "value", "-c", "ID"), 60)


if __name__ == "__main__":
    unittest.main()
