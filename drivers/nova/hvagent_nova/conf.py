"""The [hvagent] group of nova.conf."""

from oslo_config import cfg

GROUP = cfg.OptGroup(
    "hvagent", title="hvagent options",
    help="How nova-compute reaches the hvagent of its host (gRPC, mutual TLS).")

OPTS = [
    cfg.StrOpt("address", default="127.0.0.1:50051",
               help="host:port of the agent's gRPC listener."),
    cfg.StrOpt("ca_file",
               help="CA certificate that signed the agent's server certificate (PEM)."),
    cfg.StrOpt("cert_file",
               help="Client certificate (PEM) whose name the agent maps to the 'controller' "
                    "role ([[auth.identities]])."),
    cfg.StrOpt("key_file", help="Private key of cert_file (PEM)."),
    cfg.StrOpt("tls_server_name",
               help="Name to verify in the agent's certificate when it differs from the host "
                    "part of address."),
    cfg.BoolOpt("plaintext", default=False,
                help="Talk plain text, without TLS. Only for an agent started with "
                     "--plaintext-loopback (development), which listens on loopback only."),
    cfg.StrOpt("storage_pool",
               help="Agent storage pool (a [[storage.pools]] name) that holds instances' root, "
                    "ephemeral and swap disks as volumes. Unset: only instances without local "
                    "disks (root_gb = 0, boot from an agent volume) can be spawned."),
    cfg.IntOpt("rpc_timeout", default=120, min=1,
               help="Deadline in seconds for each call to the agent (shutdown calls add their "
                    "own timeout)."),
    cfg.BoolOpt("image_cache", default=True,
                help="Keep each Glance image once per host as an agent image of storage_pool "
                     "(uploaded from Glance through the agent's API, so nova-compute need not "
                     "run on the agent's host) and make root disks from it. Needs a pool that "
                     "holds images (a partition pool). False, or another pool kind: each "
                     "spawn writes the image onto its root volume from this host, which must "
                     "then be the agent's host."),
    cfg.IntOpt("image_timeout", default=3600, min=1,
               help="Seconds an image may take to reach the agent: the upload of a Glance "
                    "image into the agent's image cache (storage_pool a partition pool), the "
                    "wait for another process's import of it, and the copy of the image onto a "
                    "root volume each get this deadline."),
    cfg.FloatOpt("lifecycle_event_delay", default=15.0, min=0,
                 help="Seconds a STOPPED lifecycle event from the agent is held back before "
                      "it reaches Nova; dropped when another event for the instance follows "
                      "(a reboot on Xen is a destroy and a re-create). 0: no delay."),
    cfg.IntOpt("device_detach_attempts", default=8, min=1,
               help="Attempts to detach a volume whose device the guest has not released (as "
                    "[libvirt] device_detach_attempts): each attempt is one DetachVolume call, in "
                    "which the agent asks the guest to release the device and waits as libvirt "
                    "does; when the agent answers that the guest still holds it, the driver tries "
                    "again, and after the last attempt raises DeviceDetachFailed. A volume that is "
                    "not attached counts as detached."),
    cfg.IntOpt("device_detach_timeout", default=20, min=1,
               help="Seconds each detach attempt lasts at least before the next one is triggered "
                    "(as [libvirt] device_detach_timeout): time for a guest that is slow to release "
                    "the device."),
    cfg.IntOpt("port_down_timeout", default=20, min=0,
               help="Seconds a reboot waits, after stopping the guest, for Neutron to report "
                    "each of its ACTIVE ports down (network-vif-unplugged) before it starts the "
                    "guest again, so that Neutron's OVS agent sees the tap leave and come back "
                    "in two of its polling cycles rather than one (docs/openstack.md, "
                    "'Reboots and Neutron's ports'). A port that does not go down in time is "
                    "logged and the reboot goes on. 0: no wait (as Nova's libvirt driver)."),
    cfg.PortOpt("migration_port",
                help="gRPC port of the other hosts' agents, for moving an instance between "
                     "hosts (cold migration, resize to another host, live migration): the "
                     "agent of a host is reached at <that host's my_ip>:migration_port, my_ip "
                     "being what Nova records as the migration's dest_host / source host "
                     "address. Unset: the port of address. Every agent must accept this "
                     "host's client certificate as a controller, and the source agent's "
                     "[migration] certificate as a peer (docs/openstack.md)."),
    cfg.IntOpt("migration_poll_interval", default=2, min=0,
               help="Seconds between two looks at a migration's operation on the agent."),
    cfg.StrOpt("disk_prefix",
               help="Disk target prefix ('vd', 'xvd', 'sd'). Default: 'xvd' on Xen hosts, "
                    "'vd' elsewhere."),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    """oslo-config-generator entry point (oslo.config.opts = hvagent): [(group, opts)]."""
    return [(GROUP, OPTS)]
