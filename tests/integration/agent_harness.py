"""Shared pieces of the integration tier: start hvagentd against the real libvirtd that
libvirtd_fixture.sh runs, talk to it over gRPC (Debian's grpcio, stubs generated at build
time) and REST, and look at libvirt directly with virsh. Every external program runs from an
argv list, never through a shell."""

import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request
import uuid

import grpc

from hvagent.v1 import domain_pb2, domain_pb2_grpc, event_pb2_grpc, host_pb2_grpc, storage_pb2_grpc

URI = "qemu:///system"
PREFIX = "hvit-"
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libvirtd_fixture.sh")
# Shared with libvirtd_fixture.sh: one test class at a time on this machine's libvirtd, so
# concurrent runs (another build tree, a CI clone) never clean up each other's guests.
TESTS_LOCK = "/run/hvagent-tests/tests.lock"


def lock_libvirtd(timeout=240):
    """Holds TESTS_LOCK until the returned file is closed."""
    os.makedirs(os.path.dirname(TESTS_LOCK), exist_ok=True)
    f = open(TESTS_LOCK, "w")
    deadline = time.time() + timeout
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.time() > deadline:
                f.close()
                raise AssertionError(f"{TESTS_LOCK} held by another test run for {timeout} s")
            time.sleep(0.2)


GUEST_BUILDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "guest", "build-guest.sh")


def test_guest():
    """(kernel, initrd) of the shared busybox test guest (tests/guest/build-guest.sh), built
    once per machine and cached; a flock keeps concurrent test runs from building it twice.
    Boot it with kernel_args "console=ttyS0 hv.ip=ADDR/PREFIX"; it prints hv-guest-ready, then
    runs a shell on the console."""
    os.makedirs(os.path.dirname(TESTS_LOCK), exist_ok=True)
    with open(os.path.join(os.path.dirname(TESTS_LOCK), "guest.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        r = subprocess.run([GUEST_BUILDER], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"build-guest.sh failed: {r.stderr.strip()}")
    out = r.stdout.strip().splitlines()[-1]
    return os.path.join(out, "vmlinuz"), os.path.join(out, "initrd.img")


def bootable_disk(path, size_bytes):
    """Makes `path` a whole-disk raw image of `size_bytes` (at least 16 MiB) that boots by itself
    under firmware (no kernel pair): a FAT file system holding the test guest (test_guest()) and
    SYSLINUX in its boot sector, the kernel's console on the serial port, so the guest prints
    hv-guest-ready there. mkfs.vfat, mcopy and syslinux from Debian (deploy/install-deps.sh)."""
    kernel, initrd = test_guest()
    with open(path, "wb") as f:
        f.truncate(size_bytes)
    cfg = path + ".syslinux.cfg"
    # maxcpus=1: Nova's test flavor has 4 vCPUs, and under TCG on 2 loaded host cores the
    # kernel's cross-CPU calls stalled for minutes (a soft lockup in smp_call_function_many_cond,
    # no hv-guest-ready within 180 s). The other vCPUs stay offline; nothing tested needs them.
    with open(cfg, "w") as f:
        f.write("DEFAULT guest\nPROMPT 0\nTIMEOUT 1\nLABEL guest\n  LINUX /vmlinuz\n"
                "  INITRD /initrd.img\n  APPEND console=ttyS0 maxcpus=1\n")
    try:
        for argv in (["mkfs.vfat", "-n", "HVGUEST", path],
                     ["mcopy", "-i", path, kernel, initrd, "::/"],
                     ["mcopy", "-i", path, cfg, "::/syslinux.cfg"],
                     ["syslinux", "--install", path]):
            r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise AssertionError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
    finally:
        os.unlink(cfg)
    return path


def console_until(fd, marker, timeout):
    """Reads a guest's console (a pty's fd) until `marker` (bytes) has appeared; returns all
    that was read. AssertionError with the console's tail after `timeout` seconds."""
    out = b""
    deadline = time.time() + timeout
    while marker not in out:
        left = deadline - time.time()
        if left <= 0:
            raise AssertionError(f"no {marker!r} on the console within {timeout} s:\n"
                                 f"{out[-3000:].decode(errors='replace')}")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            out += os.read(fd, 65536)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def virsh(*args, check=True):
    r = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def domstate(name):
    return virsh("domstate", name).stdout.strip()


def all_domain_names():
    out = virsh("list", "--all", "--name").stdout
    return sorted(n for n in out.split() if n)


def unique_name(tag):
    return f"{PREFIX}{tag}-{uuid.uuid4().hex[:8]}"


def small_spec(name, with_disk_dir=None):
    """A guest that boots SeaBIOS under TCG and finds no OS: it runs, but ignores ACPI."""
    spec = domain_pb2.DomainSpec(name=name, vcpus=1, memory_mib=64, serial_console=True)
    spec.firmware.type = domain_pb2.FirmwareBoot.TYPE_BIOS
    if with_disk_dir:
        path = os.path.join(with_disk_dir, name + ".raw")
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", path, "16M"], check=True)
        spec.disks.add(source_path=path, type=domain_pb2.Disk.TYPE_FILE, target="vda")
    return spec


def small_spec_json(name):
    return {"name": name, "vcpus": 1, "memory_mib": 64, "serial_console": True,
            "firmware": {"type": "TYPE_BIOS"}}


def toml_list(items):
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def with_security(config_toml, **dirs):
    """`config_toml` with [security] keys (image_dirs=[...], kernel_dirs=[...]) added, into its
    own [security] table when it has one."""
    lines = "".join(f"{key} = {toml_list(value)}\n" for key, value in dirs.items())
    config_toml = config_toml or ""
    if "[security]\n" in config_toml:
        return config_toml.replace("[security]\n", "[security]\n" + lines, 1)
    return f"[security]\n{lines}" + config_toml


def with_tcg(config_toml):
    """`config_toml` with [hypervisor] domain_type = "qemu": guests under TCG, never KVM. A host
    may have a /dev/kvm that libvirt offers but that does not run guests (nested virtualisation
    without the CPU's extensions: QEMU aborts on an MSR, or the guest never prints), and the tests
    must not depend on it."""
    config_toml = config_toml or ""
    if "[hypervisor]\n" in config_toml:
        return config_toml.replace("[hypervisor]\n", '[hypervisor]\ndomain_type = "qemu"\n', 1)
    return '[hypervisor]\ndomain_type = "qemu"\n\n' + config_toml


class Agent:
    """One hvagentd process on free loopback ports."""

    def __init__(self, config_toml=None, plaintext=True, client_tls=None, token=None, env=None, wrapper=None,
                 uri=URI, image_dirs=(), listen_host="127.0.0.1", grpc_port=None):
        """`config_toml`: text of a config file (e.g. storage pools); flags set the rest.
        `plaintext`: the development mode (--plaintext-loopback); False for TLS configs, with
        `client_tls` = (ca_file, cert_file or None, key_file or None) for this harness's own
        channel and REST calls, and `token` the REST bearer token they send. `env`: extra
        environment variables (HVAGENT_FAILPOINTS). `wrapper`: an argv that runs hvagentd's argv
        appended to it (e.g. in a private mount namespace). `image_dirs`: the directories disk
        images may come from ([security] image_dirs, added to `config_toml`). `listen_host`: the
        loopback address both servers listen on (another 127.0.0.0/8 address stands for another
        host's agent); `grpc_port`: the gRPC port (default: a free one), so that agents on
        several such addresses can share one port as the hosts of a cloud do."""
        self.plaintext = plaintext
        self.client_tls = client_tls
        self.token = token
        self.binary = os.environ["HVAGENTD"]
        self.grpc_addr = f"{listen_host}:{grpc_port or free_port()}"
        self.rest_addr = f"{listen_host}:{free_port()}"
        self.log = tempfile.NamedTemporaryFile(prefix="hvagentd-", suffix=".log", delete=False)
        argv = [self.binary, "--hypervisor-uri", uri, "--grpc-listen", self.grpc_addr,
                "--rest-listen", self.rest_addr, "--log-level", "debug"]
        if plaintext:
            argv.append("--plaintext-loopback")
        self.config = None
        if uri.startswith("test:///") and (config_toml is None or "[capacity]" not in config_toml):
            # The test driver's fake host is full before anything is created, and the agent
            # admits by capacity on every driver: deploy/test-driver.toml says why.
            with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy",
                                   "test-driver.toml")) as f:
                config_toml = f.read() + "\n" + (config_toml or "")
        if image_dirs:
            config_toml = with_security(config_toml, image_dirs=image_dirs)
        if uri.startswith("qemu"):
            config_toml = with_tcg(config_toml)
        if config_toml is not None:
            self.config = tempfile.NamedTemporaryFile("w", prefix="hvagentd-", suffix=".toml", delete=False)
            self.config.write(config_toml)
            self.config.close()
            argv += ["--config", self.config.name]
        self.proc = subprocess.Popen(list(wrapper or []) + argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                text = self.log_text()
                self.stop()  # removes the config file; the log's text goes with the error
                os.unlink(self.log.name)
                raise AssertionError(f"hvagentd exited with {self.proc.returncode}:\n{text}")
            try:
                status, _ = self.rest("GET", "/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError(f"hvagentd not healthy within 20 s:\n{self.log_text()}")
        self.channel = self.grpc_channel(client_tls) if not plaintext else grpc.insecure_channel(self.grpc_addr)
        self.host = host_pb2_grpc.HostServiceStub(self.channel)
        self.domains = domain_pb2_grpc.DomainServiceStub(self.channel)
        self.events = event_pb2_grpc.EventServiceStub(self.channel)
        self.storage = storage_pb2_grpc.StorageServiceStub(self.channel)

    def grpc_channel(self, client_tls):
        """A TLS channel to the agent with (ca_file, cert_file, key_file); cert/key may be None."""
        ca, cert, key = client_tls
        read = lambda p: open(p, "rb").read() if p else None
        creds = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
        return grpc.secure_channel(self.grpc_addr, creds)

    def ssl_context(self, client_tls=None):
        import ssl
        ca, cert, key = client_tls or self.client_tls
        ctx = ssl.create_default_context(cafile=ca)
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx

    def rest(self, method, path, body=None, raw=None, token=None, client_tls=None, headers=None):
        """(status, parsed JSON or None). `raw` sends bytes as they are. Over TLS, `token` (or
        the harness's) goes in Authorization; `client_tls` replaces the harness's TLS files."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        token = token if token is not None else self.token
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        scheme = "http" if self.plaintext else "https"
        req = urllib.request.Request(f"{scheme}://{self.rest_addr}{path}", data=data, method=method, headers=hdrs)
        context = None if self.plaintext else self.ssl_context(client_tls)
        try:
            with urllib.request.urlopen(req, timeout=60, context=context) as r:
                text = r.read().decode()
                if not r.headers.get("Content-Type", "").startswith("application/json"):
                    return r.status, text  # /metrics: the Prometheus text format
                return r.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            return e.code, (json.loads(text) if text else None)

    def curl(self, method, path, body=None):
        """The same call through curl: (status, parsed JSON or None)."""
        argv = ["curl", "-sS", "-X", method, "-w", "\n%{http_code}", f"http://{self.rest_addr}{path}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
        text, _, code = r.stdout.rpartition("\n")
        return int(code), (json.loads(text) if text.strip() else None)

    def log_text(self):
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        if hasattr(self, "channel"):
            self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.config is not None:
            os.unlink(self.config.name)
            self.config = None
        return self.proc.returncode


class AgentTestCase(unittest.TestCase):
    """Starts one agent per test class; removes every hvit- domain a test left behind and
    prints the agent's log when a test failed."""

    # Subclasses may return the text of a config file for their agent, and Agent() options.
    @classmethod
    def agent_config(cls):
        return None

    @classmethod
    def agent_options(cls):
        return {}

    @classmethod
    def setUpClass(cls):
        cls.lock = lock_libvirtd()
        # The tests' disk images live here: the agent takes images only from directories it
        # is configured with, and only when root alone can write them (mkdtemp: 0700, ours).
        cls.workdir = tempfile.mkdtemp(prefix="hvit-")
        try:
            cls.agent = Agent(cls.agent_config(), **{"image_dirs": [cls.workdir], **cls.agent_options()})
        except BaseException:
            shutil.rmtree(cls.workdir, ignore_errors=True)
            cls.lock.close()
            raise

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.workdir, ignore_errors=True)
        try:
            code = cls.agent.stop()
        finally:
            cls.lock.close()
        if code not in (0, None):
            print(cls.agent.log_text())
            raise AssertionError(f"hvagentd exited with {code} on SIGTERM")
        # Failed tests printed the log already; don't leave one file per run in /tmp.
        os.unlink(cls.agent.log.name)

    def tearDown(self):
        try:
            names = all_domain_names()
        except Exception:  # libvirtd down (a failed reconnect test): nothing to clean
            names = []
        for name in names:
            if name.startswith(PREFIX):
                virsh("destroy", name, check=False)
                virsh("undefine", name, check=False)
        # Python 3.11 records a failure in the result as soon as it happens, so it is visible
        # here; a failed subTest is recorded under a _SubTest that points at this test.
        result = getattr(getattr(self, "_outcome", None), "result", None)
        failed = getattr(result, "failures", []) + getattr(result, "errors", [])
        mine = [text for test, text in failed if getattr(test, "test_case", test) is self]
        if mine:
            # The failure first: CI's summary keeps a test run's head and tail, and a long log
            # between them would push the reason out of sight.
            print("---- why it failed ----\n" + "\n".join(t[-4000:] for t in mine), flush=True)
            print(f"---- hvagentd log ({self.agent.log.name}), last 12000 characters ----\n"
                  + self.agent.log_text()[-12000:], flush=True)
