"""Runs hvagent-cloudstack the way CloudStack's ExternalPathPayloadProvisioner does: argv
[executable, action, payload-file, wait-seconds], stdout and stderr read as one stream, the exit
code checked. Starts hvagentd (env HVAGENTD) on free loopback ports. No shell anywhere."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
# The test driver's fake host is full before anything is created; the agent admits by capacity
# on every driver, so agents on it load this (its comments say why).
TEST_DRIVER_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "deploy",
                                  "test-driver.toml")


def test_driver_capacity():
    with open(TEST_DRIVER_CONFIG, encoding="utf-8") as f:
        return f.read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    def __init__(self, uri, config_toml=None, image_dirs=()):
        """`config_toml`: text of a config file (storage pools) for the agent; `image_dirs`: the
        directories the agent may take disk images from ([security])."""
        self.grpc_port = free_port()
        self.rest_port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="hvagentd-cs-", suffix=".log", delete=False)
        argv = [os.environ["HVAGENTD"], "--plaintext-loopback", "--hypervisor-uri", uri,
                "--grpc-listen", f"127.0.0.1:{self.grpc_port}", "--rest-listen", f"127.0.0.1:{self.rest_port}"]
        self.config = None
        if uri.startswith("test:///") and (config_toml is None or "[capacity]" not in config_toml):
            config_toml = test_driver_capacity() + "\n" + (config_toml or "")
        if image_dirs:
            config_toml = (config_toml or "") + "\n[security]\nimage_dirs = [%s]\n" % ", ".join(
                json.dumps(d) for d in image_dirs)
        if uri.startswith("qemu"):
            # Guests under TCG, never KVM: a /dev/kvm that libvirt offers may still not run guests
            # (nested virtualisation without the CPU's extensions); tests/integration/agent_harness.py.
            config_toml = '[hypervisor]\ndomain_type = "qemu"\n\n' + (config_toml or "")
        if config_toml is not None:
            with tempfile.NamedTemporaryFile("w", prefix="hvagentd-cs-", suffix=".toml", delete=False) as f:
                f.write(config_toml)
            self.config = f.name
            argv += ["--config", self.config]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hvagentd exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if self.rest("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"hvagentd not healthy within 20 s:\n{self.log_text()}")

    def rest(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.rest_port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                text = r.read().decode()
                return r.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            return e.code, (json.loads(text) if text else None)

    def domains(self):
        status, body = self.rest("GET", "/v1/domains")
        assert status == 200, body
        return {d["name"]: d for d in body["domains"]}

    def log_text(self):
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log.name)
        if self.config is not None:
            os.unlink(self.config)
        return self.proc.returncode


class Extension:
    """Fills a fixture's placeholders (@GRPC_PORT@, @DEAD_PORT@, @TLS_DIR@) into a temporary
    payload file, as CloudStack writes one file per call, and runs the extension on it."""

    def __init__(self, grpc_port, tls_dir=""):
        self.binary = os.environ["HVAGENT_CLOUDSTACK"]
        self.workdir = tempfile.mkdtemp(prefix="hvagent-cs-")
        self.subst = {"@GRPC_PORT@": str(grpc_port), "@DEAD_PORT@": str(free_port()), "@TLS_DIR@": tls_dir}

    def payload(self, fixture, edit=None):
        with open(os.path.join(FIXTURES, fixture), encoding="utf-8") as f:
            text = f.read()
        for k, v in self.subst.items():
            text = text.replace(k, v)
        if edit is not None:
            doc = json.loads(text)
            edit(doc)
            text = json.dumps(doc)
        fd, path = tempfile.mkstemp(dir=self.workdir, suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def run_raw(self, argv, timeout=120):
        r = subprocess.run([self.binary, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout)
        out = r.stdout.decode()
        try:
            doc = json.loads(out)
        except ValueError:
            raise AssertionError(f"output is not one JSON document (exit {r.returncode}): {out!r}")
        return r.returncode, doc

    def run(self, action, fixture, wait="60", edit=None):
        return self.run_raw([action, self.payload(fixture, edit), wait])

    def cleanup(self):
        shutil.rmtree(self.workdir, ignore_errors=True)
