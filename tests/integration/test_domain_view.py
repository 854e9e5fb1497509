"""The agent answers GetDomain/ListDomains from an event-fed view of libvirt's domains
(hypervisor/domain_view.h). Several threads interleave agent calls with direct virsh changes
(define, start, destroy, setmem on a running guest, undefine); after each change the agent's
answer must come to equal what virsh says within a bounded wait (the event latency, reported),
and after libvirtd is killed and restarted no answer is stale: UNAVAILABLE, or what virsh says."""

import os
import queue
import random
import signal
import subprocess
import tempfile
import threading
import time
import unittest

import grpc

from agent_harness import FIXTURE, URI, AgentTestCase, small_spec, unique_name, virsh
from hvagent.v1 import domain_pb2, event_pb2

HVCTL = os.path.join(os.path.dirname(os.environ["HVAGENTD"]), "hvctl")

SETTLE_SECONDS = 10  # bound on the wait for an event to reach the view

STATE_FROM_VIRSH = {
    "running": "DOMAIN_STATE_RUNNING",
    "idle": "DOMAIN_STATE_BLOCKED",
    "paused": "DOMAIN_STATE_PAUSED",
    "in shutdown": "DOMAIN_STATE_SHUTTING_DOWN",
    "shut off": "DOMAIN_STATE_SHUTOFF",
    "crashed": "DOMAIN_STATE_CRASHED",
    "pmsuspended": "DOMAIN_STATE_PMSUSPENDED",
}


def virsh_view(name):
    """(state, vcpus, max memory MiB, persistent) as virsh dominfo says, or None: no such domain."""
    r = virsh("dominfo", name, check=False)
    if r.returncode != 0:
        if "failed to get domain" in r.stderr or "Domain not found" in r.stderr:
            return None
        raise AssertionError(f"virsh dominfo {name}: {r.stderr.strip()}")
    fields = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return (STATE_FROM_VIRSH[fields["State"]], int(fields["CPU(s)"]), int(fields["Max memory"].split()[0]) // 1024,
            fields["Persistent"] == "yes")


def uuid_hex(n):
    return os.urandom(n).hex()[:n]


def domain_xml(name):
    """A guest virsh can define on its own: no disk, SeaBIOS finds nothing and idles."""
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
            "<devices><serial type='pty'/></devices></domain>")


class DomainViewConsistencyTest(AgentTestCase):
    def agent_view(self, name):
        """What the agent says, in virsh_view's shape; 'UNAVAILABLE' while it cannot answer."""
        try:
            d = self.agent.domains.GetDomain(domain_pb2.GetDomainRequest(name=name), timeout=10)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                return "UNAVAILABLE"
            raise
        return (domain_pb2.DomainState.Name(d.state), d.vcpus, d.memory_mib, d.persistent)

    def settle(self, name, what):
        """Waits until the agent agrees with virsh about `name`; returns the seconds it took.
        Each thread owns its domains, so what virsh says right after the change stays true: it
        is read once, and the clock measures only the agent catching up (virsh's own run time
        under load would otherwise dominate), then virsh is asked again to confirm."""
        truth = virsh_view(name)
        t0 = time.monotonic()
        while True:
            seen = self.agent_view(name)
            if seen == truth:
                took = time.monotonic() - t0
                self.assertEqual(self.agent_view(name), virsh_view(name), f"after {what}")
                return took
            if time.monotonic() - t0 > SETTLE_SECONDS:
                raise AssertionError(f"after {what}: agent says {seen}, virsh says {truth}")
            time.sleep(0.002)

    def one_domain_life(self, rng, name, latencies, errors):
        try:
            xml_path = None
            if rng.random() < 0.5:
                self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=small_spec(name)), timeout=60)
                step = "agent define"
            else:
                with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as f:
                    f.write(domain_xml(name))
                    xml_path = f.name
                virsh("define", xml_path)
                os.unlink(xml_path)
                step = "virsh define"
            latencies.append((step, self.settle(name, step)))
            if rng.random() < 0.5:
                self.agent.domains.StartDomain(domain_pb2.DomainRef(name=name), timeout=60)
                step = "agent start"
            else:
                virsh("start", name)
                step = "virsh start"
            latencies.append((step, self.settle(name, step)))
            # A balloon change on a running guest: the view holds the maximum, which must stay
            # equal to virsh's whatever the balloon does.
            virsh("setmem", name, "49152", "--live", check=False)
            latencies.append(("virsh setmem", self.settle(name, "virsh setmem")))
            if rng.random() < 0.5:
                self.agent.domains.DestroyDomain(domain_pb2.DomainRef(name=name), timeout=60)
                step = "agent destroy"
            else:
                virsh("destroy", name)
                step = "virsh destroy"
            latencies.append((step, self.settle(name, step)))
            if rng.random() < 0.5:
                self.agent.domains.DeleteDomain(domain_pb2.DeleteDomainRequest(name=name), timeout=60)
                step = "agent undefine"
            else:
                virsh("undefine", name)
                step = "virsh undefine"
            latencies.append((step, self.settle(name, step)))
        except BaseException as e:  # reported by the main thread
            errors.append(f"{name}: {e!r}")

    def test_agent_equals_virsh_under_interleaved_changes(self):
        seed = int(os.environ.get("HVAGENT_SEED", time.time()))
        latencies, errors = [], []
        threads = []
        for i in range(3):
            rng = random.Random(seed + i)
            names = [unique_name(f"view{i}") for _ in range(2)]
            def life(rng=rng, names=names):
                for n in names:
                    self.one_domain_life(rng, n, latencies, errors)
            threads.append(threading.Thread(target=life))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        self.assertEqual(errors, [], f"seed {seed}")
        self.assertGreaterEqual(len(latencies), 30)
        worst = max(latencies, key=lambda x: x[1])
        median = sorted(t for _, t in latencies)[len(latencies) // 2]
        print(f"\ndomain view: {len(latencies)} changes settled, median {median * 1000:.1f} ms, max latency "
              f"{worst[1] * 1000:.1f} ms ({worst[0]}), seed {seed}")

    def host_devices(self, name):
        """{mac: host-side device} as GetDomain says."""
        d = self.agent.domains.GetDomain(domain_pb2.GetDomainRequest(name=name), timeout=10)
        return {n.nic.mac: n.host_device for n in d.nics}

    def wait_for_nics(self, name, want, what):
        deadline = time.monotonic() + SETTLE_SECONDS
        while self.host_devices(name) != want:
            if time.monotonic() > deadline:
                raise AssertionError(f"after {what}: agent says {self.host_devices(name)}, virsh says {want}")
            time.sleep(0.01)

    @staticmethod
    def virsh_taps(name):
        """{mac: tap} from virsh domiflist (its Interface column is "-" on a stopped guest)."""
        out = {}
        for line in virsh("domiflist", name).stdout.splitlines()[2:]:
            cols = line.split()
            if len(cols) == 5:
                out[cols[4]] = "" if cols[0] == "-" else cols[0]
        return out

    def test_nics_list_their_tap_and_follow_hotplug_behind_the_agents_back(self):
        """GetDomain lists a running QEMU guest's NICs with the tap libvirt made (the one on the
        bridge), a NIC virsh hot-plugs behind the agent's back (libvirt's DEVICE_ADDED), and
        no tap once the guest is stopped."""
        bridge = "hvvb" + uuid_hex(6)
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
        try:
            subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
            name = unique_name("nics")
            spec = small_spec(name)
            spec.nics.add(mac="52:54:00:5e:00:01", bridge=bridge, model="virtio", mtu=1400)
            self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec, start=True), timeout=60)
            d = self.agent.domains.GetDomain(domain_pb2.GetDomainRequest(name=name), timeout=10)
            self.assertEqual(len(d.nics), 1, d)
            nic = d.nics[0]
            self.assertEqual((nic.nic.mac, nic.nic.bridge, nic.nic.model, nic.nic.mtu),
                             ("52:54:00:5e:00:01", bridge, "virtio", 1400))
            self.assertTrue(nic.host_device, d)
            self.assertEqual({"52:54:00:5e:00:01": nic.host_device}, self.virsh_taps(name))
            on_bridge = subprocess.run(["ip", "-o", "link", "show", "master", bridge], capture_output=True,
                                       text=True, check=True).stdout
            self.assertIn(f" {nic.host_device}:", on_bridge)
            # hvctl get shows it in its NIC table, and --json as GetDomain says.
            shown = subprocess.run([HVCTL, "--server", self.agent.grpc_addr, "get", name], capture_output=True,
                                   text=True, timeout=60, check=True).stdout
            self.assertRegex(shown, rf"52:54:00:5e:00:01\s+bridge {bridge}\s+virtio\s+1400\s+{nic.host_device}")

            stream = self.agent.events.Watch(event_pb2.WatchEventsRequest(domain_names=[name]), timeout=60)
            got = queue.Queue()

            def read():
                try:
                    for e in stream:
                        got.put(e)
                except grpc.RpcError:
                    pass  # cancelled below

            threading.Thread(target=read, daemon=True).start()
            stream.initial_metadata()  # subscribed: nothing that follows is missed
            virsh("attach-interface", name, "bridge", bridge, "--mac", "52:54:00:5e:00:02", "--model", "virtio",
                  "--live")
            want = self.virsh_taps(name)
            self.assertEqual(len(want), 2, want)
            self.wait_for_nics(name, want, "virsh attach-interface --live")
            # Watch subscribers get the hot-plug too, with libvirt's alias of the new device.
            try:
                ev = got.get(timeout=SETTLE_SECONDS)
                while ev.type != event_pb2.DOMAIN_EVENT_TYPE_DEVICE_ADDED:
                    ev = got.get(timeout=SETTLE_SECONDS)
            except queue.Empty:
                self.fail("no DOMAIN_EVENT_TYPE_DEVICE_ADDED on the stream")
            finally:
                stream.cancel()
            self.assertEqual(ev.domain_name, name)
            self.assertRegex(ev.detail, r"^net[0-9]+$")

            virsh("destroy", name)
            self.wait_for_nics(name, {"52:54:00:5e:00:01": ""}, "virsh destroy")
        finally:
            subprocess.run(["ip", "link", "del", bridge], check=False)

    def test_no_stale_answer_across_a_libvirtd_restart(self):
        r = subprocess.run([FIXTURE, "pid"], capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest("the running libvirtd was not started by libvirtd_fixture.sh")
        pid = int(r.stdout)
        kept, gone = unique_name("kept"), unique_name("gone")
        for n in (kept, gone):
            self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=small_spec(n)), timeout=60)
        self.settle(gone, "define")
        stop = threading.Event()
        answers = []  # (name, answer) read while libvirtd went away and came back

        def reader():
            while not stop.is_set():
                for n in (kept, gone):
                    answers.append((time.monotonic(), n, self.agent_view(n)))
                time.sleep(0.01)

        t = threading.Thread(target=reader)
        t.start()
        try:
            os.kill(pid, signal.SIGKILL)
            deadline = time.time() + 30
            while time.time() < deadline and os.path.exists(f"/proc/{pid}"):
                time.sleep(0.05)
            killed_at = time.monotonic()
            # While libvirtd is down, change what it will find when it comes back: its
            # definition files are the truth it reloads.
            os.unlink(f"/etc/libvirt/qemu/{gone}.xml")
            subprocess.run([FIXTURE, "start"], check=True)
            restarted_at = time.monotonic()
            self.assertIsNone(virsh_view(gone))
            deadline = time.time() + 60
            while time.time() < deadline and self.agent_view(gone) == "UNAVAILABLE":
                time.sleep(0.1)
            time.sleep(0.5)
        finally:
            stop.set()
            t.join()
        after_restart = [a for a in answers if a[0] > restarted_at and a[1] == gone]
        self.assertTrue(after_restart, "no read after libvirtd came back")
        # Once libvirtd is back it no longer has `gone`: any answer but NotFound or UNAVAILABLE
        # is the old view, served stale.
        stale = [a for a in answers if a[0] > killed_at + 1 and a[1] == gone and a[2] not in (None, "UNAVAILABLE")]
        self.assertEqual(stale, [], "answers from before the restart")
        self.assertIsNone(self.agent_view(gone))
        self.assertEqual(self.agent_view(kept), virsh_view(kept))


if __name__ == "__main__":
    unittest.main()
