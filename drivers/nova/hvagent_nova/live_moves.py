"""The live migrations this nova-compute is running as their source, so that Nova's abort and
force-complete (called on other greenthreads than live_migration's) reach the right agent
operation, and the deadline of [libvirt] live_migration_completion_timeout is kept.

Force-complete pauses the guest on the source (SuspendDomain) so that its memory stops changing
and the copy converges, as Nova's libvirt driver does without post-copy: the agent offers no
post-copy, so [libvirt] live_migration_permit_post_copy changes nothing here (a warning says
so). A move that then fails or is aborted resumes the guest where it stayed; one that succeeds
resumes it on the destination should it have arrived paused.
"""

import time

from oslo_log import log as logging
from oslo_utils import units

from nova import exception

from hvagent.v1 import domain_pb2, migration_pb2

LOG = logging.getLogger(__name__)


def completion_timeout(conf, instance, local_disks):
    """Seconds a live move may take before the timeout action, as Nova's libvirt driver:
    live_migration_completion_timeout per GiB of RAM (at least 2) and local disks; 0: none."""
    ram_gb = max(instance.flavor.memory_mb * units.Mi / units.Gi, 2)
    disk_gb = sum(size for _, size in local_disks) / units.Gi
    return int(conf.libvirt.live_migration_completion_timeout * (ram_gb + disk_gb))


class LiveMove(object):
    """One live migration under way: the source agent, its operation, the deadline."""

    def __init__(self, agent, op_id, instance, timeout, action):
        self.agent, self.op_id, self.instance = agent, op_id, instance
        self.timeout, self.action, self.clock = timeout, action, time.monotonic
        self.started = self.clock()
        self.paused = False
        self.timed_out = False

    def abort(self):
        """CancelMigration: the agent aborts libvirt's job, the guest stays here. Raises what
        the agent answered (past the point of no return: the destination has the domain)."""
        self.agent.call(self.agent.migration.CancelMigration,
                        migration_pb2.CancelMigrationRequest(operation_id=str(self.op_id)),
                        self.instance)

    def force_complete(self, permit_post_copy):
        """Pauses the guest on the source so the copy converges (no post-copy here)."""
        if permit_post_copy:
            LOG.warning("live_migration_permit_post_copy: the agent has no post-copy; the guest "
                        "is paused instead", instance=self.instance)
        if self.paused:
            return
        self.agent.call(self.agent.domains.SuspendDomain,
                        domain_pb2.DomainRef(name=self.instance.name), self.instance)
        self.paused = True
        LOG.info("live migration forced to complete: guest paused", instance=self.instance)

    def check_deadline(self, permit_post_copy):
        """Takes the timeout action once the move has run longer than its deadline."""
        if not self.timeout or self.timed_out or self.clock() - self.started <= self.timeout:
            return
        self.timed_out = True
        LOG.warning("live migration not completed after %d s: %s", self.timeout, self.action,
                    instance=self.instance)
        try:
            if self.action == "force_complete":
                self.force_complete(permit_post_copy)
            else:
                self.abort()
        except exception.NovaException as e:
            LOG.warning("live migration timeout action %s failed: %s", self.action, e,
                        instance=self.instance)

    def resume_here(self):
        """After a failed or aborted move: the guest this move paused runs again."""
        if not self.paused:
            return
        try:
            self.agent.call(self.agent.domains.ResumeDomain,
                            domain_pb2.DomainRef(name=self.instance.name), self.instance)
        except exception.NovaException as e:
            LOG.warning("could not resume the guest paused for the live migration: %s", e,
                        instance=self.instance)

    def resume_there(self, peer_agent):
        """After a move this one paused: the guest runs on the destination (`peer_agent()`
        makes a client of its agent) even if it arrived paused."""
        if not self.paused:
            return
        peer = peer_agent()
        ref = domain_pb2.DomainRef(name=self.instance.name)
        try:
            dom = peer.call(peer.domains.GetDomain,
                            domain_pb2.GetDomainRequest(name=self.instance.name), self.instance)
            if dom.state == domain_pb2.DOMAIN_STATE_PAUSED:
                peer.call(peer.domains.ResumeDomain, ref, self.instance)
        except exception.NovaException as e:
            LOG.warning("could not resume the guest on the destination: %s", e,
                        instance=self.instance)


class LiveMoves(object):
    """The running LiveMoves by instance UUID."""

    def __init__(self):
        self._moves = {}

    def add(self, move):
        self._moves[move.instance.uuid] = move

    def remove(self, move):
        if self._moves.get(move.instance.uuid) is move:
            del self._moves[move.instance.uuid]

    def of(self, instance):
        try:
            return self._moves[instance.uuid]
        except KeyError:
            raise exception.NoActiveMigrationForInstance(instance_id=instance.uuid) from None
