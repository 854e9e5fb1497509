"""hvagent-cloudstack against a real hvagentd on libvirt's test:///default driver: every action
CloudStack calls, with payloads shaped as the management server writes them (fixtures/), and the
error paths (bad payloads, unknown action, unreachable agent, TLS failure). ctest -L cloudstack"""

import http.client
import os
import shutil
import urllib.parse
import subprocess
import tempfile
import threading
import time
import unittest

from extension_harness import Agent, Extension, free_port

VM = "i-2-100-VM"
VM_UUID = "3b7e2f0e-8d6a-4a51-9c3e-5a7d1c2b9e40"


def make_tls_dir():
    """A throwaway CA and client certificate (openssl argv, no shell)."""
    d = tempfile.mkdtemp(prefix="hvagent-cs-tls-")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=hvagent-cs-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
        "-subj", "/CN=hvagent-controller")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "client.crt", "-days", "1")
    return d


class ExtensionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.agent = Agent("test:///default")
        cls.ext = Extension(cls.agent.grpc_port)

    @classmethod
    def tearDownClass(cls):
        cls.ext.cleanup()
        code = cls.agent.stop()
        if code not in (0, None):
            raise AssertionError(f"hvagentd exited with {code} on SIGTERM")

    def tearDown(self):
        if VM in self.agent.domains():
            self.agent.rest("DELETE", f"/v1/domains/{VM}?force=true")

    def ok(self, action, fixture, **kw):
        code, out = self.ext.run(action, fixture, **kw)
        self.assertEqual(code, 0, out)
        self.assertEqual(out.get("status"), "success", out)
        return out

    def host_state(self):
        """Domains as a failed call must leave them (uptime ticks on by itself)."""
        return {n: {k: v for k, v in d.items() if k != "uptime"} for n, d in self.agent.domains().items()}

    def fails(self, action, fixture, expect, code_name=None, **kw):
        before = self.host_state()
        code, out = self.ext.run(action, fixture, **kw)
        self.assertNotEqual(code, 0, out)
        self.assertEqual(out.get("status"), "error", out)
        self.assertIn(expect, out["error"])
        self.assertEqual(out["error"], out["message"])
        if code_name:
            self.assertEqual(out.get("code"), code_name, out)
        self.assertEqual(self.host_state(), before, "a failed call changed the host")
        return out

    def power(self, fixture="status.json"):
        return self.ok("status", fixture)["power_state"]

    # ---- the VM lifecycle, in CloudStack's order -------------------------------------------

    def test_lifecycle(self):
        out = self.ok("prepare", "prepare.json")
        self.assertNotIn(VM, self.agent.domains(), "prepare must not create anything")
        self.assertEqual(out["message"], f"Instance {VM} can be created")

        out = self.ok("create", "create.json")
        self.assertEqual(out["message"], "Instance created")
        d = self.agent.domains()[VM]
        self.assertEqual(d["state"], "DOMAIN_STATE_RUNNING")
        self.assertEqual(d["uuid"], VM_UUID)
        self.assertEqual(d["vcpus"], 2)
        self.assertEqual(int(d["memory_mib"]), 512)  # maxRam 536870912 bytes
        self.assertEqual(self.power(), "poweron")

        # A second deploy of the same instance (same uuid) is a retry: success, nothing new.
        self.assertEqual(self.ok("create", "create.json")["message"], "Instance already created")
        # prepare refuses a name that is taken.
        self.fails("prepare", "prepare.json", "already exists", "ALREADY_EXISTS")

        out = self.ok("stop", "stop.json")
        self.assertEqual(out["message"], "Instance stopped")
        self.assertFalse(out["forced"])
        self.assertEqual(self.agent.domains()[VM]["state"], "DOMAIN_STATE_SHUTOFF")
        self.assertEqual(self.power(), "poweroff")
        self.assertIn("was not running", self.ok("stop", "stop.json")["message"])

        self.assertEqual(self.ok("start", "start.json")["message"], "Instance started")
        self.assertEqual(self.power(), "poweron")
        self.assertEqual(self.ok("start", "start.json")["message"], "Instance already running")

        self.assertEqual(self.ok("reboot", "reboot.json")["message"], "Instance rebooted")
        self.assertEqual(self.power(), "poweron")

        self.assertEqual(self.ok("delete", "delete.json")["message"], "Instance deleted")
        self.assertNotIn(VM, self.agent.domains())

    def test_missing_vm_is_idempotent(self):
        self.assertNotIn(VM, self.agent.domains())
        self.assertIn("not present", self.ok("stop", "stop.json")["message"])
        self.assertIn("not present", self.ok("delete", "delete.json")["message"])
        out = self.ok("status", "status.json")
        self.assertEqual(out["power_state"], "poweroff")
        self.fails("start", "start.json", "not found", "NOT_FOUND")
        self.fails("reboot", "reboot.json", "not found", "NOT_FOUND")

    def test_statuses_is_one_map(self):
        self.ok("create", "create.json")
        self.ok("stop", "stop.json")
        out = self.ok("statuses", "statuses.json")
        # Keyed by CloudStack's instance names only; test:///default's own "test" domain is no
        # CloudStack VM and is listed apart.
        self.assertEqual(out["power_state"], {VM: "poweroff"})
        self.assertEqual(out["other_domains"], ["test"])

    def test_action_name_case(self):
        self.assertEqual(self.ext.run("STATUSES", "statuses.json")[0], 0)

    def test_getconsole_unsupported(self):
        # This agent has no [console] ws_listen: nothing a browser could open.
        self.ok("create", "create.json")
        self.fails("getconsole", "getconsole.json", "no web console", "UNIMPLEMENTED")

    # ---- custom actions ------------------------------------------------------------------

    def test_hostcapacity(self):
        out = self.ok("hostcapacity", "hostcapacity.json")
        self.assertEqual(out["printmessage"], "true")
        m = out["message"]
        self.assertEqual(m["hypervisor_type"], "TEST")
        self.assertGreater(m["cpus"], 0)
        self.assertIn("memory_available_bytes", m)

    def test_eventchannels_unsupported_off_xen(self):
        out = self.ok("eventchannels", "eventchannels.json")
        self.assertEqual(out["printmessage"], "true")
        self.assertFalse(out["message"]["supported"])
        self.assertIn("only on Xen hosts", out["message"]["unsupported"])

    def test_resizevolume(self):
        # test:///default has no storage pools configured: the agent's refusal is passed on.
        self.fails("resizevolume", "resizevolume.json", "'vg0' is not a configured pool", "NOT_FOUND")
        self.fails("resizevolume", "resizevolume.json", "size_gb", "INVALID_ARGUMENT",
                   edit=lambda d: d["parameters"].update(size_gb="x"))
        self.fails("resizevolume", "resizevolume.json", "not a valid name",
                   edit=lambda d: d["parameters"].update(volume="../etc"))
        self.fails("resizevolume", "resizevolume.json", "size_gb (or size_bytes) is missing",
                   edit=lambda d: d["parameters"].pop("size_gb"))

    def test_suspend_and_resume(self):
        self.ok("create", "create.json")
        out = self.ok("suspend", "create.json")
        self.assertEqual(out["printmessage"], "true")
        self.assertEqual(out["message"]["state"], "DOMAIN_STATE_PAUSED")
        self.assertEqual(self.agent.domains()[VM]["state"], "DOMAIN_STATE_PAUSED")
        self.assertEqual(self.power(), "poweron")  # paused keeps its resources: CloudStack's Running
        out = self.ok("resume", "create.json")
        self.assertEqual(out["message"]["state"], "DOMAIN_STATE_RUNNING")
        self.assertEqual(self.agent.domains()[VM]["state"], "DOMAIN_STATE_RUNNING")
        self.fails("resume", "create.json", "", "FAILED_PRECONDITION")  # not paused
        self.ok("delete", "delete.json")
        self.fails("suspend", "create.json", "is not defined on this host", "NOT_FOUND")

    def test_reinstall_needs_a_template_image_and_a_stopped_vm(self):
        self.ok("create", "create.json")
        out = self.fails("reinstall", "create.json", "the template names no image", "FAILED_PRECONDITION")
        self.assertIn("nothing was changed", out["error"])  # fails() checked the host is unchanged

        def with_image(doc):
            doc["externaldetails"]["virtualmachine"]["image"] = "disk1/deb12"
        out = self.fails("reinstall", "create.json", "DOMAIN_STATE_RUNNING: stop it first", "FAILED_PRECONDITION",
                         edit=with_image)
        self.assertIn("nothing was changed", out["error"])
        self.fails("reinstall", "status.json", "is not defined on this host", "NOT_FOUND",
                   edit=lambda d: (with_image(d), d["cloudstack.vm.details"].update(
                       name="i-2-999-VM", uuid="00000000-0000-4000-8000-000000000999")))

    def test_template_image_details_are_checked_before_the_agent(self):
        """image / image_url / image_checksum / image_format: each bad form refused naming the
        key, for prepare and create alike, with nothing sent to the agent."""
        sha = "ab" * 32
        cases = [
            ({"image_url": "http://img.example/deb.raw"}, "image_checksum: required with image_url"),
            ({"image_url": "http://img.example/deb.raw", "image_checksum": "d41d8cd98f00b204e9800998ecf8427e"},
             "MD5 is not accepted"),
            ({"image_url": "http://img.example/deb.raw", "image_checksum": "sha256:" + "ab" * 31},
             "is not a sha256 or sha512 checksum"),
            ({"image_url": "http://img.example/deb.raw", "image_checksum": "sha512:" + sha},
             "is not a sha256 or sha512 checksum"),
            ({"image_url": "http://img.example/deb.raw", "image_checksum": "sha256:" + "zz" * 32},
             "is not a sha256 or sha512 checksum"),
            ({"image_url": "ftp://img.example/deb.raw", "image_checksum": sha}, "is not an http:// or https:// URL"),
            ({"image_url": "file:///etc/shadow", "image_checksum": sha}, "is not an http:// or https:// URL"),
            ({"image_url": "http://img.example/a b", "image_checksum": sha}, "is not an http:// or https:// URL"),
            ({"image_url": "http://img.example/deb.raw", "image_checksum": sha, "image_format": "vmdk"},
             "image_format: 'vmdk' is neither raw nor qcow2"),
            ({"image_url": "http://img.example/deb.raw", "image_checksum": sha},
             "no pool to import the image into: set storage_pool"),
            ({"image": "deb12"}, "image: 'deb12' is not POOL/NAME"),
            ({"image": "disk1/../x"}, "is not POOL/NAME"),
            ({"image": "disk1/deb12", "image_url": "http://img.example/deb.raw", "image_checksum": sha},
             "the template names both"),
            ({"image": "disk1/deb12", "storage_pool": "vg0"}, "is not storage_pool 'vg0'"),
            ({"image_checksum": sha}, "image_checksum: set without image_url"),
        ]
        for details, expect in cases:
            def edit(doc, details=details):
                doc["externaldetails"]["virtualmachine"].update(details)
            for action in ("prepare", "create"):
                with self.subTest(details=details, action=action):
                    self.fails(action, "create.json", expect, "INVALID_ARGUMENT", edit=edit)
        # Named by the instance's own details (its user's): refused whatever the template says.
        for key in ("image", "image_url", "image_checksum", "image_format"):
            def user(doc, key=key):
                doc["cloudstack.vm.details"]["details"][key] = "disk1/deb12"
            with self.subTest(user_detail=key):
                self.fails("create", "create.json", f"{key}: not taken from the instance's details",
                           "INVALID_ARGUMENT", edit=user)

    def test_a_vnc_detail_that_is_not_a_boolean_is_refused(self):
        def edit(doc):
            doc["externaldetails"]["virtualmachine"]["vnc"] = "maybe"
        before = self.agent.domains()
        self.fails("create", "create.json", "vnc: must be true or false, got 'maybe'", "INVALID_ARGUMENT", edit=edit)
        self.assertEqual(self.agent.domains(), before)

    def test_template_image_on_a_host_without_it(self):
        """test:///default has no pools: the agent's own answer comes back, nothing is made."""
        def edit(doc):
            doc["externaldetails"]["virtualmachine"].update(image="disk1/deb12")
        self.fails("create", "create.json", "disk1", "NOT_FOUND", edit=edit)
        def url(doc):
            doc["externaldetails"]["virtualmachine"].update(
                image_url="https://img.example/deb.raw", image_checksum="{SHA-256}" + "AB" * 32, storage_pool="disk1")
        # The agent's own policy: only URLs under its [images] allowed_sources (none here).
        self.fails("create", "create.json", "allowed_sources", "PERMISSION_DENIED", edit=url)

    def test_importimage_parameters(self):
        def params(**p):
            return lambda doc: doc.update(parameters=p)
        self.fails("importimage", "hostcapacity.json", "importimage: image_url: '' is not an http", "INVALID_ARGUMENT",
                   edit=params())
        self.fails("importimage", "hostcapacity.json", "importimage: image_checksum: required", "INVALID_ARGUMENT",
                   edit=params(image_url="https://img.example/deb.raw"))
        self.fails("importimage", "hostcapacity.json", "no pool to import the image into", "INVALID_ARGUMENT",
                   edit=params(image_url="https://img.example/deb.raw", image_checksum="ab" * 64))
        # A pool the agent does not have: its answer, nothing made.
        self.fails("importimage", "hostcapacity.json", "disk1",
                   edit=params(image_url="https://img.example/deb.raw", image_checksum="ab" * 64, pool="disk1"))

    # ---- names: CloudStack's instance name vs the agent's domain --------------------------

    def test_vm_name_override_every_action_finds_the_domain(self):
        """An administrator names the domain (vm_name in the template's external details):
        prepare hands the name back as a detail CloudStack persists, and every later action
        finds the domain through it, even after the template's vm_name changed."""
        def override(name, persisted=None):
            def edit(doc):
                doc["externaldetails"]["virtualmachine"]["vm_name"] = name
                vm = doc.setdefault("cloudstack.vm.details", {})
                vm.setdefault("name", VM)
                vm.setdefault("uuid", VM_UUID)
                if persisted:
                    vm.setdefault("details", {})["hvagent_domain"] = persisted
            return edit

        out = self.ok("prepare", "prepare.json", edit=override("web-eu-1"))
        self.assertEqual(out["details"]["hvagent_domain"], "web-eu-1")
        self.assertEqual(out["details"]["hvagent_agent_address"], f"127.0.0.1:{self.agent.grpc_port}")
        self.ok("create", "create.json", edit=override("web-eu-1"))
        self.assertIn("web-eu-1", self.agent.domains())
        self.assertNotIn(VM, self.agent.domains())
        # The domain carries CloudStack's name for it, which statuses keys it by.
        self.assertEqual(self.agent.domains()["web-eu-1"]["labels"], {"cloudstack.instance": VM})
        try:
            # The template's vm_name changed since: the persisted detail still leads to the domain.
            later = override("renamed", persisted="web-eu-1")
            out = self.ok("status", "status.json", edit=later)
            self.assertEqual((out["power_state"], out["domain"]), ("poweron", "web-eu-1"))
            out = self.ok("stop", "stop.json", edit=later)
            self.assertEqual(out["message"], "Instance stopped")
            self.assertEqual(self.agent.domains()["web-eu-1"]["state"], "DOMAIN_STATE_SHUTOFF")
            # statuses names no VM: the renamed domain is keyed by the instance name its label
            # holds, never by its own name, and is not listed apart.
            out = self.ok("statuses", "statuses.json")
            self.assertEqual(out["power_state"], {VM: "poweroff"})
            self.assertNotIn("web-eu-1", out["other_domains"])
            self.assertEqual(out["other_domains"], ["test"])
            self.assertEqual(self.ok("start", "start.json", edit=later)["message"], "Instance started")
            self.assertEqual(self.ok("statuses", "statuses.json")["power_state"], {VM: "poweron"})
            self.assertEqual(self.ok("stop", "stop.json", edit=later)["message"], "Instance stopped")
            self.assertEqual(self.ok("status", "status.json", edit=later)["power_state"], "poweroff")
            self.assertEqual(self.ok("start", "start.json", edit=later)["message"], "Instance started")
            self.assertEqual(self.ok("reboot", "reboot.json", edit=later)["message"], "Instance rebooted")
            # Without the persisted detail, the current vm_name is tried, then the instance name.
            self.assertEqual(self.ok("status", "status.json", edit=override("web-eu-1"))["domain"], "web-eu-1")
            self.assertEqual(self.ok("delete", "delete.json", edit=later)["message"], "Instance deleted")
            self.assertNotIn("web-eu-1", self.agent.domains())
        finally:
            self.agent.rest("DELETE", "/v1/domains/web-eu-1?force=true")

    def test_statuses_key_belongs_to_the_labelled_domain(self):
        """A domain merely named like an instance (made outside CloudStack) cannot take the
        statuses key of the instance CloudStack created under another name: the labelled one
        answers for it, the other is listed apart."""
        def renamed(doc):
            doc["externaldetails"]["virtualmachine"]["vm_name"] = "web-eu-2"
            vm = doc.setdefault("cloudstack.vm.details", {})
            vm.setdefault("name", VM)
            vm.setdefault("uuid", VM_UUID)
        self.ok("create", "create.json", edit=renamed)
        try:
            status, body = self.agent.rest("POST", "/v1/domains", {
                "spec": {"name": VM, "vcpus": 1, "memory_mib": 64, "firmware": {"type": "TYPE_BIOS"}}})
            self.assertEqual(status, 201, body)
            self.assertEqual(self.agent.domains()[VM]["labels"], {})
            out = self.ok("statuses", "statuses.json")
            self.assertEqual(out["power_state"], {VM: "poweron"})  # web-eu-2 runs; the impostor is off
            self.assertEqual(sorted(out["other_domains"]), sorted([VM, "test"]))
            # A label the agent would not accept is refused at the edge, naming it.
            status, body = self.agent.rest("POST", "/v1/domains", {
                "spec": {"name": "x1", "vcpus": 1, "memory_mib": 64, "labels": {"Cloudstack": "i-1-1-VM"}}})
            self.assertEqual(status, 400, body)
            self.assertIn('spec.labels["Cloudstack"]', body["message"])
            self.assertNotIn("x1", self.agent.domains())
        finally:
            self.agent.rest("DELETE", "/v1/domains/web-eu-2?force=true")

    def test_persisted_name_of_another_instance_is_refused(self):
        """hvagent_domain sits among the VM's details, which its user can edit: pointing it at
        another instance's domain must not stop or delete that domain."""
        self.ok("create", "create.json")
        def intruder(doc):
            vm = doc.setdefault("cloudstack.vm.details", {})
            vm["name"] = doc["virtualmachinename"] = "i-3-300-VM"
            vm["uuid"] = doc["virtualmachineid"] = "00000000-0000-4000-8000-000000000300"
            vm.setdefault("details", {})["hvagent_domain"] = VM
        for action, fixture in (("stop", "stop.json"), ("delete", "delete.json"), ("start", "start.json"),
                                ("reboot", "reboot.json"), ("status", "status.json"), ("suspend", "create.json")):
            with self.subTest(action=action):
                out = self.fails(action, fixture, "not this instance's", "FAILED_PRECONDITION", edit=intruder)
                self.assertIn("refusing to act on another VM", out["error"])
        self.assertEqual(self.agent.domains()[VM]["state"], "DOMAIN_STATE_RUNNING")

    # ---- errors: nothing changes, a JSON error, a non-zero exit --------------------------

    def test_bad_payloads(self):
        cases = [
            ("truncated.json", "invalid JSON"),
            ("not-object.json", "not a JSON object"),
            ("empty.json", "payload file is empty"),
            ("bad-name.json", "instance name 'i-2-100-VM;reboot' is not allowed"),
            ("bad-mac.json", "nics[0].mac"),
            ("bad-vlan.json", "VLAN must be 1..4094 or untagged"),
            ("no-vlan-bridge.json", "no bridge for VLAN 100"),
            ("bad-ram.json", "minRam: 'lots' is not a whole number"),
            ("no-credentials.json", "ca_file, cert_file and key_file are required"),
            ("plaintext-remote.json", "plaintext=true is only for an agent on this machine's loopback"),
        ]
        for fixture, expect in cases:
            for action in ("prepare", "create"):
                with self.subTest(fixture=fixture, action=action):
                    self.fails(action, fixture, expect)

    def test_broadcast_uris_that_cannot_be_honoured_are_refused(self):
        """Issue 21 item 6: every scheme but vlan:// used to land on the untagged bridge, joining
        an isolated network to the shared one. Each is refused now, before the agent is called."""
        def nic0(uri):
            def edit(doc):
                doc["cloudstack.vm.details"]["nics"][0]["broadcastUri"] = uri
            return edit
        for uri in ("pvlan://100-i200", "lswitch:3f2a", "ovs://42", "vlan://", "vlan://0",
                    "vlan://4095", "vlan://100-i200", "vlan:// 100", "http://x"):
            for action in ("prepare", "create"):
                with self.subTest(uri=uri, action=action):
                    out = self.fails(action, "create.json", f"broadcastUri '{uri}'", "INVALID_ARGUMENT", edit=nic0(uri))
                    if not uri.startswith("vlan:"):
                        self.assertIn("not supported by hvagent", out["error"])
        # What it can honour: vlan://N (to its bridge), vlan://untagged and no URI (untagged).
        for uri in ("vlan://200", "VLAN://untagged", ""):
            with self.subTest(uri=uri):
                self.ok("create", "create.json", edit=nic0(uri))
                self.assertEqual(self.agent.domains()[VM]["state"], "DOMAIN_STATE_RUNNING")
                self.ok("delete", "delete.json")

    def test_vlan_and_vxlan_become_the_agents_own_networks_on_physical_interface(self):
        """Issue 21 item 6: with the host detail physical_interface, vxlan://N and vlan://N (when
        no pre-made bridge is configured for N) become the agent's own VXLAN/VLAN networks. This
        agent's configuration lists no physical interfaces, so the agent itself refuses them
        naming the NIC's field: the NIC reached it as a vxlan/vlan NIC, and nothing was made."""
        def nic0(uri, physical="eth1", premade=True):
            def edit(doc):
                doc["cloudstack.vm.details"]["nics"][0]["broadcastUri"] = uri
                host = doc["externaldetails"]["host"]
                if physical:
                    host["physical_interface"] = physical
                if not premade:
                    del host["vlan_bridge_format"]
            return edit
        self.fails("create", "create.json", "spec.nics[0].vxlan.physical", "PERMISSION_DENIED",
                   edit=nic0("vxlan://5000"))
        self.fails("create", "create.json", "spec.nics[0].vlan.physical", "PERMISSION_DENIED",
                   edit=nic0("vlan://300", premade=False))
        # Without physical_interface there is nowhere to make a VXLAN: refused before the agent.
        self.fails("create", "create.json", "broadcastUri 'vxlan://5000'", "INVALID_ARGUMENT",
                   edit=nic0("vxlan://5000", physical=""))
        self.fails("create", "create.json", "VNI must be 1..16777215", "INVALID_ARGUMENT",
                   edit=nic0("vxlan://16777216"))
        self.fails("create", "create.json", "physical_interface", "INVALID_ARGUMENT",
                   edit=nic0("vxlan://5000", physical="eth1;reboot"))
        # A pre-made bridge (vlan_bridge_format) still wins over the agent's own network.
        self.ok("create", "create.json", edit=nic0("vlan://200"))
        self.assertEqual(self.agent.domains()[VM]["state"], "DOMAIN_STATE_RUNNING")
        self.ok("delete", "delete.json")

    def test_vlan_untagged_without_network_bridge_is_refused_even_with_physical_interface(self):
        """Issue 21 item 6: vlan://untagged (and no URI) is the host's shared untagged network,
        network_bridge (else the libvirt network `network`). physical_interface is no fallback:
        the agent makes only tagged networks and never puts the host's own uplink into a bridge.
        (That untagged lands on network_bridge with physical_interface set is checked on real
        libvirt in test_extension_qemu's round trip.)"""
        def untagged(uri):
            def edit(doc):
                doc["cloudstack.vm.details"]["nics"][0]["broadcastUri"] = uri
                host = doc["externaldetails"]["host"]
                host["physical_interface"] = "eth1"
                del host["network_bridge"]
            return edit
        for uri in ("vlan://untagged", ""):
            for action in ("prepare", "create"):
                with self.subTest(uri=uri, action=action):
                    out = self.fails(action, "create.json", "neither network_bridge nor network",
                                     "INVALID_ARGUMENT", edit=untagged(uri))
                    self.assertIn(f"broadcastUri '{uri}'", out["error"])
                    self.assertIn("physical_interface is only for vlan://N and vxlan://N", out["error"])
                    self.assertNotIn(VM, self.agent.domains())

    def test_host_files_never_come_from_the_instance_details(self):
        """A tenant sets `details` on its own VM (deployVirtualMachine / updateVirtualMachine):
        a host path there would hand the guest the host's disk or files. Refused before the agent
        is called, whatever action builds the domain."""
        cases = [("create-user-disk-path.json", "disk_path: not taken from the instance's details"),
                 ("create-user-kernel-path.json", "kernel_path: not taken from the instance's details")]
        for fixture, expect in cases:
            for action in ("prepare", "create"):
                with self.subTest(fixture=fixture, action=action):
                    self.fails(action, fixture, expect, "INVALID_ARGUMENT")
        # The same key where an administrator puts it (the template's external details) is sent
        # on, and the agent confines it: /dev/vda is never a guest's disk.
        def from_template(doc):
            doc["externaldetails"]["virtualmachine"]["disk_path"] = "/dev/vda"
        self.fails("create", "create.json", "spec.disks[0].source_path", "PERMISSION_DENIED", edit=from_template)

    def test_bad_name_never_reaches_agent(self):
        for action in ("start", "stop", "delete", "status", "reboot"):
            with self.subTest(action=action):
                self.fails(action, "bad-name.json", "is not allowed", "INVALID_ARGUMENT")

    def test_pool_error_leaves_nothing(self):
        self.fails("create", "create-pool-missing.json", "'vg0' is not a configured pool", "NOT_FOUND")

    def test_unknown_action_and_arguments(self):
        before = self.agent.domains()
        code, out = self.ext.run("migrate", "start.json")
        self.assertEqual((code, out["status"]), (1, "error"))
        self.assertIn("unknown action 'migrate'", out["error"])
        code, out = self.ext.run_raw(["start"])
        self.assertEqual((code, out["status"]), (1, "error"))
        self.assertIn("usage", out["error"])
        code, out = self.ext.run_raw(["start", "/nonexistent/payload.json", "60"])
        self.assertEqual((code, out["status"]), (1, "error"))
        self.assertIn("not found or unreadable", out["error"])
        self.assertEqual(self.agent.domains(), before)

    def test_unreachable_agent(self):
        t0 = time.time()
        out = self.fails("status", "unreachable.json", "UNAVAILABLE", "UNAVAILABLE")
        self.assertLess(time.time() - t0, 30)
        self.assertIn("hvagent at 127.0.0.1:", out["error"])
        self.fails("create", "unreachable.json", "UNAVAILABLE", "UNAVAILABLE")

    def test_tls_failure(self):
        if not shutil.which("openssl"):
            self.skipTest("openssl not installed")
        tls = make_tls_dir()
        try:
            ext = Extension(self.agent.grpc_port, tls)
            before = self.agent.domains()
            # TLS to an agent that speaks plain text: the handshake fails.
            code, out = ext.run("stop", "tls-to-plaintext.json")
            self.assertEqual((code, out["status"], out.get("code")), (1, "error", "UNAVAILABLE"), out)
            # Unreadable TLS material.
            code, out = ext.run("stop", "tls-to-plaintext.json",
                                edit=lambda d: d["externaldetails"]["host"].update(ca_file="/nonexistent/ca.crt"))
            self.assertEqual((code, out["status"]), (1, "error"), out)
            self.assertIn("cannot read TLS file /nonexistent/ca.crt", out["error"])
            self.assertEqual(self.agent.domains(), before)
            ext.cleanup()
        finally:
            shutil.rmtree(tls, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()


class AdmissionTest(unittest.TestCase):
    """The agent's admission control seen through CloudStack: concurrent creates on a host with
    room for ten. deploy/test-driver.toml's policy on the fake host: 16 CPUs x 4 = 64 vCPUs, 2
    taken by the driver's own "test" domain; 6 vCPUs per instance: 10 fit (60), an 11th does not."""

    @classmethod
    def setUpClass(cls):
        cls.agent = Agent("test:///default")
        cls.ext = Extension(cls.agent.grpc_port)

    @classmethod
    def tearDownClass(cls):
        cls.ext.cleanup()
        cls.agent.stop()

    @staticmethod
    def instance(i):
        def edit(doc):
            vm = doc["cloudstack.vm.details"]
            vm["name"] = doc["virtualmachinename"] = f"i-2-{200 + i}-VM"
            vm["uuid"] = doc["virtualmachineid"] = "3b7e2f0e-8d6a-4a51-9c3e-%012d" % (200 + i)
            vm["cpus"] = 6
            for n, nic in enumerate(vm["nics"]):
                nic["mac"] = "02:00:4c:5f:%02x:%02x" % (i, n)
        return edit

    def test_twenty_concurrent_creates_on_room_for_ten(self):
        before = set(self.agent.domains())
        results = [None] * 20
        payloads = [self.ext.payload("create.json", self.instance(i)) for i in range(20)]

        def create(i):
            results[i] = self.ext.run_raw(["create", payloads[i], "60"])
        threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        created = [i for i, (code, out) in enumerate(results) if code == 0]
        refused = [(i, out) for i, (code, out) in enumerate(results) if code != 0]
        self.assertEqual(len(created), 10, results)
        self.assertEqual(len(refused), 10, results)
        for i, out in refused:
            self.assertEqual(out["status"], "error", out)
            self.assertEqual(out.get("code"), "RESOURCE_EXHAUSTED", out)
            self.assertIn("spec.vcpus: not enough vCPUs on this host: asked 6, available", out["error"])
            self.assertIn("of a limit of 64", out["error"])
        # Nothing half-made: exactly the ten admitted instances were added, all running.
        domains = self.agent.domains()
        self.assertEqual(set(domains) - before, {f"i-2-{200 + i}-VM" for i in created})
        for i in created:
            self.assertEqual(domains[f"i-2-{200 + i}-VM"]["state"], "DOMAIN_STATE_RUNNING")
        status, cap = self.agent.rest("GET", "/v1/host/capacity")
        self.assertEqual(status, 200, cap)
        self.assertEqual(cap["vcpus_available"], 2)
        # REST tells the kind of refusal apart: 409 for the host's CPU/memory.
        status, body = self.agent.rest("POST", "/v1/domains", {
            "spec": {"name": "one-more", "vcpus": 6, "memory_mib": 128, "firmware": {"type": "TYPE_BIOS"}}})
        self.assertEqual(status, 409, body)
        self.assertEqual(body["details"], "capacity: compute")
        # A refused instance can be created once room is made.
        self.assertEqual(self.ext.run("delete", "delete.json", edit=self.instance(created[0]))[0], 0)
        self.assertEqual(self.ext.run("create", "create.json", edit=self.instance(refused[0][0]))[0], 0)

    def test_a_100_gib_instance_is_refused_on_test_default(self):
        def huge(doc):
            self.instance(30)(doc)
            doc["cloudstack.vm.details"]["cpus"] = 8
            doc["cloudstack.vm.details"]["maxRam"] = 100 * 1024 ** 3
        before = self.agent.domains()
        # prepare already says so, from the agent's capacity.
        code, out = self.ext.run("prepare", "prepare.json", edit=huge)
        self.assertEqual(code, 1, out)
        self.assertEqual(out.get("code"), "RESOURCE_EXHAUSTED", out)
        self.assertIn("asked 8 vCPUs and 102400 MiB, available", out["error"])
        code, out = self.ext.run("create", "create.json", edit=huge)
        self.assertEqual(code, 1, out)
        self.assertEqual(out.get("code"), "RESOURCE_EXHAUSTED", out)
        self.assertIn("spec.memory_mib: not enough memory on this host: asked 102400 MiB", out["error"])
        self.assertEqual(self.agent.domains(), before)


class GetConsoleTest(unittest.TestCase):
    """getconsole against an agent serving the web console: a "direct" console whose URL names
    the agent's configured proxy-facing host, never the caller's, and holds a one-time serial-ws
    ticket for this instance's domain."""

    PUBLIC_HOST = "console.example.test"

    @classmethod
    def setUpClass(cls):
        cls.ws_port = free_port()
        cls.agent = Agent("test:///default", config_toml=f"""[console]
ws_listen = "127.0.0.1:{cls.ws_port}"
ws_public_host = "{cls.PUBLIC_HOST}"
""")
        cls.ext = Extension(cls.agent.grpc_port)

    @classmethod
    def tearDownClass(cls):
        cls.ext.cleanup()
        cls.agent.stop()

    def tearDown(self):
        if VM in self.agent.domains():
            self.agent.rest("DELETE", f"/v1/domains/{VM}?force=true")

    def getconsole(self):
        code, out = self.ext.run("getconsole", "getconsole.json")
        return code, out

    def upgrade(self, path_and_query):
        """A WebSocket upgrade request to the agent's console listener; its HTTP status."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ws_port, timeout=10)
        try:
            conn.request("GET", path_and_query, headers={
                "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
            return conn.getresponse().status
        finally:
            conn.close()

    def test_getconsole_gives_a_direct_url_with_a_one_time_ticket(self):
        code, out = self.ext.run("create", "create.json")
        self.assertEqual(code, 0, out)
        code, out = self.getconsole()
        self.assertEqual(code, 0, out)
        self.assertEqual(out["status"], "success", out)
        self.assertEqual(out["console"]["protocol"], "direct")
        url = urllib.parse.urlsplit(out["console"]["url"])
        self.assertEqual(url.hostname, self.PUBLIC_HOST)  # the configured host, not 127.0.0.1
        self.assertEqual(url.port, self.ws_port)
        self.assertEqual(url.path, f"/console/{VM}")
        ticket = urllib.parse.parse_qs(url.query)["ticket"][0]
        self.assertGreaterEqual(len(ticket), 40)
        # The page itself is served by the agent and spends nothing.
        conn = http.client.HTTPConnection("127.0.0.1", self.ws_port, timeout=10)
        conn.request("GET", f"{url.path}?{url.query}")
        page = conn.getresponse()
        self.assertEqual(page.status, 200)
        self.assertIn(b"/console/static/xterm.js", page.read())
        conn.close()
        # A made-up ticket is refused before any upgrade; the real one is taken once (what follows
        # the ticket depends on whether test:///default has a console), then refused.
        self.assertEqual(self.upgrade(f"/console/{VM}/ws?ticket=made-up"), 401)
        self.assertNotEqual(self.upgrade(f"/console/{VM}/ws?ticket={ticket}"), 401)
        self.assertEqual(self.upgrade(f"/console/{VM}/ws?ticket={ticket}"), 401)
        # Each getconsole is a new ticket.
        code, again = self.getconsole()
        self.assertEqual(code, 0, again)
        self.assertNotEqual(again["console"]["url"], out["console"]["url"])

    def test_getconsole_of_a_missing_or_stopped_vm_fails(self):
        code, out = self.getconsole()
        self.assertEqual(code, 1, out)
        self.assertEqual(out.get("code"), "NOT_FOUND", out)
        self.assertEqual(self.ext.run("create", "create.json")[0], 0)
        self.assertEqual(self.ext.run("stop", "stop.json")[0], 0)
        code, out = self.getconsole()
        self.assertEqual(code, 1, out)
        self.assertEqual(out.get("code"), "FAILED_PRECONDITION", out)
        self.assertIn("not running", out["error"])
