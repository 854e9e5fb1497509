"""docs/openapi.yaml against the real agent: the document is valid OpenAPI 3, every documented
operation answers with the documented status and shape, and the agent serves no path the
document leaves out.

Validators: Debian's packages only. The document is checked against the OpenAPI Initiative's
3.0 meta-schema as Debian ships it (package openapi-specification) with python3-jsonschema;
answers are checked with python3-jsonschema against the schema the document gives for that
status and media type (OpenAPI 3.0 schemas are JSON Schema draft 4 with annotations).
Bookworm packages no OpenAPI-aware validator (openapi-core, openapi-spec-validator): the
matching of an answer to its documented response is done here, in `Conformance.check`, and is
deliberately strict:
- the status must be listed for the operation, or fall under its `default`;
- the Content-Type must be one the response lists (no body where it lists none);
- the body must validate with every object schema closed (a property the document does not
  name fails), 64-bit integers as decimal strings in range, timestamps as RFC 3339;
- the request bodies and query flags sent for a success must validate against the document too;
- every status the document lists explicitly must have been seen, except those in UNREACHABLE.

The agent runs on the fixture's libvirtd (QEMU) with a partition pool and an LVM pool on loop
devices, as test_storage_vms does, so the storage paths are exercised, not only described.

"No undocumented path" is checked twice:
- against the agent's route table (agent/api/rest/route_table.cpp), in the unit tier
  (tests/unit/api/route_table_test.cpp): the same paths, methods, operations and query flags;
- on the wire, here: every undocumented method on every documented path, and paths next to the
  documented ones, must answer 404 or 405 with the Error body."""

import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

import jsonschema
import yaml

from agent_harness import small_spec_json, test_guest, unique_name
from loop_pools import LoopPoolsTestCase, lvm_argv, run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC_PATH = os.path.join(REPO, "docs", "openapi.yaml")
# Debian package openapi-specification.
META_SCHEMA = "/usr/share/openapi-specification/schemas/v3.0/schema.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
MiB = 1 << 20

# Documented statuses this test cannot provoke on this machine, and why.
UNREACHABLE = {
    ("/healthz", "GET", "503"): "needs the hypervisor connection down (test_reconnect covers that state)",
    ("/v1/host/event-channels", "GET", "200"): "Xen hosts only; this tier runs QEMU (501 is checked)",
    ("/v1/pools/{pool}/images/{name}", "DELETE", "409"): "needs a volume copy from the image in flight at that "
                                                          "instant (test_images copies; the window is milliseconds)",
    ("/v1/migrations/{operation_id}:cancel", "POST", "409"): "needs a migration past its finish step at that "
                                                             "instant (unit-tested: MigrationTest)",
    # lvm2 makes no snapshot without device-mapper, which this kernel lacks (the Xen ARM64 dom0 tier
    # takes, reverts and refuses them for real: tests/system/xen-arm64, test_5*).
    ("/v1/pools/{pool}/volumes/{volume}/snapshots", "POST", "201"): "needs device-mapper (dom0 tier)",
    ("/v1/pools/{pool}/volumes/{volume}/snapshots", "POST", "507"): "the reserve is checked after device-mapper",
    ("/v1/pools/{pool}/volumes/{volume}/snapshots/{name}:revert", "POST", "200"): "needs device-mapper (dom0 tier)",
    ("/v1/pools/{pool}/volumes/{volume}/snapshots/{name}:export", "GET", "200"): "needs device-mapper: a snapshot "
                                                                                 "LV cannot be read here (unit: "
                                                                                 "ExportResourceTest)",
    ("/v1/pools/{pool}/volumes/{volume}/snapshots/{name}:export", "GET", "409"): "needs an overflowed classic "
                                                                                 "snapshot (device-mapper)",
    ("/v1/pools/{pool}/volumes/{volume}/snapshots/{name}:revert", "POST", "409"): "needs a running guest on an LV "
                                                                                   "(dom0 tier)",
}


def load_doc():
    with open(DOC_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def walk(node):
    """Every dict inside node (node included)."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def closed(doc):
    """A copy of doc where every object schema that names its properties allows no others."""
    doc = copy.deepcopy(doc)
    for node in walk(doc):
        if node.get("type") == "object" and isinstance(node.get("properties"), dict):
            node.setdefault("additionalProperties", False)
    return doc


def format_checker():
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("uint64", raises=ValueError)
    def uint64(value):
        if not isinstance(value, str):
            return True
        return value.isdigit() and int(value) < 1 << 64

    @checker.checks("date-time")
    def date_time(value):
        return not isinstance(value, str) or re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value) is not None

    @checker.checks("uuid")
    def uuid_format(value):
        return not isinstance(value, str) or re.fullmatch(
            r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", value) is not None

    return checker


class DocumentTest(unittest.TestCase):
    """The document itself; no agent needed."""

    def setUp(self):
        self.doc = load_doc()
        self.assertTrue(os.path.exists(META_SCHEMA),
                        f"{META_SCHEMA} is missing: install Debian's openapi-specification package")
        with open(META_SCHEMA, encoding="utf-8") as f:
            self.meta = json.load(f)

    def meta_errors(self, doc):
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
                for e in jsonschema.Draft4Validator(self.meta).iter_errors(doc)]

    def test_document_is_valid_openapi_3(self):
        self.assertEqual(self.meta_errors(self.doc), [])
        resolver = jsonschema.RefResolver("", self.doc)
        refs = [n["$ref"] for n in walk(self.doc) if isinstance(n.get("$ref"), str)]
        self.assertGreater(len(refs), 50)
        for ref in refs:
            self.assertTrue(ref.startswith("#/"), f"{ref}: only references inside the document")
            resolver.resolve(ref)  # raises when the target is missing
        for name, schema in self.doc["components"]["schemas"].items():
            with self.subTest(schema=name):
                jsonschema.Draft4Validator.check_schema(schema)
        op_ids = []
        for path, item in self.doc["paths"].items():
            templated = set(re.findall(r"\{(\w+)\}", path))
            for method in METHODS:
                if method not in item:
                    continue
                op = item[method]
                op_ids.append(op["operationId"])
                declared = set()
                for p in item.get("parameters", []) + op.get("parameters", []):
                    p = resolver.resolve(p["$ref"])[1] if "$ref" in p else p
                    if p["in"] == "path":
                        self.assertTrue(p["required"], f"{path}: path parameter {p['name']} must be required")
                        declared.add(p["name"])
                self.assertEqual(declared, templated, f"{method.upper()} {path}: path parameters")
        self.assertEqual(len(op_ids), len(set(op_ids)), "operationIds must be unique")

    def test_the_validator_rejects_broken_documents(self):
        """The check above is only worth something if this validator refuses bad documents."""
        broken = copy.deepcopy(self.doc)
        broken["openapi"] = "3.1.0"
        self.assertNotEqual(self.meta_errors(broken), [])
        broken = copy.deepcopy(self.doc)
        del broken["paths"]["/v1/host"]["get"]["responses"]["200"]["description"]
        self.assertNotEqual(self.meta_errors(broken), [])
        broken = copy.deepcopy(self.doc)
        broken["paths"]["/v1/host"]["get"]["parameters"] = [{"name": "x", "in": "body"}]
        self.assertNotEqual(self.meta_errors(broken), [])

    # "Every route in the source is documented" lives in the unit tier now
    # (tests/unit/api/route_table_test.cpp): the agent has one machine-readable route table
    # (agent/api/rest/route_table.cpp), and that test holds this document to it, path by path,
    # method by method, operation and query flag.


class Conformance(LoopPoolsTestCase):
    """The agent's answers, operation by operation."""

    pool_image_bytes = 128 * MiB

    @classmethod
    def setUpClass(cls):
        cls.doc = load_doc()
        cls.strict = closed(cls.doc)
        cls.resolver = jsonschema.RefResolver("", cls.strict)
        cls.formats = format_checker()
        cls.seen = set()
        cls.importdir = tempfile.mkdtemp(prefix="hvit-import-")  # root's alone (0700)
        cls.scratch = tempfile.mkdtemp(prefix="hvit-scratch-")
        cls.kernel, cls.initrd = test_guest()  # what :rescue boots
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            shutil.rmtree(cls.importdir, ignore_errors=True)
            shutil.rmtree(cls.scratch, ignore_errors=True)

    @classmethod
    def extra_config(cls):
        # Console logs, so that GET .../console-log has something to answer; image sources, so
        # that an import can be refused for its source rather than for a missing setting.
        return f"""
[security]
kernel_dirs = ["{os.path.dirname(cls.kernel)}"]

[console]
log_dir = "{cls.workdir}/console-logs"

[images]
allowed_sources = ["http://127.0.0.1:9/images/"]
import_dirs = ["{cls.importdir}"]
scratch_dir = "{cls.scratch}"
"""

    # ---- the wire ----

    def send(self, method, path, body=None, raw=None):
        """(status, headers, body bytes), whatever the status."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        req = urllib.request.Request(f"http://{self.agent.rest_addr}{path}", data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def validate(self, instance, schema, what):
        try:
            jsonschema.Draft4Validator(schema, resolver=self.resolver, format_checker=self.formats).validate(instance)
        except jsonschema.ValidationError as e:
            self.fail(f"{what}: {e.message}\n  at {'/'.join(map(str, e.absolute_path)) or '(root)'}"
                      f"\n  schema path {'/'.join(map(str, e.absolute_schema_path))}"
                      f"\n  instance: {json.dumps(instance)[:1500]}")

    def deref(self, node):
        while isinstance(node, dict) and "$ref" in node:
            node = self.resolver.resolve(node["$ref"])[1]
        return node

    def check(self, template, method, params=None, query=None, body=None, raw=None, expect=None):
        """Calls a documented operation and checks the answer against the document; returns the
        parsed JSON body (or the text for non-JSON media types, None when empty)."""
        item = self.strict["paths"].get(template)
        self.assertIsNotNone(item, f"{template} is not documented")
        op = item.get(method.lower())
        self.assertIsNotNone(op, f"{method} {template} is not documented")
        path = template
        for k, v in (params or {}).items():
            path = path.replace("{" + k + "}", urllib.parse.quote(v, safe=""))
        self.assertNotIn("{", path, f"{template}: a path parameter was not given")
        what = f"{method} {path}"
        success = expect is not None and expect < 300
        if query:
            documented = {p["name"]: p for p in op.get("parameters", []) if p.get("in") == "query"}
            for k, v in query.items():
                self.assertIn(k, documented, f"{what}: query parameter {k} is not documented")
                if success:
                    self.validate(v, documented[k]["schema"], f"{what}: query {k}")
            path += "?" + urllib.parse.urlencode(query)
        if success and body is not None:
            rb = self.deref(op.get("requestBody"))
            self.assertIsNotNone(rb, f"{what}: sends a body the document does not describe")
            self.validate(body, rb["content"]["application/json"]["schema"], f"{what}: request body")

        status, headers, data = self.send(method, path, body, raw)
        text = data.decode("utf-8", errors="surrogateescape")  # an export's body is any bytes
        if expect is not None:
            self.assertEqual(status, expect, f"{what}: {text[:1000]}")
        self.assertTrue(headers.get("X-Request-Id"), f"{what}: no X-Request-Id")
        key = str(status) if str(status) in op["responses"] else "default"
        response = self.deref(op["responses"].get(key))
        self.assertIsNotNone(response, f"{what} answered {status}, which the document does not list")
        self.seen.add((template, method, key))
        content = response.get("content")
        if not content:
            self.assertEqual(text, "", f"{what} answered {status} with a body the document does not describe")
            return None
        media = (headers.get("Content-Type") or "").split(";")[0].strip()
        self.assertIn(media, content, f"{what} answered {status} as {media!r}; documented: {list(content)}")
        schema = content[media]["schema"]
        parsed = json.loads(text) if media == "application/json" else text
        self.validate(parsed, schema, f"{what} -> {status}")
        return parsed

    def wait_operation_ends(self, op_id, timeout=60):
        """Polls GET /v1/operations/{id} until the operation ends; it must have SUCCEEDED."""
        deadline = time.time() + timeout
        while True:
            ended = self.check("/v1/operations/{id}", "GET", {"id": op_id}, expect=200)
            if ended["state"] != "OPERATION_STATE_RUNNING" or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(ended["state"], "OPERATION_STATE_SUCCEEDED", ended)

    def wait_volume_gone(self, pool, name, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            vol = self.check("/v1/pools/{pool}/volumes/{name}", "GET", {"pool": pool, "name": name})
            if vol.get("code") == "NOT_FOUND":
                return
            self.assertEqual(vol["state"], "VOLUME_STATE_DELETING")
            time.sleep(0.2)
        self.fail(f"volume {pool}/{name} still there after {timeout} s")

    # ---- the operations ----

    def test_every_documented_operation_answers_as_documented(self):
        dom, ghost = unique_name("oa"), unique_name("ghost")
        d, g = {"name": dom}, {"name": ghost}
        disk_file = os.path.join(self.workdir, dom + ".raw")
        run(["qemu-img", "create", "-q", "-f", "raw", disk_file, "16M"])
        # A file disk, so that the statistics carry a DiskStats entry (no NIC: this tier has no
        # active libvirt network or bridge, so NicStats is checked by its schema only).
        spec = {**small_spec_json(dom), "disks": [{"source_path": disk_file, "type": "TYPE_FILE", "target": "vda"}]}

        # Host.
        self.check("/healthz", "GET", expect=200)
        self.check("/v1/host", "GET", expect=200)
        cap = self.check("/v1/host/capacity", "GET", expect=200)
        self.assertEqual(sorted(p["name"] for p in cap["pools"]), ["disk1", "vg"], cap)
        self.check("/v1/host/event-channels", "GET", expect=501)
        self.assertIn("hvagent_hypervisor_connected 1", self.check("/metrics", "GET", expect=200))

        # Domains: create and its refusals.
        created = self.check("/v1/domains", "POST", body={"spec": spec, "start": True}, expect=201)
        self.assertEqual(created["state"], "DOMAIN_STATE_RUNNING")
        self.check("/v1/domains", "POST", body={"spec": spec}, expect=409)
        self.check("/v1/domains", "POST", body={"spec": {**spec, "name": ghost, "vcpus": 0}}, expect=400)
        self.check("/v1/domains", "POST", raw=b'{"spec": ', expect=400)
        self.check("/v1/domains", "POST", body={"spec": {**spec, "name": ghost}, "colour": "red"}, expect=400)
        self.check("/v1/domains", "POST", raw=b" " * (2 * MiB), expect=413)
        for pool, size, code in (("nope", MiB, 404), ("disk1", 1 << 40, 507)):
            disk = {"target": "vda", "volume": {"pool": pool, "name": "oa-root", "create_size_bytes": str(size)}}
            self.check("/v1/domains", "POST", body={"spec": {**spec, "name": ghost, "disks": [disk]}}, expect=code)

        listed = self.check("/v1/domains", "GET", expect=200)
        self.assertIn(dom, [x["name"] for x in listed["domains"]])
        self.check("/v1/domains/{name}", "GET", d, expect=200)
        self.check("/v1/domains/{name}", "GET", g, expect=404)

        # Statistics: the domain's second sample (samples live metrics.max_age, 1 s) carries rates.
        deadline = time.time() + 15
        while True:
            stats = self.check("/v1/stats/domains", "GET", expect=200)
            mine = next((x for x in stats["domains"] if x["name"] == dom), {})
            if "cpu_usage" in mine or time.time() > deadline:
                break
            time.sleep(0.5)
        self.assertIn("cpu_usage", mine, "no rates within 15 s")  # so the rate fields were validated
        self.assertEqual([(x["target"], "read_bytes_per_second" in x) for x in mine["disks"]], [("vda", True)])
        one = self.check("/v1/stats/domains/{name}", "GET", d, expect=200)
        self.assertEqual([x["name"] for x in one["domains"]], [dom])
        self.check("/v1/stats/domains/{name}", "GET", g, expect=404)

        # Lifecycle actions, each with its documented refusals.
        self.assertEqual(self.check("/v1/domains/{name}:suspend", "POST", d, expect=200)["state"],
                         "DOMAIN_STATE_PAUSED")
        self.assertEqual(self.check("/v1/domains/{name}:resume", "POST", d, body={}, expect=200)["state"],
                         "DOMAIN_STATE_RUNNING")
        self.check("/v1/domains/{name}:shutdown", "POST", d, body={"timeout_seconds": 3601}, expect=400)
        r = self.check("/v1/domains/{name}:shutdown", "POST", d, body={"timeout_seconds": 1}, expect=200)
        self.assertEqual((r["forced"], r["domain"]["state"]), (True, "DOMAIN_STATE_SHUTOFF"))
        self.check("/v1/domains/{name}:start", "POST", d, body={"colour": "red"}, expect=400)
        self.check("/v1/domains/{name}:start", "POST", d, expect=200)
        self.check("/v1/domains/{name}:start", "POST", d, expect=409)
        self.check("/v1/domains/{name}:reboot", "POST", d, expect=200)
        # Managed save: memory to disk, the domain stops; starting it restores the saved guest.
        saved = self.check("/v1/domains/{name}:managed-save", "POST", d, expect=200)
        self.assertEqual(saved["state"], "DOMAIN_STATE_SHUTOFF")
        self.check("/v1/domains/{name}:managed-save", "POST", d, expect=409)  # not running
        self.assertEqual(self.check("/v1/domains/{name}:start", "POST", d, expect=200)["state"],
                         "DOMAIN_STATE_RUNNING")
        # Resize in place: a running domain only within its maximums (409), a stopped one freely.
        self.check("/v1/domains/{name}:resize", "POST", d, body={"vcpus": 64}, expect=409)
        self.check("/v1/domains/{name}:destroy", "POST", d, body={"name": dom}, expect=200)
        resized = self.check("/v1/domains/{name}:resize", "POST", d, body={"vcpus": 2, "memory_mib": "96"}, expect=200)
        self.assertEqual((resized["vcpus"], resized["memory_mib"]), (2, "96"))
        self.check("/v1/domains/{name}:resize", "POST", d, body={"vcpus": 0}, expect=400)
        self.check("/v1/domains/{name}:resize", "POST", g, body={"vcpus": 1}, expect=404)
        for action in ("start", "shutdown", "destroy", "reboot", "suspend", "resume", "managed-save"):
            self.check(f"/v1/domains/{{name}}:{action}", "POST", g, expect=404)
        # Rescue: the shared test guest's kernel, the domain's disk second; unrescue puts it back.
        rescue = {"kernel": {"kernel_path": self.kernel, "initrd_path": self.initrd, "cmdline": "console=ttyS0"}}
        self.check("/v1/domains/{name}:rescue", "POST", d, body={}, expect=400)
        self.check("/v1/domains/{name}:rescue", "POST", d, body={"kernel": {"kernel_path": "/etc/passwd"}},
                   expect=403)
        self.check("/v1/domains/{name}:rescue", "POST", g, body=rescue, expect=404)
        self.check("/v1/domains/{name}:unrescue", "POST", d, expect=409)  # not rescued
        self.assertEqual(self.check("/v1/domains/{name}:rescue", "POST", d, body=rescue, expect=200)["state"],
                         "DOMAIN_STATE_RUNNING")
        self.check("/v1/domains/{name}:rescue", "POST", d, body=rescue, expect=409)  # rescued already
        self.check("/v1/domains/{name}:unrescue", "POST", g, expect=404)
        self.assertEqual(self.check("/v1/domains/{name}:unrescue", "POST", d, body={}, expect=200)["state"],
                         "DOMAIN_STATE_RUNNING")
        # Migration: a running domain needs the shutdown policy (409); then a diskless domain is
        # accepted (202) towards a port nobody listens on, and cancelled while it tries to connect.
        mig = "/v1/domains/{name}:migrate"
        self.check(mig, "POST", d, body={"destination": "127.0.0.1:1"}, expect=409)
        self.check(mig, "POST", d, body={"destination": "no-port"}, expect=400)
        self.check(mig, "POST", g, body={"destination": "127.0.0.1:1"}, expect=404)
        bare = {"name": dom + "-bare"}
        self.check("/v1/domains", "POST", body={"spec": {"name": bare["name"], "vcpus": 1, "memory_mib": "64"}},
                   expect=201)
        moving = self.check(mig, "POST", bare, body={"destination": "127.0.0.1:1"}, expect=202)
        cancel = "/v1/migrations/{operation_id}:cancel"
        self.check(cancel, "POST", {"operation_id": moving["operation_id"]}, body={}, expect=200)
        self.check(cancel, "POST", {"operation_id": "0"}, body={}, expect=400)
        self.check(cancel, "POST", {"operation_id": "987654"}, body={}, expect=404)
        self.check("/v1/domains/{name}", "DELETE", bare, query={"force": "true"}, expect=204)
        self.check("/v1/domains/{name}:destroy", "POST", d, expect=200)

        # NICs (the domain is shut off: they go into its definition only, so the Linux bridge
        # need not exist; this agent's config has no [network] bridges key, so any is allowed).
        nics, port = "/v1/domains/{name}/nics", "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
        nic = self.check(nics, "POST", d, body={"nic": {"bridge": "hvoa0", "mtu": 1400}}, expect=201)
        self.assertEqual((nic["bridge"], nic["mtu"], nic["mac"][:9]), ("hvoa0", 1400, "52:54:00:"), nic)
        self.check(nics, "POST", d, body={"nic": {"bridge": "hvoa0", "mac": nic["mac"]}}, expect=409)
        listed = self.check("/v1/domains/{name}", "GET", d, expect=200)["nics"]
        self.assertEqual([(n["nic"]["mac"], n["nic"]["bridge"], n["host_device"]) for n in listed],
                         [(nic["mac"], "hvoa0", "")], listed)  # shut off: no tap
        self.check(nics, "POST", d, body={"nic": {"ovs": {"bridge": "br-int", "interface_id": port, "vlan": 0}}},
                   expect=400)
        self.check(nics, "POST", d, body={"nic": {"ovs": {"bridge": "br-int", "interface_id": port}}}, expect=403)
        self.check(nics, "POST", g, body={"nic": {"bridge": "hvoa0"}}, expect=404)
        self.check(nics + ":detach", "POST", d, body={"mac": "nope"}, expect=400)
        self.check(nics + ":detach", "POST", d, body={"mac": nic["mac"]}, expect=200)
        self.check(nics + ":detach", "POST", d, body={"mac": nic["mac"]}, expect=404)

        # Pools and volumes (the domain is shut off now: volumes attach to its definition).
        pools = self.check("/v1/pools", "GET", expect=200)
        self.assertEqual(sorted(p["name"] for p in pools["pools"]), ["disk1", "vg"])
        for pool in ("disk1", "vg"):
            self.check("/v1/pools/{pool}", "GET", {"pool": pool}, expect=200)
            self.check("/v1/pools/{pool}/volumes", "GET", {"pool": pool}, expect=200)
        self.check("/v1/pools/{pool}", "GET", {"pool": "nope"}, expect=404)
        self.check("/v1/pools/{pool}/volumes", "GET", {"pool": "nope"}, expect=404)

        p1, vols = {"pool": "disk1"}, "/v1/pools/{pool}/volumes"
        vol = self.check(vols, "POST", p1, body={"name": "oa-data", "size_bytes": str(16 * MiB)}, expect=201)
        self.assertEqual((vol["size_bytes"], vol["state"]), (str(16 * MiB), "VOLUME_STATE_AVAILABLE"))
        self.check(vols, "POST", p1, body={"name": "oa-data", "size_bytes": str(16 * MiB)}, expect=409)
        self.check(vols, "POST", p1, body={"name": "a;b", "size_bytes": str(MiB)}, expect=400)
        self.check(vols, "POST", {"pool": "nope"}, body={"name": "oa-x", "size_bytes": str(MiB)}, expect=404)
        self.check(vols, "POST", p1, body={"name": "oa-huge", "size_bytes": str(1 << 40)}, expect=507)
        # A JSON number is accepted for a 64-bit integer on input.
        lv = self.check(vols, "POST", {"pool": "vg"}, body={"name": "oa-lv", "size_bytes": 8 * MiB}, expect=201)
        self.assertEqual(lv["size_bytes"], str(8 * MiB))

        v, gv = {"pool": "disk1", "name": "oa-data"}, {"pool": "disk1", "name": "oa-ghost"}
        item = "/v1/pools/{pool}/volumes/{name}"
        self.check(item, "GET", v, expect=200)
        self.check(item, "GET", gv, expect=404)
        self.assertEqual(self.check(item + ":resize", "POST", v, body={"size_bytes": str(32 * MiB)},
                                    expect=200)["size_bytes"], str(32 * MiB))
        self.check(item + ":resize", "POST", v, body={"size_bytes": str(8 * MiB)}, expect=400)
        self.check(item + ":resize", "POST", gv, body={"size_bytes": str(32 * MiB)}, expect=404)
        attached = self.check(item + ":attach", "POST", v, body={"domain": dom}, expect=200)
        self.assertEqual((attached["state"], attached["attached_to"], attached["ownership"]),
                         ("VOLUME_STATE_ATTACHED", dom, "VOLUME_OWNERSHIP_BORROWED"))
        self.check(item + ":attach", "POST", v, body={"domain": dom}, expect=409)
        # The streamed export (docs/images.md, "Export over REST"): refused while the guest runs,
        # unless the caller says it holds the guest still; the body is the volume's bytes.
        ex, d = item + ":export", {"name": dom}
        self.check("/v1/domains/{name}:start", "POST", d, expect=200)
        self.check(ex, "GET", v, expect=409)
        exported = self.check(ex, "GET", v, query={"domain_quiesced": "true"}, expect=200)
        self.assertEqual(len(exported.encode("utf-8", errors="surrogateescape")), 32 * MiB)
        self.check("/v1/domains/{name}:destroy", "POST", d, expect=200)
        self.check(ex, "GET", gv, expect=404)
        self.check(ex, "GET", v, query={"format": "IMAGE_FORMAT_VMDK"}, expect=400)
        self.check(item + ":attach", "POST", gv, body={"domain": dom}, expect=404)
        # Releasing ownership of a borrowed volume answers it as it is.
        kept = self.check(item + ":release-ownership", "POST", v, expect=200)["volume"]
        self.assertEqual((kept["attached_to"], kept["ownership"]), (dom, "VOLUME_OWNERSHIP_BORROWED"))
        self.check(item + ":release-ownership", "POST", gv, expect=404)
        self.check(item, "DELETE", v, expect=409)
        # Naming another domain is refused and changes nothing; naming its own detaches.
        self.check(item + ":detach", "POST", v, body={"domain": ghost}, expect=409)
        self.check(item + ":detach", "POST", v, body={"domain": "a;b"}, expect=400)
        detached = self.check(item + ":detach", "POST", v, body={"domain": dom}, expect=200)
        self.assertEqual((detached["state"], detached["ownership"]), ("VOLUME_STATE_AVAILABLE", "VOLUME_OWNERSHIP_UNSPECIFIED"))
        self.check(item + ":detach", "POST", v, expect=404)  # not attached: nothing to detach
        self.check(item + ":release-ownership", "POST", v, expect=409)  # attached to no domain
        self.check(item + ":detach", "POST", gv, expect=404)
        # A running guest that does not release the device (SeaBIOS without an OS ignores the
        # ACPI eject; libvirt waits 5 s and the request stays pending): 409 ABORTED, still attached.
        self.check("/v1/domains/{name}:start", "POST", d, expect=200)
        self.check(item + ":attach", "POST", v, body={"domain": dom}, expect=200)
        refused = self.check(item + ":detach", "POST", v, expect=409)
        self.assertEqual(refused["code"], "ABORTED", refused)
        self.assertIn("did not release", refused["message"])
        self.assertEqual(self.check(item, "GET", v, expect=200)["attached_to"], dom)
        self.check("/v1/domains/{name}:destroy", "POST", d, expect=200)  # nothing holds it now
        self.assertEqual(self.check(item + ":detach", "POST", v, expect=200)["state"], "VOLUME_STATE_AVAILABLE")
        self.assertEqual(self.check(item, "DELETE", v, expect=202)["state"], "VOLUME_STATE_DELETING")
        self.check(item, "DELETE", gv, expect=404)
        self.wait_volume_gone("disk1", "oa-data")
        self.check(item, "DELETE", {"pool": "vg", "name": "oa-lv"}, expect=202)
        self.wait_volume_gone("vg", "oa-lv")
        self.snapshots(vols, item)

        # Consoles: a ticket needs a running domain; a log exists once the domain has started.
        tickets, log = "/v1/domains/{name}/console-tickets", "/v1/domains/{name}/console-log"
        serial_tcp = {"kind": "CONSOLE_KIND_SERIAL_TCP"}
        self.check(tickets, "POST", d, body=serial_tcp, expect=409)
        self.check(tickets, "POST", d, body={"kind": "CONSOLE_KIND_VNC"}, expect=409)  # stopped: no display now
        self.check(tickets, "POST", d, body={"kind": "CONSOLE_KIND_SERIAL_WS"}, expect=501)  # no ws_listen here
        self.check(tickets, "POST", g, body=serial_tcp, expect=404)
        self.check(log, "GET", g, expect=404)
        never = unique_name("oa-never")
        self.check("/v1/domains", "POST", body={"spec": small_spec_json(never)}, expect=201)
        self.check(log, "GET", {"name": never}, expect=409)
        self.check("/v1/domains/{name}", "DELETE", {"name": never}, expect=204)

        # Delete: refused while running without force; flags are true/false/1/0.
        self.check("/v1/domains/{name}:start", "POST", d, expect=200)
        ticket = self.check(tickets, "POST", d, body=serial_tcp, expect=201)
        self.assertGreater(ticket["port"], 0)
        self.check(log, "GET", d, query={"tail_bytes": "4096"}, expect=200)
        self.check("/v1/domains/{name}", "DELETE", d, expect=409)
        self.check("/v1/domains/{name}", "DELETE", d, query={"force": "maybe"}, expect=400)
        self.check("/v1/domains/{name}", "DELETE", d, query={"force": "true", "delete_volumes": "false"},
                   expect=204)
        self.check("/v1/domains/{name}", "DELETE", d, expect=404)

        # Images: an import from a host file, followed to its end through its operation.
        raw = os.path.join(self.importdir, "oa.raw")
        with open(raw, "wb") as f:
            f.write(os.urandom(2 * MiB))
        pi, ni = {"pool": "disk1"}, {"pool": "disk1", "name": "oa-img"}
        body = {"name": "oa-img", "format": "IMAGE_FORMAT_RAW", "host_file": raw}
        op = self.check("/v1/pools/{pool}/images", "POST", pi, body=body, expect=202)
        self.assertEqual(op["kind"], "OPERATION_KIND_IMPORT_IMAGE")
        self.check("/v1/pools/{pool}/images", "POST", {"pool": "nope"}, body=body, expect=404)
        self.check("/v1/pools/{pool}/images", "POST", pi, body={**body, "name": "oa-x", "host_file": "/etc/shadow"},
                   expect=403)
        self.check("/v1/pools/{pool}/images", "POST", pi, body={"name": "oa-x", "host_file": raw}, expect=400)
        self.wait_operation_ends(op["id"])
        self.check("/v1/operations/{id}", "GET", {"id": "999999"}, expect=404)
        self.check("/v1/operations/{id}", "GET", {"id": "seven"}, expect=400)
        self.check("/v1/pools/{pool}/images", "POST", pi, body=body, expect=409)
        self.assertEqual([i["name"] for i in self.check("/v1/pools/{pool}/images", "GET", pi, expect=200)["images"]],
                         ["oa-img"])
        self.check("/v1/pools/{pool}/images", "GET", {"pool": "nope"}, expect=404)
        self.assertEqual(self.check("/v1/pools/{pool}/images/{name}", "GET", ni, expect=200)["state"],
                         "IMAGE_STATE_READY")
        self.check("/v1/pools/{pool}/images/{name}", "GET", {**ni, "name": "ghost"}, expect=404)
        self.check("/v1/pools/{pool}/images/{name}", "DELETE", ni, expect=200)
        self.check("/v1/pools/{pool}/images/{name}", "DELETE", ni, expect=404)
        # An upload: the body is the image's bytes (over max_body_bytes, which it is exempt from).
        data = os.urandom(MiB + 1)
        up, raw_q = {**ni, "name": "oa-up"}, {"format": "IMAGE_FORMAT_RAW"}
        image = self.check("/v1/pools/{pool}/images/{name}", "PUT", up,
                           query={**raw_q, "sha256": hashlib.sha256(data).hexdigest()}, raw=data, expect=201)
        self.assertEqual((image["state"], image["virtual_size_bytes"]), ("IMAGE_STATE_READY", str(len(data))))
        self.check("/v1/pools/{pool}/images/{name}", "PUT", up, query=raw_q, raw=data, expect=409)
        self.check("/v1/pools/{pool}/images/{name}", "PUT", {**ni, "name": "oa-up2"},
                   query={**raw_q, "sha256": "0" * 64}, raw=data, expect=409)  # checksum mismatch
        self.check("/v1/pools/{pool}/images/{name}", "PUT", {**ni, "name": "oa-up3"}, raw=b"abc", expect=400)
        self.check("/v1/pools/{pool}/images/{name}", "DELETE", up, expect=200)
        # An image made from a volume of the pool (a template from a VM's disk).
        self.check(vols, "POST", p1, body={"name": "oa-src", "size_bytes": str(2 * MiB)}, expect=201)
        from_vol, src = "/v1/pools/{pool}/volumes/{volume}:create-image", {"pool": "disk1", "volume": "oa-src"}
        made = self.check(from_vol, "POST", src, body={"name": "oa-fromvol"}, expect=201)
        self.assertEqual((made["image"]["state"], made["image"]["name"]), ("IMAGE_STATE_READY", "oa-fromvol"), made)
        self.check(from_vol, "POST", src, body={"name": "oa-fromvol"}, expect=409)  # the image exists
        self.check(from_vol, "POST", {**src, "volume": "oa-ghost"}, body={"name": "oa-x"}, expect=404)
        self.check(from_vol, "POST", src, body={"name": "a;b"}, expect=400)
        # A volume from that image, as an operation (202), and its refusals.
        to_vol, img = "/v1/pools/{pool}/images/{image}:create-volume", {"pool": "disk1", "image": "oa-fromvol"}
        op = self.check(to_vol, "POST", img, body={"volume": "oa-copy"}, expect=202)
        self.assertEqual((op["kind"], op["volume"]), ("OPERATION_KIND_VOLUME_FROM_IMAGE", "oa-copy"), op)
        self.wait_operation_ends(op["id"])
        self.check(to_vol, "POST", img, body={"volume": "oa-copy"}, expect=409)  # the volume exists
        self.check(to_vol, "POST", img, body={"volume": "oa-big", "size_bytes": str(1 << 50)}, expect=507)
        self.check(to_vol, "POST", img, body={"volume": "oa-small", "size_bytes": "512"}, expect=400)
        self.check(to_vol, "POST", {**img, "image": "oa-ghost"}, body={"volume": "oa-x"}, expect=404)
        self.check(item, "DELETE", {"pool": "disk1", "name": "oa-copy"}, expect=202)
        self.wait_volume_gone("disk1", "oa-copy")
        self.check("/v1/pools/{pool}/images/{name}", "DELETE", {**ni, "name": "oa-fromvol"}, expect=200)
        self.check(item, "DELETE", {"pool": "disk1", "name": "oa-src"}, expect=202)
        self.wait_volume_gone("disk1", "oa-src")

        # Operations: this test's create and delete of the domain, newest first.
        ops = self.check("/v1/operations", "GET", expect=200)["operations"]
        mine = [(o["kind"], o["state"]) for o in ops if o["domain"] == dom]
        self.assertEqual(mine[0], ("OPERATION_KIND_DELETE_DOMAIN", "OPERATION_STATE_SUCCEEDED"), ops)
        self.assertEqual(mine[-1], ("OPERATION_KIND_CREATE_DOMAIN", "OPERATION_STATE_SUCCEEDED"), ops)
        self.assertIn(("OPERATION_KIND_CREATE_DOMAIN", "OPERATION_STATE_FAILED"), mine, ops)  # the 409 above
        self.assertEqual(self.check("/v1/operations", "GET", query={"running_only": "true"}, expect=200),
                         {"operations": []})
        self.check("/v1/operations", "GET", query={"running_only": "maybe"}, expect=400)

        # Every operation, and every status the document lists explicitly, was seen.
        documented = set()
        for path, it in self.doc["paths"].items():
            for m in METHODS:
                if m in it:
                    documented |= {(path, m.upper(), s) for s in it[m]["responses"] if s != "default"}
        operations = {(p, m) for p, m, _ in documented}
        self.assertEqual(len(operations), 52)
        self.assertEqual(operations, {(p, m) for p, m, _ in self.seen})
        missing = documented - self.seen - set(UNREACHABLE)
        self.assertEqual(missing, set(), "documented statuses this test never saw")
        print(f"\nOpenAPI conformance: {len(self.doc['paths'])} paths, {len(operations)} operations, "
              f"{len(documented)} documented statuses ({len(documented & self.seen)} seen, "
              f"{len(UNREACHABLE)} unreachable here), {len(self.seen)} (operation, status) pairs answered",
              flush=True)

    # ---- what is not documented ----

    def expect_not_served(self, method, path):
        status, headers, data = self.send(method, path)
        what = f"{method} {path}"
        self.assertIn(status, (404, 405), f"{what} answered {status}: {data[:300]!r}")
        if method != "HEAD":
            self.validate(json.loads(data), {"$ref": "#/components/schemas/Error"}, what)

    def snapshots(self, vols, item):
        """Snapshots (docs/snapshots.md): a partition pool's 501s, the refusals, and on the LVM pool an
        LV lvm2 made under the snapshot naming scheme (no device-mapper here to make a real one)."""
        snaps, one = "/v1/pools/{pool}/volumes/{volume}/snapshots", "/v1/pools/{pool}/volumes/{volume}/snapshots/{name}"
        self.check(vols, "POST", {"pool": "disk1"}, body={"name": "oa-psnap", "size_bytes": 8 * MiB}, expect=201)
        part = {"pool": "disk1", "volume": "oa-psnap", "name": "s1"}
        self.check(snaps, "POST", part, body={"name": "s1"}, expect=501)
        self.check(snaps, "GET", part, expect=501)
        self.check(one, "DELETE", part, expect=501)
        self.check(one + ":revert", "POST", part, expect=501)
        self.check(one + ":export", "GET", part, expect=501)
        self.check(item, "DELETE", {"pool": "disk1", "name": "oa-psnap"}, expect=202)
        self.wait_volume_gone("disk1", "oa-psnap")
        self.check(vols, "POST", {"pool": "vg"}, body={"name": "oa-snap", "size_bytes": 8 * MiB}, expect=201)
        lv, ghost = {"pool": "vg", "volume": "oa-snap", "name": "keep"}, {"pool": "vg", "volume": "oa-ghost", "name": "s"}
        self.check(snaps, "POST", lv, body={"name": "a/b"}, expect=400)
        self.check(snaps, "POST", ghost, body={"name": "s1"}, expect=404)
        self.check(snaps, "POST", lv, body={"name": "s1"}, expect=409)  # no device-mapper: said before lvm2 runs
        self.check(snaps, "GET", ghost, expect=404)
        run(lvm_argv("lvcreate", "-an", "-Zn", "--yes", "-n", "hvsnap+oa-snap+keep", "-L", "4m",
                     "--addtag", "hvagent_snapshot", self.vg))
        deadline = time.monotonic() + 10  # the agent's lvm2 report is cached up to 5 s
        while not (listed := self.check(snaps, "GET", lv, expect=200).get("snapshots")) and time.monotonic() < deadline:
            time.sleep(0.5)
        self.assertEqual([x["name"] for x in listed], ["keep"])
        self.check(one + ":revert", "POST", {**lv, "name": "-x"}, expect=400)
        self.check(one + ":revert", "POST", {**lv, "name": "nosuch"}, expect=404)
        self.check(one + ":export", "GET", {**lv, "name": "-x"}, expect=400)
        self.check(one + ":export", "GET", {**lv, "name": "nosuch"}, expect=404)
        self.check(one, "DELETE", {**lv, "name": "-x"}, expect=400)
        self.check(one, "DELETE", {**lv, "name": "nosuch"}, expect=404)
        volume = {"pool": "vg", "name": "oa-snap"}
        self.check(item, "DELETE", volume, query={"cascade": "maybe"}, expect=400)
        refused = self.check(item, "DELETE", volume, expect=409)
        self.assertIn("cascade", refused["message"])
        self.assertIsNone(self.check(one, "DELETE", lv, expect=204))
        self.check(snaps, "POST", lv, body={"name": "keep"}, expect=409)
        run(lvm_argv("lvcreate", "-an", "-Zn", "--yes", "-n", "hvsnap+oa-snap+again", "-L", "4m",
                     "--addtag", "hvagent_snapshot", self.vg))
        time.sleep(5.5)  # past the report cache: the agent must see "again" to delete it
        self.check(item, "DELETE", volume, query={"cascade": "true"}, expect=202)
        self.wait_volume_gone("vg", "oa-snap")

    def test_no_undocumented_path_or_method_answers(self):
        samples = {"name": unique_name("ghost"), "volume": unique_name("ghost"), "image": unique_name("ghost"),
                   "pool": "disk1", "id": "7", "operation_id": "7"}
        probed = 0
        for template, item in self.doc["paths"].items():
            path = template
            for k, v in samples.items():
                path = path.replace("{" + k + "}", v)
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
                if method.lower() not in item:
                    with self.subTest(method=method, path=path):
                        self.expect_not_served(method, path)
                        probed += 1
        neighbours = ["/", "/v1", "/v2/domains", "/v1/hosts", "/v1/host/", "/v1/host/x", "/v1/host/capacity/x",
                      "/v1/stats", "/v1/stats/domains/x/y", "/v1/domains/x/y", "/v1/domains//x", "/v1/domains/x/",
                      "/v1/pools/disk1/x", "/v1/pools/disk1/volumes/x/y", "/v1/events", "/v1/metrics",
                      "/metrics/", "/metrics/x", "/healthz/", "/healthz/x", "/openapi.yaml", "/v1/openapi.yaml"]
        for path in neighbours:
            with self.subTest(path=path):
                self.expect_not_served("GET", path)
        for path in ("/v1/domains/x:frobnicate", "/v1/pools/disk1/volumes/x:frobnicate", "/v1/domains/x:"):
            with self.subTest(path=path):
                self.expect_not_served("POST", path)
        self.assertGreater(probed, 60)

    def expect_none_served(self, requests):
        """Like expect_not_served for each, without subTest (which does not mix with
        expectedFailure): fails once, naming every request that was served."""
        served = []
        for method, path in requests:
            status, _, data = self.send(method, path)
            if status not in (404, 405):
                served.append(f"{method} {path} -> {status} {data[:80]!r}")
        self.assertEqual(served, [])

    # Both were served once: a trailing slash reached the resource without a role check (a
    # monitor token could create domains), and cpprestsdk answered OPTIONS/TRACE itself.

    def test_trailing_slash_aliases_are_not_served(self):
        """Only paths the role check knows reach a resource: no trailing-slash or empty-segment
        aliases of documented paths."""
        self.expect_none_served([("GET", p) for p in ("/v1/domains/", "/v1/pools/", "/v1/pools/disk1/",
                                                     "/v1/pools/disk1/volumes/", "/v1/pools//disk1/volumes")])

    def test_options_and_trace_are_not_served(self):
        """OPTIONS and TRACE go through the router like any method (405), instead of cpprestsdk
        answering them itself (TRACE would echo the Authorization header)."""
        self.expect_none_served([("OPTIONS", "/v1/domains"), ("TRACE", "/v1/domains")])


if __name__ == "__main__":
    unittest.main()
