"""When libvirtd goes away the agent says so (health 503 / UNAVAILABLE) and reconnects by
itself once libvirtd is back."""

import os
import signal
import subprocess
import time
import unittest

import grpc

from agent_harness import FIXTURE, AgentTestCase, unique_name, small_spec_json
from hvagent.v1 import domain_pb2


def wait_for(predicate, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def alive(pid):
    """True while pid runs (a zombie, left for a non-reaping init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


class ReconnectTest(AgentTestCase):
    def test_health_follows_libvirtd(self):
        # Only a libvirtd the fixture started is ours to stop (by its pid, never by name).
        r = subprocess.run([FIXTURE, "pid"], capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest("the running libvirtd was not started by libvirtd_fixture.sh")
        pid = int(r.stdout)
        self.assertEqual(self.agent.rest("GET", "/healthz")[0], 200)
        os.kill(pid, signal.SIGTERM)
        try:
            self.assertTrue(wait_for(lambda: not alive(pid), 30),
                            "libvirtd did not exit")
            self.assertTrue(wait_for(lambda: self.agent.rest("GET", "/healthz")[0] == 503, 15),
                            "health never reported the lost connection")
            status, err = self.agent.rest("GET", "/v1/domains")
            self.assertEqual((status, err["code"]), (503, "UNAVAILABLE"))
            with self.assertRaises(grpc.RpcError) as ctx:
                self.agent.domains.ListDomains(domain_pb2.ListDomainsRequest(), timeout=10)
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAVAILABLE)
        finally:
            subprocess.run([FIXTURE, "start"], check=True)
        # Backoff tops out at 30 s between attempts.
        self.assertTrue(wait_for(lambda: self.agent.rest("GET", "/healthz")[0] == 200, 45),
                        "agent did not reconnect")
        name = unique_name("after")
        status, d = self.agent.rest("POST", "/v1/domains", {"spec": small_spec_json(name), "start": True})
        self.assertEqual(status, 201, d)
        self.assertEqual(d["state"], "DOMAIN_STATE_RUNNING")


if __name__ == "__main__":
    unittest.main()
