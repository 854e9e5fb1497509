"""When libvirtd goes away the agent says so (health 503 / UNAVAILABLE) and reconnects by
itself once libvirtd is back; an open event stream survives and is told that events may have been
missed (RESYNC), then each domain's current state."""

import os
import queue
import signal
import subprocess
import threading
import time
import unittest

import grpc

from agent_harness import FIXTURE, AgentTestCase, unique_name, small_spec_json
from hvagent.v1 import domain_pb2, event_pb2


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
        running = unique_name("kept")
        self.assertEqual(self.agent.rest("POST", "/v1/domains", {"spec": small_spec_json(running), "start": True})[0], 201)
        # An event stream open across the restart, filtered to one domain.
        stream = self.agent.events.Watch(event_pb2.WatchEventsRequest(domain_names=[running]))
        got = queue.Queue()
        def follow():
            try:
                for e in stream:
                    got.put(e)
            except grpc.RpcError:
                pass
        threading.Thread(target=follow, daemon=True).start()
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
        # libvirtd stopped the guest when it went down or kept it: either way the stream says
        # what it is now, after the marker.
        seen = []
        deadline = time.time() + 15
        while time.time() < deadline and not any(e.type == event_pb2.DOMAIN_EVENT_TYPE_STATE for e in seen):
            try:
                seen.append(got.get(timeout=1))
            except queue.Empty:
                pass
        stream.cancel()
        types = [event_pb2.DomainEventType.Name(e.type) for e in seen]
        self.assertIn("DOMAIN_EVENT_TYPE_RESYNC", types, seen)
        resync = types.index("DOMAIN_EVENT_TYPE_RESYNC")
        state = [e for e in seen[resync:] if e.type == event_pb2.DOMAIN_EVENT_TYPE_STATE]
        self.assertEqual([e.domain_name for e in state], [running], "only the watched domain's state")
        self.assertIn(state[0].detail, ("running", "shut off"))
        name = unique_name("after")
        status, d = self.agent.rest("POST", "/v1/domains", {"spec": small_spec_json(name), "start": True})
        self.assertEqual(status, 201, d)
        self.assertEqual(d["state"], "DOMAIN_STATE_RUNNING")


if __name__ == "__main__":
    unittest.main()
