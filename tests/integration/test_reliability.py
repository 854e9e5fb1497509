"""Crash safety and retries (docs/reliability.md), against the real libvirtd + QEMU of this tier
and real lvm2 / GPT pools on loop devices.

- Failpoints (a test build: -DHVAGENT_FAILPOINTS=ON) kill the agent with SIGKILL after each step
  of a create and of a delete. After a restart, each VM is either fully there (running, its
  volume attached to it) or fully gone (no domain, no partition, no LV) - checked in libvirt,
  in the partition table and in lvm2's own metadata, not only through the API.
- The same idempotency key sent concurrently, and again after a restart, creates one VM; the
  same key with another body is refused.
- SIGTERM finishes the creates in flight (REST and gRPC), refuses new ones, and leaves an
  empty journal."""

import functools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import unittest
import urllib.error
import urllib.request
import uuid

import grpc
from google.protobuf import json_format

from agent_harness import FIXTURE, Agent, all_domain_names, domstate, unique_name, virsh
from loop_pools import LoopPoolsTestCase, lvm_argv, run
from hvagent.v1 import domain_pb2
from test_reconnect import alive, wait_for

MiB = 1 << 20


@functools.lru_cache(maxsize=None)
def failpoints_compiled_in():
    out = subprocess.run([os.environ["HVAGENTD"], "--version"], capture_output=True, text=True, timeout=10).stdout
    return "failpoints" in out


class ReliabilityTest(LoopPoolsTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.state_dir = os.path.join(cls.loopdir, "state")

    @classmethod
    def extra_config(cls):
        # Read at each (re)start; the first start (in setUpClass) comes before state_dir is set.
        return f'[reliability]\nstate_dir = "{os.path.join(cls.loopdir, "state")}"\n'

    # ---- helpers ----

    def restart(self, env=None):
        """SIGTERM the agent (or reap it when a failpoint killed it) and start a new one."""
        old = type(self).agent
        if old.proc.poll() is None:
            self.assertEqual(old.stop(), 0, old.log_text()[-3000:])
        else:
            old.stop()
        type(self).agent = Agent(self.agent_config(), env=env)
        return type(self).agent

    def spec(self, name, pool, volume, start=True):
        # Names stay short: a partition's GPT name holds domain and volume, 27 characters.
        s = {"name": name, "vcpus": 1, "memory_mib": 64, "serial_console": True, "firmware": {"type": "TYPE_BIOS"},
             "disks": [{"target": "vda", "volume": {"pool": pool, "name": volume, "create_size_bytes": str(16 * MiB)}}]}
        return {"spec": s, "start": start}

    def post(self, path, body, key=None):
        """(status, body, headers) of a plain REST call; headers lower-cased."""
        req = urllib.request.Request(f"http://{self.agent.rest_addr}{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json",
                                                             **({"Idempotency-Key": key} if key else {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read() or b"null"), {k.lower(): v for k, v in r.headers.items()}
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null"), {k.lower(): v for k, v in e.headers.items()}

    def killed_by_failpoint(self, call):
        """Runs `call` (which the failpoint interrupts) and waits for the agent to die of SIGKILL."""
        try:
            call()
        except Exception:  # the connection drops with the agent
            pass
        proc = self.agent.proc
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.fail(f"the agent did not reach its failpoint:\n{self.agent.log_text()[-3000:]}")
        self.assertEqual(proc.returncode, -9, self.agent.log_text()[-3000:])
        self.assertIn("failpoint", self.agent.log_text())

    def partition_names(self):
        out = run(["sfdisk", "--json", self.disk], check=False).stdout
        if not out.strip():
            return []
        # GPT names are "hvagent:<volume>", "hvagent:<volume>@<domain>" (borrowed) or
        # "hvagent:<volume>=<domain>" (owned) (storage/partition).
        names = [p.get("name", "") for p in json.loads(out)["partitiontable"].get("partitions", [])]
        return [n.split(":", 1)[-1].replace("=", "@").split("@", 1)[0] for n in names]

    def lv_tags(self):
        out = run(lvm_argv("lvs", "--noheadings", "--separator", "|", "-o", "lv_name,lv_tags", self.vg)).stdout
        return {n.strip(): t.strip() for n, t in (line.split("|") for line in out.splitlines() if line.strip())}

    def wait_volume_gone(self, pool, volume, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, _ = self.agent.rest("GET", f"/v1/pools/{pool}/volumes/{volume}")
            if status == 404:
                return
            time.sleep(0.2)
        self.fail(f"volume {pool}/{volume} still there after {timeout} s")

    def assert_all_or_nothing(self, name, pool, volume, expect):
        """`expect`: "created" (running, volume attached) or "gone" (no domain, no volume)."""
        exists = name in all_domain_names()
        if expect == "created":
            self.assertTrue(exists, f"{name} should have been kept")
            self.assertEqual(domstate(name), "running")
            status, vol = self.agent.rest("GET", f"/v1/pools/{pool}/volumes/{volume}")
            self.assertEqual(status, 200, vol)
            self.assertEqual(vol["attached_to"], name)
        else:
            self.assertFalse(exists, f"{name} is still defined in libvirt")
            self.wait_volume_gone(pool, volume)
            if pool == "disk1":
                self.assertNotIn(volume, self.partition_names())
            else:
                self.assertNotIn(volume, self.lv_tags())

    # ---- crash at each step ----

    def crash_create(self, failpoint, pool, start, expect):
        if not failpoints_compiled_in():
            self.skipTest("hvagentd built without -DHVAGENT_FAILPOINTS=ON")
        name, volume = unique_name("c"), f"c{uuid.uuid4().hex[:5]}"
        self.restart(env={"HVAGENT_FAILPOINTS": failpoint})
        self.killed_by_failpoint(lambda: self.post("/v1/domains", self.spec(name, pool, volume, start)))
        self.restart()
        self.assertIn("recovered interrupted create", self.agent.log_text())
        self.assert_all_or_nothing(name, pool, volume, expect)
        if expect == "created":
            self.assertEqual(self.agent.rest("DELETE", f"/v1/domains/{name}?force=true&delete_volumes=true")[0], 204)
            self.wait_volume_gone(pool, volume)

    def test_create_killed_after_the_partition_is_made(self):
        self.crash_create("create.after_claim", "disk1", True, "gone")

    def test_create_killed_after_define(self):
        self.crash_create("create.after_define", "disk1", True, "gone")

    def test_create_killed_after_start_is_kept(self):
        self.crash_create("create.after_start", "disk1", True, "created")

    def test_create_killed_after_the_lv_is_made(self):
        self.crash_create("create.after_claim", "vg", False, "gone")

    def test_create_killed_after_defining_an_lv_domain(self):
        # Not started (no device-mapper here: an LV has no device node); the create is complete
        # once defined, so the recovery keeps it.
        if not failpoints_compiled_in():
            self.skipTest("hvagentd built without -DHVAGENT_FAILPOINTS=ON")
        name, volume = unique_name("c"), f"c{uuid.uuid4().hex[:5]}"
        self.restart(env={"HVAGENT_FAILPOINTS": "create.after_define"})
        self.killed_by_failpoint(lambda: self.post("/v1/domains", self.spec(name, "vg", volume, start=False)))
        self.restart()
        self.assertIn(name, all_domain_names())
        self.assertEqual(set(self.lv_tags().get(volume, "").split(",")),
                         {"hvagent", f"hvagent_vm_{name}", f"hvagent_owned_by_{name}"})  # created with it: owned
        self.assertEqual(self.agent.rest("DELETE", f"/v1/domains/{name}?delete_volumes=true")[0], 204)
        self.wait_volume_gone("vg", volume)

    def crash_delete(self, failpoint):
        if not failpoints_compiled_in():
            self.skipTest("hvagentd built without -DHVAGENT_FAILPOINTS=ON")
        name, volume = unique_name("c"), f"d{uuid.uuid4().hex[:5]}"
        status, body, _ = self.post("/v1/domains", self.spec(name, "disk1", volume))
        self.assertEqual(status, 201, body)
        self.assertIn(volume, self.partition_names())
        self.restart(env={"HVAGENT_FAILPOINTS": failpoint})
        self.killed_by_failpoint(
            lambda: self.agent.rest("DELETE", f"/v1/domains/{name}?force=true&delete_volumes=true"))
        self.restart()
        self.assert_all_or_nothing(name, "disk1", volume, "gone")

    def test_delete_killed_after_destroy(self):
        self.crash_delete("delete.after_destroy")

    def test_delete_killed_after_undefine(self):
        self.crash_delete("delete.after_undefine")

    def test_delete_killed_after_releasing_the_volume(self):
        self.crash_delete("delete.after_release")

    def test_libvirtd_stopping_mid_create_leaves_nothing_once_it_is_back(self):
        """The create pauses after define (a failpoint that sleeps); libvirtd is stopped then, so
        the start fails and so does the undo. The operation stays in the journal; once libvirtd
        is back, the next reconciliation finishes the undo: no domain, no partition."""
        if not failpoints_compiled_in():
            self.skipTest("hvagentd built without -DHVAGENT_FAILPOINTS=ON")
        r = subprocess.run([FIXTURE, "pid"], capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest("the running libvirtd was not started by libvirtd_fixture.sh")
        pid = int(r.stdout)
        name, volume = unique_name("m"), f"m{uuid.uuid4().hex[:5]}"
        config = self.agent_config().replace("[reliability]\n", "[reliability]\nreconcile_interval_seconds = 10\n")
        self.agent.stop()
        type(self).agent = Agent(config, env={"HVAGENT_FAILPOINTS": "create.after_define=sleep:4000"})
        result = {}
        create = threading.Thread(target=lambda: result.update(
            reply=self.post("/v1/domains", self.spec(name, "disk1", volume))))
        create.start()
        try:
            self.assertTrue(wait_for(lambda: "create.after_define reached" in self.agent.log_text(), 30),
                            "the create never reached its pause")
            os.kill(pid, signal.SIGTERM)
            self.assertTrue(wait_for(lambda: not alive(pid), 30), "libvirtd did not exit")
            create.join(60)
            status, body, _ = result["reply"]
            self.assertEqual(status, 503, body)  # the start could not reach libvirtd
        finally:
            subprocess.run([FIXTURE, "start"], check=True)
        self.assertIn("left to recovery", self.agent.log_text())
        # Reconnect (backoff) and the next reconciliation (10 s) undo it.
        self.assertTrue(wait_for(lambda: name not in all_domain_names(), 60),
                        f"{name} still defined:\n{self.agent.log_text()[-3000:]}")
        self.wait_volume_gone("disk1", volume)
        self.assertNotIn(volume, self.partition_names())
        self.assertIn("recovered create of domain", self.agent.log_text())
        self.restart()

    # ---- retries ----

    def test_same_key_concurrently_and_after_a_restart_creates_one_vm(self):
        name, volume, key = unique_name("i"), f"i{uuid.uuid4().hex[:5]}", str(uuid.uuid4())
        body = self.spec(name, "disk1", volume)
        results = [None] * 4
        def send(i):
            results[i] = self.post("/v1/domains", body, key=key)
        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for status, reply, _ in results:
            self.assertEqual(status, 201, reply)
        uuids = {reply["uuid"] for _, reply, _ in results}
        self.assertEqual(len(uuids), 1, results)
        self.assertEqual(sum(h.get("idempotent-replay") == "true" for _, _, h in results), 3)
        self.assertEqual(all_domain_names().count(name), 1)
        self.assertEqual(self.partition_names().count(volume), 1)

        self.restart()
        status, reply, headers = self.post("/v1/domains", body, key=key)
        self.assertEqual((status, reply["uuid"], headers.get("idempotent-replay")), (201, uuids.pop(), "true"))
        self.assertEqual(all_domain_names().count(name), 1)
        # The key names one request: another body with it is refused and changes nothing.
        other = self.spec(unique_name("i"), "disk1", f"o{uuid.uuid4().hex[:5]}")
        status, reply, _ = self.post("/v1/domains", other, key=key)
        self.assertEqual(status, 409, reply)
        self.assertIn("idempotency-key", reply["message"])
        self.assertNotIn(other["spec"]["name"], all_domain_names())
        # gRPC keeps its own keys the same way.
        metadata = (("idempotency-key", f"grpc-{key}"),)
        req = domain_pb2.DeleteDomainRequest(name=name, force=True, delete_volumes=True)
        self.agent.domains.DeleteDomain(req, metadata=metadata)
        _, call = self.agent.domains.DeleteDomain.with_call(req, metadata=metadata)
        self.assertIn(("idempotent-replay", "true"), call.initial_metadata())
        self.assertNotIn(name, all_domain_names())
        self.wait_volume_gone("disk1", volume)

    def test_a_bad_key_is_refused_naming_the_header(self):
        status, reply, _ = self.post("/v1/domains", self.spec(unique_name("i"), "disk1", "x1"), key="no spaces")
        self.assertEqual(status, 400, reply)
        self.assertIn("idempotency-key", reply["message"])

    # ---- reconciliation ----

    def test_a_volume_whose_domain_vanished_is_reported_then_released_on_request(self):
        name, volume = unique_name("o"), f"o{uuid.uuid4().hex[:5]}"
        status, body, _ = self.post("/v1/domains", self.spec(name, "disk1", volume))
        self.assertEqual(status, 201, body)
        virsh("destroy", name)
        virsh("undefine", name)  # behind the agent's back
        self.restart()  # reconciliation runs at start
        status, vol = self.agent.rest("GET", f"/v1/pools/disk1/volumes/{volume}")
        self.assertEqual((status, vol["state"], vol["attached_to"]), (200, "VOLUME_STATE_ORPHANED", name))
        status, pool = self.agent.rest("GET", "/v1/pools/disk1")
        self.assertEqual(pool["orphaned_volume_count"], 1, pool)
        _, metrics = self.agent.rest("GET", "/metrics")
        self.assertIn('hvagent_pool_orphaned_volumes{pool="disk1",type="partition"} 1', metrics)
        self.assertIn(volume, self.partition_names(), "reported only: nothing was removed")

        # With release_orphans the stale owner record goes (the data stays); then it can be deleted.
        old = type(self).agent
        old.stop()
        type(self).agent = Agent(self.agent_config().replace("[reliability]\n", "[reliability]\nrelease_orphans = true\n"))
        status, vol = self.agent.rest("GET", f"/v1/pools/disk1/volumes/{volume}")
        self.assertEqual((status, vol["state"], vol.get("attached_to", "")), (200, "VOLUME_STATE_AVAILABLE", ""))
        self.assertIn(volume, self.partition_names())
        self.assertEqual(self.agent.rest("DELETE", f"/v1/pools/disk1/volumes/{volume}")[0], 202)
        self.wait_volume_gone("disk1", volume)
        self.restart()

    # ---- a stuck tool ----

    def test_a_hung_lvm2_is_killed_at_its_deadline_and_the_next_call_works(self):
        """lvm2 that hangs (as on a sick disk), in the agent's own mount namespace only: a double
        bind-mounted over /usr/sbin/lvm, which the agent runs by absolute path."""
        real = os.path.join(self.loopdir, "lvm-real")
        shutil.copy2("/usr/sbin/lvm", real)
        marker = os.path.join(self.loopdir, "lvm-hangs")
        here = os.path.dirname(os.path.abspath(__file__))
        wrapper = ["unshare", "--mount", "--propagation", "private", "/usr/bin/python3",
                   os.path.join(here, "stuck_lvm.py"), "launch", real, marker, "--"]
        config = self.agent_config().replace('wipe = "none"', 'wipe = "none"\ntool_timeout_seconds = 2')
        self.agent.stop()
        type(self).agent = Agent(config, wrapper=wrapper)
        try:
            open(marker, "w").close()
            t = time.monotonic()
            status, body = self.agent.rest("POST", "/v1/pools/vg/volumes", {"name": "stuck", "size_bytes": str(8 * MiB)})
            took = time.monotonic() - t
            self.assertEqual(status, 504, body)
            self.assertIn("2", body["message"])  # names its deadline
            self.assertLess(took, 30, "the deadline did not cut the call short")
            hung = subprocess.run(["pgrep", "-f", "lvm-double"], capture_output=True, text=True).stdout.split()
            self.assertEqual(hung, [], "the hung lvm2 was left running")
            os.unlink(marker)
            status, body = self.agent.rest("POST", "/v1/pools/vg/volumes", {"name": "after", "size_bytes": str(8 * MiB)})
            self.assertEqual(status, 201, body)  # no lock left held
            self.assertEqual(self.agent.rest("DELETE", "/v1/pools/vg/volumes/after")[0], 202)
            self.wait_volume_gone("vg", "after")
        finally:
            if os.path.exists(marker):
                os.unlink(marker)
            self.restart()

    def test_sigterm_leaves_nothing_in_flight(self):
        self.restart()
        with open(os.path.join(self.state_dir, "journal")) as f:
            self.assertEqual(f.read(), "")

    def test_sigterm_finishes_the_creates_in_flight_and_takes_no_new_work(self):
        """Creates paused mid-way (a sleeping failpoint after define), one over REST and one over
        gRPC, when SIGTERM arrives: both complete and are answered, requests after the signal
        are refused, the agent exits 0 with an empty journal, and both VMs are whole."""
        if not failpoints_compiled_in():
            self.skipTest("hvagentd built without -DHVAGENT_FAILPOINTS=ON")
        self.restart(env={"HVAGENT_FAILPOINTS": "create.after_define=sleep:2500"})
        agent = self.agent
        (rest_name, rest_vol), (grpc_name, grpc_vol) = [(unique_name("t"), f"t{uuid.uuid4().hex[:5]}")
                                                        for _ in range(2)]
        replies = {}

        def grpc_create():
            spec = self.spec(grpc_name, "disk1", grpc_vol)
            req = domain_pb2.CreateDomainRequest()
            json_format.ParseDict(spec, req)
            try:
                replies["grpc"] = ("OK", agent.domains.CreateDomain(req, timeout=120).uuid)
            except grpc.RpcError as e:
                replies["grpc"] = (e.code().name, e.details())

        threads = [threading.Thread(target=lambda: replies.update(
                       rest=self.post("/v1/domains", self.spec(rest_name, "disk1", rest_vol)))),
                   threading.Thread(target=grpc_create)]
        for t in threads:
            t.start()
        try:
            # Creates are serialized: the first is paused after define, the second waits for it.
            self.assertTrue(wait_for(lambda: "create.after_define reached" in agent.log_text(), 30),
                            "no create reached its pause")
            agent.proc.send_signal(signal.SIGTERM)
            self.assertTrue(wait_for(lambda: "shutting down" in agent.log_text(), 10))
            # New work after the signal is refused (503 while draining, or no listener at all).
            late = unique_name("t")
            try:
                status, body, _ = self.post("/v1/domains", self.spec(late, "disk1", "tlate"))
                self.assertEqual(status, 503, body)
            except urllib.error.URLError:
                pass
            self.assertEqual(agent.proc.wait(timeout=60), 0, agent.log_text()[-3000:])
        finally:
            for t in threads:
                t.join(60)
        status, body, _ = replies["rest"]
        self.assertEqual(status, 201, body)
        self.assertEqual(replies["grpc"][0], "OK", replies["grpc"])
        self.assertNotIn(late, all_domain_names())
        with open(os.path.join(self.state_dir, "journal")) as f:
            self.assertEqual(f.read(), "", "an operation was left in the journal")
        self.restart()
        self.assertNotIn("recovered interrupted create", self.agent.log_text())
        for name, volume in ((rest_name, rest_vol), (grpc_name, grpc_vol)):
            self.assert_all_or_nothing(name, "disk1", volume, "created")
            self.assertEqual(self.agent.rest("DELETE", f"/v1/domains/{name}?force=true&delete_volumes=true")[0], 204)
            self.wait_volume_gone("disk1", volume)


if __name__ == "__main__":
    unittest.main()
