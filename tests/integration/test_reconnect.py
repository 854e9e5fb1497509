"""When libvirtd goes away the agent says so (health 503 / UNAVAILABLE) and reconnects by
itself once libvirtd is back."""

import os
import subprocess
import time
import unittest

from agent_harness import AgentTestCase, unique_name, small_spec_json

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libvirtd_fixture.sh")


def wait_for(predicate, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


class ReconnectTest(AgentTestCase):
    def test_health_follows_libvirtd(self):
        self.assertEqual(self.agent.rest("GET", "/healthz")[0], 200)
        subprocess.run(["pkill", "-x", "libvirtd"], check=True)
        try:
            self.assertTrue(wait_for(lambda: subprocess.run(["pgrep", "-x", "libvirtd"]).returncode != 0, 30),
                            "libvirtd did not exit")
            self.assertTrue(wait_for(lambda: self.agent.rest("GET", "/healthz")[0] == 503, 15),
                            "health never reported the lost connection")
            status, err = self.agent.rest("GET", "/v1/domains")
            self.assertEqual((status, err["code"]), (503, "UNAVAILABLE"))
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
