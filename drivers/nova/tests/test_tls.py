"""HvagentDriver against a real hvagentd with mutual TLS, configured the way docs/openstack.md
tells an operator to: [hvagent] ca_file, cert_file, key_file (and tls_server_name). The PKI is
deploy/dev-certs.sh's (openssl). The driver's identity is its client certificate's CN; the agent
maps it to a role (docs/security.md). Checks that the driver works over TLS (unary calls and
the lifecycle event stream, which opens its own channel) and that every way TLS can be wrong
ends in the Nova exception an operator can act on, with the agent's reason kept."""

import shutil
import tempfile
import time
import unittest

from nova.compute import provider_tree
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


class TlsTestCase(diskless.DisklessInstances, test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pki = agent_fixture.make_pki(tempfile.mkdtemp(prefix="hvnova-pki-"))
        try:
            cls.agent = agent_fixture.AgentProcess(with_pool=False, pki=cls.pki)
        except BaseException:
            shutil.rmtree(cls.pki, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        code = cls.agent.stop()
        shutil.rmtree(cls.pki, ignore_errors=True)
        super().tearDownClass()
        agent_fixture.assert_clean_exit(code)

    def setUp(self):
        super().setUp()
        self.useFixture(nova_fixtures.GlanceFixture(self))
        self.ctxt = test_utils.get_test_admin_context()

    def configure(self, identity="controller", ca="ca.crt", address=None, **extra):
        """[hvagent] as an operator writes it: the CA, and `identity`'s certificate and key."""
        cert = key = None
        if identity:
            cert, key = self.agent.pem(identity + ".crt"), self.agent.pem(identity + ".key")
        options = dict(address=address or self.agent.grpc_addr, plaintext=False,
                       ca_file=self.agent.pem(ca), cert_file=cert, key_file=key,
                       storage_pool=None, rpc_timeout=10, lifecycle_event_delay=0)
        options.update(extra)
        self.flags(group="hvagent", **options)
        return hv_driver.HvagentDriver(fake.FakeVirtAPI())

    def test_controller_runs_an_instance_and_gets_its_events(self):
        drv = self.configure("controller")
        drv.init_host("myhostname")
        events = []
        drv.register_event_listener(events.append)
        self.addCleanup(drv.cleanup_host, "myhostname")
        self.assertTrue(drv._watcher.wait_connected(20), "no TLS event stream within 20 s")
        inst = self.instance()
        self.spawn(drv, inst)
        self.addCleanup(self._delete, drv, inst)
        self.assertIn(inst.name, drv.list_instances())
        drv.power_off(inst)
        drv.destroy(self.ctxt, inst, None)
        self.assertFalse(drv.instance_exists(inst))
        deadline = time.time() + 15
        want = [virtevent.EVENT_LIFECYCLE_STARTED, virtevent.EVENT_LIFECYCLE_STOPPED]
        while time.time() < deadline:
            got = [e.get_transition() for e in events if e.get_instance_uuid() == inst.uuid]
            if got == want:
                break
            time.sleep(0.05)
        self.assertEqual(want, got)

    def _delete(self, drv, inst):
        try:
            drv.agent.domains.DeleteDomain(domain_pb2.DeleteDomainRequest(
                name=inst.name, force=True), timeout=10)
        except Exception:
            pass  # deleted by the test already

    def test_monitor_identity_may_look_but_not_spawn(self):
        drv = self.configure("monitor")
        drv.init_host("myhostname")  # GetHost: a monitor may read the host
        self.assertIn("VCPU", self._inventory(drv))
        inst = self.instance()
        e = self.assertRaises(exception.Forbidden, self.spawn, drv, inst)
        self.assertIn("PERMISSION_DENIED", str(e))
        self.assertIn("hvagent-monitor", str(e))
        # Nothing was created: a controller sees no such domain.
        self.assertNotIn(inst.name, self.configure("controller").list_instances())

    def _inventory(self, drv):
        pt = provider_tree.ProviderTree()
        pt.new_root("node1", "uuid-node1")
        drv.update_provider_tree(pt, "node1")
        return pt.data("node1").inventory

    def test_without_client_certificate_refused(self):
        drv = self.configure(identity=None)
        e = self.assertRaises(exception.Forbidden, drv.init_host, "myhostname")
        self.assertIn("UNAUTHENTICATED", str(e))
        self.assertIn("no valid client certificate", str(e))

    def test_certificate_from_another_ca_refused(self):
        drv = self.configure("rogue")
        e = self.assertRaises(exception.Forbidden, drv.init_host, "myhostname")
        self.assertIn("UNAUTHENTICATED", str(e))

    def test_expired_certificate_refused(self):
        drv = self.configure("expired")
        e = self.assertRaises(exception.Forbidden, drv.init_host, "myhostname")
        self.assertIn("certificate has expired", str(e))

    def test_agent_not_signed_by_configured_ca_is_unavailable(self):
        # The driver must not talk to an agent it cannot verify: the handshake fails on the
        # driver's side, which gRPC reports as UNAVAILABLE.
        drv = self.configure("controller", ca="rogue-ca.crt", rpc_timeout=3)
        self.assertRaises(exception.HypervisorUnavailable, drv.init_host, "myhostname")

    def test_server_name(self):
        # The server certificate names localhost and 127.0.0.1, not other names.
        port = self.agent.grpc_addr.rsplit(":", 1)[1]
        self.configure("controller", address="localhost:" + port).init_host("h")
        drv = self.configure("controller", tls_server_name="agent.invalid", rpc_timeout=3)
        self.assertRaises(exception.HypervisorUnavailable, drv.init_host, "h")
        self.configure("controller", tls_server_name="localhost").init_host("h")

    def test_missing_key_file_is_a_configuration_error(self):
        drv = self.configure("controller")
        self.flags(key_file=None, group="hvagent")
        self.assertRaises(exception.InvalidConfiguration, drv.init_host, "h")
        self.flags(key_file=self.agent.pem("no-such.key"), group="hvagent")
        drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        e = self.assertRaises(exception.InvalidConfiguration, drv.init_host, "h")
        self.assertIn("no-such.key", str(e))


if __name__ == "__main__":
    unittest.main()
