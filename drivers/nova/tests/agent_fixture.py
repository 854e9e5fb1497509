"""A real hvagentd (libvirt's test:///default driver) for the driver's tests, started the way
tests/integration/agent_harness.py does: free loopback ports, --plaintext-loopback, wait for
/healthz. With root, it also gets an LVM storage pool on a sparse loop device (lvm2 metadata
only: wipe = none, so nothing is ever written to the volumes). With `pki` (a directory made by
deploy/dev-certs.sh) it runs with mutual TLS instead: no --plaintext-loopback, the dev PKI's
server certificate, its CA for clients, and the identities hvagent-controller, -operator and
-monitor mapped to those roles."""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

POOL = "nova"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TEST_DRIVER_CONFIG = os.path.join(REPO, "deploy", "test-driver.toml")


def make_pki(directory):
    """The development PKI of deploy/dev-certs.sh (openssl) in `directory`."""
    subprocess.run([os.path.join(REPO, "deploy", "dev-certs.sh"), directory], check=True,
                   capture_output=True)
    return directory


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_glance_downloads(glance, record=None):
    """Makes Nova's GlanceFixture `glance` download as nova.image.glance does against a real
    Glance: with `data`, the image is written into it in 64 KiB pieces that yield to other green
    threads as a network read would; without a destination, Nova 26 returns glanceclient's
    iterator after its _verify_and_write has closed it, so it yields nothing (the fixture's own
    download gives None instead, which hid that). `record`: a list that gets "download-start"
    and "download-end"."""
    import eventlet
    plain = glance.download

    def download(context, image_id, data=None, dst_path=None, trusted_certs=None):
        if data is None:
            if dst_path is not None:
                return plain(context, image_id, dst_path=dst_path)
            glance.show(context, image_id)
            return iter(())  # closed before the caller sees it
        blob = glance._imagedata.get(image_id, b"")
        if record is not None:
            record.append("download-start")
        for i in range(0, len(blob), 64 * 1024):
            eventlet.sleep(0.001)
            data.write(blob[i:i + 64 * 1024])
        if record is not None:
            record.append("download-end")
    glance.download = download


def with_metadata_fields(inst):
    """Sets what Nova's InstanceMetadata (config drives) lazy-loads from the database, which a
    test instance is not in: no key pairs, no device metadata or NUMA topology, EC2 ids."""
    from nova import objects
    inst.keypairs = objects.KeyPairList(objects=[])
    if not inst.obj_attr_is_set("metadata"):
        inst.metadata = {}
    inst.device_metadata = None
    inst.hostname = inst.hostname or "hv-test"
    inst.numa_topology = None
    inst.ec2_ids = objects.EC2Ids(instance_id="i-00000001", ami_id="ami-00000001",
                                  kernel_id=None, ramdisk_id=None)
    return inst


def assert_clean_exit(code):
    """Each test class requires its hvagentd to have exited 0 on SIGTERM (None: never started)."""
    if code not in (0, None):
        raise AssertionError("hvagentd exited with %s on SIGTERM" % code)


def pool_possible():
    """Why a loop-device LVM pool cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (losetup, lvm2)"
    for tool in ("losetup", "vgremove", "pvremove"):
        if not shutil.which(tool) and not os.path.exists("/sbin/" + tool):
            return "needs %s" % tool
    return None


class AgentProcess(object):
    URI = "test:///default"
    # Open vSwitch bridges the agent may put ports on (closed by default): Nova's fake network
    # info names br0; br-int is Neutron's usual integration bridge. On test:///default nothing
    # reaches a real switch.
    OVS_BRIDGES = ("br0", "br-int")

    def __init__(self, with_pool=True, grpc_addr=None, rest_addr=None, pki=None):
        """`grpc_addr`/`rest_addr`: listen there (an agent restarted on the same ports)
        instead of on free ports. `pki`: mutual TLS with that dev-certs.sh directory."""
        self.binary = os.environ["HVAGENTD"]
        self.pki = pki
        self.grpc_addr = grpc_addr or "127.0.0.1:%d" % free_port()
        self.rest_addr = rest_addr or "127.0.0.1:%d" % free_port()
        self.tmp = tempfile.mkdtemp(prefix="hvnova-")
        self.loop = None
        self.vg = None
        self.pool = None
        argv = [self.binary, "--hypervisor-uri", self.URI,
                "--grpc-listen", self.grpc_addr, "--rest-listen", self.rest_addr,
                "--log-level", "debug"]
        if not pki:
            argv.append("--plaintext-loopback")
        try:
            config = self._hypervisor_config()
            config += '[network]\novs_bridges = %s\n' % json.dumps(list(self.OVS_BRIDGES))
            config += self._make_pool() if with_pool else ""
            if pki:
                config += self._tls_config()
            if config:
                path = os.path.join(self.tmp, "hvagentd.toml")
                with open(path, "w") as f:
                    f.write(config)
                argv += ["--config", path]
            self.log = open(os.path.join(self.tmp, "hvagentd.log"), "w+")
            self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _hypervisor_config(self):
        """The config text that depends on URI. The test driver's fake host is full before
        anything is created, and the agent admits by capacity on every driver:
        deploy/test-driver.toml says why."""
        with open(TEST_DRIVER_CONFIG) as f:
            return f.read() + "\n"

    def _make_pool(self):
        image = os.path.join(self.tmp, "pool.img")
        with open(image, "wb") as f:
            f.truncate(512 * 1024 ** 3)  # sparse: lvm2 writes metadata only
        self.loop = subprocess.run(["losetup", "--find", "--show", image], check=True,
                                   capture_output=True, text=True).stdout.strip()
        self.vg = "hvnova%d_%s" % (os.getpid(), os.path.basename(self.tmp)[-6:].replace("-", ""))
        self.pool = POOL
        return ('[[storage.pools]]\nname = "%s"\ntype = "lvm"\nvolume_group = "%s"\n'
                'physical_volumes = ["%s"]\nwipe = "none"\n' % (POOL, self.vg, self.loop))

    def pem(self, name):
        return os.path.join(self.pki, name)

    def _tls_config(self):
        config = ('[tls]\ncert_file = "%s"\nkey_file = "%s"\nclient_ca_file = "%s"\n'
                  % (self.pem("server.crt"), self.pem("server.key"), self.pem("ca.crt")))
        for role in ("controller", "operator", "monitor"):
            config += '[[auth.identities]]\nname = "hvagent-%s"\nrole = "%s"\n' % (role, role)
        return config

    def _wait_healthy(self):
        deadline = time.time() + 30
        scheme, context = "http", None
        if self.pki:  # /healthz needs no token; the server must still prove itself
            scheme, context = "https", ssl.create_default_context(cafile=self.pem("ca.crt"))
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("hvagentd exited with %s:\n%s"
                                     % (self.proc.returncode, self.log_text()))
            try:
                with urllib.request.urlopen("%s://%s/healthz" % (scheme, self.rest_addr),
                                            timeout=5, context=context) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("hvagentd not healthy within 30 s:\n" + self.log_text())

    def rest(self, method, path, body=None):
        """(status, body text) of a REST call to the agent."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request("http://%s%s" % (self.rest_addr, path), data=data,
                                     method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def log_text(self):
        try:
            with open(os.path.join(self.tmp, "hvagentd.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log = getattr(self, "log", None)
        if log is not None:
            log.close()
        if self.vg:
            subprocess.run(["vgremove", "-f", "--config", "global{activation=0}", self.vg],
                           capture_output=True)
        if self.loop:
            subprocess.run(["pvremove", "-ff", "-y", self.loop], capture_output=True)
            subprocess.run(["losetup", "-d", self.loop], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return proc.returncode if proc is not None else None
