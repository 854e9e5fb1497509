"""Evacuate between two real hvagentds (libvirt's test:///default each, a pool each): Nova's own
rebuild code (ComputeManager._rebuild_default_impl with evacuate=True, which the driver gets
since it has no rebuild of its own) rebuilds the instance from its image on the new host while
the old host's agent is down (SIGSTOP: any call to it would hang), and the recovered host's
init_host path (Nova's _destroy_evacuated_instances: is the storage shared? then destroy) deletes
the old domain and its volumes there and nothing on the new host."""

import os
import signal
import unittest
import unittest.mock

from nova.compute import manager
from nova.compute import power_state
from nova.compute import task_states
from nova import test
from nova.tests import fixtures as nova_fixtures
from nova.tests.unit import utils as test_utils
from nova.virt import fake

from hvagent.v1 import domain_pb2, storage_pb2

import agent_fixture
from hvagent_nova import client
from hvagent_nova import driver as hv_driver


class EvacuateTestCase(test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        why = agent_fixture.pool_possible()
        if why:
            raise unittest.SkipTest("each host's local disks need an agent pool: " + why)
        cls.old = agent_fixture.AgentProcess(with_pool=True)
        try:
            cls.new = agent_fixture.AgentProcess(with_pool=True)
        except BaseException:
            cls.old.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        os.kill(cls.old.proc.pid, signal.SIGCONT)
        codes = (cls.old.stop(), cls.new.stop())
        super().tearDownClass()
        for code in codes:
            agent_fixture.assert_clean_exit(code)

    def setUp(self):
        super().setUp()
        self.useFixture(nova_fixtures.GlanceFixture(self))
        self.ctxt = test_utils.get_test_admin_context()
        self.flags(plaintext=True, storage_pool=agent_fixture.POOL, rpc_timeout=10,
                   group="hvagent")

    def driver_on(self, agent):
        """A driver of the host `agent` runs on (drivers keep their own client)."""
        self.flags(address=agent.grpc_addr, group="hvagent")
        drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        drv.init_host("host-of-%s" % agent.grpc_addr)
        return drv

    def held(self, agent, inst):
        """(domain state or None, names of the instance's volumes) on `agent`'s host."""
        stub = client.Agent(client.make_channel(type("G", (), {
            "address": agent.grpc_addr, "plaintext": True})()), agent.grpc_addr, 10)
        try:
            state = stub.domains.GetDomain(domain_pb2.GetDomainRequest(name=inst.name)).state
        except Exception:
            state = None
        vols = stub.storage.ListVolumes(storage_pb2.ListVolumesRequest(pool=agent.pool)).volumes
        return state, sorted(v.name for v in vols if v.name.startswith(inst.uuid)
                             and v.state != storage_pb2.VOLUME_STATE_DELETING)

    def rebuild_here(self, drv, inst):
        """What ComputeManager.rebuild_instance does on the evacuation's destination once the
        driver's own rebuild is NotImplementedError: Nova's default implementation."""
        self.assertRaises(NotImplementedError, drv.rebuild, self.ctxt, inst, None, [], None,
                          None, None, None, None, None, evacuate=True)
        nova = type("Manager", (), {"driver": drv})()
        inst.task_state = task_states.REBUILDING
        inst.save()
        image = test_utils.get_test_image_object(None, inst)
        nw = test_utils.get_test_network_info()
        nw[0]["type"] = "bridge"
        manager.ComputeManager._rebuild_default_impl(
            nova, self.ctxt, inst, image, [], None, {}, [],
            detach_block_devices=lambda *a, **k: None,
            attach_block_devices=lambda *a, **k: None,
            network_info=nw, evacuate=True, block_device_info=None)

    def test_evacuate_rebuilds_on_the_new_host_and_the_recovered_host_cleans_up(self):
        old_drv = self.driver_on(self.old)
        inst = test_utils.get_test_instance(self.ctxt, obj=True, flavor=test_utils.get_test_flavor(
            options={"root_gb": 1, "ephemeral_gb": 1, "swap": 0, "vcpus": 1, "memory_mb": 128}))
        nw = test_utils.get_test_network_info()
        nw[0]["type"] = "bridge"
        old_drv.spawn(self.ctxt, inst, test_utils.get_test_image_object(None, inst), [], None,
                      {}, network_info=nw)
        volumes = sorted([inst.uuid + "-eph0", inst.uuid + "-root"])
        self.assertEqual((domain_pb2.DOMAIN_STATE_RUNNING, volumes), self.held(self.old, inst))

        # The old host goes down: its agent answers nothing from now on.
        os.kill(self.old.proc.pid, signal.SIGSTOP)
        new_drv = self.driver_on(self.new)
        # Nova's checks before an evacuation: the driver offers it, the disks are not on shared
        # storage (so Nova rebuilds from the image), nothing of that name is on the new host.
        self.assertTrue(new_drv.capabilities["supports_evacuate"])
        self.assertFalse(new_drv.instance_on_disk(inst))
        self.assertFalse(new_drv.instance_exists(inst))
        opened = []
        real = client.make_channel
        with unittest.mock.patch.object(client, "make_channel",
                                        side_effect=lambda g, *a: opened.append(g.address)
                                        or real(g, *a)), \
                unittest.mock.patch.object(new_drv, "_write_image",
                                           wraps=new_drv._write_image) as written:
            self.rebuild_here(new_drv, inst)
        self.assertNotIn(self.old.grpc_addr, opened)
        # The root is written again from the instance's Glance image, on the new host.
        self.assertEqual(inst.image_ref, written.call_args.args[2].id)
        self.assertEqual(power_state.RUNNING, new_drv.get_info(inst).state)
        dom = new_drv.agent.domains.GetDomain(domain_pb2.GetDomainRequest(name=inst.name))
        self.assertEqual(inst.uuid, dom.uuid)
        self.assertEqual((domain_pb2.DOMAIN_STATE_RUNNING, volumes), self.held(self.new, inst))
        for name in volumes:
            vol = new_drv.agent.storage.GetVolume(storage_pb2.VolumeRef(pool=self.new.pool,
                                                                        name=name))
            self.assertEqual((inst.name, storage_pb2.VOLUME_OWNERSHIP_OWNED),
                             (vol.attached_to, vol.ownership))

        # The old host comes back; nova-compute's init_host, then Nova's
        # _destroy_evacuated_instances: the instance is still listed there, its storage is not
        # shared (the driver has no shared-storage check: Nova assumes local disks), so destroy
        # with destroy_disks=True.
        os.kill(self.old.proc.pid, signal.SIGCONT)
        old_drv = self.driver_on(self.old)
        self.assertIn(inst.uuid, old_drv.list_instance_uuids())
        nova = type("Manager", (), {"driver": old_drv, "compute_rpcapi": None})()
        shared = manager.ComputeManager._is_instance_storage_shared(nova, self.ctxt, inst)
        self.assertFalse(shared)
        old_drv.destroy(self.ctxt, inst, nw, {}, not shared)
        self.assertEqual((None, []), self.held(self.old, inst))
        self.assertNotIn(inst.uuid, old_drv.list_instance_uuids())
        # The new host keeps the instance whole.
        self.assertEqual((domain_pb2.DOMAIN_STATE_RUNNING, volumes), self.held(self.new, inst))
        new_drv.destroy(self.ctxt, inst, nw)
        self.assertEqual((None, []), self.held(self.new, inst))


if __name__ == "__main__":
    unittest.main()
