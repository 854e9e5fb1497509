"""Instance lifecycle events from the agent's EventService.Watch stream, delivered to Nova.

Two threads, because nova-compute runs under eventlet:

- the reader is a native OS thread. It owns its own gRPC channel (single-threaded unary-stream
  calls, so no grpc helper thread is involved) and blocks in the stream; a blocking gRPC read in
  a green thread would stall every green thread of nova-compute. It never logs and never calls
  into Nova: it only appends to a deque and writes a wake-up byte to a pipe.
- the dispatcher is a thread of the process's own ``threading`` module: a green thread under
  eventlet (Nova requires ``emit_event`` to run in one), a native one otherwise. It waits on the
  pipe, logs, debounces STOPPED and emits ``nova.virt.event.LifecycleEvent``.

No other thread touches the reader's gRPC objects: under eventlet, grpc's Python locks are
green locks, and one contended between a green and a native thread never wakes its waiter
(cancelling the call from nova's thread deadlocked that way). So each Watch call carries a
deadline (RENEW_SECONDS) and the reader renews it, checking whether it is to stop; stop() ends
the dispatcher at once and the reader within RENEW_SECONDS.

When the stream breaks (agent restarted, network), the reader reconnects with exponential
backoff. After every new subscription but the first (a renewal or a reconnect) the dispatcher
lists the domains once and emits an event for every instance whose state differs from the last
one it reported, so changes in the moments without a stream are not lost.

STOPPED is held back for ``lifecycle_event_delay`` seconds and dropped when another event for
the same instance follows: on Xen a guest reboot is a destroy and a re-create, and an immediate
STOPPED would make Nova's power-state sync stop an instance that is only rebooting.
"""

import collections
import os
import posix
import select
import threading
import time

from eventlet import patcher
import grpc
from oslo_log import log as logging

from nova.virt import event as virtevent

from hvagent.v1 import domain_pb2 as DS
from hvagent.v1 import event_pb2 as EV
from hvagent.v1 import event_pb2_grpc

LOG = logging.getLogger(__name__)
native_threading = patcher.original("threading")
# Deadline of each Watch call: how long the reader may take to notice stop().
RENEW_SECONDS = 30.0

# Agent event type -> Nova transition, as Nova's libvirt driver reads libvirt's events: libvirt's
# "suspended" is a pause; power-management suspend (S3/S4) is Nova's SUSPENDED. SHUTDOWN (the
# guest finished shutting down) is followed by STOPPED; DEFINED/UNDEFINED/CRASHED and the
# event-channel warnings are no lifecycle change Nova tracks.
TRANSITION = {
    EV.DOMAIN_EVENT_TYPE_STARTED: virtevent.EVENT_LIFECYCLE_STARTED,
    EV.DOMAIN_EVENT_TYPE_STOPPED: virtevent.EVENT_LIFECYCLE_STOPPED,
    EV.DOMAIN_EVENT_TYPE_SUSPENDED: virtevent.EVENT_LIFECYCLE_PAUSED,
    EV.DOMAIN_EVENT_TYPE_RESUMED: virtevent.EVENT_LIFECYCLE_RESUMED,
    EV.DOMAIN_EVENT_TYPE_PMSUSPENDED: virtevent.EVENT_LIFECYCLE_SUSPENDED,
}

# Domain state (from ListDomains after a reconnect) -> the transition that leads to it.
STATE_TRANSITION = {
    DS.DOMAIN_STATE_RUNNING: virtevent.EVENT_LIFECYCLE_STARTED,
    DS.DOMAIN_STATE_BLOCKED: virtevent.EVENT_LIFECYCLE_STARTED,
    DS.DOMAIN_STATE_SHUTTING_DOWN: virtevent.EVENT_LIFECYCLE_STARTED,
    DS.DOMAIN_STATE_PAUSED: virtevent.EVENT_LIFECYCLE_PAUSED,
    DS.DOMAIN_STATE_SHUTOFF: virtevent.EVENT_LIFECYCLE_STOPPED,
    DS.DOMAIN_STATE_CRASHED: virtevent.EVENT_LIFECYCLE_STOPPED,
    DS.DOMAIN_STATE_SUSPENDED: virtevent.EVENT_LIFECYCLE_SUSPENDED,
}
# A RESUMED leaves the guest running, like a STARTED: both compare equal after a reconnect.
SAME_STATE = {virtevent.EVENT_LIFECYCLE_RESUMED: virtevent.EVENT_LIFECYCLE_STARTED}


def _state_of(transition):
    return SAME_STATE.get(transition, transition)


class Backoff(object):
    """1, 2, 4 ... seconds up to `maximum`; back to the start after a good connection."""

    def __init__(self, initial=1.0, maximum=30.0):
        self.initial = initial
        self.maximum = maximum
        self.next = initial

    def take(self):
        delay = self.next
        self.next = min(self.next * 2, self.maximum)
        return delay

    def reset(self):
        self.next = self.initial


class LifecycleWatcher(object):
    """Follows EventService.Watch and emits Nova lifecycle events.

    `make_channel()` returns a new gRPC channel to the agent (called in the reader thread);
    `is_instance(name)` says whether a domain name is one of Nova's; `list_states()` returns
    {uuid: agent DomainState} of Nova's domains (called in the dispatcher); `emit(event)` is the
    driver's emit_event."""

    def __init__(self, make_channel, is_instance, list_states, emit, delay=15.0,
                 backoff=None, renew=None):
        self._make_channel = make_channel
        self._is_instance = is_instance
        self._list_states = list_states
        self._emit = emit
        self._delay = delay
        self._renew = renew or RENEW_SECONDS
        self._backoff = backoff or Backoff()
        self._lock = native_threading.Lock()  # guards the flags below and closing the pipe
        self._stopping = False
        self._reader_done = False
        self._dispatcher_done = False
        self._wake_stop = native_threading.Event()  # ends the reader's backoff sleep
        self._inbox = collections.deque()           # reader -> dispatcher
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._reported = {}   # uuid -> last transition reported (or seen at connect)
        self._pending = {}    # uuid -> (due time, delayed STOPPED event)
        self._connected = native_threading.Event()
        self.connections = 0  # subscriptions so far, renewals included (tests, logs)
        self._reader = native_threading.Thread(target=self._read_loop,
                                               name="hvagent-events-reader", daemon=True)
        self._dispatcher = threading.Thread(target=self._dispatch_loop,
                                            name="hvagent-events", daemon=True)

    # -- control ----------------------------------------------------------------------------

    def start(self):
        self._dispatcher.start()
        self._reader.start()

    @staticmethod
    def _wait(predicate, timeout):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)  # green under eventlet: does not stall the hub
        return True

    def wait_connected(self, timeout):
        """True once a stream is subscribed (the agent sent its headers)."""
        return self._wait(self._connected.is_set, timeout)

    def wait_stopped(self, timeout):
        """True once the reader has ended too (its stream closed)."""
        return self._wait(lambda: not self._reader.is_alive(), timeout)

    def stop(self, timeout=10.0):
        """Stops delivering at once (pending delayed events are dropped) and ends the
        dispatcher; the reader closes its stream within RENEW_SECONDS. Safe to call twice."""
        with self._lock:
            self._stopping = True
        self._wake_stop.set()
        self._wake()
        if not self._wait(lambda: not self._dispatcher.is_alive(), timeout):
            LOG.warning("hvagent event dispatcher did not stop within %s s", timeout)
            return False
        self._done("_dispatcher_done")
        return True

    def _done(self, which):
        """The pipe is closed by whichever thread ends last (a closed descriptor number could
        be reused by a file the reader would then write into)."""
        with self._lock:
            setattr(self, which, True)
            if not (self._reader_done and self._dispatcher_done) or self._rfd < 0:
                return
            for fd in (self._rfd, self._wfd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._rfd = self._wfd = -1

    # -- reader (native thread: no logging, no Nova calls) -----------------------------------

    def _post(self, item):
        self._inbox.append(item)
        self._wake()

    def _wake(self):
        with self._lock:
            if self._wfd < 0:
                return
            try:
                posix.write(self._wfd, b"x")  # the unpatched write: no green trampoline
            except OSError:
                pass  # pipe full: a wake-up is pending anyway

    def _stopped(self):
        with self._lock:
            return self._stopping

    def _read_loop(self):
        channel = None
        try:
            while not self._stopped():
                if channel is None:
                    channel = self._make_channel()
                    stub = event_pb2_grpc.EventServiceStub(channel)
                reason = self._follow(stub)
                if reason is None:
                    continue  # renewed, or stopping
                # A new channel after a failure: a failed one would make the next attempt
                # wait for gRPC's own reconnect backoff on top of ours.
                channel.close()
                channel = None
                delay = self._backoff.take()
                self._post(("broken", reason, delay))
                if self._wake_stop.wait(delay):
                    return
        except Exception as e:  # a bug, or no channel can be made: say so, then end
            self._post(("failed", "%s: %s" % (type(e).__name__, e), None))
        finally:
            if channel is not None:
                channel.close()
            self._done("_reader_done")

    def _follow(self, stub):
        """Follows one Watch call until its deadline: None when it was renewed or the watcher
        stops, else why the stream ended."""
        call = stub.Watch(EV.WatchEventsRequest(), timeout=self._renew)
        subscribed = False
        try:
            # The agent sends the headers once the subscription is in place; a call that
            # failed (agent down) is done by then and raises below.
            call.initial_metadata()
            if not call.done():
                subscribed = True
                self.connections += 1
                self._backoff.reset()
                self._post(("connected", self.connections, None))
            for ev in call:
                if self._stopped():
                    call.cancel()  # this thread's own call: safe
                    return None
                self._post(("event", ev, None))
            return "the agent ended the stream"
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if self._stopped() or (subscribed and code == grpc.StatusCode.DEADLINE_EXCEEDED):
                return None
            return "%s: %s" % (getattr(code, "name", code),
                               e.details() if hasattr(e, "details") else e)

    # -- dispatcher (green thread under eventlet) --------------------------------------------

    def _dispatch_loop(self):
        while True:
            timeout = None
            if self._pending:
                timeout = max(0.0, min(d for d, _ in self._pending.values())
                              - time.monotonic())
            try:
                select.select([self._rfd], [], [], timeout)  # green when eventlet patched it
                posix.read(self._rfd, 4096)
            except BlockingIOError:
                pass
            except (OSError, ValueError):
                return  # pipe closed: stopped
            with self._lock:
                if self._stopping:
                    return
            while self._inbox:
                try:
                    self._handle(*self._inbox.popleft())
                except Exception:
                    LOG.exception("hvagent event watcher: cannot handle an event")
            now = time.monotonic()
            for uuid, (due, event) in list(self._pending.items()):
                if due <= now:
                    del self._pending[uuid]
                    self._emit(event)

    def _handle(self, kind, item, extra):
        if kind == "event":
            self._on_event(item)
        elif kind == "connected":
            if item == 1:
                LOG.info("hvagent: following the agent's lifecycle events")
                try:
                    self._reported = self._current_states()
                except Exception as e:
                    LOG.warning("hvagent: cannot list domains: %s", e)
            else:
                if not self._connected.is_set():
                    LOG.info("hvagent: lifecycle event stream back; catching up on changes "
                             "made meanwhile")
                self._catch_up()
            self._connected.set()
        elif kind == "broken":
            self._connected.clear()
            LOG.warning("hvagent: lifecycle event stream broke (%s); reconnecting in %.0f s",
                        item, extra)
        elif kind == "failed":
            self._connected.clear()
            LOG.error("hvagent: lifecycle event watcher ended: %s; Nova's periodic power "
                      "state sync still applies", item)

    def _current_states(self):
        return {uuid: STATE_TRANSITION[state]
                for uuid, state in self._list_states().items() if state in STATE_TRANSITION}

    def _catch_up(self):
        try:
            now = self._current_states()
        except Exception as e:
            LOG.warning("hvagent: cannot list domains after reconnecting: %s", e)
            return
        for uuid, transition in now.items():
            if _state_of(self._reported.get(uuid)) != transition:
                self._deliver(virtevent.LifecycleEvent(uuid, transition))

    def _on_event(self, ev):
        transition = TRANSITION.get(ev.type)
        if transition is None or not ev.domain_uuid or not self._is_instance(ev.domain_name):
            return
        stamp = ev.time.ToNanoseconds() / 1e9 if ev.HasField("time") else None
        self._deliver(virtevent.LifecycleEvent(ev.domain_uuid, transition, stamp))

    def _deliver(self, event):
        uuid = event.get_instance_uuid()
        self._reported[uuid] = event.get_transition()
        if self._pending.pop(uuid, None) is not None:
            LOG.debug("hvagent: dropped a delayed STOPPED for %s: %s followed", uuid,
                      event.get_name())
        if event.get_transition() == virtevent.EVENT_LIFECYCLE_STOPPED and self._delay > 0:
            self._pending[uuid] = (time.monotonic() + self._delay, event)
        else:
            self._emit(event)
