"""register.sh against the parameters of the CloudStack API commands it calls, and against the
extension's own actions. ctest -L cloudstack

The parameter names below are CloudStack's, read from its sources (apache/cloudstack; @Parameter
names resolve through ApiConstants):
- createExtension: framework/extensions/src/main/java/org/apache/cloudstack/framework/extensions/
  api/CreateExtensionCmd.java (commit b0c7e2e900ca346e90bf62d3da6788666a9b63c6): name,
  description, type, path, orchestratorrequirespreparevm, state, details.
- addCustomAction: .../api/AddCustomActionCmd.java (commit 95e81e15bcfd02f8bdbcf2692d39d120b484a4ae):
  extensionid, name, description, resourcetype, allowedroletypes, parameters (keys name, type,
  required), successmessage, errormessage, timeout ("Default value is 5 seconds"), enabled
  ("Default is disabled"), details.
- registerExtension: .../api/RegisterExtensionCmd.java (commit 06b9eb20b140b9dd14e7ae94b76171d281afd7af):
  extensionid, resourceid, resourcetype, details.
- Parameter types: api/src/main/java/org/apache/cloudstack/extension/ExtensionCustomAction.java
  (commit 06b9eb20b140b9dd14e7ae94b76171d281afd7af), enum Parameter.Type: STRING, INTEGER,
  DECIMAL, BOOLEAN, UUID, DATE (anything else silently becomes STRING).
- Map parameters are sent as name[i].key=value (details[i].keyname=keyvalue, parameters[i].name=...).
"""

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "register.sh")

API = {
    "createExtension": {"name", "description", "type", "path", "orchestratorrequirespreparevm", "state", "details"},
    "addCustomAction": {"extensionid", "name", "description", "resourcetype", "allowedroletypes", "parameters",
                        "successmessage", "errormessage", "timeout", "enabled", "details"},
    "registerExtension": {"extensionid", "resourceid", "resourcetype", "details"},
}
PARAMETER_KEYS = {"name", "type", "required"}
PARAMETER_TYPES = {"STRING", "INTEGER", "DECIMAL", "BOOLEAN", "UUID", "DATE"}
RESOURCE_TYPES = {"VirtualMachine", "Host"}
ROLE_TYPES = {"Admin", "ResourceAdmin", "DomainAdmin", "User"}
# What each action acts on: the host's actions carry host details only.
EXPECTED = {"hostcapacity": "Host", "eventchannels": "Host", "resizevolume": "VirtualMachine",
            "suspend": "VirtualMachine", "resume": "VirtualMachine", "reinstall": "VirtualMachine",
            "importimage": "Host", "createtemplate": "VirtualMachine", "createsnapshot": "VirtualMachine",
            "listsnapshots": "VirtualMachine", "revertsnapshot": "VirtualMachine", "deletesnapshot": "VirtualMachine"}
CLUSTER = "3b7e2f0e-8d6a-4a51-9c3e-5a7d1c2b9e40"


def run(*args, **kw):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=60, **kw)


def commands(text):
    """[(command, {key: value})] from the printed lines (shell-quoted)."""
    out = []
    for line in text.splitlines():
        argv = shlex.split(line)
        assert argv[0] == "cmk", line
        params = {}
        for a in argv[2:]:
            k, _, v = a.partition("=")
            params[k] = v
        out.append((argv[1], params))
    return out


class RegisterTest(unittest.TestCase):
    def printed(self, *args):
        r = run(*args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return commands(r.stdout)

    def test_every_parameter_is_one_the_api_command_takes(self):
        for cmd, params in self.printed("--cluster-id", CLUSTER, "--detail", "vlan_bridge_format=br{vlan}"):
            self.assertIn(cmd, API)
            for key, value in params.items():
                m = re.fullmatch(r"([a-z]+)\[(\d+)\]\.(.+)", key)
                base = m.group(1) if m else key
                with self.subTest(command=cmd, parameter=key):
                    self.assertIn(base, API[cmd])
                    if base == "parameters":
                        self.assertIn(m.group(3), PARAMETER_KEYS)
                        if m.group(3) == "type":
                            self.assertIn(value, PARAMETER_TYPES)

    def test_extension_asks_for_prepare_and_is_enabled(self):
        cmds = self.printed("--detail", "vlan_bridge_format=br{vlan}")
        cmd, p = cmds[0]
        self.assertEqual(cmd, "createExtension")
        self.assertEqual(p["orchestratorrequirespreparevm"], "true")
        self.assertEqual((p["type"], p["state"], p["name"], p["path"]),
                         ("Orchestrator", "Enabled", "hvagent", "hvagent-cloudstack"))
        self.assertEqual(p["details[0].vlan_bridge_format"], "br{vlan}")

    def test_custom_actions_enabled_with_timeouts_and_resource_types(self):
        actions = {p["name"]: p for cmd, p in self.printed() if cmd == "addCustomAction"}
        self.assertEqual(set(actions), set(EXPECTED))
        for name, p in actions.items():
            with self.subTest(action=name):
                self.assertEqual(p["enabled"], "true")
                self.assertEqual(p["resourcetype"], EXPECTED[name])
                self.assertIn(p["resourcetype"], RESOURCE_TYPES)
                # Longer than CloudStack's 5 s default and than the extension's 5 s margin.
                self.assertGreaterEqual(int(p["timeout"]), 30)
                self.assertTrue(set(p["allowedroletypes"].split(",")) <= ROLE_TYPES, p["allowedroletypes"])
                self.assertEqual(p["extensionid"], "@EXTENSION_ID@")
        r = actions["resizevolume"]
        self.assertEqual((r["parameters[2].name"], r["parameters[2].type"], r["parameters[2].required"]),
                         ("size_gb", "INTEGER", "true"))
        # A user may resize any volume of a pool by name: administrators only.
        self.assertEqual(r["allowedroletypes"], "Admin")
        # importimage makes the agent fetch a URL into a pool: administrators only, with the two
        # parameters create's template details carry, and time for a whole image.
        i = actions["importimage"]
        self.assertEqual(i["allowedroletypes"], "Admin")
        self.assertEqual([(i[f"parameters[{n}].name"], i[f"parameters[{n}].type"], i[f"parameters[{n}].required"])
                          for n in range(4)],
                         [("image_url", "STRING", "true"), ("image_checksum", "STRING", "true"),
                          ("image_format", "STRING", "false"), ("pool", "STRING", "false")])
        self.assertGreaterEqual(int(i["timeout"]), 600)
        # createtemplate copies a whole root volume into a new image: administrators only.
        t = actions["createtemplate"]
        self.assertEqual(t["allowedroletypes"], "Admin")
        self.assertEqual([(t[f"parameters[{n}].name"], t[f"parameters[{n}].type"], t[f"parameters[{n}].required"])
                          for n in range(3)], [("name", "STRING", "true"), ("pool", "STRING", "false"),
                                               ("snapshot", "STRING", "false")])
        self.assertGreaterEqual(int(t["timeout"]), 600)
        # reinstall copies a whole image too.
        self.assertGreaterEqual(int(actions["reinstall"]["timeout"]), 300)
        # Snapshots of the VM's root: typed parameters, a user may take and revert their own.
        for action in ("createsnapshot", "revertsnapshot", "deletesnapshot"):
            t = actions[action]
            self.assertEqual([(t[f"parameters[{n}].name"], t[f"parameters[{n}].type"],
                               t[f"parameters[{n}].required"]) for n in range(2)],
                             [("name", "STRING", "true"), ("pool", "STRING", "false")], action)
            self.assertIn("User", t["allowedroletypes"])
        t = actions["listsnapshots"]
        self.assertEqual((t["parameters[0].name"], t["parameters[0].type"], t["parameters[0].required"]),
                         ("pool", "STRING", "false"))

    def test_every_registered_action_is_one_the_extension_answers(self):
        binary = os.environ["HVAGENT_CLOUDSTACK"]
        for cmd, p in self.printed():
            if cmd != "addCustomAction":
                continue
            with self.subTest(action=p["name"]):
                r = subprocess.run([binary, p["name"], "/nonexistent/payload.json", "30"], capture_output=True,
                                   text=True, timeout=30)
                doc = json.loads(r.stdout)
                self.assertNotIn("unknown action", doc["error"])
                self.assertIn("payload file not found", doc["error"])

    def test_run_calls_cmk_with_the_new_extension_id(self):
        with tempfile.TemporaryDirectory() as d:
            log = os.path.join(d, "calls.jsonl")
            fake = os.path.join(d, "cmk")
            with open(fake, "w") as f:
                f.write("#!%s\nimport json, sys\n" % sys.executable)
                f.write("open(%r, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n" % log)
                f.write("if 'createExtension' in sys.argv:\n"
                        "    print(json.dumps({'extension': {'id': '11111111-2222-4333-8444-555555555555',"
                        " 'name': 'hvagent', 'resources': [{'id': '99999999-2222-4333-8444-555555555555'}]}}))\n")
            os.chmod(fake, 0o755)
            r = run("--run", "--cmk", fake, "--cluster-id", CLUSTER)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, "")
            with open(log) as f:
                calls = [json.loads(line) for line in f]
        self.assertEqual(calls[0][:3], ["-o", "json", "createExtension"])
        self.assertEqual([c[0] for c in calls[1:]], ["addCustomAction"] * len(EXPECTED) + ["registerExtension"])
        for c in calls[1:]:
            self.assertIn("extensionid=11111111-2222-4333-8444-555555555555", c)
        self.assertIn(f"resourceid={CLUSTER}", calls[-1])

    def test_existing_extension_gets_only_its_actions(self):
        cmds = self.printed("--extension-id", "11111111-2222-4333-8444-555555555555")
        self.assertEqual({c for c, _ in cmds}, {"addCustomAction"})

    def test_bad_arguments_print_and_run_nothing(self):
        for args, expect in ((["--cluster-id", "x;reboot"], "--cluster-id"), (["--name", "a b"], "--name"),
                             (["--path", "../../bin/sh"], "--path"), (["--detail", "novalue"], "--detail"),
                             (["--extension-id", "1"], "--extension-id"), (["--bogus"], "unknown argument")):
            with self.subTest(args=args):
                r = run(*args)
                self.assertEqual(r.returncode, 2)
                self.assertEqual(r.stdout, "")
                self.assertIn(expect, r.stderr)


if __name__ == "__main__":
    unittest.main()
