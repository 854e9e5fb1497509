"""Flavor extra specs and image CPU properties -> DomainSpec fields.

Nova's libvirt driver reads the `hw:`, `hw_rng:`, `hw_video:`, `quota:`, `os:`,
`pci_passthrough:` and `accel:` namespaces when it builds a guest. Of those the agent can express
the CPU topology (`hw:cpu_sockets/cores/threads` and their `hw:cpu_max_*` limits, with the
image's `hw_cpu_*` properties, chosen by Nova's own hardware.get_best_cpu_topology as the libvirt
driver does) and `quota:cpu_shares` (cputune shares). Every other key of those namespaces is
refused at spawn and resize, naming it: silently dropping a flavor's promise (pinning, huge
pages, I/O limits...) would hand the user a guest that is not what they paid for.

Namespaces that only the scheduler and placement read (`resources:`, `trait:`,
`aggregate_instance_extra_specs:`, `capabilities:`, keys without a namespace) are not the
driver's business and pass.
"""

from nova import exception
from nova.virt import hardware

from hvagent.v1 import domain_pb2

# What the libvirt driver acts on while building or running a guest.
DRIVER_NAMESPACES = ("hw", "hw_rng", "hw_video", "quota", "os", "pci_passthrough", "accel")
TOPOLOGY_KEYS = ("hw:cpu_sockets", "hw:cpu_cores", "hw:cpu_threads",
                 "hw:cpu_max_sockets", "hw:cpu_max_cores", "hw:cpu_max_threads")
IMAGE_TOPOLOGY_PROPS = ("hw_cpu_sockets", "hw_cpu_cores", "hw_cpu_threads",
                        "hw_cpu_max_sockets", "hw_cpu_max_cores", "hw_cpu_max_threads")
SHARES_KEY = "quota:cpu_shares"
# Keys accepted only with the value that asks for nothing beyond the default.
DEFAULT_ONLY = {"hw:cpu_policy": "shared"}
MAX_CPU_SHARES = 262144  # the agent's limit (cgroup v1 cpu.shares)


def unsupported(extra_specs):
    """Sorted 'key=value' of the driver-read extra specs this driver cannot honour."""
    out = []
    for key, value in (extra_specs or {}).items():
        namespace = key.split(":", 1)[0] if ":" in key else None
        if namespace not in DRIVER_NAMESPACES:
            continue
        if key in TOPOLOGY_KEYS or key == SHARES_KEY:
            continue
        if DEFAULT_ONLY.get(key) == str(value).lower():
            continue
        out.append("%s=%s" % (key, value))
    return sorted(out)


def _name(flavor):
    return flavor.name if flavor.obj_attr_is_set("name") else "(unnamed)"


def check(flavor):
    """Raises InvalidInput naming every extra spec of `flavor` that would be dropped."""
    refused = unsupported(flavor.extra_specs)
    if refused:
        raise exception.InvalidInput(
            reason="hvagent: flavor %s asks for %s, which this driver cannot honour (it "
                   "applies hw:cpu_sockets/cores/threads, hw:cpu_max_* and quota:cpu_shares "
                   "only); refused rather than ignored" % (_name(flavor), ", ".join(refused)))


def _wants_topology(flavor, image_meta):
    if any(k in (flavor.extra_specs or {}) for k in TOPOLOGY_KEYS):
        return True
    props = image_meta.properties if image_meta is not None else None
    return props is not None and any(props.obj_attr_is_set(p) for p in IMAGE_TOPOLOGY_PROPS)


def cpu_shares(flavor):
    """quota:cpu_shares as an int (0 when unset); InvalidInput when out of range."""
    raw = (flavor.extra_specs or {}).get(SHARES_KEY)
    if raw is None:
        return 0
    try:
        shares = int(raw)
    except (TypeError, ValueError):
        shares = -1
    if not 1 <= shares <= MAX_CPU_SHARES:
        raise exception.InvalidInput(
            reason="hvagent: flavor %s: %s=%s must be an integer between 1 and %d"
                   % (_name(flavor), SHARES_KEY, raw, MAX_CPU_SHARES))
    return shares


def cpu_tuning(flavor, image_meta):
    """(topology (sockets, cores, threads) or None, shares) for `flavor` and the image.

    The topology is set only when the flavor or image asks for one: a domain without one keeps
    libvirt's default, and only such a domain can change its vCPU count later (UpdateDomain).
    Nova's get_best_cpu_topology raises its own exceptions for impossible requests."""
    check(flavor)
    topology = None
    if _wants_topology(flavor, image_meta):
        best = hardware.get_best_cpu_topology(flavor, image_meta)
        topology = (best.sockets, best.cores, best.threads)
    return topology, cpu_shares(flavor)


def apply(spec, flavor, image_meta):
    """Sets spec.cpu_topology and spec.cpu_shares from the flavor and image (or refuses)."""
    topology, shares = cpu_tuning(flavor, image_meta)
    if topology:
        spec.cpu_topology.CopyFrom(domain_pb2.GuestCpuTopology(
            sockets=topology[0], cores=topology[1], threads=topology[2]))
    spec.cpu_shares = shares
