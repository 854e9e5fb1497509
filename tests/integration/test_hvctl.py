"""hvctl, the operator CLI, against the agent on real libvirtd + QEMU: tables for people,
--json for scripts, and the exit codes scripts rely on (0 done, 1 refused, 2 usage,
3 unreachable)."""

import json
import os
import subprocess
import uuid

from agent_harness import AgentTestCase, free_port, small_spec, unique_name
from hvagent.v1 import domain_pb2

HVCTL = os.path.join(os.path.dirname(os.environ["HVAGENTD"]), "hvctl")


class HvctlTest(AgentTestCase):
    def hvctl(self, *args, server=None):
        r = subprocess.run([HVCTL, "--server", server or self.agent.grpc_addr, *args], capture_output=True,
                           text=True, timeout=120)
        return r.returncode, r.stdout, r.stderr

    def test_tables_json_and_lifecycle(self):
        name = unique_name("ctl")
        self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=small_spec(name)))
        code, out, _ = self.hvctl("list")
        self.assertEqual(code, 0)
        header, *rows = out.splitlines()
        self.assertEqual(header.split(), ["NAME", "STATE", "VCPUS", "MEMORY", "UUID"])
        row = next(r for r in rows if r.startswith(name + " "))
        self.assertEqual(row.split()[1:4], ["shutoff", "1", "64"])
        code, out, _ = self.hvctl("--json", "list")
        self.assertEqual(code, 0)
        listed = {d["name"]: d for d in json.loads(out)["domains"]}
        self.assertEqual(listed[name]["state"], "DOMAIN_STATE_SHUTOFF")
        code, out, _ = self.hvctl("resize", name, "--vcpus", "2", "--memory-mib", "96")
        self.assertEqual((code, out.strip()), (0, f"{name}: 2 vCPU, 96 MiB, shutoff"))
        code, _, err = self.hvctl("resize", name, "--vcpus", "0")
        self.assertEqual(code, 1)
        self.assertIn("vcpus", err)
        self.assertEqual(self.hvctl("resize", name, "--vcpus", "two")[0], 2)
        code, out, _ = self.hvctl("start", name)
        self.assertEqual((code, out.strip()), (0, f"{name}: running"))
        code, out, _ = self.hvctl("--json", "get", name)
        self.assertEqual(json.loads(out)["state"], "DOMAIN_STATE_RUNNING")
        code, out, _ = self.hvctl("delete", name)  # running: refused without --force
        self.assertEqual(code, 1)
        code, out, _ = self.hvctl("delete", name, "--force")
        self.assertEqual((code, out.strip()), (0, f"{name}: deleted"))
        # The create and the delete, newest first, as ListOperations reports them.
        code, out, _ = self.hvctl("operations")
        self.assertEqual(code, 0)
        header, *rows = out.splitlines()
        self.assertEqual(header.split(), ["ID", "KIND", "DOMAIN", "STATE", "STARTED", "MESSAGE"])
        mine = [r.split()[1:4] for r in rows if r.split()[2] == name]
        self.assertEqual(mine, [["delete", name, "SUCCEEDED"], ["create", name, "SUCCEEDED"]])
        code, out, _ = self.hvctl("--json", "operations", "--running")
        self.assertEqual((code, json.loads(out)), (0, {"operations": []}))

    def test_exit_codes(self):
        code, _, err = self.hvctl("get", unique_name("ghost"))
        self.assertEqual(code, 1)
        self.assertIn("NOT_FOUND", err)
        self.assertEqual(self.hvctl("frobnicate")[0], 2)
        self.assertEqual(self.hvctl("get")[0], 2)
        self.assertEqual(self.hvctl("list", server=f"127.0.0.1:{free_port()}")[0], 3)


class HvctlNicTest(AgentTestCase):
    """nic-attach's vlan/vxlan flags reach the agent as the Nic oneof's vlan/vxlan. VXLAN runs for
    real here (this kernel has it; the agent may make networks on lo only); this kernel has no
    802.1Q, so the vlan flags are shown to arrive by the agent's answers naming nic.vlan.*."""

    @classmethod
    def agent_config(cls):
        return '[network]\nphysical_interfaces = ["lo"]\n'

    def hvctl(self, *args):
        r = subprocess.run([HVCTL, "--server", self.agent.grpc_addr, *args], capture_output=True,
                           text=True, timeout=120)
        return r.returncode, r.stdout, r.stderr

    @staticmethod
    def links():
        out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
        return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())

    def test_nic_attach_vxlan_and_vlan_flags(self):
        name = unique_name("nicflags")
        self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=small_spec(name)))
        vni = 16000000 + int(uuid.uuid4().hex[:5], 16) % 700000  # unlikely to meet another test's
        bridge, uplink = f"brvx{vni}", f"vxlan{vni}"
        try:
            before = self.links()
            # Refused ones first: each names the field, exit 1 (refused) or 2 (usage), host unchanged.
            for args, code, text in [
                (("--vlan-physical", "eth9", "--vlan-id", "100"), 1, "nic.vlan.physical"),
                (("--vlan-physical", "lo", "--vlan-id", "4095"), 1, "nic.vlan.id"),
                (("--vxlan-id", str(vni)), 1, "nic.vxlan.physical"),
                (("--vxlan-id", "16777216", "--vxlan-physical", "lo"), 1, "nic.vxlan.id"),
                (("--vxlan-id", str(vni), "--vxlan-physical", "eth9"), 1, "nic.vxlan.physical"),
                (("--bridge", "br0", "--vlan-id", "100"), 2, "one of --bridge"),
                (("--vlan-physical", "lo", "--vlan-id", "ten"), 2, "usage"),
            ]:
                with self.subTest(args=args):
                    rc, out, err = self.hvctl("nic-attach", name, *args)
                    self.assertEqual(rc, code, out + err)
                    self.assertIn(text, err)
            self.assertEqual(self.links(), before)

            rc, out, err = self.hvctl("--json", "nic-attach", name, "--vxlan-id", str(vni),
                                      "--vxlan-physical", "lo", "--mtu", "1400")
            self.assertEqual(rc, 0, err)
            nic = json.loads(out)
            self.assertEqual(nic["vxlan"], {"physical": "lo", "id": vni})
            details = subprocess.run(["ip", "-d", "link", "show", uplink], capture_output=True, text=True).stdout
            self.assertIn(f"vxlan id {vni} ", details)
            self.assertIn(f"master {bridge} ", details)
            xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", "--inactive", name],
                                 capture_output=True, text=True, check=True).stdout
            self.assertIn(f"<source bridge='{bridge}'/>", xml)

            rc, out, err = self.hvctl("nic-detach", name, nic["mac"])
            self.assertEqual(rc, 0, err)
            self.assertEqual(self.links(), before, "the agent's VXLAN network outlived its last NIC")
        finally:
            self.agent.domains.DeleteDomain(domain_pb2.DeleteDomainRequest(name=name, force=True))
            for dev in (uplink, bridge):
                subprocess.run(["ip", "link", "del", dev], capture_output=True)
