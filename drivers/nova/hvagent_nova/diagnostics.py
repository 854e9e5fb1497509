"""What Nova asks a driver about one instance's disks and counters, answered from the agent:
get_instance_disk_info (the local disks, as the libvirt driver lists them for migrations),
block_stats, get_diagnostics (the legacy dict) and get_instance_diagnostics (the versioned
object). Counters come from MetricsService.GetDomainStats; a figure the hypervisor does not
report (libvirt's test driver reports the state only) is left out or None, never made up."""

from oslo_serialization import jsonutils
from oslo_utils import timeutils
from oslo_utils import units

from nova.compute import power_state
from nova import exception
from nova.objects import diagnostics as diagnostics_obj
from nova.virt import configdrive

from hvagent.v1 import metrics_pb2, storage_pb2


def domain_stats(drv, instance):
    """The agent's DomainStats of the instance (InstanceNotFound when it has none)."""
    resp = drv.agent.call(drv.agent.metrics.GetDomainStats,
                          metrics_pb2.GetDomainStatsRequest(name=instance.name), instance)
    for stats in resp.domains:
        if stats.name == instance.name:
            return stats
    raise exception.InstanceNotFound(instance_id=instance.uuid)


def _opt(msg, field):
    return getattr(msg, field) if msg.HasField(field) else None


def instance_disk_info(drv, instance, pool):
    """JSON list of the instance's local disks (volumes of `pool` the domain owns), in the
    libvirt driver's shape. Nova's volumes (borrowed) are not local disks, as there. Pool
    volumes are raw block devices, fully allocated: disk_size is the volume's size and nothing
    is over-committed."""
    out = []
    if pool:
        vols = drv.agent.call(drv.agent.storage.ListVolumes,
                              storage_pb2.ListVolumesRequest(pool=pool)).volumes
        for vol in vols:
            if (vol.attached_to == instance.name
                    and vol.ownership == storage_pb2.VOLUME_OWNERSHIP_OWNED):
                out.append({"type": "raw", "path": vol.path, "virt_disk_size": vol.size_bytes,
                            "backing_file": "", "disk_size": vol.size_bytes,
                            "over_committed_disk_size": 0})
    return jsonutils.dumps(out)


def block_stats(drv, instance, disk_id):
    """[rd_req, rd_bytes, wr_req, wr_bytes, errs] of the guest disk `disk_id` (a target such as
    vda, or /dev/vda). As the libvirt driver: None when the guest has no such disk. A
    hypervisor that reports no per-disk counters at all (libvirt's test driver) raises
    NotImplementedError saying so. Errors are not counted by the agent: None."""
    stats = domain_stats(drv, instance)
    target = disk_id.rsplit("/", 1)[-1]
    if not stats.disks:
        raise NotImplementedError("hvagent: the hypervisor reports no per-disk counters for %s"
                                  % instance.name)
    for disk in stats.disks:
        if disk.target == target:
            return [_opt(disk, "read_requests"), _opt(disk, "read_bytes"),
                    _opt(disk, "write_requests"), _opt(disk, "write_bytes"), None]
    return None


def legacy_diagnostics(drv, instance):
    """The libvirt driver's get_diagnostics dict, of the figures the agent has."""
    stats = domain_stats(drv, instance)
    out = {}
    if stats.HasField("cpu_time_ns"):
        out["cpu_time"] = stats.cpu_time_ns
    if stats.HasField("memory_max_bytes"):
        out["memory"] = stats.memory_max_bytes // units.Ki
    if stats.HasField("memory_bytes"):
        out["memory-actual"] = stats.memory_bytes // units.Ki
    if stats.HasField("rss_bytes"):
        out["memory-rss"] = stats.rss_bytes // units.Ki
    for disk in stats.disks:
        for key, field in (("read_req", "read_requests"), ("read", "read_bytes"),
                           ("write_req", "write_requests"), ("write", "write_bytes")):
            if disk.HasField(field):
                out["%s_%s" % (disk.target, key)] = getattr(disk, field)
    for nic in stats.nics:
        for key, field in (("rx", "rx_bytes"), ("tx", "tx_bytes"),
                           ("rx_packets", "rx_packets"), ("tx_packets", "tx_packets")):
            if nic.HasField(field):
                out["%s_%s" % (nic.name, key)] = getattr(nic, field)
    return out


def instance_diagnostics(drv, instance, power_states):
    """nova.objects.Diagnostics from the agent's domain and its counters. `power_states` maps
    the agent's DomainState to Nova's. Per-vCPU times are not reported by the agent: one
    CpuDiagnostics per vCPU without a time. Each NIC's MAC is the one GetDomain lists with the
    host-side device that names the NIC's counters (None for a device it does not list)."""
    dom = drv._get_domain(instance)
    stats = domain_stats(drv, instance)
    uptime = None
    if instance.obj_attr_is_set("launched_at") and instance.launched_at:
        uptime = int(timeutils.delta_seconds(
            timeutils.normalize_time(instance.launched_at), timeutils.utcnow()))
    diags = diagnostics_obj.Diagnostics(
        state=power_state.STATE_MAP[power_states.get(dom.state, power_state.NOSTATE)],
        driver="libvirt", hypervisor=drv._host_info().hypervisor_type.lower(),
        hypervisor_os="linux", uptime=uptime, config_drive=configdrive.required_by(instance))
    diags.memory_details = diagnostics_obj.MemoryDiagnostics(
        maximum=(stats.memory_max_bytes // units.Mi if stats.HasField("memory_max_bytes")
                 else dom.memory_mib),
        used=(stats.memory_bytes // units.Mi if stats.HasField("memory_bytes") else None))
    for i in range(dom.vcpus):
        diags.add_cpu(id=i)
    for disk in stats.disks:
        diags.add_disk(read_bytes=_opt(disk, "read_bytes"),
                       read_requests=_opt(disk, "read_requests"),
                       write_bytes=_opt(disk, "write_bytes"),
                       write_requests=_opt(disk, "write_requests"))
    macs = {n.host_device: n.nic.mac for n in dom.nics if n.host_device}
    for nic in stats.nics:
        diags.add_nic(mac_address=macs.get(nic.name),
                      rx_octets=_opt(nic, "rx_bytes"), tx_octets=_opt(nic, "tx_bytes"),
                      rx_packets=_opt(nic, "rx_packets"), tx_packets=_opt(nic, "tx_packets"))
    return diags
