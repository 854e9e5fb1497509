"""The same round trip through REST, with curl as the client, checked with virsh."""

import unittest

from agent_harness import AgentTestCase, domstate, small_spec_json, unique_name, virsh


class RestLifecycleTest(AgentTestCase):
    def test_health_host_capacity(self):
        status, body = self.agent.curl("GET", "/healthz")
        self.assertEqual((status, body), (200, {"status": "SERVING", "hypervisor_connected": True}))
        status, host = self.agent.curl("GET", "/v1/host")
        self.assertEqual(status, 200)
        self.assertEqual(host["hypervisor_type"], "QEMU")
        self.assertEqual(host["arch"], "x86_64")
        self.assertEqual(host["uri"], "qemu:///system")
        self.assertTrue(host["connected"])
        self.assertIsInstance(host["memory_bytes"], str)  # uint64 is a JSON string
        self.assertGreater(int(host["memory_bytes"]), 0)

        status, before = self.agent.curl("GET", "/v1/host/capacity")
        self.assertEqual(status, 200)
        name = unique_name("cap")
        status, d = self.agent.curl("POST", "/v1/domains", {"spec": small_spec_json(name), "start": True})
        self.assertEqual(status, 201, d)
        status, after = self.agent.curl("GET", "/v1/host/capacity")
        self.assertEqual(status, 200)
        self.assertEqual(after["domains_running"], before["domains_running"] + 1)
        self.assertEqual(after["domains_total"], before["domains_total"] + 1)
        self.assertEqual(int(after["allocated_memory_bytes"]),
                         int(before["allocated_memory_bytes"]) + 64 * 2**20)

    def test_round_trip(self):
        name = unique_name("rest")
        status, d = self.agent.curl("POST", "/v1/domains", {"spec": small_spec_json(name), "start": True})
        self.assertEqual(status, 201, d)
        self.assertEqual(d["state"], "DOMAIN_STATE_RUNNING")
        self.assertEqual(d["memory_mib"], "64")
        self.assertEqual(domstate(name), "running")

        uuid = d["uuid"]
        self.assertEqual(virsh("domuuid", name).stdout.strip(), uuid)

        status, d = self.agent.curl("GET", f"/v1/domains/{name}")
        self.assertEqual((status, d["name"], d["uuid"]), (200, name, uuid))
        self.assertEqual((d["vcpus"], d["memory_mib"], d["persistent"]), (1, "64", True))
        self.assertEqual(d["state"], "DOMAIN_STATE_RUNNING")
        status, listing = self.agent.curl("GET", "/v1/domains")
        self.assertIn(name, [x["name"] for x in listing["domains"]])

        status, d = self.agent.curl("POST", f"/v1/domains/{name}:suspend")
        self.assertEqual((status, d["state"]), (200, "DOMAIN_STATE_PAUSED"))
        self.assertEqual(domstate(name), "paused")
        status, d = self.agent.curl("POST", f"/v1/domains/{name}:resume", {})
        self.assertEqual((status, d["state"]), (200, "DOMAIN_STATE_RUNNING"))
        self.assertEqual(domstate(name), "running")

        status, r = self.agent.curl("POST", f"/v1/domains/{name}:shutdown", {"timeout_seconds": 2})
        self.assertEqual(status, 200, r)
        self.assertTrue(r["forced"])
        self.assertEqual(r["domain"]["state"], "DOMAIN_STATE_SHUTOFF")
        self.assertEqual(domstate(name), "shut off")

        status, d = self.agent.curl("POST", f"/v1/domains/{name}:start")
        self.assertEqual((status, d["state"]), (200, "DOMAIN_STATE_RUNNING"))
        self.assertEqual(domstate(name), "running")
        status, d = self.agent.curl("POST", f"/v1/domains/{name}:reboot")
        self.assertEqual(status, 200, d)
        self.assertEqual(domstate(name), "running")
        status, d = self.agent.curl("POST", f"/v1/domains/{name}:destroy")
        self.assertEqual((status, d["state"]), (200, "DOMAIN_STATE_SHUTOFF"))
        self.assertEqual(domstate(name), "shut off")

        status, body = self.agent.curl("DELETE", f"/v1/domains/{name}")
        self.assertEqual((status, body), (204, None))
        self.assertNotEqual(virsh("dominfo", name, check=False).returncode, 0)
        status, err = self.agent.curl("GET", f"/v1/domains/{name}")
        self.assertEqual((status, err["code"]), (404, "NOT_FOUND"))


if __name__ == "__main__":
    unittest.main()
