"""The Nova driver's own Debian package, for real: python3-hvagent-nova built by
drivers/nova/build-deb.sh, installed with apt (its Depends from Debian's archive), then used the
way docs/openstack.md tells an operator to: a fresh /usr/bin/python3 with no PYTHONPATH loads
`compute_driver = hvagent.HvagentDriver` through Nova's own loader and calls a real agent;
oslo-config-generator finds the [hvagent] options. Then purged, with nothing of it left behind
(byte-compiled files included) and Nova itself untouched."""

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.request

from test_package import free_port, run  # the same helpers as the agent's package test

BUILD = os.environ["HVAGENT_BUILD_DIR"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE = "/usr/lib/python3/dist-packages"
FILES = [f"{SITE}/hvagent_nova/driver.py", f"{SITE}/hvagent_nova/events.py",
         f"{SITE}/hvagent/v1/domain_pb2_grpc.py", f"{SITE}/nova/virt/hvagent.py",
         f"{SITE}/hvagent_nova-0.1.0.dist-info/entry_points.txt"]
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

# Runs in a fresh interpreter that sees only what is installed; argv: the agent's address.
PROBE = r'''
import sys
from nova import conf as nova_conf
from nova.virt import driver as nova_driver
from nova.virt import fake
nova_conf.CONF([], project="nova", default_config_files=[])
drv = nova_driver.load_compute_driver(fake.FakeVirtAPI(), "hvagent.HvagentDriver")
# The driver registers [hvagent] on import, as a nova.conf read before it would find it.
nova_conf.CONF.set_override("address", sys.argv[1], group="hvagent")
nova_conf.CONF.set_override("plaintext", True, group="hvagent")
drv.init_host("h")
import hvagent_nova
print(type(drv).__module__ + "." + type(drv).__name__, hvagent_nova.__file__,
      drv.get_available_nodes()[0], len(drv.list_instances()))
'''


def fresh_python_env(home):
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": home, "PYTHONNOUSERSITE": "1"}


class NovaPackageTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="hvnova-deb-")

    def start_agent(self):
        grpc_addr, rest = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        proc = subprocess.Popen([os.path.join(BUILD, "agent", "hvagentd"), "--plaintext-loopback",
                                 "--hypervisor-uri", "test:///default", "--grpc-listen", grpc_addr,
                                 "--rest-listen", rest],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        def stop():
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(timeout=20), 0)
        self.addCleanup(stop)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://{rest}/healthz", timeout=5) as resp:
                    if resp.status == 200:
                        return grpc_addr
            except OSError:
                time.sleep(0.2)
        self.fail("hvagentd not healthy within 20 s")

    def test_build_install_load_purge(self):
        r = run([os.path.join(REPO, "drivers", "nova", "build-deb.sh"), self.tmp])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        deb = r.stdout.strip().splitlines()[-1]
        self.assertEqual(glob.glob(os.path.join(self.tmp, "*.deb")), [deb])
        self.assertTrue(deb.endswith("/python3-hvagent-nova_0.1.0_all.deb"), deb)
        self.assertEqual(run(["dpkg-deb", "-f", deb, "Architecture"]).stdout.strip(), "all")
        depends = run(["dpkg-deb", "-f", deb, "Depends"]).stdout
        for pkg in ("python3-nova", "python3-grpcio", "python3-protobuf", "python3-oslo.config"):
            self.assertIn(pkg, depends)
        listing = run(["dpkg-deb", "-c", deb]).stdout
        self.assertNotIn("__pycache__", listing)
        self.assertNotIn("RECORD", listing)  # pip's bookkeeping: dpkg owns these files

        r = run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", deb], env=APT_ENV)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        try:
            self.assertEqual(run(["dpkg-query", "-W", "-f", "${Status}", "python3-hvagent-nova"]).stdout,
                             "install ok installed")
            for f in FILES:
                self.assertTrue(os.path.isfile(f), f)
            # postinst byte-compiled the package's modules (py3compile).
            self.assertTrue(glob.glob(f"{SITE}/hvagent_nova/__pycache__/driver.*.pyc"))

            address = self.start_agent()
            env = fresh_python_env(self.tmp)
            r = run(["/usr/bin/python3", "-c", PROBE, address], env=env, cwd=self.tmp)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            loaded, package_file, node, _ = r.stdout.strip().splitlines()[-1].split()
            self.assertEqual(loaded, "hvagent_nova.driver.HvagentDriver")
            self.assertEqual(package_file, f"{SITE}/hvagent_nova/__init__.py")
            self.assertTrue(node)

            r = run(["/usr/bin/oslo-config-generator", "--namespace", "hvagent"], env=env, cwd=self.tmp)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("[hvagent]", r.stdout)
            self.assertIn("#address = ", r.stdout)
        finally:
            r = run(["apt-get", "purge", "-y", "-qq", "python3-hvagent-nova"], env=APT_ENV)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for f in FILES:
            self.assertFalse(os.path.exists(f), f"{f} left behind after purge")
        for d in (f"{SITE}/hvagent_nova", f"{SITE}/hvagent", "/usr/share/doc/python3-hvagent-nova"):
            self.assertFalse(os.path.exists(d), f"{d} left behind after purge")
        self.assertFalse(glob.glob(f"{SITE}/nova/virt/__pycache__/hvagent.*"))
        # Nova's own package is intact: its virt package still imports, its drivers are there.
        r = run(["/usr/bin/python3", "-c", "import nova.virt.fake, nova.virt.driver"],
                env=fresh_python_env(self.tmp), cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(run(["dpkg", "--verify", "python3-nova"]).stdout, "")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
