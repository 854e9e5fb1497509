"""What deploy/ ships, checked with the real tools: the agent's systemd readiness protocol
(sd_notify over a NOTIFY_SOCKET this test listens on, as systemd would), the unit file through
`systemd-analyze verify`, and the Prometheus example config and alert rules through promtool."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import unittest

from agent_harness import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class DeployTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="hvit-deploy-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_sd_notify_ready_reloading_and_stopping(self):
        path = os.path.join(self.dir, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(20)
        self.addCleanup(sock.close)
        log = open(os.path.join(self.dir, "agent.log"), "w")
        self.addCleanup(log.close)
        proc = subprocess.Popen(
            [os.environ["HVAGENTD"], "--plaintext-loopback", "--hypervisor-uri", "test:///default",
             "--grpc-listen", f"127.0.0.1:{free_port()}", "--rest-listen", f"127.0.0.1:{free_port()}"],
            env={**os.environ, "NOTIFY_SOCKET": path}, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())

        def next_message():
            return sock.recv(4096).decode()

        ready = next_message()
        self.assertIn("READY=1", ready.split("\n"))
        self.assertIn(f"MAINPID={proc.pid}", ready)
        self.assertIn("STATUS=serving gRPC", ready)
        proc.send_signal(signal.SIGHUP)
        self.assertEqual(next_message(), "RELOADING=1")
        self.assertEqual(next_message(), "READY=1")
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(next_message(), "STOPPING=1")
        self.assertEqual(proc.wait(timeout=20), 0)

    def test_systemd_unit_verifies(self):
        analyze = shutil.which("systemd-analyze")
        self.assertIsNotNone(analyze, "systemd-analyze (package systemd) is needed to check the unit")
        with open(os.path.join(REPO, "deploy", "systemd", "hvagentd.service")) as f:
            unit = f.read()
        self.assertIn("ExecStart=/usr/sbin/hvagentd ", unit)
        # Verify the shipped text, with ExecStart pointing at the binary this build made.
        unit = unit.replace("ExecStart=/usr/sbin/hvagentd ", f"ExecStart={os.environ['HVAGENTD']} ")
        path = os.path.join(self.dir, "hvagentd.service")
        with open(path, "w") as f:
            f.write(unit)
        r = subprocess.run([analyze, "verify", path], capture_output=True, text=True, timeout=60)
        problems = [l for l in (r.stdout + r.stderr).splitlines()
                    if "hvagentd.service" in l or "Unknown" in l or "error" in l.lower()]
        self.assertEqual((r.returncode, problems), (0, []))

    def test_thin_pool_alert_fires_on_data_or_metadata_and_not_before(self):
        """promtool's own rule tests: the thin-pool alert fires after 5 minutes over 90% of data
        or of metadata, for that pool only, and not for a pool at 89%."""
        rules = os.path.join(REPO, "deploy", "prometheus", "hvagent-rules.yml")
        shutil.copy(rules, self.dir)
        tests = {
            "rule_files": ["hvagent-rules.yml"],
            "evaluation_interval": "1m",
            "tests": [{
                "interval": "1m",
                "input_series": [
                    {"series": 'hvagent_pool_thin_data_percent{instance="h1",pool="thin"}', "values": "50+5x10"},
                    {"series": 'hvagent_pool_thin_metadata_percent{instance="h1",pool="thin"}', "values": "10x10"},
                    {"series": 'hvagent_pool_thin_data_percent{instance="h1",pool="meta"}', "values": "5x10"},
                    {"series": 'hvagent_pool_thin_metadata_percent{instance="h1",pool="meta"}', "values": "95x10"},
                    {"series": 'hvagent_pool_thin_data_percent{instance="h1",pool="calm"}', "values": "89x10"},
                    {"series": 'hvagent_pool_thin_metadata_percent{instance="h1",pool="calm"}', "values": "89x10"},
                ],
                "alert_rule_test": [
                    # meta: over 90% from minute 0, so firing from minute 5; thin: 95% at minute 9
                    # (50 + 5 * 9), pending only.
                    {"eval_time": "4m", "alertname": "HvagentThinPoolNearlyFull", "exp_alerts": []},
                    {"eval_time": "6m", "alertname": "HvagentThinPoolNearlyFull", "exp_alerts": [
                        {"exp_labels": {"severity": "critical", "instance": "h1", "pool": "meta"},
                         "exp_annotations": {"summary": "thin pool of storage pool meta on h1 is over 90% full "
                                                        "(data or metadata)"}}]},
                ],
            }],
        }
        path = os.path.join(self.dir, "thin-alert-test.yml")
        with open(path, "w") as f:
            json.dump(tests, f)  # JSON is YAML
        r = subprocess.run(["promtool", "test", "rules", path], capture_output=True, text=True, timeout=60,
                           cwd=self.dir)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS", r.stdout + r.stderr)

    def test_snapshot_reserve_alert_fires_after_two_minutes_over_80_percent(self):
        """promtool's rule tests: a pool whose fullest classic snapshot reserve stays over 80% for
        2 minutes alerts; one at 80% does not."""
        shutil.copy(os.path.join(REPO, "deploy", "prometheus", "hvagent-rules.yml"), self.dir)
        tests = {
            "rule_files": ["hvagent-rules.yml"],
            "evaluation_interval": "1m",
            "tests": [{
                "interval": "1m",
                "input_series": [
                    {"series": 'hvagent_pool_snapshot_fullest_percent{instance="h1",pool="thick"}',
                     "values": "70+5x10"},
                    {"series": 'hvagent_pool_snapshot_fullest_percent{instance="h1",pool="calm"}', "values": "80x10"},
                ],
                "alert_rule_test": [
                    # thick: 85% at minute 3, so firing from minute 5.
                    {"eval_time": "4m", "alertname": "HvagentSnapshotReserveNearlyFull", "exp_alerts": []},
                    {"eval_time": "5m", "alertname": "HvagentSnapshotReserveNearlyFull", "exp_alerts": [
                        {"exp_labels": {"severity": "warning", "instance": "h1", "pool": "thick"},
                         "exp_annotations": {"summary": "a snapshot reserve in storage pool thick on h1 is over "
                                                        "80% used"}}]},
                ],
            }],
        }
        path = os.path.join(self.dir, "snapshot-alert-test.yml")
        with open(path, "w") as f:
            json.dump(tests, f)
        r = subprocess.run(["promtool", "test", "rules", path], capture_output=True, text=True, timeout=60,
                           cwd=self.dir)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS", r.stdout + r.stderr)

    def test_prometheus_example_config_and_rules(self):
        prom_dir = os.path.join(REPO, "deploy", "prometheus")
        r = subprocess.run(["promtool", "check", "rules", os.path.join(prom_dir, "hvagent-rules.yml")],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS: 6 rules found", r.stdout)
        # The config names files on the Prometheus host; give promtool stand-ins for them.
        with open(os.path.join(prom_dir, "prometheus.yml")) as f:
            config = f.read()
        for name in ("hvagent-monitor.token", "hvagent-ca.crt"):
            stand_in = os.path.join(self.dir, name)
            with open(stand_in, "w") as f:
                f.write("x\n")
            config = config.replace(f"/etc/prometheus/{name}", stand_in)
        shutil.copy(os.path.join(prom_dir, "hvagent-rules.yml"), self.dir)
        path = os.path.join(self.dir, "prometheus.yml")
        with open(path, "w") as f:
            f.write(config)
        r = subprocess.run(["promtool", "check", "config", path], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
