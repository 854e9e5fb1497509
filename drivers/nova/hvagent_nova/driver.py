"""nova.virt.driver.ComputeDriver for a host run by hvagent (gRPC).

Domains are named after nova's ``instance.name`` and carry the instance UUID as their libvirt
UUID, so list_instances() and list_instance_uuids() agree. Domains whose names do not match
``[DEFAULT] instance_name_template`` belong to somebody else (an operator, CloudStack) and are
neither listed nor touched.

Local disks (root, ephemeral, swap) are volumes of ``[hvagent] storage_pool``, created with the
domain in one CreateDomain call (the agent undoes everything when a step fails), so the domain
owns them and they are deleted with it (DeleteDomain delete_volumes). Volumes are named
``<instance uuid>-root`` / ``-eph<N>`` / ``-swap`` (shorter on partition pools: see
_volume_name). A root disk from the image cache (image_cache.py) is made in that same call from
the agent's copy of the Glance image (DiskVolume.image), so it is owned like the others. Nova's
volumes (connection_info type ``hvagent``) are borrowed: destroy and cleanup detach them first
and raise when that fails, and the agent itself never deletes a borrowed volume with a domain,
so a data volume survives every path that removes an instance.

Networking: Nova's VIFs become agent NICs (_nic): type 'bridge' a Linux bridge NIC, 'ovs' with
hybrid plugging the qbr bridge os-vif makes, 'ovs' without it (Open vSwitch or OVN) an agent
Open vSwitch port whose iface-id is the Neutron port id, with the network's MTU. VIFs that need
host-side plumbing before the guest exists (Linux bridge, OVS hybrid) are plugged with os-vif
first, the way Nova's libvirt driver does; Neutron's network-vif-plugged events are awaited
around the start (vif_plugging_timeout, vif_plugging_is_fatal).

Lifecycle events: while Nova listens (register_event_listener), the agent's EventService.Watch
stream is followed and turned into nova.virt.event.LifecycleEvent (events.py).
"""

import contextlib
import os
import re
import shutil
import tempfile
import time

import eventlet
from eventlet import semaphore as green_semaphore
from eventlet import tpool
import grpc
from grpc import experimental as grpc_experimental
import os_resource_classes as orc
import os_traits
import os_vif
from os_vif import exception as osv_exception
from oslo_config import cfg
from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_serialization import jsonutils
from oslo_utils import excutils
from oslo_utils import units
from oslo_utils import versionutils

from nova import block_device
from nova.compute import power_state
from nova.compute import utils as compute_utils
from nova.compute import task_states
from nova import conf as nova_conf
from nova.console import type as console_type
from nova import exception
from nova.image import glance
from nova.network import model as network_model
from nova.network import os_vif_util
from nova import objects
from nova.objects import fields
from nova.virt import driver
from nova.virt import hardware

from hvagent.v1 import (console_pb2, domain_pb2, domain_pb2_grpc, host_pb2, migration_pb2,
                        operation_pb2, storage_pb2)

from hvagent_nova import client
from hvagent_nova import conf as hv_conf
from hvagent_nova import config_drive
from hvagent_nova import diagnostics
from hvagent_nova import events
from hvagent_nova import extra_specs
from hvagent_nova import image_cache
from hvagent_nova import live_moves
from hvagent_nova import snapshot as hv_snapshot

LOG = logging.getLogger(__name__)
CONF = nova_conf.CONF
hv_conf.register_opts(CONF)

DS = domain_pb2
POWER_STATE = {
    DS.DOMAIN_STATE_UNSPECIFIED: power_state.NOSTATE,
    DS.DOMAIN_STATE_RUNNING: power_state.RUNNING,
    DS.DOMAIN_STATE_BLOCKED: power_state.RUNNING,
    DS.DOMAIN_STATE_PAUSED: power_state.PAUSED,
    DS.DOMAIN_STATE_SHUTTING_DOWN: power_state.RUNNING,
    DS.DOMAIN_STATE_SHUTOFF: power_state.SHUTDOWN,
    DS.DOMAIN_STATE_CRASHED: power_state.CRASHED,
    DS.DOMAIN_STATE_SUSPENDED: power_state.SUSPENDED,
}
ARCH_TRAIT = {
    "aarch64": os_traits.HW_ARCH_AARCH64,
    "x86_64": os_traits.HW_ARCH_X86_64,
    "i686": os_traits.HW_ARCH_I686,
    "armv7l": os_traits.HW_ARCH_ARMV7,
    "ppc64le": os_traits.HW_ARCH_PPC64LE,
    "s390x": os_traits.HW_ARCH_S390X,
}
# Guest disk images the driver can put on a raw volume (qcow2 needs qemu-img on the host).
RAW_FORMATS = ("raw", "ami")
# Partition pools name volumes in the GPT partition name "hvagent:<volume>@<domain>" (36
# characters): at most 20 for the volume, 27 for volume and domain together.
PARTITION_VOLUME_MAX = 20
PARTITION_NAME_ROOM = 27
NO_IMAGE = (None, "", "nokernel")


def name_pattern(template):
    """A regex for the names instance_name_template produces ('instance-%08x')."""
    parts = re.split(r"%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]", template)
    return re.compile("^" + ".+".join(re.escape(p) for p in parts) + "$")


class HvagentDriver(driver.ComputeDriver):
    """Runs instances as hvagent domains."""

    capabilities = dict(
        driver.ComputeDriver.capabilities,
        # Glance images are kept as agent images of a partition pool (image_cache.py).
        has_imagecache=True,
        # Evacuate: Nova's default rebuild spawns the instance again from its image on the new
        # host (pool volumes are never on shared storage: instance_on_disk is False, and with
        # no check_instance_shared_storage_local Nova destroys the old host's disks when it
        # comes back). Nothing reaches the dead host's agent (docs/openstack.md, "Evacuate").
        supports_evacuate=True,
        supports_attach_interface=True,
        supports_device_tagging=False,
        supports_extend_volume=False,
        supports_multiattach=False,
        supports_image_type_raw=True,
        supports_image_type_ami=True,
        # qcow2 is converted onto the raw volume; set per host in __init__.
        supports_image_type_qcow2=False,
    )

    def __init__(self, virtapi, read_only=False):
        super(HvagentDriver, self).__init__(virtapi)
        self.capabilities = dict(self.capabilities)
        self.capabilities["supports_image_type_qcow2"] = bool(shutil.which("qemu-img"))
        self._agent = None
        self._host = None
        self._watcher = None
        self._pool_types = {}
        self._images = image_cache.ImageCache(lambda: self.agent, CONF)
        # One CreateDomain that copies an image at a time (_create_domain says why).
        self._copy_lock = green_semaphore.Semaphore(1)
        # Live migrations this host runs as their source (abort, force-complete, deadline).
        self._live_moves = live_moves.LiveMoves()
        # Loads os-vif's plugins (linux_bridge, ovs, noop) once per process, as Nova's libvirt
        # driver does before it plugs anything.
        os_vif.initialize()

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def agent(self):
        if self._agent is None:
            group = CONF.hvagent
            self._agent = client.Agent(client.make_channel(group), group.address,
                                       group.rpc_timeout)
        return self._agent

    def _host_info(self, refresh=False):
        if self._host is None or refresh:
            self._host = self.agent.call(self.agent.host.GetHost, host_pb2.GetHostRequest())
        return self._host

    def _capacity(self):
        return self.agent.call(self.agent.host.GetCapacity, host_pb2.GetCapacityRequest())

    def _is_nova_domain(self, name):
        return bool(name_pattern(CONF.instance_name_template).match(name))

    def _domains(self):
        resp = self.agent.call(self.agent.domains.ListDomains, DS.ListDomainsRequest())
        return [d for d in resp.domains if self._is_nova_domain(d.name)]

    def _get_domain(self, instance):
        return self.agent.call(self.agent.domains.GetDomain,
                               DS.GetDomainRequest(name=instance.name), instance)

    def _ref(self, instance):
        return DS.DomainRef(name=instance.name)

    def _act(self, method, instance):
        return self.agent.call(method, self._ref(instance), instance)

    def _disk_prefix(self):
        if CONF.hvagent.disk_prefix:
            return CONF.hvagent.disk_prefix
        return "xvd" if self._host_info().hypervisor_type.lower() == "xen" else "vd"

    def _instance_dir(self, instance):
        return os.path.join(CONF.instances_path, instance.uuid)

    # -- host -------------------------------------------------------------------------------

    def init_host(self, host):
        """Checks the agent answers and is connected to its hypervisor; checks the pool and
        deletes the config drive images a crash left in it."""
        info = self._host_info(refresh=True)
        if not info.connected:
            LOG.warning("hvagent at %s is not connected to its hypervisor (%s) yet",
                        CONF.hvagent.address, info.uri)
        pool = CONF.hvagent.storage_pool
        if pool:
            try:
                self.agent.call(self.agent.storage.GetPool, storage_pb2.GetPoolRequest(name=pool))
            except exception.NotFound:
                raise exception.InvalidConfiguration(
                    "[hvagent] storage_pool = %s: the agent at %s has no such pool"
                    % (pool, CONF.hvagent.address))
            self._sweep_config_drives()
        LOG.info("hvagent %s at %s: %s %s on %s (%s)", info.agent_version,
                 CONF.hvagent.address, info.hypervisor_type, info.hypervisor_version,
                 info.hostname, info.arch)

    def _sweep_config_drives(self):
        """Config drive images a crash left (config_drive.sweep says why all of them)."""
        if self._pool_holds_images():
            config_drive.sweep(self.agent, CONF.hvagent.storage_pool)

    def cleanup_host(self, host):
        self._stop_watcher()

    # -- lifecycle events -------------------------------------------------------------------

    def register_event_listener(self, callback):
        """Nova registers its handler after init_host and unregisters it (None) on shutdown:
        the agent's event stream is followed exactly while somebody listens."""
        super(HvagentDriver, self).register_event_listener(callback)
        if callback is None:
            self._stop_watcher()
        elif self._watcher is None:
            self._watcher = events.LifecycleWatcher(
                make_channel=self._event_channel, is_instance=self._is_nova_domain,
                list_states=self._domain_states, emit=self.emit_event,
                delay=CONF.hvagent.lifecycle_event_delay)
            self._watcher.start()

    def _event_channel(self):
        # Its own channel, read on one native thread (events.py says why).
        return client.make_channel(
            CONF.hvagent, [(grpc_experimental.ChannelOptions.SingleThreadedUnaryStream, 1)])

    def _domain_states(self):
        return {d.uuid: d.state for d in self._domains()}

    def _stop_watcher(self):
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()

    def get_host_uptime(self):
        """What the libvirt driver returns (the first part of `uptime`'s line): the time of
        day and how long the agent's host has been up (its /proc/uptime; dom0's on Xen)."""
        host = self._host_info(refresh=True)
        if not host.HasField("uptime"):
            raise NotImplementedError("hvagent: the agent could not read its host's uptime")
        days, rest = divmod(host.uptime.seconds, 86400)
        return " %s up %d days, %2d:%02d" % (time.strftime("%H:%M:%S"), days, rest // 3600,
                                              rest % 3600 // 60)

    def get_host_cpu_stats(self):
        """The host's CPU times summed over its CPUs (ns) and its clock (MHz), as the libvirt
        driver reports them (virNodeGetCPUStats through the agent). A hypervisor whose libvirt
        driver has none (libxl) raises NotImplementedError naming it."""
        host = self._host_info(refresh=True)
        if not host.HasField("cpu_times"):
            raise NotImplementedError("hvagent: the %s hypervisor reports no host CPU times"
                                      % host.hypervisor_type)
        t = host.cpu_times
        return {"kernel": t.kernel_ns, "idle": t.idle_ns, "user": t.user_ns,
                "iowait": t.iowait_ns, "frequency": host.cpu_mhz}

    def get_available_nodes(self, refresh=False):
        return [self._host_info(refresh).hostname]

    def get_host_ip_addr(self):
        return CONF.my_ip

    def _pool_gb(self, capacity):
        """(total GiB, free GiB) of the configured pool, (0, 0) without one."""
        pool = CONF.hvagent.storage_pool
        for p in capacity.pools:
            if p.name == pool:
                return p.capacity_bytes // units.Gi, p.free_bytes // units.Gi
        return 0, 0

    def get_available_resource(self, nodename):
        cap = self._capacity()
        host = self._host_info()
        total_gb, free_gb = self._pool_gb(cap)
        arch = fields.Architecture.canonicalize(cap.arch or host.arch)
        hv_type = (cap.hypervisor_type or host.hypervisor_type).lower()
        try:
            hv_version = versionutils.convert_version_to_int(
                cap.hypervisor_version or host.hypervisor_version)
        except Exception:
            hv_version = 0
        # As the libvirt driver: the host CPU as libvirt's capabilities describe it (vendor
        # and model empty where libvirt names none, e.g. on Arm).
        topo = host.topology if host.HasField("topology") else cap.topology
        cpu_info = {
            "arch": arch, "model": host.cpu_model, "vendor": host.cpu_vendor,
            "topology": {"sockets": topo.sockets, "cores": topo.cores_per_socket,
                         "threads": topo.threads_per_core},
            "features": sorted(set(host.cpu_features)),
        }
        return {
            "vcpus": cap.cpus,
            "memory_mb": cap.memory_total_bytes // units.Mi,
            "local_gb": total_gb,
            "vcpus_used": cap.defined_vcpus,
            "memory_mb_used": cap.defined_memory_bytes // units.Mi,
            "local_gb_used": total_gb - free_gb,
            "hypervisor_type": hv_type,
            "hypervisor_version": hv_version,
            "hypervisor_hostname": nodename,
            "cpu_info": jsonutils.dumps(cpu_info),
            "disk_available_least": free_gb,
            "supported_instances": [(arch, hv_type, fields.VMMode.HVM)],
            "numa_topology": None,
            # No "pci_passthrough_devices": Nova's resource tracker json-decodes that key
            # whenever it is there (None broke every update_available_resource against real
            # Nova, so the node never reached placement); the agent passes no devices through.
        }

    @staticmethod
    def _configured(name):
        """True when nova.conf (or an override) sets option `name` of [DEFAULT]."""
        return CONF.get_location(name).location != cfg.Locations.opt_default

    def _ratios(self, provider_tree, nodename, pol):
        """Allocation ratio per resource class, as the libvirt driver chooses it: nova.conf's
        *_allocation_ratio overrides everything; with initial_*_allocation_ratio set, that is
        the first value and what placement holds afterwards is kept. When nova.conf sets
        neither, the agent's own ratios (its [capacity], by which it admits domains) are used,
        so that placement never promises what the agent would refuse."""
        agent = {orc.VCPU: pol.cpu_allocation_ratio or 1.0,
                 orc.MEMORY_MB: pol.memory_allocation_ratio or 1.0,
                 orc.DISK_GB: 1.0}  # thick volumes: the agent never overcommits a pool
        try:
            current = provider_tree.data(nodename).inventory
        except ValueError:
            current = {}
        out = {}
        for res, rc in (("cpu", orc.VCPU), ("ram", orc.MEMORY_MB), ("disk", orc.DISK_GB)):
            name = "%s_allocation_ratio" % res
            if getattr(CONF, name):
                out[rc] = getattr(CONF, name)
            elif self._configured("initial_" + name):
                ratio = current.get(rc, {}).get("allocation_ratio")
                out[rc] = ratio if ratio else getattr(CONF, "initial_" + name)
            else:
                out[rc] = agent[rc]
        return out

    def update_provider_tree(self, provider_tree, nodename, allocations=None):
        """Inventory of the agent's host. Ratios: see _ratios. Reserved: nova.conf's
        reserved_host_cpus / reserved_host_memory_mb / reserved_host_disk_mb where set (as the
        libvirt driver), else the agent's own reservations ([capacity]) and none on disk."""
        cap = self._capacity()
        pol = cap.policy
        cpus = cap.cpus
        mem_mb = cap.memory_total_bytes // units.Mi
        ratios = self._ratios(provider_tree, nodename, pol)
        reserved_cpus = (CONF.reserved_host_cpus if self._configured("reserved_host_cpus")
                         else pol.reserved_cpus)
        reserved_mb = (CONF.reserved_host_memory_mb if self._configured("reserved_host_memory_mb")
                       else pol.reserved_memory_bytes // units.Mi)
        inv = {
            orc.VCPU: {
                "total": cpus, "min_unit": 1, "max_unit": max(cpus - reserved_cpus, 1),
                "step_size": 1, "reserved": min(reserved_cpus, cpus),
                "allocation_ratio": ratios[orc.VCPU],
            },
            orc.MEMORY_MB: {
                "total": mem_mb, "min_unit": 1,
                "max_unit": max(mem_mb - reserved_mb, 1),
                "step_size": 1, "reserved": min(reserved_mb, mem_mb),
                "allocation_ratio": ratios[orc.MEMORY_MB],
            },
        }
        total_gb, _ = self._pool_gb(cap)
        if total_gb > 0:
            # The agent reserves nothing in a pool; nova.conf may (whole GiB, rounded up as the
            # libvirt driver does).
            reserved_gb = min(-(-CONF.reserved_host_disk_mb // units.Ki), total_gb)
            inv[orc.DISK_GB] = {
                "total": total_gb, "min_unit": 1, "max_unit": max(total_gb - reserved_gb, 1),
                "step_size": 1, "reserved": reserved_gb,
                "allocation_ratio": ratios[orc.DISK_GB],
            }
        provider_tree.update_inventory(nodename, inv)
        traits = set()
        arch = fields.Architecture.canonicalize(cap.arch or self._host_info().arch)
        if arch in ARCH_TRAIT:
            traits.add(ARCH_TRAIT[arch])
        provider_tree.add_traits(nodename, *traits)

    # -- instances --------------------------------------------------------------------------

    def list_instances(self):
        return [d.name for d in self._domains()]

    def list_instance_uuids(self):
        return [d.uuid for d in self._domains()]

    def instance_exists(self, instance):
        try:
            self._get_domain(instance)
            return True
        except exception.InstanceNotFound:
            return False

    def get_info(self, instance, use_cache=True):
        dom = self._get_domain(instance)
        return hardware.InstanceInfo(state=POWER_STATE.get(dom.state, power_state.NOSTATE),
                                     internal_id=dom.uuid)

    def _nic(self, vif):
        """The agent NIC for one of Nova's VIFs (nothing is created here: a VIF the agent
        cannot wire is refused before any host or agent state changes).
        - 'bridge': the network's Linux bridge;
        - 'ovs' with hybrid plugging: the per-port qbr Linux bridge os-vif makes (and wires to
          the OVS bridge through a veth pair);
        - 'ovs' without it (Open vSwitch firewall or OVN): an agent Open vSwitch port on the
          network's bridge; libvirt creates it with external_ids:iface-id = the port id, which
          Neutron's OVS and OVN agents bind. No VLAN tag: Neutron's agent sets the port's tag.
        - 'vhostuser' and every other type are refused."""
        vtype = vif.get("type")
        network = vif.get("network") or {}
        if vtype == network_model.VIF_TYPE_BRIDGE:
            if not network.get("bridge"):
                raise exception.VirtualInterfaceCreateException(
                    "hvagent: VIF %s of type bridge names no bridge" % vif.get("id"))
            nic = DS.Nic(bridge=network["bridge"])
        elif vtype == network_model.VIF_TYPE_OVS and vif.is_hybrid_plug_enabled():
            # The name os-vif gives the bridge it plugs (nova_to_osvif_vif's VIFBridge).
            nic = DS.Nic(bridge=("qbr" + vif["id"])[:network_model.NIC_NAME_LEN])
        elif vtype == network_model.VIF_TYPE_OVS:
            if not network.get("bridge"):
                raise exception.VirtualInterfaceCreateException(
                    "hvagent: Open vSwitch VIF %s names no integration bridge" % vif.get("id"))
            # As Nova's libvirt driver: ovs_interfaceid when Neutron set one, else the port id.
            nic = DS.Nic(ovs=DS.OvsPort(bridge=network["bridge"],
                                        interface_id=vif.get("ovs_interfaceid") or vif["id"]))
        elif vtype == network_model.VIF_TYPE_VHOSTUSER:
            raise exception.VirtualInterfaceCreateException(
                "hvagent: VIF %s is vhost-user (OVS-DPDK): the agent gives guests tap devices "
                "only, not vhost-user sockets with shared hugepage memory" % vif.get("id"))
        else:
            raise exception.VirtualInterfaceCreateException(
                "hvagent: VIF %s of type %s cannot be wired: the agent attaches guests to Linux "
                "bridges (type 'bridge', 'ovs' with hybrid plugging) and Open vSwitch ports "
                "('ovs', OVN)" % (vif.get("id"), vtype))
        nic.mac = vif["address"]
        # As Nova's libvirt driver (<target dev>): the tap is named by the port (devname,
        # "tap" + the port id's first 11 characters), the same at every start. Neutron's agents
        # find a port's tap by that name, and the OVS agent recognises a tap that left and came
        # back within one polling cycle (a reboot, a resize) only by it.
        if vif.get("devname"):
            nic.target_dev = vif["devname"]
        nic.model = "netfront" if self._disk_prefix() == "xvd" else "virtio"
        mtu = (network.get("meta") or {}).get("mtu")
        if mtu:
            nic.mtu = int(mtu)
        return nic

    def _nics(self, network_info):
        return [self._nic(vif) for vif in network_info or []]

    @staticmethod
    def _needs_os_vif(vif):
        """Linux bridge and OVS hybrid VIFs need host plumbing before the guest's tap exists
        (a bridge, for hybrid also the veth pair into OVS). A plain OVS port is created by
        libvirt itself (virtualport) when the guest starts."""
        return (vif.get("type") == network_model.VIF_TYPE_BRIDGE
                or (vif.get("type") == network_model.VIF_TYPE_OVS
                    and vif.is_hybrid_plug_enabled()))

    def _os_vif(self, verb, instance, vif):
        """os_vif.plug / os_vif.unplug (verb) of one VIF; os-vif's errors become InternalError,
        as in Nova's libvirt driver."""
        try:
            getattr(os_vif, verb)(os_vif_util.nova_to_osvif_vif(vif),
                                  os_vif_util.nova_to_osvif_instance(instance))
        except osv_exception.ExceptionBase as e:
            raise exception.InternalError(
                "hvagent: os-vif %s of VIF %s failed: %s" % (verb, vif["id"], e))

    def plug_vifs(self, instance, network_info):
        """Plugs the VIFs that need it (idempotent: os-vif leaves what exists)."""
        for vif in network_info or []:
            if self._needs_os_vif(vif):
                self._os_vif("plug", instance, vif)

    def _unplug_vifs(self, instance, network_info, ignore_errors):
        for vif in network_info or []:
            if not self._needs_os_vif(vif):
                continue
            try:
                self._os_vif("unplug", instance, vif)
            except exception.NovaException:
                if not ignore_errors:
                    raise
                LOG.warning("unplugging VIF %s failed", vif["id"], instance=instance,
                            exc_info=True)

    def unplug_vifs(self, instance, network_info):
        self._unplug_vifs(instance, network_info, False)

    @staticmethod
    def _neutron_events(network_info):
        """As Nova's libvirt driver: network-vif-plugged of each VIF that is not active yet
        (an active one will not go down->up again; a stale cache entry counts as active)."""
        return [("network-vif-plugged", vif["id"]) for vif in network_info or []
                if vif.get("active", True) is False
                and vif.get("vnic_type") != network_model.VNIC_TYPE_REMOTE_MANAGED]

    @staticmethod
    def _neutron_failed_callback(event_name, instance):
        LOG.error("Neutron reported failure on event %s", event_name, instance=instance)
        if CONF.vif_plugging_is_fatal:
            raise exception.VirtualInterfaceCreateException()

    def _local_disks(self, instance, block_device_info, flavor=None):
        """[(suffix, size_bytes)] of the local disks: root, ephemerals, swap (of `flavor`,
        by default the instance's)."""
        flavor = flavor or instance.flavor
        disks = []
        root_in_bdm = bool(driver.block_device_info_get_mapping(block_device_info)) and any(
            bdm.get("boot_index") == 0 for bdm in
            driver.block_device_info_get_mapping(block_device_info))
        if not root_in_bdm and flavor.root_gb:
            disks.append(("root", flavor.root_gb * units.Gi))
        ephemerals = driver.block_device_info_get_ephemerals(block_device_info)
        if ephemerals:
            for i, eph in enumerate(ephemerals):
                disks.append(("eph%d" % i, eph["size"] * units.Gi))
        elif flavor.ephemeral_gb:
            disks.append(("eph0", flavor.ephemeral_gb * units.Gi))
        swap = driver.block_device_info_get_swap(block_device_info)
        swap_mb = swap.get("swap_size") if swap else flavor.swap
        if swap_mb:
            disks.append(("swap", swap_mb * units.Mi))
        return disks

    def _pool_type(self, pool):
        if pool not in self._pool_types:
            self._pool_types[pool] = self.agent.call(
                self.agent.storage.GetPool, storage_pb2.GetPoolRequest(name=pool)).type
        return self._pool_types[pool]

    def _volume_name(self, instance, suffix):
        """`<uuid>-<suffix>`; on partition pools, whose GPT partition names hold at most 20
        characters of volume name and 27 of volume plus domain name, as many hex digits of
        the UUID as fit, then r (root), e<N> (ephemeral), s (swap), x (rescue), c (config
        drive) or y (the rescue's config drive)."""
        pool = CONF.hvagent.storage_pool
        if self._pool_type(pool) != storage_pb2.POOL_TYPE_PARTITION:
            return "%s-%s" % (instance.uuid, suffix)
        code = {"root": "r", "swap": "s", "rescue": "x", "config": "c",
                "rescue-config": "y"}.get(suffix) or "e" + suffix[len("eph"):]
        digits = min(PARTITION_VOLUME_MAX, PARTITION_NAME_ROOM - len(instance.name)) - len(code)
        if digits < 6:
            raise exception.InstanceDeployFailure(
                reason="hvagent: storage_pool %s is a partition pool, whose volume and domain "
                       "names together hold %d characters: instance name %s leaves too little "
                       "(shorten instance_name_template)" % (pool, PARTITION_NAME_ROOM,
                                                             instance.name))
        return instance.uuid.replace("-", "")[:digits] + code

    # -- the image cache (image_cache.py) ---------------------------------------------------

    def _images_pool(self):
        """storage_pool when [hvagent] image_cache is on and the pool can hold agent images
        (partition pools today; docs/images.md), else None: root disks are then written by
        this host (_write_image)."""
        pool = CONF.hvagent.storage_pool
        if (CONF.hvagent.image_cache and pool
                and self._pool_type(pool) == storage_pb2.POOL_TYPE_PARTITION):
            return pool
        return None

    @staticmethod
    def _image_id(instance, image_meta):
        if image_meta.obj_attr_is_set("id") and image_meta.id:
            return image_meta.id
        return instance.image_ref

    def _root_image(self, instance, image_meta, local):
        """True when the root disk is to be made from the image cache: a local root disk, a
        disk image (not a kernel or ramdisk) and a pool that holds images."""
        fmt = image_meta.disk_format if image_meta.obj_attr_is_set("disk_format") else "raw"
        return bool("root" in dict(local) and instance.image_ref and fmt not in ("aki", "ari")
                    and self._images_pool())

    def _root_image_name(self, context, instance, image_meta, size):
        """Makes sure the agent has the Glance image (one upload per host) and that it fits the
        flavor's root disk; returns the agent image's name, from which CreateDomain makes the
        root volume (DiskVolume.image: owned by the domain, deleted with it). The caller holds
        self._images.using(image id) until CreateDomain returned, so that manage_image_cache
        leaves the image alone meanwhile."""
        image, uploaded = self._images.ensure(context, CONF.hvagent.storage_pool,
                                              self._image_id(instance, image_meta))
        if image.virtual_size_bytes > size:
            raise exception.FlavorDiskSmallerThanImage(
                flavor_size=size, image_size=image.virtual_size_bytes)
        LOG.info("root volume from agent image %s (%s)", image.name,
                 "uploaded now" if uploaded else "cached", instance=instance)
        return image.name

    def _create_domain(self, instance, spec, root_image):
        """CreateDomain. With a root made from an image the agent copies the image as part of
        the call (seconds to minutes): the call then runs on a native thread (eventlet's tpool)
        on a channel of its own, so that nova-compute's other greenthreads go on meanwhile.
        Under eventlet grpc's Python locks are green: two native threads on one channel, or a
        native thread and the hub on one, hang on them (found with two concurrent spawns), so
        each such call gets its own channel, and one at a time (the agent makes one domain at a
        time anyway). NOT_FOUND names something the spec refers to (a pool, a volume, an
        image), never the instance: InstanceDeployFailure with the agent's words."""
        request = DS.CreateDomainRequest(spec=spec, start=False)
        try:
            if not root_image:
                return self.agent.domains.CreateDomain(request, timeout=self.agent.timeout)
            with self._copy_lock:
                return tpool.execute(self._create_on_own_channel, request,
                                     self.agent.timeout + CONF.hvagent.image_timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise exception.InstanceDeployFailure(reason="hvagent: %s" % e.details()) from None
            raise client.to_nova(e, self.agent.address, instance) from None

    @staticmethod
    def _create_on_own_channel(request, timeout):
        """Runs on a native thread: CreateDomain on a channel nothing else uses."""
        channel = client.make_channel(CONF.hvagent)
        try:
            return domain_pb2_grpc.DomainServiceStub(channel).CreateDomain(request,
                                                                          timeout=timeout)
        finally:
            channel.close()

    def manage_image_cache(self, context, all_instances):
        """Removes this driver's agent images (named nova-...) that no instance of this host
        uses and that have been unused for [image_cache]
        remove_unused_original_minimum_age_seconds, as seen by this nova-compute (a restart
        starts the count again: an image is never removed early). Images somebody else
        imported, images still importing, and images the agent refuses to delete (a volume is
        being made from one) are left. [image_cache] remove_unused_base_images = false keeps
        everything."""
        pool = self._images_pool()
        if not pool or not CONF.image_cache.remove_unused_base_images:
            return
        used = [getattr(i, "image_ref", None) for i in all_instances]
        self._images.sweep(pool, used,
                           CONF.image_cache.remove_unused_original_minimum_age_seconds)

    def cache_image(self, context, image_id):
        """Pre-caches an image (nova's aggregate cache-images): True when it was uploaded now,
        False when the agent had it."""
        pool = self._images_pool()
        if not pool:
            raise NotImplementedError(
                "hvagent: [hvagent] storage_pool is no partition pool, which alone holds images")
        with self._images.using(image_id):
            return self._images.ensure(context, pool, image_id)[1]

    def _download(self, context, image_id, path):
        glance.API().download(context, image_id, dest_path=path)
        return path

    def spawn(self, context, instance, image_meta, injected_files, admin_password,
              allocations, network_info=None, block_device_info=None, power_on=True,
              accel_info=None):
        pool = CONF.hvagent.storage_pool
        local = self._local_disks(instance, block_device_info)
        if local and not pool:
            raise exception.InstanceDeployFailure(
                reason="hvagent: the flavor needs local disks (%s) but [hvagent] "
                       "storage_pool is not set in nova.conf" % ", ".join(s for s, _ in local))
        if accel_info:
            raise exception.InstanceDeployFailure(reason="hvagent: accelerators unsupported")
        props = image_meta.properties
        prefix = self._disk_prefix()
        spec = DS.DomainSpec(name=instance.name, uuid=instance.uuid,
                             vcpus=instance.flavor.vcpus,
                             memory_mib=instance.flavor.memory_mb, serial_console=True)
        if props.get("hw_architecture"):
            spec.arch = props.hw_architecture
        # Before anything is created: an extra spec the agent cannot express is refused.
        extra_specs.apply(spec, instance.flavor, image_meta)
        letters = iter("abcdefghijklmnopqrstuvwxyz")
        root_target = None
        root_image = self._root_image(instance, image_meta, local)
        for suffix, size in local:
            target = prefix + next(letters)
            if suffix == "root":
                root_target = target
            # Every local disk is created with the domain, which owns it; a root from the image
            # cache is made from the agent's image (its name is filled in below).
            spec.disks.add(target=target, volume=DS.DiskVolume(
                pool=pool, name=self._volume_name(instance, suffix), create_size_bytes=size))
        for bdm in driver.block_device_info_get_mapping(block_device_info):
            data = self._agent_volume(bdm["connection_info"])
            spec.disks.add(target=prefix + next(letters),
                           volume=DS.DiskVolume(pool=data["pool"], name=data["name"]))
        spec.nics.extend(self._nics(network_info))

        # Image: a kernel (+ initrd) image pair boots directly; otherwise firmware (UEFI on
        # aarch64). Kernel files live in instances_path on this host, so nova-compute has to
        # run on the agent's host to use them.
        kernel_id = instance.kernel_id if instance.obj_attr_is_set("kernel_id") else None
        ramdisk_id = instance.ramdisk_id if instance.obj_attr_is_set("ramdisk_id") else None
        idir = self._instance_dir(instance)
        if kernel_id not in NO_IMAGE:
            os.makedirs(idir, exist_ok=True)
            spec.kernel.kernel_path = self._download(context, kernel_id,
                                                     os.path.join(idir, "kernel"))
            if ramdisk_id not in NO_IMAGE:
                spec.kernel.initrd_path = self._download(context, ramdisk_id,
                                                         os.path.join(idir, "ramdisk"))
            spec.kernel.cmdline = props.get("os_command_line") or (
                "root=/dev/%s ro console=%s" % (root_target or prefix + "a",
                                                "hvc0" if prefix == "xvd" else "ttyAMA0"))
        else:
            spec.firmware.type = DS.FirmwareBoot.TYPE_UNSPECIFIED

        # As Nova's libvirt driver: wait for Neutron's network-vif-plugged (of VIFs not active
        # yet) around plugging and starting, only when the guest starts. The agent cannot start
        # a guest paused, so it is paused right after the start (before it gets far enough to
        # ask for an address) and resumed once the ports are up. The deadline runs from the end
        # of the block.
        timeout = CONF.vif_plugging_timeout
        events = self._neutron_events(network_info) if power_on and timeout else []
        pause = bool(events)
        # The cached image is marked in use from before it is looked up until the spawn is
        # over, so that manage_image_cache leaves it alone while CreateDomain copies it.
        using = (self._images.using(self._image_id(instance, image_meta)) if root_image
                 else contextlib.nullcontext())
        with using:
            created = False
            try:
                if root_image:
                    name = self._root_image_name(context, instance, image_meta,
                                                 dict(local)["root"])
                    next(d for d in spec.disks if d.target == root_target).volume.image = name
                with self.virtapi.wait_for_instance_event(
                        instance, events, deadline=timeout,
                        error_callback=self._neutron_failed_callback):
                    self.plug_vifs(instance, network_info)
                    config_image = self._add_config_drive(instance, spec, letters,
                                                          injected_files, admin_password,
                                                          network_info)
                    try:
                        self._create_domain(instance, spec, root_image or config_image)
                    finally:
                        if config_image:
                            config_drive.delete_image(self.agent, CONF.hvagent.storage_pool,
                                                      config_image)
                    created = True
                    if root_target and instance.image_ref and not root_image:
                        self._write_image(context, instance, image_meta)
                    if power_on:
                        self._act(self.agent.domains.StartDomain, instance)
                        if pause:
                            self._act(self.agent.domains.SuspendDomain, instance)
            except eventlet.timeout.Timeout:
                LOG.warning("timed out after %d seconds waiting for %s", timeout,
                            ", ".join("%s-%s" % e for e in events), instance=instance)
                if CONF.vif_plugging_is_fatal:
                    self._spawn_failed(instance, network_info, created)
                    raise exception.VirtualInterfaceCreateException()
            except Exception:
                with excutils.save_and_reraise_exception():
                    self._spawn_failed(instance, network_info, created)
        if pause:
            self._act(self.agent.domains.ResumeDomain, instance)

    def _add_config_drive(self, instance, spec, letters, injected_files,
                          admin_password, network_info):
        """When the instance needs a config drive (config_drive.py): uploads it as a temporary
        agent image and adds the read-only disk made from it to `spec` (a CD-ROM on QEMU/KVM:
        hdd on x86, sda on ARM; the next xvd disk on Xen). Returns the image's name (deleted by
        the caller once CreateDomain returned), or None."""
        pool = CONF.hvagent.storage_pool if self._pool_holds_images() else None
        image = config_drive.prepare(self.agent, instance, injected_files,
                                     admin_password, network_info, CONF, pool)
        if not image:
            return None
        xen = self._disk_prefix() == "xvd"
        arch = spec.arch or self._host_info().arch
        target = (self._disk_prefix() + next(letters) if xen
                  else "sda" if arch == "aarch64" else "hdd")
        spec.disks.append(config_drive.disk(pool, self._volume_name(instance, "config"), image,
                                            target, xen))
        return image

    def _pool_holds_images(self):
        """Whether storage_pool holds agent images, image cache or not (partition pools, as
        for the image cache: docs/images.md)."""
        pool = CONF.hvagent.storage_pool
        return bool(pool) and self._pool_type(pool) == storage_pb2.POOL_TYPE_PARTITION

    def _spawn_failed(self, instance, network_info, created):
        """Undoes a spawn: the domain and its local disks, the root made from an image among
        them (only when this spawn created it: a name that already existed is somebody's
        instance; a CreateDomain that failed left nothing), then the VIFs plugged for it."""
        if created:
            self._delete(instance, destroy_disks=True)
        self._unplug_vifs(instance, network_info, ignore_errors=True)

    def _write_image(self, context, instance, image_meta):
        """Copies the image onto the root volume's block device (raw; qcow2 converted)."""
        fmt = image_meta.disk_format if image_meta.obj_attr_is_set("disk_format") else "raw"
        if fmt in ("aki", "ari"):
            return
        vol = self.agent.call(self.agent.storage.GetVolume, storage_pb2.VolumeRef(
            pool=CONF.hvagent.storage_pool, name=self._volume_name(instance, "root")))
        os.makedirs(CONF.instances_path, exist_ok=True)
        # An anonymous file (O_TMPFILE): nothing to unlink afterwards.
        with tempfile.TemporaryFile(dir=CONF.instances_path) as data:
            glance.API().download(context, image_meta.id, data=data)
            data.flush()
            if data.tell() == 0:
                LOG.info("image %s has no data: root volume %s left empty", image_meta.id,
                         vol.name, instance=instance)
                return
            if not os.path.exists(vol.path):
                raise exception.InstanceDeployFailure(
                    reason="hvagent: root volume %s is not a device on this host; nova-compute "
                           "must run on the agent's host to write images" % vol.path)
            if fmt in RAW_FORMATS:
                src_fmt = "raw"
            elif fmt == "qcow2" and self.capabilities["supports_image_type_qcow2"]:
                src_fmt = "qcow2"
            else:
                raise exception.ImageUnacceptable(image_id=image_meta.id,
                                                  reason="disk format %s unsupported" % fmt)
            # Our descriptor, named through our pid: qemu-img does not inherit it, and its
            # own /proc/self would be the wrong process.
            path = "/proc/%d/fd/%d" % (os.getpid(), data.fileno())
            processutils.execute("qemu-img", "convert", "-f", src_fmt, "-O", "raw", "-n",
                                 path, vol.path)

    def _agent_volume(self, connection_info):
        """pool/name of a volume the agent hands out; anything else is refused."""
        vtype = (connection_info or {}).get("driver_volume_type")
        data = (connection_info or {}).get("data") or {}
        if vtype != "hvagent" or not data.get("pool") or not data.get("name"):
            raise exception.VolumeDriverNotFound(driver_type=vtype)
        return data

    def _delete(self, instance, destroy_disks=True):
        """DeleteDomain: with destroy_disks the agent deletes the volumes the domain owns (its
        local disks) and releases the borrowed ones; it never deletes a borrowed volume."""
        legacy_root = self._legacy_image_root(instance) if destroy_disks else None
        try:
            self.agent.call(self.agent.domains.DeleteDomain, DS.DeleteDomainRequest(
                name=instance.name, force=True, delete_volumes=destroy_disks), instance)
        except exception.InstanceNotFound:
            pass
        if legacy_root:
            try:
                self.agent.call(self.agent.storage.DeleteVolume, legacy_root)
            except exception.NotFound:
                pass
        shutil.rmtree(self._instance_dir(instance), ignore_errors=True)

    def _legacy_image_root(self, instance):
        """The root volume of an instance spawned by a driver before roots were made inside
        CreateDomain: made first and only borrowed by the domain, so DeleteDomain releases it
        and the driver deletes it afterwards. Only this instance's root name, and only while it
        is borrowed by this very instance; None otherwise (today's roots are owned)."""
        pool = self._images_pool()
        if not pool:
            return None
        try:
            ref = storage_pb2.VolumeRef(pool=pool, name=self._volume_name(instance, "root"))
            vol = self.agent.call(self.agent.storage.GetVolume, ref)
        except (exception.NotFound, exception.InstanceDeployFailure):
            return None
        if (vol.attached_to == instance.name
                and vol.ownership == storage_pb2.VOLUME_OWNERSHIP_BORROWED):
            return ref
        return None

    def _agent_volumes(self, instance, block_device_info):
        """connection_info['data'] of the instance's agent volumes; other types (which attach
        refuses) are not the agent's to detach."""
        out = []
        for bdm in driver.block_device_info_get_mapping(block_device_info):
            try:
                out.append(self._agent_volume(bdm.get("connection_info")))
            except exception.VolumeDriverNotFound:
                LOG.debug("volume %s is not an hvagent volume: nothing to detach",
                          bdm.get("mount_device"), instance=instance)
        return out

    def _teardown(self, instance, block_device_info, destroy_disks):
        """destroy and cleanup: power the guest off (so that detaching needs no guest), detach
        every agent volume Nova attached (a failure is raised, the domain then stays), then
        delete the domain."""
        volumes = self._agent_volumes(instance, block_device_info)
        if volumes:
            try:
                if self._get_domain(instance).state not in (DS.DOMAIN_STATE_SHUTOFF,
                                                            DS.DOMAIN_STATE_CRASHED):
                    self._act(self.agent.domains.DestroyDomain, instance)
            except exception.InstanceNotFound:
                pass  # the agent still releases volumes recorded for a vanished domain
            for data in volumes:
                self._detach(instance, data)
        self._delete(instance, destroy_disks)

    def destroy(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, destroy_secrets=True):
        if getattr(instance, "task_state", None) == task_states.RESIZE_REVERTING:
            # A revert calls destroy on the resize's destination before finish_revert_migration
            # on the source. Resizes here are on one host and keep one domain and its volumes
            # (no copy exists to go back to): only the guest stops; the revert restores its size.
            try:
                self.power_off(instance)
            except exception.InstanceNotFound:
                pass
            return
        self._teardown(instance, block_device_info, destroy_disks)
        self._unplug_vifs(instance, network_info, ignore_errors=True)

    def cleanup(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, migrate_data=None, destroy_vifs=True,
                destroy_secrets=True):
        # A failed spawn, a migration's rollback, an evacuated instance: Nova's volumes may
        # still be attached, and they are detached exactly as on destroy.
        if migrate_data is not None:
            # The source after a live migration: the agent removed the domain and its volumes
            # (remove-source); had the move failed, the domain here would be the guest itself.
            LOG.debug("live migration cleanup: the agent removed the source's domain",
                      instance=instance)
        else:
            self._teardown(instance, block_device_info, destroy_disks)
        if destroy_vifs:
            self._unplug_vifs(instance, network_info, ignore_errors=True)

    # -- rescue (the agent's RescueDomain / UnrescueDomain; docs/rescue.md) -----------------

    def _rescue_kernel(self, context, instance, request):
        """As Nova's libvirt driver: the instance's kernel/ramdisk pair boots the rescue when
        it has one (downloaded next to the spawn's, under instances_path)."""
        kernel_id = instance.kernel_id if instance.obj_attr_is_set("kernel_id") else None
        if kernel_id in NO_IMAGE:
            return False
        ramdisk_id = instance.ramdisk_id if instance.obj_attr_is_set("ramdisk_id") else None
        idir = self._instance_dir(instance)
        os.makedirs(idir, exist_ok=True)
        request.kernel.kernel_path = self._download(context, kernel_id,
                                                    os.path.join(idir, "kernel.rescue"))
        if ramdisk_id not in NO_IMAGE:
            request.kernel.initrd_path = self._download(context, ramdisk_id,
                                                        os.path.join(idir, "ramdisk.rescue"))
        prefix = self._disk_prefix()
        request.kernel.cmdline = "root=/dev/%sa ro console=%s" % (
            prefix, "hvc0" if prefix == "xvd" else "ttyAMA0")
        return True

    def rescue(self, context, instance, network_info, image_meta, rescue_password,
               block_device_info):
        """Boots the instance from its rescue image with its root disk second (vdb/xvdb).
        image_meta is the rescue image: the request's rescue_image_ref, else the instance's own
        image (Nova's compute manager picks it). The image reaches the agent through the image
        cache (one upload per host); the agent makes the rescue volume from it, owned by the
        rescue, and deletes it at unrescue. The instance's kernel pair, when it has one, boots
        it. Without an image pool and without a kernel pair there is nothing to boot:
        NotImplementedError names why. As Nova's libvirt driver, an instance that needs a
        config drive gets a fresh one for the rescue carrying the rescue password (no injected
        files), attached read-only and deleted by the agent at unrescue (_rescue_config_drive);
        otherwise the rescue password reaches no guest, as there."""
        request = DS.RescueDomainRequest(name=instance.name)
        config_image = self._rescue_config_drive(instance, network_info, rescue_password, request)
        try:
            self._rescue(context, instance, image_meta, request)
        finally:
            if config_image:
                config_drive.delete_image(self.agent, CONF.hvagent.storage_pool, config_image)

    def _rescue_config_drive(self, instance, network_info, rescue_password, request):
        """When the instance needs a config drive: builds the rescue's (Nova's libvirt driver
        regenerates it with admin_pass = the rescue password and no injected files), uploads
        it as the temporary image config_drive.prepare makes, and names it in `request`.
        Returns the image's name (deleted once RescueDomain answered), or None."""
        if not config_drive.required(instance):
            if rescue_password:
                LOG.info("rescue password not passed to the guest: no config drive",
                         instance=instance)
            return None
        pool = CONF.hvagent.storage_pool if self._pool_holds_images() else None
        image = config_drive.prepare(self.agent, instance, None, rescue_password,
                                     network_info, CONF, pool)
        request.config_drive.CopyFrom(DS.RescueImage(
            pool=pool, image=image, volume=self._volume_name(instance, "rescue-config")))
        return image

    def _rescue(self, context, instance, image_meta, request):
        """RescueDomain with the rescue image (through the image cache) or kernel pair."""
        has_kernel = self._rescue_kernel(context, instance, request)
        pool = self._images_pool()
        image_id = self._image_id(instance, image_meta)
        if not pool and not has_kernel:
            raise NotImplementedError(
                "hvagent: a rescue boots an agent image, and [hvagent] storage_pool is no "
                "partition pool with image_cache on (the instance has no kernel pair either)")
        if pool and image_id:
            with self._images.using(image_id):
                image, _ = self._images.ensure(context, pool, image_id)
                request.image.CopyFrom(DS.RescueImage(
                    pool=pool, image=image.name, volume=self._volume_name(instance, "rescue")))
                self.agent.call(self.agent.domains.RescueDomain, request, instance,
                                extra_timeout=CONF.hvagent.image_timeout)
        else:
            self.agent.call(self.agent.domains.RescueDomain, request, instance)
        LOG.info("rescued from %s", "image %s" % image_id if request.HasField("image")
                 else "kernel %s" % request.kernel.kernel_path, instance=instance)

    def unrescue(self, context, instance):
        """The agent restores the definition it kept, deletes the rescue volume and starts the
        instance. An instance the agent does not hold in rescue is left as it is (a retried
        unrescue after the agent did it)."""
        try:
            self._act(self.agent.domains.UnrescueDomain, instance)
        except exception.InstanceInvalidState as e:
            if "is not rescued" not in str(e):
                raise
            LOG.info("unrescue: the instance is not in rescue", instance=instance)
        idir = self._instance_dir(instance)
        for name in ("kernel.rescue", "ramdisk.rescue"):
            try:
                os.unlink(os.path.join(idir, name))
            except FileNotFoundError:
                pass

    # -- resize (flavor change) on this host -----------------------------------------------

    def _is_this_host(self, dest):
        return dest in (CONF.my_ip, CONF.host, self.get_host_ip_addr(), "127.0.0.1", "::1", "localhost")

    def migrate_disk_and_power_off(self, context, instance, dest, flavor, network_info,
                                   block_device_info=None, timeout=0, retry_interval=0):
        """First half of a resize or cold migration. On this host the domain and its volumes stay
        where they are (nothing to copy), so the guest is only stopped. To another host
        (``dest``, the destination's my_ip) the guest is stopped and the agent moves the domain
        with its volumes to the destination's agent (_migrate_cold). Everything that would make
        the second half fail is refused here, before the guest is touched, as
        InstanceFaultRollback (Nova then leaves the instance as it was), like the libvirt
        driver: a disk that would shrink, a local disk the old flavor did not have, and for
        another host an attached Nova volume (only the instance's own volumes move)."""
        if not self._is_this_host(dest):
            self._check_movable(instance, block_device_info)
        old = dict(self._local_disks(instance, block_device_info))
        eph_old = (block_device.get_bdm_ephemeral_disk_size(
            driver.block_device_info_get_ephemerals(block_device_info))
            or instance.flavor.ephemeral_gb)
        new = self._local_disks(instance, block_device_info, flavor)
        if (("root" in old and flavor.root_gb < instance.flavor.root_gb)
                or flavor.ephemeral_gb < eph_old):
            raise exception.InstanceFaultRollback(
                exception.ResizeError(reason="Unable to resize disk down."))
        added = [s for s, _ in new if s not in old]
        if added:
            raise exception.InstanceFaultRollback(exception.ResizeError(
                reason="hvagent: the new flavor adds local disks the instance does not have "
                       "(%s); a resize grows existing disks only" % ", ".join(added)))
        if any(size < old[s] for s, size in new):
            raise exception.InstanceFaultRollback(
                exception.ResizeError(reason="Unable to resize disk down."))
        self._check_resize_tuning(instance, flavor)
        if self._is_this_host(dest):
            self.power_off(instance, timeout, retry_interval)
        else:
            self._migrate_cold(instance, dest, timeout, retry_interval)
        return jsonutils.dumps([])

    @staticmethod
    def _check_resize_tuning(instance, flavor):
        """UpdateDomain changes vCPUs and memory only: a new flavor whose extra specs the
        driver cannot honour, or whose CPU topology or shares differ from the instance's (the
        topology must match the vCPU count), is refused before the guest is touched."""
        image_meta = objects.ImageMeta.from_instance(instance)
        try:
            new = extra_specs.cpu_tuning(flavor, image_meta)
            old = extra_specs.cpu_tuning(instance.flavor, image_meta)
        except exception.Invalid as e:
            raise exception.InstanceFaultRollback(exception.ResizeError(reason=str(e)))
        if new != old:
            raise exception.InstanceFaultRollback(exception.ResizeError(
                reason="hvagent: the new flavor changes the CPU topology or quota:cpu_shares "
                       "(%s -> %s, as (sockets, cores, threads), shares), which a resize in "
                       "place cannot change" % (old, new)))

    def _resize_domain(self, instance, flavor):
        self.agent.call(self.agent.domains.UpdateDomain, DS.UpdateDomainRequest(
            name=instance.name, vcpus=flavor.vcpus, memory_mib=flavor.memory_mb), instance)

    def finish_migration(self, context, migration, instance, disk_info, network_info,
                         image_meta, resize_instance, allocations, block_device_info=None,
                         power_on=True):
        """Second half: the stopped domain takes the new flavor's vCPUs and memory
        (UpdateDomain; the agent admits the growth), then its local disks grow
        (ResizeVolume, grow only), then it starts if it ran before."""
        if resize_instance:
            self._resize_domain(instance, instance.flavor)
            pool = CONF.hvagent.storage_pool
            for suffix, size in self._local_disks(instance, block_device_info):
                name = self._volume_name(instance, suffix)
                vol = self.agent.call(self.agent.storage.GetVolume,
                                      storage_pb2.VolumeRef(pool=pool, name=name))
                if vol.size_bytes < size:
                    self.agent.call(self.agent.storage.ResizeVolume, storage_pb2.ResizeVolumeRequest(
                        pool=pool, name=name, size_bytes=size))
        if power_on:
            self.power_on(context, instance, network_info, block_device_info)

    def confirm_migration(self, context, migration, instance, network_info):
        """Nothing to remove: a resize on this host keeps one domain and no copy."""

    def finish_revert_migration(self, context, instance, network_info, migration,
                                block_device_info=None, power_on=True):
        """The domain goes back to the old flavor's vCPUs and memory (instance.flavor is the old
        one again by now). Disks that grew stay grown, with their data: a volume never shrinks
        (the libvirt driver keeps a copy of the old disk instead; pool volumes have none).
        After a move to another host the domain is brought back first (_migrate_back)."""
        if self._moved_away(instance, migration):
            self._migrate_back(instance, migration)
        dom = self._get_domain(instance)
        if dom.state not in (DS.DOMAIN_STATE_SHUTOFF, DS.DOMAIN_STATE_CRASHED):
            self._act(self.agent.domains.DestroyDomain, instance)
        self._resize_domain(instance, instance.flavor)
        if power_on:
            self.power_on(context, instance, network_info, block_device_info)

    # -- moving an instance to another host (the agent's MigrationService; docs/openstack.md) --

    def _peer_address(self, host_ip):
        """The gRPC address of the agent on the host whose my_ip is host_ip."""
        port = CONF.hvagent.migration_port or CONF.hvagent.address.rsplit(":", 1)[-1]
        if ":" in host_ip and not host_ip.startswith("["):
            host_ip = "[%s]" % host_ip
        return "%s:%s" % (host_ip, port)

    def _agent_at(self, address):
        """A client of another host's agent, with this host's [hvagent] TLS material."""
        group = CONF.hvagent
        view = type("Peer", (), {k: getattr(group, k) for k in (
            "plaintext", "ca_file", "cert_file", "key_file", "tls_server_name")})()
        view.address = address
        return client.Agent(client.make_channel(view), address, group.rpc_timeout)

    def _check_movable(self, instance, block_device_info):
        """Only the volumes the domain owns move: an attached Nova volume lives in this host's
        pool, which the destination cannot reach."""
        if self._agent_volumes(instance, block_device_info):
            raise exception.InstanceFaultRollback(exception.MigrationPreCheckError(
                reason="hvagent: the instance has Nova volumes of this host's agent attached; "
                       "they cannot move to another host (detach them first)"))

    def _wait_operation(self, agent, op_id, instance, tick=None):
        """Polls the agent's operation until it ends; returns it. `tick`, when given, is
        called after each look at a running operation."""
        req = operation_pb2.GetOperationRequest(id=str(op_id))
        while True:
            try:
                op = agent.call(agent.operations.GetOperation, req)
            except exception.NotFound:
                raise exception.MigrationError(reason=(
                    "hvagent at %s no longer knows migration operation %s (restarted?): check "
                    "on which host the domain is" % (agent.address, op_id)))
            if op.state != operation_pb2.OPERATION_STATE_RUNNING:
                return op
            if tick is not None:
                tick()
            eventlet.sleep(CONF.hvagent.migration_poll_interval)

    @staticmethod
    def _stayed_here(op):
        """True when the agent undid a failed move and the domain is where it was."""
        return (op.state in (operation_pb2.OPERATION_STATE_FAILED,
                             operation_pb2.OPERATION_STATE_CANCELLED,
                             operation_pb2.OPERATION_STATE_ROLLED_BACK)
                and "the domain stays here" in op.message)

    def _move(self, agent, instance, destination, live=False):
        """MigrateDomain on `agent` to `destination` and waits for its end. Returns the ended
        operation; a refusal before anything starts raises the mapped nova exception. A live
        move is registered in _live_moves while it runs (abort, force-complete, deadline)."""
        req = migration_pb2.MigrateDomainRequest(
            name=instance.name, destination=destination,
            running_policy=migration_pb2.RUNNING_POLICY_REFUSE, live=live)
        if live:
            req.max_downtime_ms = min(CONF.libvirt.live_migration_downtime, 60000)
            # Nova's own cap for libvirt's live migrations (MiB/s, 0: unlimited), the same meaning.
            req.max_bandwidth_mib_s = min(CONF.libvirt.live_migration_bandwidth, 100000)
        resp = agent.call(agent.migration.MigrateDomain, req, instance)
        if live:
            op = self._wait_live(agent, resp.operation_id, instance, destination)
        else:
            op = self._wait_operation(agent, resp.operation_id, instance)
        LOG.info("hvagent migration %s to %s: %s %s", resp.operation_id, destination,
                 operation_pb2.OperationState.Name(op.state), op.message, instance=instance)
        return op

    def _wait_live(self, agent, op_id, instance, destination):
        """Waits for a live move, keeping [libvirt] live_migration_completion_timeout (its
        action: live_migration_timeout_action). A guest paused to force completion is resumed
        here when the move failed, on the destination when it arrived paused."""
        move = live_moves.LiveMove(
            agent, op_id, instance,
            live_moves.completion_timeout(CONF, instance, self._local_disks(instance, None)),
            CONF.libvirt.live_migration_timeout_action)
        post_copy = CONF.libvirt.live_migration_permit_post_copy
        self._live_moves.add(move)
        try:
            op = self._wait_operation(agent, op_id, instance,
                                      tick=lambda: move.check_deadline(post_copy))
        finally:
            self._live_moves.remove(move)
        if op.state == operation_pb2.OPERATION_STATE_SUCCEEDED:
            move.resume_there(lambda: self._agent_at(destination))
        elif self._stayed_here(op) or op.state == operation_pb2.OPERATION_STATE_CANCELLED:
            move.resume_here()
        return op

    def live_migration_abort(self, instance):
        """Aborts the running live migration of `instance` (the agent's CancelMigration, which
        aborts libvirt's job): live_migration then sees it CANCELLED and calls recover_method
        with migration_status "cancelled". NoActiveMigrationForInstance when none runs from
        here; the agent's refusal once the destination has the domain is raised."""
        self._live_moves.of(instance).abort()

    def live_migration_force_complete(self, instance):
        """Pauses the migrating guest so that the copy converges (live_moves.py says why no
        post-copy). NoActiveMigrationForInstance when no live migration runs from here."""
        self._live_moves.of(instance).force_complete(
            CONF.libvirt.live_migration_permit_post_copy)

    def _migrate_cold(self, instance, dest, timeout, retry_interval):
        """Stops the guest as power_off does (Nova's timeout and retry), then the agent moves
        the stopped domain and its volumes. A failure the agent undid starts the guest again
        here and is InstanceFaultRollback; one that leaves the domain's place unsure is not."""
        was_running = self._get_domain(instance).state not in (DS.DOMAIN_STATE_SHUTOFF,
                                                               DS.DOMAIN_STATE_CRASHED)
        self.power_off(instance, timeout, retry_interval)
        try:
            op = self._move(self.agent, instance, self._peer_address(dest))
        except exception.NovaException as e:
            self._restart_after_failed_move(instance, was_running)
            raise exception.InstanceFaultRollback(exception.MigrationError(
                reason="hvagent refused the move to %s: %s" % (dest, e)))
        if op.state == operation_pb2.OPERATION_STATE_SUCCEEDED:
            return
        if self._stayed_here(op):
            self._restart_after_failed_move(instance, was_running)
            raise exception.InstanceFaultRollback(exception.MigrationError(
                reason="hvagent: move to %s failed: %s" % (dest, op.message)))
        raise exception.MigrationError(reason="hvagent: move to %s ended %s: %s" % (
            dest, operation_pb2.OperationState.Name(op.state), op.message))

    def _restart_after_failed_move(self, instance, was_running):
        if not was_running:
            return
        try:
            self._act(self.agent.domains.StartDomain, instance)
        except exception.NovaException:
            LOG.exception("could not start the guest again after a failed move",
                          instance=instance)

    def _moved_away(self, instance, migration):
        """A revert after a move to another host: the domain is not here any more."""
        dest = getattr(migration, "dest_host", None)
        if not dest or self._is_this_host(dest):
            return False
        try:
            self._get_domain(instance)
            return False
        except exception.InstanceNotFound:
            return True

    def _migrate_back(self, instance, migration):
        """The destination's agent moves the (stopped: the revert's destroy stopped it) domain
        back to this host's agent, asked with this host's controller credentials."""
        there = self._peer_address(migration.dest_host)
        op = self._move(self._agent_at(there), instance,
                        self._peer_address(self.get_host_ip_addr()))
        if op.state != operation_pb2.OPERATION_STATE_SUCCEEDED:
            raise exception.MigrationError(reason=(
                "hvagent: moving the instance back from %s failed (%s: %s); it stays on %s"
                % (there, operation_pb2.OperationState.Name(op.state), op.message,
                   migration.dest_host)))

    # -- live migration (QEMU/KVM only; Xen 4.17 on Arm has none) ---------------------------

    def _refuse_live_on_xen(self, where):
        if self._host_info().hypervisor_type.lower() == "xen":
            raise exception.MigrationPreCheckError(reason=(
                "hvagent: the %s host runs Xen, which has no live migration on Arm (Xen 4.17); "
                "use cold migration (nova migrate)" % where))

    def check_can_live_migrate_destination(self, context, instance, src_compute_info,
                                           dst_compute_info, block_migration=False,
                                           disk_over_commit=False):
        """On the destination: refuses on Xen; names this host's agent for the source
        (target_connect_addr). Disks are never shared: the agent copies them (NBD)."""
        self._refuse_live_on_xen("destination")
        data = objects.LibvirtLiveMigrateData()
        data.target_connect_addr = self._peer_address(self.get_host_ip_addr())
        data.block_migration = True
        data.is_shared_block_storage = False
        data.is_shared_instance_path = False
        data.graphics_listen_addr_vnc = CONF.vnc.server_listen
        data.graphics_listen_addr_spice = CONF.spice.server_listen
        data.serial_listen_addr = None
        if disk_over_commit is not None:
            data.disk_over_commit = disk_over_commit
        return data

    def cleanup_live_migration_destination_check(self, context, dest_check_data):
        """Nothing was made by the destination check."""

    def check_can_live_migrate_source(self, context, instance, dest_check_data,
                                      block_device_info=None):
        """On the source: refuses on Xen, for a guest that does not run, and for attached Nova
        volumes (only the domain's own volumes move)."""
        self._refuse_live_on_xen("source")
        if ("target_connect_addr" not in dest_check_data
                or not dest_check_data.target_connect_addr):
            raise exception.MigrationPreCheckError(
                reason="hvagent: the destination did not name its agent (not an hvagent host?)")
        if self._get_domain(instance).state not in (DS.DOMAIN_STATE_RUNNING,
                                                    DS.DOMAIN_STATE_BLOCKED):
            raise exception.MigrationPreCheckError(
                reason="hvagent: live migration needs a running guest")
        try:
            self._check_movable(instance, block_device_info)
        except exception.InstanceFaultRollback as e:
            raise e.inner_exception
        return dest_check_data

    def pre_live_migration(self, context, instance, block_device_info, network_info,
                           disk_info, migrate_data):
        """On the destination: the host-side network plumbing the guest's NICs need must exist
        before libvirt starts it here (the agent's PrepareIncoming makes the volumes)."""
        self.plug_vifs(instance, network_info)
        return migrate_data

    def live_migration(self, context, instance, dest, post_method, recover_method,
                       block_migration=False, migrate_data=None):
        """The source agent moves the running guest (MigrateDomain live) to the destination's
        agent and reports how it ended: post_method on success, recover_method when it failed
        and the agent undid it, as the libvirt driver does."""
        if "target_connect_addr" not in migrate_data or not migrate_data.target_connect_addr:
            LOG.error("live migration without a destination agent (no hvagent destination "
                      "check ran): nothing moved", instance=instance)
            recover_method(context, instance, dest, migrate_data)
            return
        target = migrate_data.target_connect_addr
        try:
            op = self._move(self.agent, instance, target, live=True)
        except exception.NovaException:
            LOG.exception("hvagent refused the live migration", instance=instance)
            recover_method(context, instance, dest, migrate_data)
            return
        if op.state == operation_pb2.OPERATION_STATE_SUCCEEDED:
            post_method(context, instance, dest, block_migration, migrate_data)
        elif op.state == operation_pb2.OPERATION_STATE_CANCELLED:
            recover_method(context, instance, dest, migrate_data, migration_status="cancelled")
        elif self._stayed_here(op):
            recover_method(context, instance, dest, migrate_data)
        else:
            raise exception.MigrationError(reason=(
                "hvagent: live migration to %s ended %s: %s" % (
                    target, operation_pb2.OperationState.Name(op.state), op.message)))

    def post_live_migration(self, context, instance, block_device_info, migrate_data=None):
        """The agent removed the domain and its volumes here already."""

    def post_live_migration_at_source(self, context, instance, network_info):
        self._unplug_vifs(instance, network_info, ignore_errors=True)

    def post_live_migration_at_destination(self, context, instance, network_info,
                                           block_migration=False, block_device_info=None):
        """The agent's destination defined the domain persistently; only a check that it
        runs here."""
        self._get_domain(instance)

    def rollback_live_migration_at_source(self, context, instance, migrate_data):
        """The agent left the guest running here; nothing to undo."""

    def rollback_live_migration_at_destination(self, context, instance, network_info,
                                               block_device_info, destroy_disks=True,
                                               migrate_data=None):
        """The source agent aborted the destination's half (AbortIncoming deletes what it
        made). No domain is deleted here: one of that name would be the guest itself. Only the
        plumbing pre_live_migration made goes."""
        self._unplug_vifs(instance, network_info, ignore_errors=True)

    def reboot(self, context, instance, network_info, reboot_type,
               block_device_info=None, bad_volumes_callback=None, accel_info=None):
        """SOFT: the guest is asked to shut down and given [libvirt] wait_soft_reboot_seconds;
        one that ignores it is destroyed (a hard reboot). Either way it is then started again,
        its ports kept in step with Neutron (_restart)."""
        def stop():
            if reboot_type == "SOFT" and self._soft_stop(instance):
                return
            if self._get_domain(instance).state not in (DS.DOMAIN_STATE_SHUTOFF,
                                                        DS.DOMAIN_STATE_CRASHED):
                self._act(self.agent.domains.DestroyDomain, instance)
        self._restart(instance, network_info, stop)

    def _soft_stop(self, instance):
        """As Nova's libvirt driver: ask the guest to shut down, wait up to [libvirt]
        wait_soft_reboot_seconds for it to stop. True when the guest stopped by itself; False
        when it is not running, or it ignored the request and the agent destroyed it at the
        deadline: the caller makes sure it is off (a hard reboot).
        virDomainReboot is not used: it returns before the guest acts, and a guest that
        ignores ACPI would leave Nova believing it rebooted."""
        wait = CONF.libvirt.wait_soft_reboot_seconds
        if wait <= 0:
            # As the libvirt driver: no time to wait means a hard reboot (and the agent reads a
            # ShutdownDomain timeout of 0 as its own default, which is not what was asked).
            return False
        if self._get_domain(instance).state not in (DS.DOMAIN_STATE_RUNNING,
                                                    DS.DOMAIN_STATE_BLOCKED):
            LOG.info("soft reboot of an instance that is not running: hard reboot",
                     instance=instance)
            return False
        try:
            resp = self.agent.call(
                self.agent.domains.ShutdownDomain,
                DS.ShutdownDomainRequest(name=instance.name, timeout_seconds=wait),
                instance, extra_timeout=wait)
        except exception.InstanceInvalidState:
            LOG.info("soft reboot refused (not running): hard reboot", instance=instance)
            return False
        if resp.forced:
            LOG.warning("the guest did not shut down within %d seconds "
                        "([libvirt] wait_soft_reboot_seconds): hard reboot", wait,
                        instance=instance)
            return False
        LOG.info("soft reboot: the guest shut down by itself", instance=instance)
        return True

    def _restart(self, instance, network_info, stop):
        """Runs stop(), which leaves the guest shut off, then plugs its VIFs and starts it.

        The guest's taps leave Open vSwitch's integration bridge when it stops and come back
        when it starts. When both happen within one polling cycle of Neutron's OVS agent, the
        agent can treat the tap's removal after its return and leave the port DOWN and unwired
        for good (seen in the openstack tier after a hard reboot: "Ports ... removed" logged
        after the port's rewiring in the same cycle). So each port that is ACTIVE now must go
        DOWN (network-vif-unplugged) before the guest starts, within [hvagent]
        port_down_timeout; then, as at spawn, the guest is held paused until the ports that
        are down are up again (network-vif-plugged), within vif_plugging_timeout, which is
        fatal (the guest destroyed, VirtualInterfaceCreateException) when vif_plugging_is_fatal.
        Nova's libvirt driver waits for neither by default; Nova refreshed network_info from
        Neutron just before calling reboot, so `active` is current."""
        timeout = CONF.vif_plugging_timeout
        down_wait = CONF.hvagent.port_down_timeout if timeout else 0
        active = [vif["id"] for vif in network_info or [] if vif.get("active") is True
                  and vif.get("vnic_type") != network_model.VNIC_TYPE_REMOTE_MANAGED]
        went_down = []
        if active and down_wait:
            unplugged = [("network-vif-unplugged", v) for v in active]
            try:
                with self.virtapi.wait_for_instance_event(
                        instance, unplugged, deadline=down_wait,
                        error_callback=lambda name, inst: None):
                    stop()
                went_down = active
            except eventlet.timeout.Timeout:
                LOG.warning("Neutron did not report the ports down within %d s "
                            "([hvagent] port_down_timeout): starting anyway", down_wait,
                            instance=instance)
        else:
            stop()
        events = (self._neutron_events(network_info)
                  + [("network-vif-plugged", v) for v in went_down]) if timeout else []
        try:
            with self.virtapi.wait_for_instance_event(
                    instance, events, deadline=timeout,
                    error_callback=self._neutron_failed_callback):
                self.plug_vifs(instance, network_info)
                self._act(self.agent.domains.StartDomain, instance)
                if events:
                    self._act(self.agent.domains.SuspendDomain, instance)
        except eventlet.timeout.Timeout:
            LOG.warning("timed out after %d seconds waiting for %s", timeout,
                        ", ".join("%s-%s" % e for e in events), instance=instance)
            if CONF.vif_plugging_is_fatal:
                self._act(self.agent.domains.DestroyDomain, instance)
                raise exception.VirtualInterfaceCreateException()
        except exception.VirtualInterfaceCreateException:
            with excutils.save_and_reraise_exception():
                self._act(self.agent.domains.DestroyDomain, instance)
        if events:
            self._act(self.agent.domains.ResumeDomain, instance)

    def power_off(self, instance, timeout=0, retry_interval=0):
        dom = self._get_domain(instance)
        if dom.state == DS.DOMAIN_STATE_SHUTOFF:
            return
        if timeout:
            self.agent.call(self.agent.domains.ShutdownDomain,
                            DS.ShutdownDomainRequest(name=instance.name, timeout_seconds=timeout),
                            instance, extra_timeout=timeout)
        else:
            self._act(self.agent.domains.DestroyDomain, instance)

    def power_on(self, context, instance, network_info, block_device_info=None,
                 accel_info=None):
        state = self._get_domain(instance).state
        if state in (DS.DOMAIN_STATE_SHUTOFF, DS.DOMAIN_STATE_CRASHED):
            # As the libvirt driver's hard reboot: the bridges os-vif made do not survive a
            # host reboot, and a guest cannot start without them (os-vif keeps what exists).
            self.plug_vifs(instance, network_info)
            self._act(self.agent.domains.StartDomain, instance)
        elif state == DS.DOMAIN_STATE_PAUSED:
            self._act(self.agent.domains.ResumeDomain, instance)

    def resume_state_on_host_boot(self, context, instance, network_info,
                                  block_device_info=None):
        self.power_on(context, instance, network_info, block_device_info)

    def snapshot(self, context, instance, image_id, update_task_state):
        """The root volume, copied by the agent into a temporary image (a running guest is
        paused for the copy only), streamed into Glance's upload (snapshot.py)."""
        try:
            self._get_domain(instance)
        except exception.InstanceNotFound:
            raise exception.InstanceNotRunning(instance_id=instance.uuid) from None
        pool = CONF.hvagent.storage_pool
        if not pool or self._pool_type(pool) != storage_pb2.POOL_TYPE_PARTITION:
            raise NotImplementedError("snapshots need [hvagent] storage_pool to be a partition "
                                      "pool: the agent keeps images there only (docs/images.md)")
        hv_snapshot.snapshot(self, context, instance, image_id, update_task_state, pool,
                             self._volume_name(instance, "root"), CONF)

    def pause(self, instance):
        self._act(self.agent.domains.SuspendDomain, instance)

    def unpause(self, instance):
        # Only a paused guest is unpaused: a suspended (saved, shut off) one stays saved.
        if self._get_domain(instance).state == DS.DOMAIN_STATE_PAUSED:
            self._act(self.agent.domains.ResumeDomain, instance)

    def suspend(self, context, instance):
        """Managed save, as the libvirt driver: the guest's memory goes to disk and its host
        memory is freed; the saved state survives a host reboot. Where the hypervisor cannot
        save a guest (Xen 4.17 on Arm) the agent answers UNIMPLEMENTED, raised here as
        NotImplementedError with the agent's reason."""
        self._act(self.agent.domains.ManagedSaveDomain, instance)

    def resume(self, context, instance, network_info, block_device_info=None):
        """Starting a managed-saved domain restores it (libvirt does so in virDomainCreate). A
        guest left paused (suspended by an older driver, which only paused) is unpaused; a
        running one is left alone."""
        state = self._get_domain(instance).state
        if state in (DS.DOMAIN_STATE_SHUTOFF, DS.DOMAIN_STATE_CRASHED):
            self._act(self.agent.domains.StartDomain, instance)
        elif state == DS.DOMAIN_STATE_PAUSED:
            self._act(self.agent.domains.ResumeDomain, instance)

    def poll_rebooting_instances(self, timeout, instances):
        # Reboots are synchronous agent calls (a soft one waits for the guest within the call):
        # nothing is left pending to poll.
        pass

    # -- volumes ----------------------------------------------------------------------------

    def get_volume_connector(self, instance):
        initiator = None
        try:
            with open("/etc/iscsi/initiatorname.iscsi") as f:
                for line in f:
                    if line.startswith("InitiatorName="):
                        initiator = line.split("=", 1)[1].strip()
        except OSError:
            pass
        return {
            "ip": CONF.my_block_storage_ip,
            "host": CONF.host,
            "initiator": initiator,
            "multipath": False,
            "platform": fields.Architecture.canonicalize(self._host_info().arch),
            "os_type": "linux",
            "hvagent_address": CONF.hvagent.address,
        }

    def attach_volume(self, context, connection_info, instance, mountpoint,
                      disk_bus=None, device_type=None, encryption=None):
        """Attaches an agent pool volume: connection_info {'driver_volume_type': 'hvagent',
        'data': {'pool': ..., 'name': ...}}. Other volume types (iSCSI, RBD, ...) are refused
        with VolumeDriverNotFound: the agent only hands out its own pools' volumes."""
        data = self._agent_volume(connection_info)
        if encryption:
            raise exception.VolumeEncryptionNotSupported(
                volume_type="hvagent", volume_id=data["name"])
        target = os.path.basename(mountpoint) if mountpoint else ""
        self.agent.call(self.agent.storage.AttachVolume, storage_pb2.AttachVolumeRequest(
            pool=data["pool"], name=data["name"], domain=instance.name, target=target,
            readonly=(connection_info.get("data", {}).get("access_mode") == "ro")))

    def _detach_once(self, instance, data):
        """One DetachVolume from this instance's domain: None once the volume is detached
        from it (NOT_FOUND: it was not attached, or does not exist; FAILED_PRECONDITION while
        it is now another instance's: the agent changed nothing, and it is left alone), else
        the agent's reason why the guest still holds the device (ABORTED). Other errors are
        raised as Nova exceptions."""
        try:
            self.agent.storage.DetachVolume(storage_pb2.DetachVolumeRequest(
                pool=data["pool"], name=data["name"], domain=instance.name),
                timeout=self.agent.timeout)
            return None
        except grpc.RpcError as e:
            code = client.code_of(e)
            if code == grpc.StatusCode.NOT_FOUND:
                return None
            if code == grpc.StatusCode.ABORTED:
                return e.details() or code.name
            if code == grpc.StatusCode.FAILED_PRECONDITION and not self._attached_here(instance, data):
                return None
            raise client.to_nova(e, self.agent.address) from None

    def _attached_here(self, instance, data):
        """Whether the agent still has the volume attached to this instance (after a detach
        naming the instance was refused: another instance may have taken it meanwhile)."""
        try:
            vol = self.agent.storage.GetVolume(storage_pb2.VolumeRef(
                pool=data["pool"], name=data["name"]), timeout=self.agent.timeout)
        except grpc.RpcError:
            return True  # cannot tell: the detach's own error is the answer
        if vol.attached_to != instance.name:
            LOG.warning("volume %s/%s is now attached to %s, not to this instance: left alone",
                        data["pool"], data["name"], vol.attached_to or "no instance",
                        instance=instance)
            return False
        return True

    def _detach(self, instance, data):
        """Detaches an agent volume from this instance, retrying like Nova's libvirt driver
        while the guest keeps the device ([hvagent] device_detach_attempts, each attempt lasting
        at least device_detach_timeout seconds); then raises DeviceDetachFailed. A volume that
        is not attached to this instance (free, gone, or another instance's) is left alone."""
        device = "%s/%s" % (data["pool"], data["name"])
        try:
            vol = self.agent.call(self.agent.storage.GetVolume, storage_pb2.VolumeRef(
                pool=data["pool"], name=data["name"]))
        except exception.NotFound:
            return
        if vol.attached_to != instance.name:
            if vol.attached_to:
                LOG.warning("volume %s is attached to %s, not to this instance: left alone",
                            device, vol.attached_to, instance=instance)
            return
        attempts = CONF.hvagent.device_detach_attempts
        for attempt in range(1, attempts + 1):
            started = time.monotonic()
            reason = self._detach_once(instance, data)
            if reason is None:
                LOG.info("detached volume %s", device, instance=instance)
                return
            LOG.warning("(%d/%d) the guest has not released volume %s: %s", attempt, attempts,
                        device, reason, instance=instance)
            if attempt < attempts:
                time.sleep(max(0.0, CONF.hvagent.device_detach_timeout
                               - (time.monotonic() - started)))
        raise exception.DeviceDetachFailed(
            device=device, reason="the guest still holds it after %d attempts: %s"
            % (attempts, reason))

    def detach_volume(self, context, connection_info, instance, mountpoint,
                      encryption=None):
        """A volume that is not attached (any more) is detached; a guest that does not release
        the device raises DeviceDetachFailed after the retries, and the volume stays attached."""
        self._detach(instance, self._agent_volume(connection_info))

    def get_device_name_for_instance(self, instance, bdms, block_device_obj):
        """The next free guest device, in this host's naming (vd* on QEMU/KVM, xvd* on Xen):
        after the local disks spawn made (root, ephemerals, swap, in that order from a) and
        the devices of the instance's block device mappings."""
        prefix = self._disk_prefix()
        letters = "abcdefghijklmnopqrstuvwxyz"
        used = ["/dev/%s%s" % (prefix, letters[i])
                for i in range(len(self._local_disks(instance, None)))]
        used += [bdm.device_name for bdm in bdms if bdm.device_name]
        return compute_utils.get_next_device_name(instance, used, "/dev/%sa" % prefix)

    def get_instance_disk_info(self, instance, block_device_info=None):
        return diagnostics.instance_disk_info(self, instance, CONF.hvagent.storage_pool)

    def block_stats(self, instance, disk_id):
        return diagnostics.block_stats(self, instance, disk_id)

    def get_diagnostics(self, instance):
        return diagnostics.legacy_diagnostics(self, instance)

    def get_instance_diagnostics(self, instance):
        return diagnostics.instance_diagnostics(self, instance, POWER_STATE)

    # -- interfaces -------------------------------------------------------------------------

    def attach_interface(self, context, instance, image_meta, vif):
        """Plugs the VIF (os-vif, where needed) and adds its NIC to the domain (AttachNic: the
        persistent definition, and the guest when it runs). When the agent refuses, the VIF is
        unplugged again and the agent's error raised (Nova then frees the port)."""
        nic = self._nic(vif)
        self.plug_vifs(instance, [vif])
        try:
            self.agent.call(self.agent.domains.AttachNic,
                            DS.AttachNicRequest(domain=instance.name, nic=nic), instance)
        except Exception:
            with excutils.save_and_reraise_exception():
                LOG.error("attaching VIF %s failed", vif["id"], instance=instance)
                self._unplug_vifs(instance, [vif], ignore_errors=True)

    def detach_interface(self, context, instance, vif):
        """Removes the NIC with the VIF's MAC (DetachNic), then unplugs the VIF. A NIC or domain
        already gone is only logged (and the VIF unplugged). A guest that keeps the device
        raises InterfaceDetachFailed and the VIF stays plugged: the guest still uses it and
        Nova keeps the port attached (the definition is already without the NIC: detach again
        to retry). Nova's libvirt driver unplugs even then, cutting a NIC the guest holds."""
        try:
            self.agent.domains.DetachNic(
                DS.DetachNicRequest(domain=instance.name, mac=vif["address"]),
                timeout=self.agent.timeout)
        except grpc.RpcError as e:
            code = client.code_of(e)
            if code == grpc.StatusCode.ABORTED:
                LOG.warning("the guest has not released interface %s: %s", vif["address"],
                            e.details(), instance=instance)
                raise exception.InterfaceDetachFailed(instance_uuid=instance.uuid) from None
            if code != grpc.StatusCode.NOT_FOUND:
                raise client.to_nova(e, self.agent.address, instance) from None
            LOG.warning("detaching interface %s: %s", vif["address"], e.details(),
                        instance=instance)
        self._unplug_vifs(instance, [vif], ignore_errors=False)

    # -- consoles ---------------------------------------------------------------------------

    # What Nova's own libvirt driver hands back at most from a console log.
    MAX_CONSOLE_BYTES = 100 * units.Ki

    def get_console_output(self, context, instance):
        """The end of the guest's serial console log, kept by the agent ([console] log_dir), as
        text (Nova's API hands it to users as a string)."""
        try:
            log = self.agent.consoles.GetConsoleLog(
                console_pb2.GetConsoleLogRequest(domain_name=instance.name,
                                                 tail_bytes=self.MAX_CONSOLE_BYTES),
                timeout=self.agent.timeout)
        except grpc.RpcError as e:
            if client.code_of(e) == grpc.StatusCode.FAILED_PRECONDITION:
                # No log (yet): Nova's libvirt driver answers "" for a console file not present.
                LOG.info("no console output for %s: %s", instance.name, e.details())
                return ""
            raise client.to_nova(e, self.agent.address, instance) from None
        return log.data.decode("utf-8", errors="replace")

    def get_serial_console(self, context, instance):
        """A serial-tcp ticket: the agent listens on host:port for nova-serialproxy's one
        connection, for the ticket's lifetime ([console] ticket_ttl_seconds)."""
        t = self._console_ticket(instance, console_pb2.CONSOLE_KIND_SERIAL_TCP, "serial")
        return console_type.ConsoleSerial(host=t.host, port=t.port)

    def get_vnc_console(self, context, instance):
        """A VNC ticket: host and port of the guest's display, for nova-novncproxy.

        Nova has no way to hand a VNC password to novncproxy: ConsoleVNC carries host, port and
        an access path only, and novncproxy (Nova 26) always runs its RFB security proxy, which
        speaks to the compute host with the [vnc] auth_schemes "none" or "vencrypt" (x509, no
        password) and refuses a server offering only VNC authentication. The agent's displays
        are locked by a per-ticket password, so this driver spawns guests without one (no
        spec.vnc): for them, and for Xen guests, the answer is ConsoleTypeUnavailable (Nova's
        API: 400), and users take the serial console (get_serial_console). A guest given a
        display otherwise gets its ConsoleVNC, which novncproxy cannot open without a password
        (docs/openstack.md)."""
        t = self._console_ticket(instance, console_pb2.CONSOLE_KIND_VNC, "vnc")
        return console_type.ConsoleVNC(host=t.host, port=t.port)

    def _console_ticket(self, instance, kind, nova_type):
        """The agent's ticket of `kind` for the instance. A console the agent does not serve
        (UNIMPLEMENTED) or the guest cannot have (FAILED_PRECONDITION) is Nova's
        ConsoleTypeUnavailable for `nova_type`."""
        try:
            return self.agent.consoles.IssueConsoleTicket(
                console_pb2.IssueConsoleTicketRequest(domain_name=instance.name, kind=kind),
                timeout=self.agent.timeout)
        except grpc.RpcError as e:
            if client.code_of(e) in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED):
                LOG.info("no %s console for %s: %s", nova_type, instance.name, e.details())
                raise exception.ConsoleTypeUnavailable(console_type=nova_type) from None
            raise client.to_nova(e, self.agent.address, instance) from None
