"""Lifecycle events: HvagentDriver follows the agent's EventService.Watch stream of a real
hvagentd (libvirt's test:///default) and hands Nova a nova.virt.event.LifecycleEvent carrying
the instance UUID, for changes made through the driver, through the agent's gRPC API and
behind the driver's back through the agent's REST API. Runs under eventlet, as nova-compute
does (nova.test monkey-patches): the callback must be reached from a green thread."""

import time

from eventlet import patcher
import fixtures

from nova import exception
from nova import test
from nova.tests import fixtures as nova_fixtures
from nova.tests.unit import utils as test_utils
from nova.virt import event as virtevent
from nova.virt import fake

from hvagent.v1 import domain_pb2

import agent_fixture
import diskless
from hvagent_nova import driver as hv_driver

STARTED = virtevent.EVENT_LIFECYCLE_STARTED
STOPPED = virtevent.EVENT_LIFECYCLE_STOPPED
PAUSED = virtevent.EVENT_LIFECYCLE_PAUSED
RESUMED = virtevent.EVENT_LIFECYCLE_RESUMED
native_threading = patcher.original("threading")


class EventsTestCase(diskless.DisklessInstances, test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.agent = agent_fixture.AgentProcess(with_pool=False)

    @classmethod
    def tearDownClass(cls):
        code = cls.agent.stop()
        super().tearDownClass()
        agent_fixture.assert_clean_exit(code)

    def setUp(self):
        super().setUp()
        self.useFixture(nova_fixtures.GlanceFixture(self))
        self.flags(address=self.agent.grpc_addr, plaintext=True, storage_pool=None,
                   lifecycle_event_delay=0, group="hvagent")
        self.ctxt = test_utils.get_test_admin_context()
        self.main_tid = native_threading.get_native_id()
        self.drv = self.make_driver()

    def make_driver(self):
        drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        drv.init_host("myhostname")
        events = self.events = []
        threads = self.threads = []

        def on_event(event):
            # Nova's contract: emit_event runs in a green thread, i.e. on the OS thread of
            # eventlet's hub (the main one), never on the watcher's native reader thread.
            threads.append(native_threading.get_native_id() == self.main_tid)
            events.append(event)

        drv.register_event_listener(on_event)
        self.assertTrue(drv._watcher.wait_connected(20), "no event stream within 20 s")
        self.addCleanup(self._cleanup, drv)
        return drv

    def _cleanup(self, drv):
        drv.cleanup_host("myhostname")
        try:
            a = drv.agent
            for d in a.domains.ListDomains(domain_pb2.ListDomainsRequest()).domains:
                if d.name.startswith("instance-"):
                    a.domains.DeleteDomain(domain_pb2.DeleteDomainRequest(
                        name=d.name, force=True, delete_volumes=True))
            if a.domains.GetDomain(domain_pb2.GetDomainRequest(name="test")).state != \
                    domain_pb2.DOMAIN_STATE_RUNNING:
                self.agent.rest("POST", "/v1/domains/test:start")
        except Exception:
            pass  # the agent of the restart test is gone already

    def rest(self, name, action, agent=None):
        status, body = (agent or self.agent).rest("POST", "/v1/domains/%s:%s" % (name, action))
        self.assertEqual(200, status, body)

    def wait_for(self, uuid, transitions, timeout=15):
        """Waits until the events for `uuid` are `transitions` (in order); returns them."""
        deadline = time.time() + timeout
        while True:
            got = [e for e in self.events if e.get_instance_uuid() == uuid]
            if [e.get_transition() for e in got] == transitions:
                return got
            if time.time() > deadline:
                self.fail("events for %s: %s, want %s" % (
                    uuid, [e.get_name() for e in got],
                    [virtevent.NAMES[t] for t in transitions]))
            time.sleep(0.05)

    def test_changes_through_driver_grpc_and_rest(self):
        inst = self.instance()
        self.spawn(self.drv, inst)  # through the driver: STARTED
        self.wait_for(inst.uuid, [STARTED])
        # Through the agent's gRPC API, not the driver.
        self.drv.agent.domains.SuspendDomain(domain_pb2.DomainRef(name=inst.name))
        self.wait_for(inst.uuid, [STARTED, PAUSED])
        # Behind the driver's back: the agent's REST API.
        self.rest(inst.name, "resume")
        self.rest(inst.name, "destroy")
        self.rest(inst.name, "start")
        got = self.wait_for(inst.uuid, [STARTED, PAUSED, RESUMED, STOPPED, STARTED])
        for e in got:
            self.assertIsInstance(e, virtevent.LifecycleEvent)
            self.assertLess(abs(time.time() - e.get_timestamp()), 60)  # the agent's time
        self.assertTrue(self.threads and all(self.threads),
                        "emit_event ran outside eventlet's OS thread")

    def test_foreign_domains_are_not_reported(self):
        test_uuid = self.drv.agent.domains.GetDomain(
            domain_pb2.GetDomainRequest(name="test")).uuid
        inst = self.instance()
        self.rest("test", "suspend")  # test:///default's own domain: not Nova's
        self.rest("test", "resume")
        self.spawn(self.drv, inst)
        self.wait_for(inst.uuid, [STARTED])
        self.assertEqual([], [e for e in self.events if e.get_instance_uuid() == test_uuid])

    def test_stopped_is_delayed_and_dropped_when_the_guest_comes_back(self):
        # The delay is long enough that a destroy and a start through REST fit inside it even on
        # a loaded machine (with 1 s they did not always: the test flaked). Nothing below bounds
        # how fast the agent is; only the delay's own lower bound is checked.
        delay = 5.0
        self.drv.cleanup_host("myhostname")
        self.flags(lifecycle_event_delay=delay, group="hvagent")
        drv = self.make_driver()
        inst = self.instance()
        self.spawn(drv, inst)
        self.wait_for(inst.uuid, [STARTED])
        # A reboot the Xen way: destroyed and started again within the delay.
        rebooted_at = time.time()
        self.rest(inst.name, "destroy")
        self.rest(inst.name, "start")
        self.wait_for(inst.uuid, [STARTED, STARTED])
        time.sleep(max(0.0, rebooted_at + delay + 0.5 - time.time()))
        self.wait_for(inst.uuid, [STARTED, STARTED], timeout=0)  # the STOPPED was dropped
        # A real stop: reported once the delay has passed, not before, stamped with the time it
        # happened (the agent's clock is this host's: between the call and its answer).
        stopped_at = time.time()
        self.rest(inst.name, "destroy")
        answered_at = time.time()
        got = self.wait_for(inst.uuid, [STARTED, STARTED, STOPPED], timeout=delay + 15)
        self.assertGreaterEqual(time.time() - stopped_at, delay - 0.1)
        self.assertGreaterEqual(got[-1].get_timestamp(), stopped_at - 0.05)
        self.assertLessEqual(got[-1].get_timestamp(), answered_at + 0.05)

    def test_unregister_and_cleanup_end_the_stream(self):
        # Watch calls renewed every 2 s instead of 30: the reader notices stop() sooner.
        self.drv.cleanup_host("myhostname")
        self.useFixture(fixtures.MonkeyPatch("hvagent_nova.events.RENEW_SECONDS", 2.0))
        drv = self.make_driver()
        watcher = drv._watcher
        drv.register_event_listener(None)
        self.assertIsNone(drv._watcher)
        self.assertFalse(watcher._dispatcher.is_alive())  # nothing is delivered any more
        self.assertTrue(watcher.wait_stopped(5), "the reader still follows the stream")
        # Its call is over (channel closed) and no new stream is opened. (Readers of the
        # earlier tests' drivers may still hold theirs until their 30 s deadline.)
        log = self.agent.log_text()
        time.sleep(2.5)
        self.assertEqual(log.count("Watch opened"), self.agent.log_text().count("Watch opened"))
        inst = self.instance()
        self.spawn(drv, inst)
        time.sleep(0.5)
        self.assertEqual([], [e for e in self.events if e.get_instance_uuid() == inst.uuid])
        # Registered again: a new stream, renewed without losing anything; cleanup_host ends
        # it.
        events = []
        drv.register_event_listener(events.append)
        self.assertTrue(drv._watcher.wait_connected(20))
        time.sleep(2.5)  # at least one renewal
        self.assertGreaterEqual(drv._watcher.connections, 2)
        self.rest(inst.name, "suspend")
        deadline = time.time() + 10
        while PAUSED not in [e.get_transition() for e in events]:
            self.assertLess(time.time(), deadline, "no PAUSED: %s" % events)
            time.sleep(0.05)
        watcher = drv._watcher
        drv.cleanup_host("myhostname")
        self.assertIsNone(drv._watcher)
        self.assertTrue(watcher.wait_stopped(5))


class ReconnectTestCase(test.TestCase):
    """The agent restarts: the driver reconnects with backoff and catches up."""

    def setUp(self):
        super().setUp()
        self.useFixture(nova_fixtures.GlanceFixture(self))
        self.agent = agent_fixture.AgentProcess(with_pool=False)
        self.addCleanup(lambda: self.agent.stop())
        self.flags(address=self.agent.grpc_addr, plaintext=True, storage_pool=None,
                   lifecycle_event_delay=0, group="hvagent")
        self.ctxt = test_utils.get_test_admin_context()

    def test_agent_restart(self):
        drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        drv.init_host("myhostname")
        events = []
        drv.register_event_listener(events.append)
        self.addCleanup(drv.cleanup_host, "myhostname")
        watcher = drv._watcher
        self.assertTrue(watcher.wait_connected(20))
        flavor = test_utils.get_test_flavor(options={
            "root_gb": 0, "ephemeral_gb": 0, "swap": 0, "vcpus": 1, "memory_mb": 128})
        inst = test_utils.get_test_instance(self.ctxt, flavor=flavor, obj=True)
        image = test_utils.get_test_image_object(None, inst)

        self.assertEqual(0, self.agent.stop())
        deadline = time.time() + 10
        while watcher._connected.is_set():
            self.assertLess(time.time(), deadline, "the watcher did not notice")
            time.sleep(0.05)
        # A new agent (test:///default starts afresh) on the same ports; the instance is
        # made and paused there before or after the watcher is back: either the stream or the
        # catch-up after the reconnect must report where it ended up.
        self.agent = agent_fixture.AgentProcess(
            with_pool=False, grpc_addr=self.agent.grpc_addr, rest_addr=self.agent.rest_addr)
        # The driver's own channel fails fast until it has reconnected (at most 5 s).
        deadline = time.time() + 20
        while True:
            try:
                drv.init_host("myhostname")
                break
            except exception.HypervisorUnavailable:
                self.assertLess(time.time(), deadline, "the driver does not reconnect")
                time.sleep(0.2)
        drv.spawn(self.ctxt, inst, image, [], None, {}, network_info=[])
        drv.pause(inst)
        deadline = time.time() + 40  # backoff: 1 + 2 + 4 + ... s
        while not [e for e in events if e.get_instance_uuid() == inst.uuid
                   and e.get_transition() == PAUSED]:
            self.assertLess(time.time(), deadline,
                            "no PAUSED after the restart: %s" % events)
            time.sleep(0.05)
        self.assertTrue(watcher.wait_connected(1))
        self.assertGreaterEqual(watcher.connections, 2)
        # And the stream itself carries events again.
        self.agent.rest("POST", "/v1/domains/%s:resume" % inst.name)
        deadline = time.time() + 10
        while not [e for e in events if e.get_instance_uuid() == inst.uuid
                   and e.get_transition() == RESUMED]:
            self.assertLess(time.time(), deadline, "no RESUMED after the restart: %s" % events)
            time.sleep(0.05)
        drv.destroy(self.ctxt, inst, None)
