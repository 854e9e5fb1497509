"""A Watch subscriber sees lifecycle events for changes made behind the agent's back."""

import queue
import threading
import unittest

from agent_harness import AgentTestCase, small_spec, unique_name, virsh
from hvagent.v1 import domain_pb2, event_pb2

T = event_pb2


class EventsTest(AgentTestCase):
    def test_virsh_start_and_destroy_reach_the_stream(self):
        name = unique_name("ev")
        other = unique_name("other")

        stream = self.agent.events.Watch(event_pb2.WatchEventsRequest(domain_names=[name]), timeout=90)
        got = queue.Queue()

        def read():
            try:
                for ev in stream:
                    got.put(ev)
            except Exception as e:  # cancelled at the end of the test, or a real error
                got.put(e)

        threading.Thread(target=read, daemon=True).start()
        # The agent sends the stream's headers once the subscription is in place, so nothing
        # that follows can be missed.
        stream.initial_metadata()

        self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=small_spec(name), start=False))
        self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=small_spec(other), start=False))
        virsh("start", other)        # filtered out
        virsh("start", name)
        virsh("destroy", name)
        virsh("destroy", other)

        # QEMU reports more than these (a define says "added", a start also says "resumed");
        # the contract is that STARTED and then STOPPED arrive for this domain, and nothing
        # for the filtered-out one.
        seen = []
        try:
            while not any(e.type == T.DOMAIN_EVENT_TYPE_STOPPED for e in seen):
                try:
                    ev = got.get(timeout=30)
                except queue.Empty:
                    self.fail(f"no STOPPED event within 30 s; got {seen}")
                self.assertNotIsInstance(ev, Exception, f"stream ended: {ev}; got {seen}")
                seen.append(ev)
        finally:
            stream.cancel()

        self.assertTrue(all(e.domain_name == name for e in seen), seen)
        types = [e.type for e in seen]
        self.assertIn(T.DOMAIN_EVENT_TYPE_STARTED, types, seen)
        started = seen[types.index(T.DOMAIN_EVENT_TYPE_STARTED)]
        stopped = seen[-1]
        self.assertLess(types.index(T.DOMAIN_EVENT_TYPE_STARTED), len(seen) - 1)
        self.assertEqual(started.detail, "booted")
        self.assertEqual(stopped.detail, "destroyed")
        uuid = virsh("domuuid", name).stdout.strip()
        self.assertEqual((started.domain_uuid, stopped.domain_uuid), (uuid, uuid))
        seqs = [e.sequence for e in seen]
        self.assertTrue(all(a < b for a, b in zip(seqs, seqs[1:])), f"sequence not increasing: {seqs}")
        self.assertGreater(started.time.seconds, 0)
        self.assertGreaterEqual(stopped.time.ToNanoseconds(), started.time.ToNanoseconds())
        # The agent's own define comes through the same stream, first.
        self.assertEqual((seen[0].type, seen[0].detail), (T.DOMAIN_EVENT_TYPE_DEFINED, "added"), seen)


if __name__ == "__main__":
    unittest.main()
