"""A Watch subscriber sees lifecycle events for changes made behind the agent's back."""

import queue
import threading
import unittest

from agent_harness import AgentTestCase, small_spec, unique_name, virsh
from hvagent.v1 import domain_pb2, event_pb2


class EventsTest(AgentTestCase):
    def test_virsh_start_and_destroy_reach_the_stream(self):
        name = unique_name("ev")
        other = unique_name("other")
        self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=small_spec(name), start=False))
        self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=small_spec(other), start=False))

        stream = self.agent.events.Watch(event_pb2.WatchEventsRequest(domain_names=[name]), timeout=60)
        got = queue.Queue()

        def read():
            try:
                for ev in stream:
                    got.put(ev)
            except Exception as e:  # cancelled at the end of the test
                got.put(e)

        # The agent sends the stream's headers once the subscription is in place.
        stream.initial_metadata()
        threading.Thread(target=read, daemon=True).start()

        virsh("start", other)        # filtered out
        virsh("start", name)
        virsh("destroy", name)
        virsh("destroy", other)

        # QEMU reports more than these two (a start also says "resumed"); the contract is that
        # STARTED and then STOPPED arrive for this domain, and nothing for the filtered-out one.
        seen = []
        while not any(e.type == event_pb2.DOMAIN_EVENT_TYPE_STOPPED for e in seen):
            ev = got.get(timeout=30)
            self.assertNotIsInstance(ev, Exception, ev)
            seen.append(ev)
        stream.cancel()

        self.assertTrue(all(e.domain_name == name for e in seen), seen)
        types = [e.type for e in seen]
        self.assertIn(event_pb2.DOMAIN_EVENT_TYPE_STARTED, types)
        started = seen[types.index(event_pb2.DOMAIN_EVENT_TYPE_STARTED)]
        stopped = seen[-1]
        self.assertEqual(started.detail, "booted")
        self.assertEqual(stopped.detail, "destroyed")
        self.assertLess(started.sequence, stopped.sequence)
        self.assertEqual([e.sequence for e in seen], sorted(e.sequence for e in seen))
        self.assertGreater(started.time.seconds, 0)

if __name__ == "__main__":
    unittest.main()
