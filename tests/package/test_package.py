"""The Debian package, for real: built by CPack from this tree, installed with apt (its
dependencies from Debian's archive), the installed hvagentd started and answering, then purged
with nothing of it left behind. The package's Depends must cover every library the binaries
link (dpkg-shlibdeps computes them; this test checks the result against readelf)."""

import glob
import os
import socket
import subprocess
import time
import unittest
import urllib.request

BUILD = os.environ["HVAGENT_BUILD_DIR"]
FILES = ["/usr/sbin/hvagentd", "/usr/bin/hvctl", "/usr/share/hvagent/cloudstack/hvagent-cloudstack",
         "/lib/systemd/system/hvagentd.service", "/etc/hvagent/hvagent.toml"]


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PackageTest(unittest.TestCase):
    def test_build_install_start_purge(self):
        r = run(["cpack", "-G", "DEB"], cwd=BUILD)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        debs = glob.glob(os.path.join(BUILD, "hvagent_*_amd64.deb"))
        self.assertEqual(len(debs), 1, debs)
        deb = debs[0]

        depends = run(["dpkg-deb", "-f", deb, "Depends"]).stdout
        for lib, pkg in [("libvirt.so.0", "libvirt0"), ("libgrpc++.so.1.51", "libgrpc++1.51"),
                         ("libcpprest.so.2.10", "libcpprest2.10"), ("libxenctrl.so.4.17", "libxenmisc4.17"),
                         ("libsystemd.so.0", "libsystemd0")]:
            needed = run(["readelf", "-d", os.path.join(BUILD, "agent", "hvagentd")]).stdout
            self.assertIn(f"[{lib}]", needed)
            self.assertIn(pkg, depends, f"{lib} is linked but {pkg} is not in Depends: {depends}")
        for tool in ("lvm2", "parted", "fdisk"):
            self.assertIn(tool, depends)

        r = run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", deb],
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        try:
            for f in FILES:
                self.assertTrue(os.path.exists(f), f)
            self.assertEqual(run(["dpkg-query", "-W", "-f", "${Status}", "hvagent"]).stdout,
                             "install ok installed")
            rest = f"127.0.0.1:{free_port()}"
            proc = subprocess.Popen(["/usr/sbin/hvagentd", "--plaintext-loopback", "--hypervisor-uri",
                                     "test:///default", "--grpc-listen", f"127.0.0.1:{free_port()}",
                                     "--rest-listen", rest], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline, status = time.time() + 20, None
                while time.time() < deadline and status != 200:
                    try:
                        with urllib.request.urlopen(f"http://{rest}/healthz", timeout=5) as resp:
                            status = resp.status
                    except OSError:
                        time.sleep(0.2)
                self.assertEqual(status, 200)
            finally:
                proc.terminate()
                self.assertEqual(proc.wait(timeout=20), 0)
            # The shipped config wants TLS files the operator has not made yet: the agent refuses
            # to start and names the file, rather than serving without them.
            r = run(["/usr/sbin/hvagentd", "--config", "/etc/hvagent/hvagent.toml"])
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("/etc/hvagent/tls/", r.stdout + r.stderr)
        finally:
            r = run(["apt-get", "purge", "-y", "-qq", "hvagent"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for f in FILES:
            self.assertFalse(os.path.exists(f), f"{f} left behind after purge")
        self.assertFalse(os.path.exists("/etc/hvagent"))
        self.assertNotEqual(run(["dpkg-query", "-W", "-f", "${Status}", "hvagent"]).stdout, "install ok installed")
