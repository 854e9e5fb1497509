"""Bad input through both APIs: the right code, a message naming the field, and nothing
changed in libvirt (compared with virsh before and after)."""

import json
import unittest

import grpc

from agent_harness import (AgentTestCase, all_domain_names, small_spec, small_spec_json, unique_name,
                           virsh)
from hvagent.v1 import domain_pb2

XML_NAME = "a'/><devices><disk>"


def invalid_specs():
    """(description, spec JSON, field the message must name)."""
    good = small_spec_json("hvit-bad")
    cases = [
        ("name with a space", {**good, "name": "bad name"}, "name"),
        ("empty name", {**good, "name": ""}, "name"),
        ("65-character name", {**good, "name": "h" * 65}, "name"),
        ("name carrying XML", {**good, "name": XML_NAME}, "name"),
        ("zero vcpus", {**good, "vcpus": 0}, "vcpus"),
        ("absurd vcpus", {**good, "vcpus": 100000}, "vcpus"),
        ("zero memory", {**good, "memory_mib": 0}, "memory_mib"),
        ("absurd memory", {**good, "memory_mib": 10**12}, "memory_mib"),
    ]
    return cases


class BadInputTest(AgentTestCase):
    def setUp(self):
        self.before = all_domain_names()

    def assertNothingChanged(self):
        self.assertEqual(all_domain_names(), self.before)

    # ---- gRPC ----

    def grpc_code(self, call, request):
        with self.assertRaises(grpc.RpcError) as ctx:
            call(request)
        return ctx.exception.code(), ctx.exception.details()

    def test_grpc_unknown_domain_is_not_found(self):
        d = self.agent.domains
        ghost = unique_name("ghost")
        for call, req in [(d.GetDomain, domain_pb2.GetDomainRequest(name=ghost)),
                          (d.StartDomain, domain_pb2.DomainRef(name=ghost)),
                          (d.ShutdownDomain, domain_pb2.ShutdownDomainRequest(name=ghost)),
                          (d.DeleteDomain, domain_pb2.DeleteDomainRequest(name=ghost))]:
            code, _ = self.grpc_code(call, req)
            self.assertEqual(code, grpc.StatusCode.NOT_FOUND)
        self.assertNothingChanged()

    def test_grpc_invalid_specs(self):
        for what, spec_json, field in invalid_specs():
            with self.subTest(what):
                spec = domain_pb2.DomainSpec(name=spec_json["name"], vcpus=spec_json["vcpus"],
                                             memory_mib=spec_json["memory_mib"])
                code, details = self.grpc_code(self.agent.domains.CreateDomain,
                                               domain_pb2.CreateDomainRequest(spec=spec, start=True))
                self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
                self.assertIn(field, details)
        self.assertNothingChanged()

    def test_grpc_duplicate_name_is_already_exists_and_original_unchanged(self):
        name = unique_name("dup")
        self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=small_spec(name), start=True))
        xml_before = virsh("dumpxml", "--inactive", name).stdout
        self.before = all_domain_names()
        spec = small_spec(name)
        spec.vcpus = 2
        code, details = self.grpc_code(self.agent.domains.CreateDomain,
                                       domain_pb2.CreateDomainRequest(spec=spec, start=False))
        self.assertEqual(code, grpc.StatusCode.ALREADY_EXISTS)
        self.assertIn("name", details)
        self.assertNothingChanged()
        self.assertEqual(virsh("dumpxml", "--inactive", name).stdout, xml_before)
        self.assertEqual(virsh("domstate", name).stdout.strip(), "running")

    def test_grpc_xml_in_name_never_reaches_libvirt(self):
        spec = small_spec("x")
        spec.name = XML_NAME
        code, details = self.grpc_code(self.agent.domains.CreateDomain,
                                       domain_pb2.CreateDomainRequest(spec=spec, start=True))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("name", details)
        listing = virsh("list", "--all").stdout
        self.assertNotIn("<devices>", listing)
        self.assertNotIn("a'", listing)
        self.assertNothingChanged()

    # ---- REST ----

    def test_rest_unknown_domain_is_404(self):
        ghost = unique_name("ghost")
        for method, path in [("GET", f"/v1/domains/{ghost}"), ("POST", f"/v1/domains/{ghost}:start"),
                             ("DELETE", f"/v1/domains/{ghost}")]:
            status, err = self.agent.rest(method, path)
            self.assertEqual(status, 404, (method, path))
            self.assertEqual(set(err), {"code", "message", "details"}, err)
            self.assertEqual(err["code"], "NOT_FOUND")
            self.assertIn(ghost, err["message"])
        self.assertNothingChanged()

    def test_rest_invalid_specs_are_400_naming_the_field(self):
        for what, spec_json, field in invalid_specs():
            with self.subTest(what):
                status, err = self.agent.rest("POST", "/v1/domains", {"spec": spec_json, "start": True})
                self.assertEqual(status, 400, err)
                self.assertEqual(err["code"], "INVALID_ARGUMENT")
                self.assertIn(field, err["message"])
        self.assertNothingChanged()

    def test_rest_name_of_64_characters_is_accepted(self):
        name = unique_name("max")
        name += "x" * (64 - len(name))
        status, d = self.agent.rest("POST", "/v1/domains", {"spec": small_spec_json(name)})
        self.assertEqual(status, 201, d)
        self.assertEqual(virsh("domstate", name).stdout.strip(), "shut off")

    def test_rest_duplicate_is_409(self):
        name = unique_name("dup")
        status, _ = self.agent.rest("POST", "/v1/domains", {"spec": small_spec_json(name)})
        self.assertEqual(status, 201)
        self.before = all_domain_names()
        status, err = self.agent.rest("POST", "/v1/domains", {"spec": {**small_spec_json(name), "vcpus": 2}})
        self.assertEqual((status, err["code"]), (409, "ALREADY_EXISTS"))
        self.assertNothingChanged()
        self.assertIn("<vcpu placement='static'>1</vcpu>", virsh("dumpxml", name).stdout)

    def test_rest_malformed_json_is_400(self):
        for raw in [b"{", b"not json at all", b'{"spec": {"name": "x", "vcpus": "many"}}',
                    b'{"spec": {"nmae": "x"}}']:
            status, err = self.agent.rest("POST", "/v1/domains", raw=raw)
            self.assertEqual(status, 400, raw)
            self.assertEqual(err["code"], "INVALID_ARGUMENT")
        self.assertNothingChanged()

    def test_rest_body_over_limit_is_413(self):
        spec = small_spec_json(unique_name("big"))
        spec["machine"] = "m" * (2 * 1024 * 1024)  # valid JSON, 2 MiB
        status, err = self.agent.rest("POST", "/v1/domains", raw=json.dumps({"spec": spec}).encode())
        self.assertEqual(status, 413)
        self.assertEqual(err["code"], "RESOURCE_EXHAUSTED")
        self.assertNothingChanged()

    def test_xml_in_name_never_reaches_libvirt(self):
        status, _ = self.agent.rest("POST", "/v1/domains", {"spec": small_spec_json(XML_NAME), "start": True})
        self.assertEqual(status, 400)
        listing = virsh("list", "--all").stdout
        self.assertNotIn("<devices>", listing)
        self.assertNotIn("a'", listing)
        self.assertNothingChanged()
        # Nor did the agent hand libvirt any XML for it (debug log shows every definition).
        self.assertNotIn("<devices><disk>", self.agent.log_text())


if __name__ == "__main__":
    unittest.main()
