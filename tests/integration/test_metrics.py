"""Metrics end to end against the real libvirtd + QEMU of this tier: a running guest's stats move
between samples, /metrics passes promtool's linter, and a real Prometheus server (Debian's
package, started here on loopback) scrapes the agent and answers a query with the agent's
series and labels."""

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import grpc

from agent_harness import AgentTestCase, free_port, small_spec, unique_name
from hvagent.v1 import domain_pb2, metrics_pb2, metrics_pb2_grpc

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"


class MetricsTest(AgentTestCase):
    def setUp(self):
        # A running guest per test (AgentTestCase.tearDown removes it).
        self.metrics = metrics_pb2_grpc.MetricsServiceStub(self.agent.channel)
        self.guest = unique_name("metrics")
        self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=small_spec(self.guest), start=True))
        time.sleep(1.1)  # let the next read take a fresh sample that includes the guest

    def guest_stats(self):
        resp = self.metrics.GetDomainStats(metrics_pb2.GetDomainStatsRequest(name=self.guest))
        self.assertEqual(len(resp.domains), 1)
        return resp, resp.domains[0]

    def test_running_guest_stats_move_between_samples(self):
        _, first = self.guest_stats()
        self.assertEqual(first.state, domain_pb2.DOMAIN_STATE_RUNNING)
        self.assertTrue(first.HasField("cpu_time_ns"))
        self.assertEqual(first.vcpus, 1)
        self.assertEqual(first.memory_max_bytes, 64 << 20)
        time.sleep(1.5)  # past the 1 s sample age
        resp, second = self.guest_stats()
        self.assertGreater(second.cpu_time_ns, first.cpu_time_ns)
        self.assertGreater(resp.interval_seconds, 0)
        self.assertTrue(second.HasField("cpu_usage"))
        self.assertGreater(second.cpu_usage, 0)

    def test_unknown_domain_is_not_found(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.metrics.GetDomainStats(metrics_pb2.GetDomainStatsRequest(name="hvit-nope"))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_watch_streams_samples_at_the_interval(self):
        stream = self.metrics.Watch(metrics_pb2.WatchMetricsRequest(interval_seconds=1), timeout=20)
        samples = [next(stream), next(stream)]
        stream.cancel()
        t0, t1 = (s.time.ToNanoseconds() for s in samples)
        self.assertGreaterEqual(t1 - t0, 900_000_000)
        for s in samples:
            self.assertIn("only on Xen hosts", s.event_channels_unsupported)
            self.assertFalse(s.HasField("event_channels"))
            self.assertIn(self.guest, [d.name for d in s.domains])
            self.assertGreater(s.capacity.cpus, 0)
            self.assertEqual(list(s.errors), [])
        with self.assertRaises(grpc.RpcError) as cm:
            next(self.metrics.Watch(metrics_pb2.WatchMetricsRequest(interval_seconds=3601), timeout=10))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_event_channels_are_explicitly_unsupported_off_xen(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.metrics.GetEventChannels(metrics_pb2.GetEventChannelsRequest())
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertIn("only on Xen hosts (hypervisor is qemu)", cm.exception.details())
        status, body = self.agent.rest("GET", "/v1/host/event-channels")
        self.assertEqual(status, 501)
        self.assertIn("only on Xen hosts", body["message"])
        text = self.fetch_metrics()
        self.assertIn("hvagent_evtchn_supported 0\n", text)
        self.assertNotIn("hvagent_evtchn_ports_bound", text)

    def test_promtool_finds_no_problem_in_real_metrics(self):
        text = self.fetch_metrics()
        self.assertIn(f'hvagent_domain_cpu_seconds_total{{domain="{self.guest}"', text)
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""))

    def test_real_prometheus_scrapes_the_agent(self):
        workdir = tempfile.mkdtemp(prefix="hvit-prom-")
        port = free_port()
        config = os.path.join(workdir, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: hvagent\n"
                    f"    static_configs:\n      - targets: ['{self.agent.rest_addr}']\n")
        log = open(os.path.join(workdir, "prometheus.log"), "w")
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir}/data",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            query = f'hvagent_domain_cpu_seconds_total{{domain="{self.guest}"}}'
            deadline = time.time() + 60
            result = []
            while time.time() < deadline and not result:
                time.sleep(0.5)
                try:
                    result = self.prom_query(port, query)
                except OSError:
                    pass  # not listening yet
            self.assertTrue(result, "Prometheus never returned the agent's series:\n" + self.read(log.name))
            labels = result[0]["metric"]
            self.assertEqual(labels["job"], "hvagent")
            self.assertEqual(labels["instance"], self.agent.rest_addr)
            self.assertEqual(labels["domain"], self.guest)
            self.assertRegex(labels["uuid"], r"^[0-9a-f-]{36}$")
            self.assertGreater(float(result[0]["value"][1]), 0)
            up = self.prom_query(port, 'up{job="hvagent"}')
            self.assertEqual(up[0]["value"][1], "1")
        finally:
            prom.terminate()
            try:
                prom.wait(timeout=20)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
            log.close()
            shutil.rmtree(workdir, ignore_errors=True)

    # ---- helpers ----

    def fetch_metrics(self):
        with urllib.request.urlopen(f"http://{self.agent.rest_addr}/metrics", timeout=30) as r:
            self.assertEqual(r.headers["Content-Type"], "text/plain; version=0.0.4; charset=utf-8")
            return r.read().decode()

    @staticmethod
    def prom_query(port, query):
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read().decode())
        assert body["status"] == "success", body
        return body["data"]["result"]

    @staticmethod
    def read(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()[-5000:]
