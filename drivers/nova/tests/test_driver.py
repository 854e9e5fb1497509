"""HvagentDriver against a real hvagentd (libvirt's test:///default): what each Nova call does
on the agent, error mapping, placement inventory, configuration errors."""

import contextlib
import itertools
import socket
import time
import unittest
import unittest.mock

import eventlet
import fixtures
import grpc
import os_resource_classes as orc
import os_traits
from oslo_serialization import jsonutils
from oslo_utils import units

from nova.compute import power_state
from nova.compute import provider_tree
from nova.network import model as network_model
from nova import exception
from nova import objects
from nova import test
from nova.tests import fixtures as nova_fixtures
from nova.tests.unit import utils as test_utils
from nova.virt import fake

from hvagent.v1 import domain_pb2, host_pb2, metrics_pb2, migration_pb2, operation_pb2, storage_pb2

import agent_fixture
from hvagent_nova import client
from hvagent_nova import diagnostics
from hvagent_nova import driver as hv_driver


class DriverTestCase(test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.agent = agent_fixture.AgentProcess(with_pool=agent_fixture.pool_possible() is None)

    @classmethod
    def tearDownClass(cls):
        code = cls.agent.stop()
        super().tearDownClass()
        agent_fixture.assert_clean_exit(code)

    def setUp(self):
        super().setUp()
        self.useFixture(nova_fixtures.GlanceFixture(self))
        self.flags(address=self.agent.grpc_addr, plaintext=True,
                   storage_pool=self.agent.pool, group="hvagent")
        self.drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        self.drv.init_host("myhostname")
        self.ctxt = test_utils.get_test_admin_context()
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        a = self.drv.agent
        for d in a.domains.ListDomains(domain_pb2.ListDomainsRequest()).domains:
            if d.name.startswith("instance-"):
                a.domains.DeleteDomain(domain_pb2.DeleteDomainRequest(
                    name=d.name, force=True, delete_volumes=True))

    def need_pool(self):
        if not self.agent.pool:
            self.skipTest("no storage pool: " + agent_fixture.pool_possible())

    def instance(self, root_gb=1, ephemeral_gb=0, swap=0):
        flavor = test_utils.get_test_flavor(options={
            "root_gb": root_gb, "ephemeral_gb": ephemeral_gb, "swap": swap,
            "vcpus": 2, "memory_mb": 256})
        inst = test_utils.get_test_instance(self.ctxt, flavor=flavor, obj=True)
        return inst

    def spawn(self, inst, vif_type="bridge", power_on=True):
        nw = test_utils.get_test_network_info()
        nw[0]["type"] = vif_type
        image = test_utils.get_test_image_object(None, inst)
        self.drv.spawn(self.ctxt, inst, image, [], None, {}, network_info=nw,
                       power_on=power_on)

    def volumes(self):
        vols = self.drv.agent.storage.ListVolumes(
            storage_pb2.ListVolumesRequest(pool=self.agent.pool)).volumes
        return {v.name: v for v in vols if v.state != storage_pb2.VOLUME_STATE_DELETING}

    def state(self, inst):
        return self.drv.get_info(inst).state

    def test_lifecycle(self):
        self.need_pool()
        inst = self.instance(root_gb=2, ephemeral_gb=1)
        self.spawn(inst)
        dom = self.drv.agent.domains.GetDomain(domain_pb2.GetDomainRequest(name=inst.name))
        self.assertEqual((2, 256, inst.uuid), (dom.vcpus, dom.memory_mib, dom.uuid))
        vols = self.volumes()
        self.assertEqual(2 << 30, vols[inst.uuid + "-root"].size_bytes)
        self.assertEqual(1 << 30, vols[inst.uuid + "-eph0"].size_bytes)
        self.assertEqual(inst.name, vols[inst.uuid + "-root"].attached_to)
        self.assertIn(inst.name, self.drv.list_instances())
        self.assertIn(inst.uuid, self.drv.list_instance_uuids())
        self.assertTrue(self.drv.instance_exists(inst))
        self.assertEqual(power_state.RUNNING, self.state(inst))
        self.drv.pause(inst)
        self.assertEqual(power_state.PAUSED, self.state(inst))
        self.drv.unpause(inst)
        self.assertEqual(power_state.RUNNING, self.state(inst))
        self.drv.power_off(inst)  # timeout 0: destroy
        self.assertEqual(power_state.SHUTDOWN, self.state(inst))
        self.drv.power_off(inst)  # already off: nothing to do
        self.drv.power_on(self.ctxt, inst, None)
        self.assertEqual(power_state.RUNNING, self.state(inst))
        self.drv.reboot(self.ctxt, inst, None, "HARD")
        self.assertEqual(power_state.RUNNING, self.state(inst))
        self.drv.reboot(self.ctxt, inst, None, "SOFT")
        self.assertEqual(power_state.RUNNING, self.state(inst))
        self.drv.power_off(inst, timeout=5)  # graceful: ShutdownDomain
        self.assertEqual(power_state.SHUTDOWN, self.state(inst))
        self.drv.destroy(self.ctxt, inst, None)
        self.assertFalse(self.drv.instance_exists(inst))
        self.assertFalse([n for n in self.volumes() if n.startswith(inst.uuid)])
        self.drv.destroy(self.ctxt, inst, None)  # gone already: fine

    def test_soft_reboot_is_shutdown_and_start_when_the_guest_stops(self):
        # libvirt's test driver stops a domain at once on a shutdown request: the guest
        # "cooperates", so no hard reboot follows.
        self.need_pool()
        self.flags(wait_soft_reboot_seconds=5, group="libvirt")
        inst = self.instance()
        self.spawn(inst)
        with unittest.mock.patch.object(self.drv, "_act", wraps=self.drv._act) as act:
            self.drv.reboot(self.ctxt, inst, None, "SOFT")
        asked = [c.args[0] for c in act.call_args_list]
        self.assertIn(self.drv.agent.domains.StartDomain, asked)
        self.assertNotIn(self.drv.agent.domains.DestroyDomain, asked)
        self.assertEqual(power_state.RUNNING, self.state(inst))

    def test_suspend_is_managed_save_and_resume_restores(self):
        self.need_pool()
        inst = self.instance()
        self.spawn(inst)
        self.drv.suspend(self.ctxt, inst)
        # Saved to disk: the domain no longer runs (nor sits paused in host memory).
        self.assertEqual(power_state.SHUTDOWN, self.state(inst))
        self.drv.unpause(inst)  # only unpauses: a saved guest stays saved
        self.assertEqual(power_state.SHUTDOWN, self.state(inst))
        self.drv.resume(self.ctxt, inst, None)
        self.assertEqual(power_state.RUNNING, self.state(inst))
        self.drv.resume(self.ctxt, inst, None)  # running: nothing to do
        self.assertEqual(power_state.RUNNING, self.state(inst))
        self.drv.power_off(inst)
        self.assertRaises(exception.InstanceInvalidState, self.drv.suspend, self.ctxt, inst)

    def _flavor(self, vcpus, memory_mb, root_gb=1, ephemeral_gb=0):
        return objects.Flavor(vcpus=vcpus, memory_mb=memory_mb, root_gb=root_gb,
                              ephemeral_gb=ephemeral_gb, swap=0, extra_specs={})

    def _dom(self, inst):
        return self.drv.agent.domains.GetDomain(domain_pb2.GetDomainRequest(name=inst.name))

    def test_resize_on_this_host_then_revert(self):
        """Nova's resize on one host: migrate_disk_and_power_off stops the guest, then
        finish_migration (instance.flavor is the new flavor by then) resizes the domain and grows
        the root volume and starts it; a revert's destroy only stops it and
        finish_revert_migration gives it the old size back, its volumes kept."""
        self.need_pool()
        inst = self.instance(root_gb=1)
        self.spawn(inst)
        old, new = inst.flavor, self._flavor(3, 512, root_gb=2)
        disk_info = self.drv.migrate_disk_and_power_off(self.ctxt, inst, hv_driver.CONF.my_ip,
                                                        new, None)
        self.assertEqual([], jsonutils.loads(disk_info))
        self.assertEqual(power_state.SHUTDOWN, self.state(inst))
        inst.old_flavor, inst.flavor = old, new
        self.drv.finish_migration(self.ctxt, None, inst, disk_info, None, None, True, {})
        dom = self._dom(inst)
        self.assertEqual((3, 512, domain_pb2.DOMAIN_STATE_RUNNING),
                         (dom.vcpus, dom.memory_mib, dom.state))
        self.assertEqual(2 << 30, self.volumes()[inst.uuid + "-root"].size_bytes)
        self.drv.confirm_migration(self.ctxt, None, inst, None)  # nothing to remove
        self.assertTrue(self.drv.instance_exists(inst))

        inst.flavor, inst.task_state = old, "resize_reverting"
        self.drv.destroy(self.ctxt, inst, None, None, True)
        self.assertTrue(self.drv.instance_exists(inst))
        self.assertIn(inst.uuid + "-root", self.volumes())
        self.drv.finish_revert_migration(self.ctxt, inst, None, None, power_on=True)
        dom = self._dom(inst)
        self.assertEqual((2, 256, domain_pb2.DOMAIN_STATE_RUNNING),
                         (dom.vcpus, dom.memory_mib, dom.state))
        # A volume never shrinks: the grown root disk stays, with its data.
        self.assertEqual(2 << 30, self.volumes()[inst.uuid + "-root"].size_bytes)

    def test_resize_refusals_leave_the_instance_running(self):
        """A shrinking disk, a disk the old flavor lacked: InstanceFaultRollback before the
        guest is touched (another host: MigrationTestCase)."""
        self.need_pool()
        inst = self.instance(root_gb=2)
        self.spawn(inst)
        for dest, flavor, cause in (
                (hv_driver.CONF.my_ip, self._flavor(2, 256, root_gb=1), exception.ResizeError),
                (hv_driver.CONF.my_ip, self._flavor(2, 256, root_gb=2, ephemeral_gb=1),
                 exception.ResizeError)):
            err = self.assertRaises(exception.InstanceFaultRollback,
                                    self.drv.migrate_disk_and_power_off,
                                    self.ctxt, inst, dest, flavor, None)
            self.assertIsInstance(err.inner_exception, cause)
            self.assertEqual(power_state.RUNNING, self.state(inst))

    def test_move_to_an_unreachable_host_is_undone_by_the_agent_and_rolled_back(self):
        """A real agent's MigrateDomain to a host whose agent does not answer: the agent
        undoes it, the guest runs here again with its volumes, Nova rolls back."""
        self.need_pool()
        self.flags(migration_poll_interval=0.2, migration_port=agent_fixture.free_port(),
                   group="hvagent")
        inst = self.instance()
        self.spawn(inst)
        err = self.assertRaises(exception.InstanceFaultRollback,
                                self.drv.migrate_disk_and_power_off, self.ctxt, inst,
                                "127.0.0.2", inst.flavor, None, None, 5, 1)
        self.assertIsInstance(err.inner_exception, exception.MigrationError)
        self.assertIn("the domain stays here", str(err.inner_exception))
        self.assertEqual(power_state.RUNNING, self.state(inst))
        self.assertIn(inst.uuid + "-root", self.volumes())

    def test_resize_past_the_hosts_capacity_is_refused_and_changes_nothing(self):
        self.need_pool()
        inst = self.instance()
        self.spawn(inst, power_on=False)
        huge = self._flavor(4, 8 << 20)  # 8 TiB: more than any test host, within the API's range
        inst.flavor = huge
        self.assertRaises(exception.ComputeResourcesUnavailable, self.drv.finish_migration,
                          self.ctxt, None, inst, "[]", None, None, True, {})
        dom = self._dom(inst)
        self.assertEqual((2, 256), (dom.vcpus, dom.memory_mib))

    # -- flavor extra specs ----------------------------------------------------------------

    def _tuned_instance(self, vcpus, extra_specs):
        # A flavor object of its own (get_test_flavor hands back the first flavor it stored
        # under its fixed id, extra specs and all).
        inst = test_utils.get_test_instance(self.ctxt, obj=True)
        inst.flavor = objects.Flavor(name="tuned", vcpus=vcpus, memory_mb=256, root_gb=0,
                                     ephemeral_gb=0, swap=0, extra_specs=dict(extra_specs))
        return inst

    def _spawn_recording(self, inst):
        """Spawns `inst`; returns the DomainSpec the driver sent (the real agent took it)."""
        sent = []
        real = self.drv.agent.domains.CreateDomain

        def record(request, **kwargs):
            sent.append(request.spec)
            return real(request, **kwargs)
        with unittest.mock.patch.object(self.drv.agent.domains, "CreateDomain", side_effect=record):
            self.spawn(inst)
        self.assertEqual(1, len(sent))
        return sent[0]

    def test_flavor_cpu_topology_and_shares_reach_the_agent(self):
        inst = self._tuned_instance(4, {"hw:cpu_sockets": "2", "hw:cpu_threads": "2",
                                        "quota:cpu_shares": "2048", "hw:cpu_policy": "shared",
                                        "trait:HW_CPU_X86_AVX": "required",
                                        "resources:VGPU": "0"})
        spec = self._spawn_recording(inst)
        self.assertEqual((2, 1, 2), (spec.cpu_topology.sockets, spec.cpu_topology.cores,
                                     spec.cpu_topology.threads))
        self.assertEqual(2048, spec.cpu_shares)
        self.assertEqual(power_state.RUNNING, self.state(inst))
        self.assertEqual(4, self._dom(inst).vcpus)

    def test_image_cpu_limits_shape_the_topology_as_nova_chooses_it(self):
        # hw:cpu_max_sockets=1 alone: Nova's get_best_cpu_topology puts the 4 vCPUs in cores.
        inst = self._tuned_instance(4, {"hw:cpu_max_sockets": "1"})
        spec = self._spawn_recording(inst)
        self.assertEqual((1, 4, 1), (spec.cpu_topology.sockets, spec.cpu_topology.cores,
                                     spec.cpu_topology.threads))

    def test_flavor_without_tuning_keeps_the_hypervisors_defaults(self):
        spec = self._spawn_recording(self._tuned_instance(2, {}))
        self.assertFalse(spec.HasField("cpu_topology"))  # so the vCPU count can change later
        self.assertEqual(0, spec.cpu_shares)

    def test_extra_specs_the_agent_cannot_express_are_refused_naming_them(self):
        inst = self._tuned_instance(2, {"hw:mem_page_size": "large", "hw:cpu_sockets": "2",
                                        "quota:disk_read_bytes_sec": "1000",
                                        "hw:cpu_policy": "dedicated",
                                        "trait:HW_CPU_X86_AVX": "required"})
        e = self.assertRaises(exception.InvalidInput, self.spawn, inst)
        self.assertIn("hw:cpu_policy=dedicated, hw:mem_page_size=large, "
                      "quota:disk_read_bytes_sec=1000", str(e))
        self.assertNotIn("trait:", str(e))
        self.assertNotIn("hw:cpu_sockets=2", str(e))
        self.assertNotIn(inst.name, self.drv.list_instances())

    def test_bad_shares_and_impossible_topologies_are_refused(self):
        for specs in ({"quota:cpu_shares": "lots"}, {"quota:cpu_shares": "0"},
                      {"quota:cpu_shares": "262145"}):
            inst = self._tuned_instance(2, specs)
            e = self.assertRaises(exception.InvalidInput, self.spawn, inst)
            self.assertIn("quota:cpu_shares=%s" % specs["quota:cpu_shares"], str(e))
            self.assertNotIn(inst.name, self.drv.list_instances())
        # Limits that hold no 4-vCPU topology: Nova's own topology code refuses, as it does for
        # the libvirt driver.
        inst = self._tuned_instance(4, {"hw:cpu_max_sockets": "1", "hw:cpu_max_cores": "1",
                                        "hw:cpu_max_threads": "1"})
        self.assertRaises(exception.ImageVCPULimitsRangeImpossible, self.spawn, inst)
        self.assertNotIn(inst.name, self.drv.list_instances())
        # A preferred count that does not divide the vCPUs is only a preference there: Nova picks
        # another topology (4 sockets), and the agent gets one that covers every vCPU.
        spec = self._spawn_recording(self._tuned_instance(4, {"hw:cpu_sockets": "3"}))
        self.assertEqual((4, 1, 1), (spec.cpu_topology.sockets, spec.cpu_topology.cores,
                                     spec.cpu_topology.threads))

    def test_resize_that_changes_cpu_tuning_is_refused_before_the_guest_is_touched(self):
        inst = self._tuned_instance(2, {"hw:cpu_sockets": "2"})
        self.spawn(inst)
        for flavor in (
                # The topology must cover every vCPU: 4 vCPUs would need another one.
                objects.Flavor(vcpus=4, memory_mb=256, root_gb=0, ephemeral_gb=0, swap=0,
                               extra_specs={"hw:cpu_sockets": "2"}),
                objects.Flavor(vcpus=2, memory_mb=512, root_gb=0, ephemeral_gb=0, swap=0,
                               extra_specs={"hw:cpu_sockets": "2", "quota:cpu_shares": "100"}),
                objects.Flavor(vcpus=2, memory_mb=512, root_gb=0, ephemeral_gb=0, swap=0,
                               extra_specs={"hw:cpu_sockets": "2", "hw:numa_nodes": "1"})):
            err = self.assertRaises(exception.InstanceFaultRollback,
                                    self.drv.migrate_disk_and_power_off,
                                    self.ctxt, inst, hv_driver.CONF.my_ip, flavor, None)
            self.assertIsInstance(err.inner_exception, exception.ResizeError)
            self.assertEqual(power_state.RUNNING, self.state(inst))
        # Same tuning, more memory: allowed.
        same = objects.Flavor(vcpus=2, memory_mb=512, root_gb=0, ephemeral_gb=0, swap=0,
                              extra_specs={"hw:cpu_sockets": "2"})
        self.drv.migrate_disk_and_power_off(self.ctxt, inst, hv_driver.CONF.my_ip, same, None)
        self.assertEqual(power_state.SHUTDOWN, self.state(inst))

    def test_spawn_stopped_and_twice(self):
        self.need_pool()
        inst = self.instance()
        self.spawn(inst, power_on=False)
        self.assertEqual(power_state.SHUTDOWN, self.state(inst))
        self.assertRaises(exception.InstanceExists, self.spawn, inst)

    def test_unknown_instance(self):
        inst = self.instance()
        self.assertRaises(exception.InstanceNotFound, self.drv.get_info, inst)
        self.assertRaises(exception.InstanceNotFound, self.drv.pause, inst)
        self.assertRaises(exception.InstanceNotFound, self.drv.power_on, self.ctxt, inst, None)
        self.assertFalse(self.drv.instance_exists(inst))

    def test_local_disks_without_pool_refused(self):
        self.flags(storage_pool=None, group="hvagent")
        inst = self.instance(root_gb=1)
        e = self.assertRaises(exception.InstanceDeployFailure, self.spawn, inst)
        self.assertIn("storage_pool is not set", str(e))
        self.assertNotIn(inst.name, self.drv.list_instances())

    def test_diskless_without_pool(self):
        self.flags(storage_pool=None, group="hvagent")
        inst = self.instance(root_gb=0)
        self.spawn(inst)
        self.assertEqual(power_state.RUNNING, self.state(inst))

    def test_serial_console_is_a_port_for_one_connection(self):
        self.flags(storage_pool=None, group="hvagent")
        inst = self.instance(root_gb=0)
        self.spawn(inst)
        c = self.drv.get_serial_console(self.ctxt, inst)
        self.assertEqual("127.0.0.1", c.host)
        self.assertGreater(c.port, 0)
        socket.create_connection((c.host, c.port), timeout=5).close()
        deadline = time.time() + 5
        while True:  # the listener closes right after its one connection
            try:
                socket.create_connection((c.host, c.port), timeout=5).close()
            except ConnectionRefusedError:
                break
            self.assertLess(time.time(), deadline, "a second connection was accepted")
            time.sleep(0.1)
        self.drv.power_off(inst)
        self.assertRaises(exception.ConsoleTypeUnavailable, self.drv.get_serial_console, self.ctxt, inst)
        self.assertRaises(exception.InstanceNotFound, self.drv.get_serial_console, self.ctxt,
                          self.instance(root_gb=0))

    def test_vnc_console_is_unavailable_rather_than_an_error(self):
        self.flags(storage_pool=None, group="hvagent")
        inst = self.instance(root_gb=0)
        self.spawn(inst)
        # Nova's guests have no display (novncproxy could not give the per-ticket password):
        # Nova's "console type unavailable" (its API's 400), not NotImplementedError (500).
        self.assertRaises(exception.ConsoleTypeUnavailable, self.drv.get_vnc_console, self.ctxt, inst)
        self.assertRaises(exception.InstanceNotFound, self.drv.get_vnc_console, self.ctxt,
                          self.instance(root_gb=0))

    def test_console_output_without_a_log_is_empty(self):
        self.flags(storage_pool=None, group="hvagent")
        inst = self.instance(root_gb=0)
        self.spawn(inst)
        # The fixture's agent keeps no console logs ([console] log_dir unset): "" as Nova's
        # libvirt driver answers for a console file not present.
        self.assertEqual("", self.drv.get_console_output(self.ctxt, inst))
        self.assertRaises(exception.InstanceNotFound, self.drv.get_console_output, self.ctxt,
                          self.instance(root_gb=0))

    # -- VIFs ----------------------------------------------------------------------------

    def vif(self, vif_type="ovs", hybrid=False, mtu=None, active=False, **extra):
        vif = test_utils.get_test_network_info()[0]
        vif["type"] = vif_type
        vif["active"] = active
        if hybrid:
            vif["details"] = {"port_filter": False, "ovs_hybrid_plug": True}
        if mtu:
            vif["network"]["meta"]["mtu"] = mtu
        vif.update(extra)
        return vif

    def record_creates(self):
        """The CreateDomain requests the driver sends (passed on to the real agent)."""
        sent = []
        real = self.drv.agent.domains.CreateDomain

        def create(request, **kw):
            sent.append(request)
            return real(request, **kw)
        self.drv.agent.domains.CreateDomain = create
        return sent

    def test_vif_to_nic(self):
        vif = self.vif("bridge", mtu=1450)
        nic = self.drv._nic(vif)
        self.assertEqual(("bridge", "br0", vif["address"], 1450, "virtio"),
                         (nic.WhichOneof("attachment"), nic.bridge, nic.mac, nic.mtu, nic.model))
        # OVS without hybrid plugging (the Open vSwitch firewall, OVN): an agent OVS port on the
        # network's bridge, iface-id = the Neutron port id; no tag (Neutron's agent sets it).
        nic = self.drv._nic(self.vif("ovs", mtu=1442))
        self.assertEqual(("ovs", "br0", vif["id"], False, 1442),
                         (nic.WhichOneof("attachment"), nic.ovs.bridge, nic.ovs.interface_id,
                          nic.ovs.HasField("vlan"), nic.mtu))
        nic = self.drv._nic(self.vif("ovs", ovs_interfaceid="0d4c5f43-4a0c-4b8e-9c52-0e8a3f1d2b7a"))
        self.assertEqual("0d4c5f43-4a0c-4b8e-9c52-0e8a3f1d2b7a", nic.ovs.interface_id)
        # OVS hybrid: the qbr bridge os-vif makes, named as os-vif names it.
        hybrid = self.vif("ovs", hybrid=True)
        nic = self.drv._nic(hybrid)
        self.assertEqual(("bridge", "qbr" + vif["id"][:11], 0),
                         (nic.WhichOneof("attachment"), nic.bridge, nic.mtu))
        osvif = hv_driver.os_vif_util.nova_to_osvif_vif(hybrid)
        self.assertEqual(osvif.bridge_name, nic.bridge)

    def test_nics_are_named_by_the_ports_devname(self):
        """Each kind's tap takes Nova's devname (the libvirt driver's <target dev>), so it is
        the same at every start and Neutron's agents find it; without one the agent names it."""
        for kind, hybrid in (("bridge", False), ("ovs", False), ("ovs", True)):
            vif = self.vif(kind, hybrid=hybrid)
            vif["devname"] = ("tap" + vif["id"])[:network_model.NIC_NAME_LEN]
            self.assertEqual(vif["devname"], self.drv._nic(vif).target_dev, (kind, hybrid))
        self.assertEqual("", self.drv._nic(self.vif("ovs")).target_dev)

    def test_vifs_the_agent_cannot_wire_are_refused(self):
        e = self.assertRaises(exception.VirtualInterfaceCreateException, self.drv._nic,
                              self.vif("vhostuser"))
        self.assertIn("vhost-user", str(e))
        e = self.assertRaises(exception.VirtualInterfaceCreateException, self.drv._nic,
                              self.vif("macvtap"))
        self.assertIn("of type macvtap cannot be wired", str(e))
        bad = self.vif("ovs")
        bad["network"]["bridge"] = None
        e = self.assertRaises(exception.VirtualInterfaceCreateException, self.drv._nic, bad)
        self.assertIn("no integration bridge", str(e))
        # At spawn: refused before anything exists, nothing plugged.
        inst = self.instance(root_gb=0)
        with unittest.mock.patch.object(hv_driver.os_vif, "plug") as plug:
            self.assertRaises(exception.VirtualInterfaceCreateException, self.spawn, inst,
                              "vhostuser")
        plug.assert_not_called()
        self.assertNotIn(inst.name, self.drv.list_instances())

    def test_ovs_vif_spawns_as_an_ovs_port(self):
        self.flags(storage_pool=None, group="hvagent")
        sent = self.record_creates()
        inst = self.instance(root_gb=0)
        with unittest.mock.patch.object(hv_driver.os_vif, "plug") as plug:
            self.spawn(inst, "ovs")
        plug.assert_not_called()  # libvirt creates a plain OVS port itself
        nic = sent[0].spec.nics[0]
        self.assertEqual(("br0", test_utils.get_test_network_info()[0]["id"]),
                         (nic.ovs.bridge, nic.ovs.interface_id))
        self.assertEqual(power_state.RUNNING, self.state(inst))

    def test_ovs_bridge_not_allowed_is_refused_by_the_agent(self):
        self.flags(storage_pool=None, group="hvagent")
        inst = self.instance(root_gb=0)
        vif = self.vif("ovs")
        vif["network"]["bridge"] = "br-ex"  # not in the fixture's [network] ovs_bridges
        image = test_utils.get_test_image_object(None, inst)
        e = self.assertRaises(exception.Forbidden, self.drv.spawn, self.ctxt, inst, image, [],
                              None, {}, network_info=[vif])
        self.assertIn("ovs.bridge", str(e))
        self.assertNotIn(inst.name, self.drv.list_instances())

    def test_linux_bridge_and_hybrid_vifs_are_plugged_with_os_vif(self):
        self.flags(storage_pool=None, group="hvagent")
        inst = self.instance(root_gb=0)
        nw = [self.vif("bridge"), self.vif("ovs", hybrid=True, id="1d2e3f40-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
                                           address="de:ad:be:ef:ca:01")]
        order = []
        real = self.drv.agent.domains.CreateDomain
        self.drv.agent.domains.CreateDomain = lambda r, **kw: (order.append("create"), real(r, **kw))[1]
        with unittest.mock.patch.object(hv_driver.os_vif, "plug",
                                        side_effect=lambda v, i: order.append(v)) as plug, \
                unittest.mock.patch.object(hv_driver.os_vif, "unplug") as unplug:
            self.drv.spawn(self.ctxt, inst, test_utils.get_test_image_object(None, inst), [],
                           None, {}, network_info=nw)
            # Plugged before the domain exists, with os-vif's own objects.
            self.assertEqual(3, len(order))
            self.assertEqual("create", order[2])
            self.assertEqual(("VIFBridge", "br0", nw[0]["id"]),
                             (type(order[0]).__name__, order[0].bridge_name, order[0].id))
            self.assertEqual(("VIFBridge", "qbr1d2e3f40-5a", "ovs"),
                             (type(order[1]).__name__, order[1].bridge_name, order[1].plugin))
            self.assertEqual(inst.uuid, plug.call_args[0][1].uuid)
            unplug.assert_not_called()
            self.drv.destroy(self.ctxt, inst, nw)
            self.assertEqual([nw[0]["id"], nw[1]["id"]], [c[0][0].id for c in unplug.call_args_list])
        self.assertFalse(self.drv.instance_exists(inst))

    def test_os_vif_failure_leaves_nothing(self):
        self.flags(storage_pool=None, group="hvagent")
        inst = self.instance(root_gb=0)
        err = hv_driver.osv_exception.PlugException(vif="x", err="no bridge", plugin="linux_bridge")
        with unittest.mock.patch.object(hv_driver.os_vif, "plug", side_effect=err), \
                unittest.mock.patch.object(hv_driver.os_vif, "unplug") as unplug:
            e = self.assertRaises(exception.InternalError, self.spawn, inst, "bridge")
        self.assertIn("os-vif plug", str(e))
        unplug.assert_called_once()
        self.assertNotIn(inst.name, self.drv.list_instances())

    class VirtAPI(fake.FakeVirtAPI):
        """Records what the driver waits for; `outcome` is what Neutron does."""
        def __init__(self, outcome=None):
            self.waits = []
            self.outcome = outcome

        @contextlib.contextmanager
        def wait_for_instance_event(self, instance, event_names, deadline=300,
                                    error_callback=None):
            self.waits.append((list(event_names), deadline))
            yield
            if event_names and self.outcome == "timeout":
                raise eventlet.timeout.Timeout()
            if event_names and self.outcome == "failed":
                error_callback(event_names[0][0], instance)

    def driver_with(self, virtapi):
        drv = hv_driver.HvagentDriver(virtapi)
        drv.init_host("myhostname")
        self.drv = drv
        return drv

    def test_waits_for_network_vif_plugged_of_inactive_vifs(self):
        self.flags(storage_pool=None, group="hvagent")
        self.flags(vif_plugging_timeout=42)
        api = self.VirtAPI()
        self.driver_with(api)
        inst = self.instance(root_gb=0)
        nw = [self.vif("ovs"), self.vif("ovs", active=True, id="1d2e3f40-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
                                        address="de:ad:be:ef:ca:01")]
        self.drv.spawn(self.ctxt, inst, test_utils.get_test_image_object(None, inst), [], None,
                       {}, network_info=nw)
        self.assertEqual([([("network-vif-plugged", nw[0]["id"])], 42)], api.waits)
        self.assertEqual(power_state.RUNNING, self.state(inst))  # paused meanwhile, resumed
        # Not started: nothing to wait for (as the libvirt driver).
        inst2 = self.instance(root_gb=0)
        self.drv.spawn(self.ctxt, inst2, test_utils.get_test_image_object(None, inst2), [],
                       None, {}, network_info=nw, power_on=False)
        self.assertEqual([], api.waits[1][0])
        self.assertEqual(power_state.SHUTDOWN, self.state(inst2))

    def test_vif_plugging_timeout_fatal_cleans_up(self):
        self.need_pool()
        self.driver_with(self.VirtAPI("timeout"))
        inst = self.instance()
        with unittest.mock.patch.object(hv_driver.os_vif, "plug"), \
                unittest.mock.patch.object(hv_driver.os_vif, "unplug") as unplug:
            self.assertRaises(exception.VirtualInterfaceCreateException, self.spawn, inst,
                              "bridge")
        unplug.assert_called_once()
        self.assertNotIn(inst.name, self.drv.list_instances())
        self.assertFalse([n for n in self.volumes() if n.startswith(inst.uuid)])

    def test_vif_plugging_timeout_not_fatal_starts_the_guest(self):
        self.flags(storage_pool=None, group="hvagent")
        self.flags(vif_plugging_is_fatal=False)
        self.driver_with(self.VirtAPI("timeout"))
        inst = self.instance(root_gb=0)
        self.spawn(inst, "ovs")
        self.assertEqual(power_state.RUNNING, self.state(inst))

    def test_neutron_reported_failure_cleans_up(self):
        self.flags(storage_pool=None, group="hvagent")
        self.driver_with(self.VirtAPI("failed"))
        inst = self.instance(root_gb=0)
        self.assertRaises(exception.VirtualInterfaceCreateException, self.spawn, inst, "ovs")
        self.assertNotIn(inst.name, self.drv.list_instances())

    def test_attach_and_detach_interface(self):
        """libvirt's test driver cannot hotplug (virDomainAttachDeviceFlags unsupported): here
        the calls the driver makes and its cleanup when the agent refuses; nova_roundtrip
        (integration tier) attaches and detaches on a real QEMU guest. The test driver also
        answers virDomainGetOSType "linux" for every domain, which the agent's hotplug reads as
        a Xen PV guest (netfront only): the driver is told it runs Xen guests here."""
        self.flags(storage_pool=None, disk_prefix="xvd", group="hvagent")
        self.assertTrue(self.drv.capabilities["supports_attach_interface"])
        inst = self.instance(root_gb=0)
        self.spawn(inst, "ovs")
        image = test_utils.get_test_image_object(None, inst)
        extra = self.vif("bridge", id="1d2e3f40-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
                         address="de:ad:be:ef:ca:02", mtu=1450)
        sent = []
        real_attach = self.drv.agent.domains.AttachNic
        self.drv.agent.domains.AttachNic = lambda r, **kw: (sent.append(r), real_attach(r, **kw))[1]
        with unittest.mock.patch.object(hv_driver.os_vif, "plug") as plug, \
                unittest.mock.patch.object(hv_driver.os_vif, "unplug") as unplug:
            # The agent refuses (UNIMPLEMENTED on this driver): the VIF plugged for the attach
            # is unplugged again and the agent's error raised.
            self.assertRaises(NotImplementedError, self.drv.attach_interface, self.ctxt,
                              inst, image, extra)
            self.assertEqual((1, 1), (plug.call_count, unplug.call_count))
            self.assertEqual((inst.name, "br0", "de:ad:be:ef:ca:02", 1450),
                             (sent[0].domain, sent[0].nic.bridge, sent[0].nic.mac,
                              sent[0].nic.mtu))
            # A VIF the agent cannot wire: refused before anything is plugged or sent.
            self.assertRaises(exception.VirtualInterfaceCreateException,
                              self.drv.attach_interface, self.ctxt, inst, image,
                              self.vif("vhostuser"))
            self.assertEqual((1, 1), (plug.call_count, len(sent)))
            # No NIC with that MAC: the agent's NOT_FOUND is only logged, the VIF unplugged.
            self.drv.detach_interface(self.ctxt, inst, extra)
            self.assertEqual(2, unplug.call_count)
        self.assertEqual(power_state.RUNNING, self.state(inst))

    def test_detach_interface_the_guest_keeps(self):
        self.flags(storage_pool=None, group="hvagent")
        inst = self.instance(root_gb=0)
        self.spawn(inst, "bridge")
        vif = self.vif("bridge")
        err = grpc.RpcError()
        err.code = lambda: grpc.StatusCode.ABORTED
        err.details = lambda: "the guest did not release the device"
        with unittest.mock.patch.object(self.drv.agent.domains, "DetachNic", side_effect=err), \
                unittest.mock.patch.object(hv_driver.os_vif, "unplug") as unplug:
            self.assertRaises(exception.InterfaceDetachFailed, self.drv.detach_interface,
                              self.ctxt, inst, vif)
        unplug.assert_not_called()  # the guest still uses it

    def test_foreign_domains_not_listed(self):
        names = [d.name for d in self.drv.agent.domains.ListDomains(
            domain_pb2.ListDomainsRequest()).domains]
        self.assertIn("test", names)  # test:///default's own domain
        self.assertNotIn("test", self.drv.list_instances())

    def test_volumes(self):
        self.need_pool()
        inst = self.instance()
        self.spawn(inst, power_on=False)
        self.drv.agent.storage.CreateVolume(storage_pb2.CreateVolumeRequest(
            pool=self.agent.pool, name="vol1", size_bytes=1 << 30))
        info = {"driver_volume_type": "hvagent", "data": {"pool": self.agent.pool, "name": "vol1"}}
        try:
            self.drv.attach_volume(self.ctxt, info, inst, "/dev/vdc")
        except NotImplementedError as e:
            # libvirt's test driver has no virDomainAttachDeviceFlags: the agent answers
            # UNIMPLEMENTED and nothing is attached (real hosts: tests/integration).
            self.assertIn("not supported", str(e))
            self.assertEqual("", self.volumes()["vol1"].attached_to)
        else:
            self.assertEqual(inst.name, self.volumes()["vol1"].attached_to)
            self.drv.detach_volume(self.ctxt, info, inst, "/dev/vdc")
            self.assertEqual("", self.volumes()["vol1"].attached_to)
        self.drv.detach_volume(self.ctxt, info, inst, "/dev/vdc")  # not attached: fine
        self.assertRaises(exception.VolumeDriverNotFound, self.drv.attach_volume, self.ctxt,
                          {"driver_volume_type": "iscsi", "data": {}}, inst, "/dev/vdc")
        self.drv.agent.storage.DeleteVolume(storage_pb2.VolumeRef(pool=self.agent.pool,
                                                                  name="vol1"))

    def test_provider_tree(self):
        cap = self.drv.agent.host.GetCapacity(host_pb2.GetCapacityRequest())
        pt = provider_tree.ProviderTree()
        pt.new_root("node1", "uuid-node1")
        self.drv.update_provider_tree(pt, "node1")
        inv = pt.data("node1").inventory
        self.assertEqual(cap.cpus, inv[orc.VCPU]["total"])
        self.assertEqual(cap.policy.reserved_cpus, inv[orc.VCPU]["reserved"])
        self.assertEqual(cap.policy.cpu_allocation_ratio, inv[orc.VCPU]["allocation_ratio"])
        self.assertEqual(cap.memory_total_bytes >> 20, inv[orc.MEMORY_MB]["total"])
        self.assertEqual(cap.policy.reserved_memory_bytes >> 20, inv[orc.MEMORY_MB]["reserved"])
        self.assertEqual(cap.policy.memory_allocation_ratio,
                         inv[orc.MEMORY_MB]["allocation_ratio"])
        if self.agent.pool:
            pool = [p for p in cap.pools if p.name == self.agent.pool][0]
            self.assertEqual(pool.capacity_bytes >> 30, inv[orc.DISK_GB]["total"])
        else:
            self.assertNotIn(orc.DISK_GB, inv)
        self.assertIn(os_traits.HW_ARCH_I686, pt.data("node1").traits)  # test:///default

    def test_provider_tree_honours_nova_conf(self):
        self.flags(cpu_allocation_ratio=3.0, reserved_host_cpus=1, reserved_host_memory_mb=64,
                   reserved_host_disk_mb=1500, initial_ram_allocation_ratio=1.5,
                   initial_disk_allocation_ratio=2.0)
        pt = provider_tree.ProviderTree()
        pt.new_root("node1", "uuid-node1")
        self.drv.update_provider_tree(pt, "node1")
        inv = pt.data("node1").inventory
        self.assertEqual(3.0, inv[orc.VCPU]["allocation_ratio"])
        self.assertEqual(1, inv[orc.VCPU]["reserved"])
        self.assertEqual(1.5, inv[orc.MEMORY_MB]["allocation_ratio"])
        self.assertEqual(64, inv[orc.MEMORY_MB]["reserved"])
        if self.agent.pool:
            self.assertEqual(2, inv[orc.DISK_GB]["reserved"])  # 1500 MB, rounded up
            self.assertEqual(2.0, inv[orc.DISK_GB]["allocation_ratio"])
        # initial_*: only the first value; what placement holds afterwards is kept, while
        # [DEFAULT] cpu_allocation_ratio overrides whatever placement holds.
        mem = dict(inv[orc.MEMORY_MB], allocation_ratio=1.25)
        vcpu = dict(inv[orc.VCPU], allocation_ratio=9.0)
        pt.update_inventory("node1", dict(inv, **{orc.MEMORY_MB: mem, orc.VCPU: vcpu}))
        self.drv.update_provider_tree(pt, "node1")
        inv = pt.data("node1").inventory
        self.assertEqual(1.25, inv[orc.MEMORY_MB]["allocation_ratio"])
        self.assertEqual(3.0, inv[orc.VCPU]["allocation_ratio"])

    def test_available_resource(self):
        res = self.drv.get_available_resource("node1")
        self.assertEqual("test", res["hypervisor_type"])
        cpu = jsonutils.loads(res["cpu_info"])
        host = self.drv.agent.host.GetHost(host_pb2.GetHostRequest())
        # libvirt's test driver: <features><pae/><nonpae/></features>, no vendor, and the
        # topology of its node info (2 NUMA cells x 2 sockets x 2 cores x 2 threads).
        self.assertEqual(["nonpae", "pae"], cpu["features"])
        self.assertEqual(list(host.cpu_features), ["pae", "nonpae"])
        self.assertEqual("", cpu["vendor"])
        self.assertEqual("i686", cpu["arch"])
        self.assertEqual({"sockets": host.topology.sockets,
                          "cores": host.topology.cores_per_socket,
                          "threads": host.topology.threads_per_core}, cpu["topology"])
        self.assertEqual(host.cpus, cpu["topology"]["sockets"] * cpu["topology"]["cores"]
                         * cpu["topology"]["threads"])
        self.assertIsInstance(res["hypervisor_version"], int)
        self.assertEqual([self.drv.agent.host.GetHost(host_pb2.GetHostRequest()).hostname],
                         self.drv.get_available_nodes())

    def test_available_resource_survives_nova_pci_tracker(self):
        """Nova's ResourceTracker._setup_pci_tracker json-decodes pci_passthrough_devices
        whenever the key is present: a None there failed every resource update of a real
        nova-compute, so its node never reached placement (issue 29)."""
        res = self.drv.get_available_resource("node1")
        if "pci_passthrough_devices" in res:
            self.assertEqual([], jsonutils.loads(res["pci_passthrough_devices"]))
        for key in ("vcpus", "memory_mb", "local_gb", "vcpus_used", "memory_mb_used",
                    "local_gb_used", "disk_available_least"):
            self.assertIsInstance(res[key], int, key)

    def test_tls_config_required(self):
        self.flags(plaintext=False, ca_file=None, group="hvagent")
        drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        self.assertRaises(exception.InvalidConfiguration, drv.init_host, "h")

    def test_unreachable_agent(self):
        self.flags(address="127.0.0.1:%d" % agent_fixture.free_port(), rpc_timeout=2,
                   group="hvagent")
        drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        self.assertRaises(exception.HypervisorUnavailable, drv.init_host, "h")


class RpcError(grpc.RpcError):
    def __init__(self, code, details="why"):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class FakeAgent(object):
    """The driver's view of the agent for detach: GetVolume answers `attached_to`, each
    DetachVolume takes the next of `answers` (an RpcError to raise, or None for success), and
    every other call is recorded."""

    timeout = 5
    address = "agent:1"

    def __init__(self, attached_to, answers):
        self.attached_to = attached_to
        self.answers = list(answers)
        self.calls = []
        self.requests = []
        stub = lambda name: (lambda request, timeout=None: self._call(name, request))
        self.storage = type("S", (), {"GetVolume": staticmethod(stub("GetVolume")),
                                      "DetachVolume": staticmethod(stub("DetachVolume"))})
        self.domains = type("D", (), {n: staticmethod(stub(n)) for n in
                                      ("GetDomain", "DestroyDomain", "DeleteDomain")})

    def _call(self, name, request):
        self.calls.append(name)
        self.requests.append(request)
        if name == "GetVolume":
            return storage_pb2.Volume(pool=request.pool, name=request.name, attached_to=self.attached_to)
        if name == "GetDomain":
            return domain_pb2.Domain(name=request.name, state=domain_pb2.DOMAIN_STATE_RUNNING)
        if name == "DetachVolume":
            answer = self.answers.pop(0)
            if callable(answer):
                answer = answer()
            if answer is not None:
                raise answer
        return None

    def call(self, method, request, instance=None, extra_timeout=0):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise client.to_nova(e, self.address, instance) from None


class ScriptedDomains(object):
    """The driver's view of the agent for reboot and suspend: GetDomain answers `state`,
    ShutdownDomain answers forced=`forced` (True: the guest ignored the request and the agent
    destroyed it at the deadline), `errors` maps a method to the RpcError it raises, and every
    call is recorded with its request."""

    timeout = 5
    address = "agent:1"

    def __init__(self, state, forced=False, errors=None):
        self.state, self.forced, self.errors = state, forced, errors or {}
        self.calls = []
        names = ("GetDomain", "ShutdownDomain", "DestroyDomain", "StartDomain", "ResumeDomain",
                 "ManagedSaveDomain", "SuspendDomain", "RebootDomain", "RescueDomain",
                 "UnrescueDomain")
        self.domains = type("D", (), {n: staticmethod(self._stub(n)) for n in names})

    def _stub(self, name):
        return lambda request, timeout=None: self._call(name, request, timeout)

    def _call(self, name, request, timeout):
        self.calls.append((name, request))
        if name in self.errors:
            raise self.errors[name]
        if name == "GetDomain":
            return domain_pb2.Domain(name=request.name, state=self.state)
        if name == "ShutdownDomain":
            self.state = domain_pb2.DOMAIN_STATE_SHUTOFF
            return domain_pb2.ShutdownDomainResponse(forced=self.forced)
        if name == "DestroyDomain":
            self.state = domain_pb2.DOMAIN_STATE_SHUTOFF
        if name == "StartDomain":
            self.state = domain_pb2.DOMAIN_STATE_RUNNING
        return domain_pb2.Domain(name=request.name, state=self.state)

    def names(self):
        return [n for n, _ in self.calls]

    call = FakeAgent.call


class RebootSuspendTestCase(test.NoDBTestCase):
    """Soft reboot's fallback and suspend's refusal, against a scripted agent: a guest that
    ignores ACPI cannot be made on libvirt's test driver (tests/integration has a real one)."""

    RUNNING = domain_pb2.DOMAIN_STATE_RUNNING

    def setUp(self):
        super().setUp()
        self.flags(wait_soft_reboot_seconds=7, group="libvirt")
        self.drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        self.inst = type("I", (), {"name": "instance-1", "uuid": "u-1"})()

    def agent(self, *args, **kwargs):
        self.drv._agent = ScriptedDomains(*args, **kwargs)
        return self.drv._agent

    def test_soft_reboot_of_a_guest_that_shuts_down_starts_it_again(self):
        a = self.agent(self.RUNNING, forced=False)
        self.drv.reboot(None, self.inst, None, "SOFT")
        self.assertEqual(["GetDomain", "ShutdownDomain", "StartDomain"], a.names())
        self.assertEqual(7, a.calls[1][1].timeout_seconds)

    def test_soft_reboot_of_a_guest_that_ignores_it_is_a_hard_reboot(self):
        a = self.agent(self.RUNNING, forced=True)
        self.drv.reboot(None, self.inst, None, "SOFT")
        # The agent destroyed the guest at the deadline; the hard reboot starts it.
        self.assertEqual(["GetDomain", "ShutdownDomain", "GetDomain", "StartDomain"], a.names())
        self.assertEqual(7, a.calls[1][1].timeout_seconds)
        self.assertEqual(self.RUNNING, a.state)

    def test_soft_reboot_without_time_to_wait_is_a_hard_reboot(self):
        self.flags(wait_soft_reboot_seconds=0, group="libvirt")
        a = self.agent(self.RUNNING)
        self.drv.reboot(None, self.inst, None, "SOFT")
        self.assertEqual(["GetDomain", "DestroyDomain", "StartDomain"], a.names())

    def test_soft_reboot_of_a_stopped_instance_starts_it(self):
        a = self.agent(domain_pb2.DOMAIN_STATE_SHUTOFF)
        self.drv.reboot(None, self.inst, None, "SOFT")
        self.assertNotIn("ShutdownDomain", a.names())
        self.assertEqual(["GetDomain", "GetDomain", "StartDomain"], a.names())

    class PortEvents(fake.FakeVirtAPI):
        """Neutron as the reboot sees it: records each wait (its events, its deadline and the
        agent calls made inside it); the event kinds in `late` never come in time."""
        def __init__(self, agent, late=()):
            self.agent, self.late, self.waits = agent, late, []

        @contextlib.contextmanager
        def wait_for_instance_event(self, instance, event_names, deadline=300,
                                    error_callback=None):
            first = len(self.agent.calls)
            yield
            self.waits.append((list(event_names), deadline,
                               [n for n, _ in self.agent.calls[first:]]))
            if any(kind in self.late for kind, _ in event_names):
                raise eventlet.timeout.Timeout()

    NW = [{"id": "p-up", "active": True, "vnic_type": "normal"},
          {"id": "p-down", "active": False, "vnic_type": "normal"}]

    def reboot_with_ports(self, reboot_type="HARD", late=(), nw=NW):
        self.flags(vif_plugging_timeout=60)
        a = self.agent(self.RUNNING)
        self.drv.virtapi = self.PortEvents(a, late)
        with unittest.mock.patch.object(self.drv, "plug_vifs"):
            self.drv.reboot(None, self.inst, nw, reboot_type)
        return a, self.drv.virtapi.waits

    def test_reboot_waits_for_the_active_port_down_then_every_port_up(self):
        a, waits = self.reboot_with_ports()
        # Stopped inside the first wait: the start comes only once Neutron saw the tap go.
        self.assertEqual(([("network-vif-unplugged", "p-up")], 20, ["GetDomain", "DestroyDomain"]),
                         waits[0])
        # Started paused inside the second, resumed once both ports are up.
        self.assertEqual(([("network-vif-plugged", "p-down"), ("network-vif-plugged", "p-up")], 60,
                          ["StartDomain", "SuspendDomain"]), waits[1])
        self.assertEqual("ResumeDomain", a.names()[-1])
        self.assertEqual(self.RUNNING, a.state)

    def test_soft_reboot_of_a_guest_that_stops_waits_the_same(self):
        a, waits = self.reboot_with_ports("SOFT")
        self.assertEqual(["GetDomain", "ShutdownDomain"], waits[0][2])
        self.assertEqual(["StartDomain", "SuspendDomain"], waits[1][2])
        self.assertEqual(self.RUNNING, a.state)

    def test_a_port_that_never_goes_down_is_not_awaited_up(self):
        a, waits = self.reboot_with_ports(late=("network-vif-unplugged",))
        # Logged and started anyway; only the port that was down is awaited up.
        self.assertEqual([("network-vif-plugged", "p-down")], waits[1][0])
        self.assertEqual(self.RUNNING, a.state)

    def test_no_port_down_wait_when_configured_off(self):
        self.flags(port_down_timeout=0, group="hvagent")
        a, waits = self.reboot_with_ports()
        self.assertEqual(1, len(waits))
        self.assertEqual([("network-vif-plugged", "p-down")], waits[0][0])
        self.assertEqual(["GetDomain", "DestroyDomain", "StartDomain", "SuspendDomain",
                          "ResumeDomain"], a.names())

    def test_ports_not_up_in_time_is_fatal_and_leaves_the_guest_off(self):
        self.assertRaises(exception.VirtualInterfaceCreateException, self.reboot_with_ports,
                          late=("network-vif-plugged",))
        self.assertEqual("DestroyDomain", self.drv._agent.names()[-1])
        self.assertEqual(domain_pb2.DOMAIN_STATE_SHUTOFF, self.drv._agent.state)

    def test_ports_not_up_in_time_not_fatal_resumes_the_guest(self):
        self.flags(vif_plugging_is_fatal=False)
        a, _ = self.reboot_with_ports(late=("network-vif-plugged",))
        self.assertEqual("ResumeDomain", a.names()[-1])
        self.assertEqual(self.RUNNING, a.state)

    def test_suspend_where_the_host_cannot_save_is_not_implemented_with_the_reason(self):
        why = "managed save of domain 'instance-1': Xen 4.17 on Arm has no save/restore"
        a = self.agent(self.RUNNING, errors={
            "ManagedSaveDomain": RpcError(grpc.StatusCode.UNIMPLEMENTED, why)})
        e = self.assertRaises(NotImplementedError, self.drv.suspend, None, self.inst)
        self.assertIn("Xen 4.17 on Arm has no save/restore", str(e))
        self.assertEqual(["ManagedSaveDomain"], a.names())  # no pause instead

    def test_resume_starts_a_saved_guest_and_unpauses_a_paused_one(self):
        a = self.agent(domain_pb2.DOMAIN_STATE_SHUTOFF)
        self.drv.resume(None, self.inst, None)
        self.assertEqual(["GetDomain", "StartDomain"], a.names())
        a = self.agent(domain_pb2.DOMAIN_STATE_PAUSED)
        self.drv.resume(None, self.inst, None)
        self.assertEqual(["GetDomain", "ResumeDomain"], a.names())

    def test_unpause_only_unpauses(self):
        a = self.agent(domain_pb2.DOMAIN_STATE_SHUTOFF)
        self.drv.unpause(self.inst)
        self.assertEqual(["GetDomain"], a.names())


class RescueInstance(object):
    name = "instance-00000001"
    uuid = "1f9e2b1c-7d3a-4c55-9e8f-0a1b2c3d4e5f"
    image_ref = "own-image"
    kernel_id = None
    ramdisk_id = None
    config_drive = ""  # what configdrive.required_by reads: no config drive needed
    image_meta = objects.ImageMeta.from_dict({})

    def obj_attr_is_set(self, attr):
        return hasattr(self, attr)


class FakeImageCache(object):
    """The image cache's two calls rescue makes: `using` (a context) and `ensure`."""

    def __init__(self):
        self.ensured = []

    @contextlib.contextmanager
    def using(self, image_id):
        yield

    def ensure(self, context, pool, image_id):
        self.ensured.append((pool, image_id))
        return type("Image", (), {"name": "nova-" + image_id})(), False


class RescueTestCase(test.NoDBTestCase):
    """What rescue and unrescue ask of the agent, against a scripted one (the agent's side is
    tested in tests/unit/service/domain_rescue_test.cpp and on QEMU in tests/integration)."""

    def setUp(self):
        super().setUp()
        self.flags(storage_pool="disk1", group="hvagent")
        self.drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        self.agent = self.drv._agent = ScriptedDomains(domain_pb2.DOMAIN_STATE_RUNNING)
        self.drv._images = FakeImageCache()
        self.inst = RescueInstance()
        self.useFixture(fixtures_patch(self.drv, "_pool_type", storage_pb2.POOL_TYPE_PARTITION))
        self.useFixture(fixtures_patch(self.drv, "_disk_prefix", "vd"))

    def rescue(self, image_id="5ee4d1a2-2b8c-4d0e-9f1a-3c6b7e8d9f00"):
        meta = objects.ImageMeta.from_dict({"id": image_id} if image_id else {})
        self.drv.rescue(None, self.inst, None, meta, "generated-password", None)

    def test_rescue_boots_the_rescue_image_brought_in_by_the_image_cache(self):
        with unittest.mock.patch.object(self.drv, "_images_pool", return_value="disk1"):
            self.rescue()
        self.assertEqual([("disk1", "5ee4d1a2-2b8c-4d0e-9f1a-3c6b7e8d9f00")], self.drv._images.ensured)
        self.assertEqual(["RescueDomain"], self.agent.names())
        req = self.agent.calls[0][1]
        self.assertEqual("instance-00000001", req.name)
        self.assertEqual(("disk1", "nova-5ee4d1a2-2b8c-4d0e-9f1a-3c6b7e8d9f00"), (req.image.pool, req.image.image))
        # A partition pool's names are short: the UUID's first hex digits and x (rescue).
        self.assertEqual("1f9e2b1c7x", req.image.volume)
        self.assertFalse(req.HasField("kernel"))

    def test_rescue_without_a_rescue_image_uses_the_instances_own(self):
        with unittest.mock.patch.object(self.drv, "_images_pool", return_value="disk1"):
            self.rescue(None)
        self.assertEqual([("disk1", "own-image")], self.drv._images.ensured)

    def test_rescue_with_the_instances_kernel_pair_boots_it(self):
        self.inst.kernel_id, self.inst.ramdisk_id = "k-1", "r-1"
        self.flags(instances_path=self.useFixture(fixtures.TempDir()).path)
        got = []
        with unittest.mock.patch.object(self.drv, "_images_pool", return_value=None), \
                unittest.mock.patch.object(self.drv, "_download",
                                           side_effect=lambda c, i, p: got.append(i) or p):
            self.rescue()
        self.assertEqual(["k-1", "r-1"], got)
        req = self.agent.calls[0][1]
        self.assertTrue(req.kernel.kernel_path.endswith(self.inst.uuid + "/kernel.rescue"))
        self.assertTrue(req.kernel.initrd_path.endswith(self.inst.uuid + "/ramdisk.rescue"))
        self.assertFalse(req.HasField("image"), "no image pool: the kernel pair alone")

    def test_rescue_with_nothing_to_boot_is_not_implemented_and_asks_nothing(self):
        with unittest.mock.patch.object(self.drv, "_images_pool", return_value=None):
            e = self.assertRaises(NotImplementedError, self.rescue)
        self.assertIn("partition pool", str(e))
        self.assertEqual([], self.agent.names())

    def test_unrescue_asks_the_agent_and_leaves_an_instance_not_in_rescue_as_it_is(self):
        self.drv.unrescue(None, self.inst)
        self.assertEqual(["UnrescueDomain"], self.agent.names())
        self.agent.errors["UnrescueDomain"] = RpcError(
            grpc.StatusCode.FAILED_PRECONDITION, "domain 'instance-00000001' is not rescued")
        self.drv.unrescue(None, self.inst)  # a retried unrescue: done already
        self.agent.errors["UnrescueDomain"] = RpcError(grpc.StatusCode.FAILED_PRECONDITION, "busy")
        self.assertRaises(exception.InstanceInvalidState, self.drv.unrescue, None, self.inst)


def fixtures_patch(obj, name, value):
    return fixtures.MockPatchObject(obj, name, return_value=value)


class DetachTestCase(test.NoDBTestCase):
    """Detach tells the truth: what the driver does with each answer of DetachVolume, against
    a scripted agent (libvirt's test driver cannot attach, so tests/integration and
    test_volume_safety cover the real thing)."""

    INFO = {"driver_volume_type": "hvagent", "data": {"pool": "p", "name": "vol1"}}

    def setUp(self):
        super().setUp()
        self.flags(device_detach_attempts=3, device_detach_timeout=7, group="hvagent")
        self.drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        self.inst = type("I", (), {"name": "instance-1", "uuid": "u-1"})()
        self.sleeps = []
        sleep = unittest.mock.patch.object(hv_driver.time, "sleep", side_effect=self.sleeps.append)
        sleep.start()
        self.addCleanup(sleep.stop)

    def agent(self, attached_to, answers):
        self.drv._agent = FakeAgent(attached_to, answers)
        return self.drv._agent

    def detach(self):
        self.drv.detach_volume(None, self.INFO, self.inst, "/dev/vdb")

    def test_a_guest_that_lets_go_on_the_third_attempt(self):
        busy = RpcError(grpc.StatusCode.ABORTED, "the guest did not release disk vdb")
        a = self.agent("instance-1", [busy, busy, None])
        self.detach()
        self.assertEqual(["GetVolume"] + ["DetachVolume"] * 3, a.calls)
        self.assertEqual(2, len(self.sleeps))
        self.assertTrue(all(6 < t <= 7 for t in self.sleeps), self.sleeps)  # the rest of each attempt

    def test_a_guest_that_never_lets_go_fails_the_detach(self):
        busy = RpcError(grpc.StatusCode.ABORTED, "the guest did not release disk vdb")
        a = self.agent("instance-1", [busy] * 3)
        e = self.assertRaises(exception.DeviceDetachFailed, self.detach)
        self.assertIn("p/vol1", str(e))
        self.assertIn("did not release disk vdb", str(e))
        self.assertEqual(3, a.calls.count("DetachVolume"))

    def test_not_attached_is_done(self):
        a = self.agent("instance-1", [RpcError(grpc.StatusCode.NOT_FOUND, "not attached to any domain")])
        self.detach()
        self.assertEqual(["GetVolume", "DetachVolume"], a.calls)
        a = self.agent("", [])
        self.detach()
        self.assertEqual(["GetVolume"], a.calls)

    def test_another_instances_volume_is_left_alone(self):
        a = self.agent("instance-2", [])
        self.detach()
        self.assertEqual(["GetVolume"], a.calls)

    def test_the_detach_names_the_instance(self):
        a = self.agent("instance-1", [None])
        self.detach()
        detach = a.requests[a.calls.index("DetachVolume")]
        self.assertEqual(("p", "vol1", "instance-1"), (detach.pool, detach.name, detach.domain))

    def test_a_volume_another_instance_took_meanwhile_is_left_alone(self):
        # GetVolume said instance-1; before DetachVolume another instance got it: the agent
        # refuses the detach naming instance-1 (FAILED_PRECONDITION, nothing changed), and the
        # driver, reading the volume again, leaves it to its new instance.
        def moved():
            a.attached_to = "instance-2"
            return RpcError(grpc.StatusCode.FAILED_PRECONDITION, "domain: volume 'vol1' is attached to "
                            "domain 'instance-2', not to 'instance-1'; nothing was changed")
        a = self.agent("instance-1", [moved])
        self.detach()
        self.assertEqual(["GetVolume", "DetachVolume", "GetVolume"], a.calls)

    def test_other_errors_are_raised_not_taken_for_detached(self):
        for code, cls in ((grpc.StatusCode.FAILED_PRECONDITION, exception.Invalid),
                          (grpc.StatusCode.UNAVAILABLE, exception.HypervisorUnavailable)):
            a = self.agent("instance-1", [RpcError(code)])
            self.assertRaises(cls, self.detach)
            self.assertEqual(1, a.calls.count("DetachVolume"), code)

    def test_destroy_and_cleanup_never_delete_after_a_failed_detach(self):
        bdi = {"block_device_mapping": [{"connection_info": self.INFO, "mount_device": "/dev/vdb"}]}
        busy = RpcError(grpc.StatusCode.ABORTED, "the guest did not release disk vdb")
        for teardown in (lambda: self.drv.destroy(None, self.inst, [], block_device_info=bdi),
                         lambda: self.drv.cleanup(None, self.inst, [], block_device_info=bdi)):
            a = self.agent("instance-1", [busy] * 3)
            self.assertRaises(exception.DeviceDetachFailed, teardown)
            self.assertEqual(["GetDomain", "DestroyDomain", "GetVolume"] + ["DetachVolume"] * 3, a.calls)
            self.assertNotIn("DeleteDomain", a.calls)


class InstanceDiagnosticsNicTestCase(test.NoDBTestCase):
    """get_instance_diagnostics gives each NIC the MAC GetDomain lists with the host-side device
    that names its counters in GetDomainStats; a device GetDomain does not list gets None."""

    def test_nics_carry_the_mac_of_their_tap(self):
        drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        dom = domain_pb2.Domain(name="instance-1", state=domain_pb2.DOMAIN_STATE_RUNNING, vcpus=1,
                                memory_mib=128)
        dom.nics.add(nic=domain_pb2.Nic(mac="52:54:00:12:34:56", bridge="br0"), host_device="vnet7")
        dom.nics.add(nic=domain_pb2.Nic(mac="52:54:00:12:34:57", bridge="br0"))  # no tap (yet)
        stats = metrics_pb2.DomainStats(name="instance-1")
        stats.nics.add(name="vnet7", rx_bytes=10, tx_bytes=20)
        stats.nics.add(name="vnet9", rx_bytes=1)
        inst = type("I", (), {"name": "instance-1", "uuid": "u-1",
                              "obj_attr_is_set": lambda self, attr: False})()
        with unittest.mock.patch.object(drv, "_get_domain", return_value=dom), \
                unittest.mock.patch.object(diagnostics, "domain_stats", return_value=stats), \
                unittest.mock.patch.object(diagnostics.configdrive, "required_by", return_value=False), \
                unittest.mock.patch.object(drv, "_host_info", return_value=host_pb2.Host(hypervisor_type="QEMU")):
            diags = drv.get_instance_diagnostics(inst)
        self.assertEqual([("52:54:00:12:34:56", 10, 20), (None, 1, None)],
                         [(n.mac_address, n.rx_octets, n.tx_octets) for n in diags.nic_details])


class ScriptedMigrations(ScriptedDomains):
    """The driver's view of one agent for moves between hosts: ScriptedDomains, plus
    MigrateDomain (answers operation 7, or raises errors['MigrateDomain']), CancelMigration,
    SuspendDomain / ResumeDomain (pause and unpause `state`), GetOperation (RUNNING `running`
    times, each first calling `while_running` when given, then `final`; a SUCCEEDED one takes
    the domain away) and GetHost (hypervisor_type `hypervisor`). `present` False: GetDomain is
    NOT_FOUND."""

    def __init__(self, state, final=None, running=1, hypervisor="qemu", errors=None,
                 present=True, while_running=None):
        super().__init__(state, errors=errors)
        self.final, self.running = final, running
        self.hypervisor, self.present = hypervisor, present
        self.while_running = while_running
        names = ("GetDomain", "ShutdownDomain", "DestroyDomain", "StartDomain", "UpdateDomain",
                 "DeleteDomain", "SuspendDomain", "ResumeDomain")
        self.domains = type("D", (), {n: staticmethod(self._stub(n)) for n in names})
        self.migration = type("M", (), {n: staticmethod(self._stub(n))
                                        for n in ("MigrateDomain", "CancelMigration")})
        self.operations = type("O", (), {"GetOperation": staticmethod(self._stub("GetOperation"))})
        self.host = type("H", (), {"GetHost": staticmethod(self._stub("GetHost"))})

    def _call(self, name, request, timeout):
        if name == "GetDomain" and not self.present and name not in self.errors:
            self.calls.append((name, request))
            raise RpcError(grpc.StatusCode.NOT_FOUND, "no domain")
        if name == "MigrateDomain" and name not in self.errors:
            self.calls.append((name, request))
            return migration_pb2.MigrateDomainResponse(operation_id=7)
        if name == "GetOperation":
            self.calls.append((name, request))
            if self.running > 0:
                self.running -= 1
                if self.while_running:
                    self.while_running()
                return operation_pb2.Operation(id=7, state=operation_pb2.OPERATION_STATE_RUNNING)
            if self.final.state == operation_pb2.OPERATION_STATE_SUCCEEDED:
                self.present = not self.present
            return self.final
        if name == "GetHost":
            self.calls.append((name, request))
            return host_pb2.Host(hypervisor_type=self.hypervisor, connected=True)
        if name == "CancelMigration" and name not in self.errors:
            self.calls.append((name, request))
            return migration_pb2.CancelMigrationResponse()
        if name in ("SuspendDomain", "ResumeDomain") and name not in self.errors:
            self.calls.append((name, request))
            self.state = (domain_pb2.DOMAIN_STATE_PAUSED if name == "SuspendDomain"
                          else domain_pb2.DOMAIN_STATE_RUNNING)
            return domain_pb2.Domain(name=request.name, state=self.state)
        return super()._call(name, request, timeout)

    def request(self, name):
        return [r for n, r in self.calls if n == name][-1]


def op(state, message=""):
    return operation_pb2.Operation(id=7, state=getattr(operation_pb2, "OPERATION_STATE_" + state),
                                   message=message)


STAYED = "destination unreachable; the domain stays here"
UNSURE = "rolled back; the domain is no longer here and may run on 192.0.2.5:50051"


class MigrationTestCase(test.NoDBTestCase):
    """Moves between hosts, in Nova's call order, against scripted agents (the agent's side
    of MigrateDomain is tested in tests/unit/service/migration_service_test.cpp and between
    two hosts in tests/integration)."""

    RUNNING = domain_pb2.DOMAIN_STATE_RUNNING
    SHUTOFF = domain_pb2.DOMAIN_STATE_SHUTOFF

    def setUp(self):
        super().setUp()
        self.flags(address="127.0.0.1:50051", migration_poll_interval=0, group="hvagent")
        self.flags(my_ip="198.51.100.1")
        self.drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        flavor = objects.Flavor(vcpus=2, memory_mb=256, root_gb=1, ephemeral_gb=0, swap=0,
                                extra_specs={})
        self.inst = type("I", (), {"name": "instance-1", "uuid": "u-1", "flavor": flavor})()
        self.useFixture(fixtures.MockPatchObject(self.drv, "_check_resize_tuning"))
        self.useFixture(fixtures.MockPatchObject(self.drv, "plug_vifs"))
        self.useFixture(fixtures.MockPatchObject(self.drv, "_unplug_vifs"))

    def agent(self, *args, **kwargs):
        self.drv._agent = ScriptedMigrations(*args, **kwargs)
        return self.drv._agent

    def cold(self, timeout=30, bdi=None):
        return self.drv.migrate_disk_and_power_off(None, self.inst, "192.0.2.5", self.inst.flavor,
                                                   None, bdi, timeout, 2)

    # -- cold migration / resize to another host ---------------------------------------------

    def test_cold_move_stops_the_guest_and_the_agent_moves_it(self):
        a = self.agent(self.RUNNING, op("SUCCEEDED"))
        self.assertEqual([], jsonutils.loads(self.cold(timeout=30)))
        self.assertEqual(["GetDomain", "GetDomain", "ShutdownDomain", "MigrateDomain",
                          "GetOperation", "GetOperation"], a.names())
        self.assertEqual(30, a.request("ShutdownDomain").timeout_seconds)
        req = a.request("MigrateDomain")
        self.assertEqual(("instance-1", "192.0.2.5:50051", False),
                         (req.name, req.destination, req.live))
        self.assertEqual(migration_pb2.RUNNING_POLICY_REFUSE, req.running_policy)
        self.assertEqual("7", a.request("GetOperation").id)

    def test_cold_move_without_time_to_shut_down_destroys_first_and_uses_migration_port(self):
        self.flags(migration_port=6000, group="hvagent")
        a = self.agent(self.RUNNING, op("SUCCEEDED"), running=0)
        self.cold(timeout=0)
        self.assertIn("DestroyDomain", a.names())
        self.assertNotIn("ShutdownDomain", a.names())
        self.assertEqual("192.0.2.5:6000", a.request("MigrateDomain").destination)

    def test_cold_move_the_agent_undid_starts_the_guest_again_and_rolls_back(self):
        a = self.agent(self.RUNNING, op("FAILED", STAYED))
        err = self.assertRaises(exception.InstanceFaultRollback, self.cold)
        self.assertIsInstance(err.inner_exception, exception.MigrationError)
        self.assertIn("destination unreachable", str(err.inner_exception))
        self.assertEqual("StartDomain", a.names()[-1])
        self.assertEqual(self.RUNNING, a.state)

    def test_cold_move_of_a_stopped_guest_that_fails_leaves_it_stopped(self):
        a = self.agent(self.SHUTOFF, op("CANCELLED", "cancelled; the domain stays here"))
        self.assertRaises(exception.InstanceFaultRollback, self.cold)
        self.assertNotIn("StartDomain", a.names())

    def test_cold_move_refused_by_the_agent_starts_the_guest_again(self):
        a = self.agent(self.RUNNING, errors={"MigrateDomain": RpcError(
            grpc.StatusCode.FAILED_PRECONDITION, "disk vdb is a borrowed volume")})
        err = self.assertRaises(exception.InstanceFaultRollback, self.cold)
        self.assertIn("borrowed volume", str(err.inner_exception))
        self.assertNotIn("GetOperation", a.names())
        self.assertEqual("StartDomain", a.names()[-1])

    def test_cold_move_whose_end_is_unsure_starts_nothing_and_is_no_rollback(self):
        a = self.agent(self.RUNNING, op("FAILED", UNSURE))
        err = self.assertRaises(exception.MigrationError, self.cold)
        self.assertIn("may run on", str(err))
        self.assertNotIn("StartDomain", a.names())

    def test_cold_move_with_an_attached_nova_volume_is_refused_before_the_guest_stops(self):
        a = self.agent(self.RUNNING, op("SUCCEEDED"))
        bdi = {"block_device_mapping": [{"mount_device": "/dev/vdb", "connection_info": {
            "driver_volume_type": "hvagent", "data": {"pool": "p", "name": "v"}}}]}
        err = self.assertRaises(exception.InstanceFaultRollback, self.cold, bdi=bdi)
        self.assertIsInstance(err.inner_exception, exception.MigrationPreCheckError)
        self.assertEqual([], a.names())

    def test_finish_migration_on_the_destination_resizes_and_starts(self):
        a = self.agent(self.SHUTOFF)
        new = objects.Flavor(vcpus=3, memory_mb=512, root_gb=0, ephemeral_gb=0, swap=0,
                             extra_specs={})
        self.inst.flavor = new
        self.drv.finish_migration(None, None, self.inst, "[]", None, None, True, {})
        self.assertEqual(["UpdateDomain", "GetDomain", "StartDomain"], a.names())
        self.assertEqual((3, 512), (a.calls[0][1].vcpus, a.calls[0][1].memory_mib))

    def migration(self, dest_host="192.0.2.5"):
        return type("Mig", (), {"dest_host": dest_host, "source_compute": "a",
                                "dest_compute": "b"})()

    def test_revert_moves_the_domain_back_from_the_destination(self):
        here = self.agent(self.SHUTOFF, present=False)
        there = ScriptedMigrations(self.SHUTOFF, op("SUCCEEDED"))
        with unittest.mock.patch.object(self.drv, "_agent_at", return_value=there) as at:
            def moved(*a, **k):
                here.present = True
                return op("SUCCEEDED")
            with unittest.mock.patch.object(self.drv, "_wait_operation", side_effect=moved):
                self.drv.finish_revert_migration(None, self.inst, None, self.migration())
        at.assert_called_once_with("192.0.2.5:50051")
        req = there.request("MigrateDomain")
        self.assertEqual(("instance-1", "198.51.100.1:50051"), (req.name, req.destination))
        self.assertEqual(["GetDomain", "GetDomain", "UpdateDomain", "GetDomain", "StartDomain"],
                         here.names())

    def test_revert_whose_move_back_fails_says_where_the_instance_stays(self):
        self.agent(self.SHUTOFF, present=False)
        there = ScriptedMigrations(self.SHUTOFF, op("FAILED", STAYED))
        with unittest.mock.patch.object(self.drv, "_agent_at", return_value=there):
            err = self.assertRaises(exception.MigrationError, self.drv.finish_revert_migration,
                                    None, self.inst, None, self.migration())
        self.assertIn("stays on 192.0.2.5", str(err))

    # -- live migration ----------------------------------------------------------------------

    def test_live_checks_on_xen_are_refused_with_the_reason(self):
        self.agent(self.RUNNING, hypervisor="Xen")
        err = self.assertRaises(exception.MigrationPreCheckError,
                                self.drv.check_can_live_migrate_destination,
                                None, self.inst, {}, {})
        self.assertIn("no live migration on Arm", str(err))
        data = objects.LibvirtLiveMigrateData(target_connect_addr="192.0.2.5:50051")
        self.assertRaises(exception.MigrationPreCheckError,
                          self.drv.check_can_live_migrate_source, None, self.inst, data)

    def test_live_checks_name_the_destination_agent_and_need_a_running_guest(self):
        self.agent(self.RUNNING)
        data = self.drv.check_can_live_migrate_destination(None, self.inst, {}, {}, True, False)
        self.assertIsInstance(data, objects.LibvirtLiveMigrateData)
        self.assertEqual("198.51.100.1:50051", data.target_connect_addr)
        self.assertFalse(data.is_shared_block_storage)
        self.assertIs(data, self.drv.check_can_live_migrate_source(None, self.inst, data))
        self.drv.cleanup_live_migration_destination_check(None, data)
        self.agent(self.SHUTOFF)
        err = self.assertRaises(exception.MigrationPreCheckError,
                                self.drv.check_can_live_migrate_source, None, self.inst, data)
        self.assertIn("running guest", str(err))
        self.assertRaises(exception.MigrationPreCheckError,
                          self.drv.check_can_live_migrate_source, None, self.inst,
                          objects.LibvirtLiveMigrateData())

    def test_pre_live_migration_plugs_the_vifs_and_keeps_the_data(self):
        data = objects.LibvirtLiveMigrateData()
        self.assertIs(data, self.drv.pre_live_migration(None, self.inst, None, ["vif"], None, data))
        self.drv.plug_vifs.assert_called_once_with(self.inst, ["vif"])

    def live(self, a):
        post, recover = unittest.mock.Mock(), unittest.mock.Mock()
        data = objects.LibvirtLiveMigrateData(target_connect_addr="192.0.2.5:50051")
        self.drv.live_migration("ctx", self.inst, "host-b", post, recover, True, data)
        return post, recover, data

    def test_live_migration_that_succeeds_calls_post_method(self):
        self.flags(live_migration_downtime=400, live_migration_bandwidth=80, group="libvirt")
        a = self.agent(self.RUNNING, op("SUCCEEDED"))
        post, recover, data = self.live(a)
        post.assert_called_once_with("ctx", self.inst, "host-b", True, data)
        recover.assert_not_called()
        req = a.request("MigrateDomain")
        self.assertEqual((True, 400, 80, "192.0.2.5:50051"),
                         (req.live, req.max_downtime_ms, req.max_bandwidth_mib_s, req.destination))

    def test_live_migration_that_fails_or_is_cancelled_or_refused_calls_recover_method(self):
        for kwargs, extra in (({"final": op("FAILED", STAYED)}, {}),
                              ({"final": op("CANCELLED", "cancelled; the domain stays here")},
                               {"migration_status": "cancelled"}),
                              ({"errors": {"MigrateDomain": RpcError(
                                  grpc.StatusCode.FAILED_PRECONDITION, "Xen")}}, {})):
            post, recover, data = self.live(self.agent(self.RUNNING, **kwargs))
            post.assert_not_called()
            recover.assert_called_once_with("ctx", self.inst, "host-b", data, **extra)

    def test_live_migration_without_a_destination_agent_moves_nothing_and_recovers(self):
        a = self.agent(self.RUNNING, op("SUCCEEDED"))
        post, recover = unittest.mock.Mock(), unittest.mock.Mock()
        data = objects.LibvirtLiveMigrateData()
        self.drv.live_migration("ctx", self.inst, "host-b", post, recover, False, data)
        recover.assert_called_once_with("ctx", self.inst, "host-b", data)
        post.assert_not_called()
        self.assertEqual([], a.names())

    def test_live_migration_whose_end_is_unsure_raises_and_neither_posts_nor_recovers(self):
        self.agent(self.RUNNING, op("FAILED", UNSURE))
        err = self.assertRaises(exception.MigrationError, self.live, None)
        self.assertIn("may run on", str(err))

    # -- abort, force-complete, completion timeout -------------------------------------------

    def test_abort_cancels_the_agents_operation_and_recovers_as_cancelled(self):
        a = self.agent(self.RUNNING, op("CANCELLED", "cancelled; the domain stays here"),
                       running=2, while_running=lambda: self.drv.live_migration_abort(self.inst))
        post, recover, data = self.live(a)
        self.assertEqual(["7", "7"], [r.operation_id for n, r in a.calls
                                      if n == "CancelMigration"])
        recover.assert_called_once_with("ctx", self.inst, "host-b", data,
                                        migration_status="cancelled")
        post.assert_not_called()
        self.assertNotIn("ResumeDomain", a.names())

    def test_abort_and_force_complete_without_a_running_migration_are_refused(self):
        a = self.agent(self.RUNNING, op("SUCCEEDED"))
        for method in (self.drv.live_migration_abort, self.drv.live_migration_force_complete):
            self.assertRaises(exception.NoActiveMigrationForInstance, method, self.inst)
        self.live(a)  # ended: nothing left registered
        self.assertRaises(exception.NoActiveMigrationForInstance,
                          self.drv.live_migration_abort, self.inst)
        self.assertEqual([], [n for n in a.names() if n in ("CancelMigration", "SuspendDomain")])

    def test_abort_the_agent_refuses_past_the_point_of_no_return_is_raised(self):
        errors = {"CancelMigration": RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                                              "past the point of no return")}
        seen = []

        def abort():
            seen.append(self.assertRaises(exception.NovaException,
                                          self.drv.live_migration_abort, self.inst))
        post, recover, _ = self.live(self.agent(self.RUNNING, op("SUCCEEDED"), errors=errors,
                                                while_running=abort))
        self.assertIn("point of no return", str(seen[0]))
        post.assert_called_once()

    def forced(self, final, peer_state=domain_pb2.DOMAIN_STATE_PAUSED):
        a = self.agent(self.RUNNING, final, running=2, while_running=lambda:
                       self.drv.live_migration_force_complete(self.inst))
        there = ScriptedMigrations(peer_state)
        with unittest.mock.patch.object(self.drv, "_agent_at", return_value=there) as at:
            post, recover, _ = self.live(a)
        return a, there, at, post, recover

    def test_force_complete_pauses_once_and_resumes_on_the_destination(self):
        self.flags(live_migration_permit_post_copy=True, group="libvirt")
        a, there, at, post, recover = self.forced(op("SUCCEEDED"))
        self.assertEqual(1, a.names().count("SuspendDomain"))
        self.assertEqual("instance-1", a.request("SuspendDomain").name)
        at.assert_called_once_with("192.0.2.5:50051")
        self.assertEqual(["GetDomain", "ResumeDomain"], there.names())
        self.assertEqual(self.RUNNING, there.state)
        post.assert_called_once()

    def test_force_complete_leaves_a_guest_that_arrived_running_alone(self):
        _, there, _, post, _ = self.forced(op("SUCCEEDED"), peer_state=self.RUNNING)
        self.assertEqual(["GetDomain"], there.names())
        post.assert_called_once()

    def test_force_completed_move_that_fails_resumes_the_guest_here(self):
        a, there, at, post, recover = self.forced(op("FAILED", STAYED))
        self.assertEqual(["SuspendDomain", "ResumeDomain"],
                         [n for n in a.names() if n.endswith("Domain") and n != "GetDomain"
                          and n != "MigrateDomain"])
        self.assertEqual(self.RUNNING, a.state)
        at.assert_not_called()
        recover.assert_called_once()

    def timed_out(self, action, timeout=1):
        self.flags(live_migration_completion_timeout=timeout,
                   live_migration_timeout_action=action, group="libvirt")
        # 2 GiB of RAM (Nova's floor) + 1 GiB root: 3 s at 1 s per GiB.
        clock = itertools.chain([0.0, 2.9], itertools.repeat(3.1))
        with unittest.mock.patch.object(hv_driver.live_moves.time, "monotonic",
                                        side_effect=lambda: next(clock)):
            a = self.agent(self.RUNNING, op("CANCELLED", "cancelled; the domain stays here"),
                           running=3)
            self.live(a)
        return a

    def test_completion_timeout_aborts_once_after_ram_and_disk_gib_times_the_setting(self):
        a = self.timed_out("abort")
        names = a.names()
        self.assertEqual(1, names.count("CancelMigration"))
        # not at 2.9 s (first running look), but at 3.1 s (the second)
        self.assertEqual(["GetOperation", "GetOperation", "CancelMigration"],
                         [n for n in names if n in ("GetOperation", "CancelMigration")][:3])

    def test_completion_timeout_with_force_complete_pauses_instead(self):
        a = self.timed_out("force_complete")
        self.assertNotIn("CancelMigration", a.names())
        self.assertEqual(1, a.names().count("SuspendDomain"))
        self.assertEqual(["ResumeDomain"], [n for n in a.names() if n == "ResumeDomain"])

    def test_completion_timeout_zero_never_acts(self):
        a = self.timed_out("abort", timeout=0)
        self.assertNotIn("CancelMigration", a.names())

    def test_completion_timeout_counts_ram_with_nova_floor_and_local_disks(self):
        self.flags(live_migration_completion_timeout=800, group="libvirt")
        self.assertEqual(2400, hv_driver.live_moves.completion_timeout(
            hv_driver.CONF, self.inst, [("root", units.Gi)]))
        self.inst.flavor.memory_mb = 4096
        self.assertEqual(800 * (4 + 3), hv_driver.live_moves.completion_timeout(
            hv_driver.CONF, self.inst, [("root", units.Gi), ("eph0", 2 * units.Gi)]))

    def test_rollback_at_destination_and_cleanup_at_source_delete_no_domain(self):
        a = self.agent(self.RUNNING)
        data = objects.LibvirtLiveMigrateData()
        self.drv.rollback_live_migration_at_destination(None, self.inst, ["vif"], None, True, data)
        self.drv.cleanup(None, self.inst, ["vif"], None, True, data)
        self.drv.rollback_live_migration_at_source(None, self.inst, data)
        self.drv.post_live_migration(None, self.inst, None, data)
        self.assertEqual([], a.names())
        self.assertEqual(2, self.drv._unplug_vifs.call_count)


class ErrorMappingTestCase(unittest.TestCase):
    class Err(grpc.RpcError):
        def __init__(self, code):
            self._code = code

        def code(self):
            return self._code

        def details(self):
            return "why"

    def test_codes(self):
        inst = type("I", (), {"name": "instance-1", "uuid": "u-1"})()
        S = grpc.StatusCode
        for code, cls in [(S.NOT_FOUND, exception.InstanceNotFound),
                          (S.ALREADY_EXISTS, exception.InstanceExists),
                          (S.INVALID_ARGUMENT, exception.InvalidInput),
                          (S.FAILED_PRECONDITION, exception.InstanceInvalidState),
                          (S.RESOURCE_EXHAUSTED, exception.ComputeResourcesUnavailable),
                          (S.UNAVAILABLE, exception.HypervisorUnavailable),
                          (S.DEADLINE_EXCEEDED, exception.HypervisorUnavailable),
                          (S.PERMISSION_DENIED, exception.Forbidden),
                          (S.UNIMPLEMENTED, NotImplementedError),
                          (S.INTERNAL, exception.InternalError)]:
            self.assertIsInstance(client.to_nova(self.Err(code), "a:1", inst), cls, code)
        self.assertIsInstance(client.to_nova(self.Err(S.NOT_FOUND), "a:1"), exception.NotFound)


if __name__ == "__main__":
    unittest.main()
