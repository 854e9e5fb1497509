"""Two libvirt "hosts" on this machine for live migration (issue 26, docs/migration.md).

Each host is a full libvirtd of its own (ns_libvirtd.sh: a private mount namespace with its own
/etc/libvirt, /run/libvirt, /var/lib/libvirt, so its own host_uuid, domain list and sockets).
The destination also runs in a network namespace of its own, joined to this machine's by a veth
pair: the source libvirtd reaches the destination's libvirtd over qemu+tcp on the veth, and the
migration stream and libvirt's NBD disk copy cross the veth. The source stays in this machine's
network namespace so the tests (and both agents, on loopback) can reach everything."""

import os
import shutil
import subprocess
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
# The machine's libvirtd (the integration fixture's) keeps what it probed of each QEMU binary
# here. A private libvirtd with an empty cache probes all of them again as it starts (12 s of
# its start at load 3, 0.5 s without); the result depends only on the binaries and libvirt,
# which libvirt checks the cached files against (it probes again when they changed), so each
# host's cache starts as a copy of the machine's.
MACHINE_QEMU_CAPS = "/var/cache/libvirt/qemu/capabilities"


def run(argv, check=True):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"{argv} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def partition_pool(directory, pool):
    """A sparse 128 MiB image in `directory` on a loop device (partitions scanned), and the
    agent's config for it: its state under `directory`, partition pool `pool` on the loop device,
    no wipe. Returns (loop device, config text); the caller detaches the device."""
    img = os.path.join(directory, f"{pool}.img")
    with open(img, "wb") as f:
        f.truncate(128 << 20)
    loop = run(["losetup", "--find", "--show", "--partscan", img]).stdout.strip()
    return loop, (f'[reliability]\nstate_dir = "{directory}/state"\n'
                  f'[[storage.pools]]\nname = "{pool}"\ntype = "partition"\ndisk = "{loop}"\nwipe = "none"\n')


class Veth:
    """A veth pair: one end here (HOST_IP), the other in a new named network namespace
    (PEER_IP)."""

    def __init__(self, tag, subnet):
        self.netns = f"hvit-{tag}"
        self.here, self.there = f"hvit{tag}a", f"hvit{tag}b"
        self.host_ip, self.peer_ip = f"{subnet}.1", f"{subnet}.2"
        run(["ip", "netns", "add", self.netns])
        try:
            run(["ip", "link", "add", self.here, "type", "veth", "peer", "name", self.there])
            run(["ip", "link", "set", self.there, "netns", self.netns])
            run(["ip", "addr", "add", f"{self.host_ip}/24", "dev", self.here])
            run(["ip", "link", "set", self.here, "up"])
            ns = ["ip", "netns", "exec", self.netns]
            run(ns + ["ip", "addr", "add", f"{self.peer_ip}/24", "dev", self.there])
            run(ns + ["ip", "link", "set", self.there, "up"])
            run(ns + ["ip", "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise

    def set_up(self, up):
        run(["ip", "link", "set", self.here, "up" if up else "down"])

    def close(self):
        run(["ip", "link", "del", self.here], check=False)
        run(["ip", "netns", "del", self.netns], check=False)


class LibvirtHost:
    """A private libvirtd (QEMU driver, guests under TCG as root). `netns`: the named network
    namespace it runs in (None: this machine's). `address`: where other hosts reach it; with an
    address it listens on qemu+tcp there and QEMU's migration ports bind to it."""

    def __init__(self, tag, netns=None, address=None, extra_qemu_conf=""):
        self.dir = tempfile.mkdtemp(prefix=f"hvit-lv-{tag}-")
        self.address = address
        etc = os.path.join(self.dir, "etc")
        os.makedirs(etc)
        conf = [f'host_uuid = "{uuid.uuid4()}"', 'listen_tls = 0', 'unix_sock_group = "root"',
                f'log_outputs = "3:file:{self.dir}/libvirtd.log"']
        conf += ([f'listen_tcp = 1', 'auth_tcp = "none"', f'listen_addr = "{address}"']
                 if address else ['listen_tcp = 0'])
        with open(os.path.join(etc, "libvirtd.conf"), "w") as f:
            f.write("\n".join(conf) + "\n")
        qemu = ['user = "root"', 'group = "root"', 'security_driver = "none"', 'dynamic_ownership = 0',
                'stdio_handler = "file"', 'namespaces = [ ]']
        if address:
            qemu += [f'migration_address = "{address}"', f'migration_host = "{address}"']
        with open(os.path.join(etc, "qemu.conf"), "w") as f:
            f.write("\n".join(qemu) + "\n" + extra_qemu_conf)
        if os.path.isdir(MACHINE_QEMU_CAPS):
            shutil.copytree(MACHINE_QEMU_CAPS, os.path.join(self.dir, "cache", "qemu", "capabilities"))
        argv = ["unshare", "--mount", "--propagation", "private", os.path.join(HERE, "ns_libvirtd.sh"), self.dir]
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        self.log = open(os.path.join(self.dir, "stdout.log"), "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.wrapper = ["nsenter", f"--mount=/proc/{self.proc.pid}/ns/mnt", "--"]
        deadline = time.time() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"libvirtd {tag} exited {self.proc.returncode}: {self.log_text()}")
            if self.virsh("version", check=False).returncode == 0:
                break
            if time.time() > deadline:
                self.close()
                raise AssertionError(f"libvirtd {tag} not answering within 30 s: {self.log_text()}")
            time.sleep(0.2)

    def log_text(self):
        with open(os.path.join(self.dir, "stdout.log"), errors="replace") as f:
            out = f.read()
        try:
            with open(os.path.join(self.dir, "libvirtd.log"), errors="replace") as f:
                out += f.read()[-4000:]
        except OSError:
            pass
        return out

    @property
    def tcp_uri(self):
        return f"qemu+tcp://{self.address}/system"

    def virsh(self, *args, check=True):
        return run(self.wrapper + ["virsh", "-c", "qemu:///system", *args], check=check)

    def close(self):
        if self.proc.poll() is None:
            for name in self.virsh("list", "--name", check=False).stdout.split():
                self.virsh("destroy", name, check=False)
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
