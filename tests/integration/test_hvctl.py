"""hvctl, the operator CLI, against the agent on real libvirtd + QEMU: tables for people,
--json for scripts, and the exit codes scripts rely on (0 done, 1 refused, 2 usage,
3 unreachable)."""

import json
import os
import subprocess

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
