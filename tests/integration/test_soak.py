"""A bounded soak: 1000 mixed operations from 16 concurrent clients (REST and gRPC, some with
idempotency keys, some retried) against one agent on libvirt's test driver, then invariants:

- every VM a client created and did not delete exists, every VM it deleted is gone, and nothing
  else appeared;
- no file descriptors or threads leaked (counted from /proc after a warm-up and at the end);
- the agent's RSS growth is printed (not asserted: the machine is shared)."""

import http.client
import json
import os
import random
import threading
import time
import unittest
import uuid

import grpc

from agent_harness import Agent
from hvagent.v1 import domain_pb2

CLIENTS = 16
OPERATIONS = 1000


def proc_counts(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = len(os.listdir(f"/proc/{pid}/task"))
    rss_kib = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
    return fds, threads, rss_kib


class SoakTest(unittest.TestCase):
    def setUp(self):
        # Sixteen clients keep many 1-vCPU domains defined at once: more than the test driver's
        # fake host admits by default (deploy/test-driver.toml), so this soak overcommits further.
        self.agent = Agent(uri="test:///default",
                           config_toml="[capacity]\ncpu_allocation_ratio = 64\nmemory_allocation_ratio = 16\n")

    def tearDown(self):
        code = self.agent.stop()
        if code != 0:
            print(self.agent.log_text()[-5000:])
        os.unlink(self.agent.log.name)
        self.assertEqual(code, 0, "the agent did not stop cleanly on SIGTERM")

    def rest(self, conn, method, path, body=None, key=None):
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Idempotency-Key"] = key
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        r = conn.getresponse()
        data = r.read()
        return r.status, (json.loads(data) if data else None)

    def client(self, n, budget, alive, deleted, errors):
        rng = random.Random(n)
        host, port = self.agent.rest_addr.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        mine = []
        try:
            for i in range(budget):
                op = rng.random()
                if op < 0.35 or not mine:
                    name = f"soak{n}-{i}"
                    body = {"spec": {"name": name, "vcpus": 1, "memory_mib": 64, "firmware": {"type": "TYPE_BIOS"}},
                            "start": rng.random() < 0.5}
                    key = str(uuid.uuid4()) if rng.random() < 0.5 else None
                    status, reply = self.rest(conn, "POST", "/v1/domains", body, key)
                    if status != 201:
                        errors.append(f"create {name}: {status} {reply}")
                        continue
                    if key:  # a controller's retry: same key, same body, same answer, no second VM
                        status2, reply2 = self.rest(conn, "POST", "/v1/domains", body, key)
                        if (status2, reply2.get("uuid")) != (201, reply["uuid"]):
                            errors.append(f"retry of {name}: {status2} {reply2}")
                    mine.append(name)
                elif op < 0.55:
                    name = rng.choice(mine)
                    action = rng.choice(["start", "destroy", "suspend", "resume", "reboot"])
                    status, reply = self.rest(conn, "POST", f"/v1/domains/{name}:{action}", {})
                    if status not in (200, 409):  # 409: wrong state for that action
                        errors.append(f"{action} {name}: {status} {reply}")
                elif op < 0.75:
                    name = mine.pop(rng.randrange(len(mine)))
                    status, reply = self.rest(conn, "DELETE", f"/v1/domains/{name}?force=true")
                    if status != 204:
                        errors.append(f"delete {name}: {status} {reply}")
                        mine.append(name)
                    else:
                        deleted.add(name)
                elif op < 0.9:
                    name = rng.choice(mine)
                    try:
                        self.agent.domains.GetDomain(domain_pb2.GetDomainRequest(name=name), timeout=30)
                    except grpc.RpcError as e:
                        errors.append(f"grpc get {name}: {e.code()}")
                else:
                    status, reply = self.rest(conn, "GET", "/v1/domains")
                    if status != 200:
                        errors.append(f"list: {status}")
        except Exception as e:  # a dropped connection is a failure too
            errors.append(f"client {n}: {e!r}")
        finally:
            conn.close()
            alive.update(mine)

    def run_clients(self, total):
        alive, deleted, errors = set(), set(), []
        lock = threading.Lock()

        class Locked(set):
            def update(self, items):
                with lock:
                    super().update(items)

            def add(self, item):
                with lock:
                    super().add(item)

        alive, deleted = Locked(), Locked()
        per = total // CLIENTS
        threads = [threading.Thread(target=self.client, args=(n, per, alive, deleted, errors)) for n in range(CLIENTS)]
        t = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return alive, deleted, errors, time.monotonic() - t

    def test_a_thousand_mixed_operations_from_sixteen_clients(self):
        pid = self.agent.proc.pid
        # Warm-up: let every pool (gRPC, cpprestsdk, libvirt) reach its working size first.
        _, _, warm_errors, _ = self.run_clients(160)
        self.assertEqual(warm_errors, [])
        for name in self.list_names():
            if name.startswith("soak"):
                self.agent.rest("DELETE", f"/v1/domains/{name}?force=true")
        time.sleep(1)
        fds0, threads0, rss0 = proc_counts(pid)

        alive, deleted, errors, took = self.run_clients(OPERATIONS)
        self.assertEqual(errors, [])
        names = {n for n in self.list_names() if n.startswith("soak")}
        self.assertEqual(names, set(alive), "the agent's domains differ from what the clients made and kept")
        self.assertFalse(names & set(deleted), "a deleted VM is still there")

        for name in names:
            self.assertEqual(self.agent.rest("DELETE", f"/v1/domains/{name}?force=true")[0], 204)
        time.sleep(1)
        fds1, threads1, rss1 = proc_counts(pid)
        print(f"\nsoak: {OPERATIONS} operations from {CLIENTS} clients in {took:.1f} s; fds {fds0} -> {fds1}, "
              f"threads {threads0} -> {threads1}, RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB")
        self.assertLessEqual(fds1, fds0 + 2, "file descriptors leaked")
        self.assertLessEqual(threads1, threads0 + 2, "threads leaked")

    def list_names(self):
        status, reply = self.agent.rest("GET", "/v1/domains")
        self.assertEqual(status, 200)
        return [d["name"] for d in reply.get("domains", [])]


if __name__ == "__main__":
    unittest.main()
