#!/usr/bin/python3
"""Boots real Xen 4.17 ARM64 with the test's dom0 under qemu-system-aarch64 (TCG) and talks to
dom0 over a control channel. Every program runs from an argv list, never through a shell.

    run_xen.py [--image DIR] [--workdir DIR] [--keep-running]   boot, report the steps, power off

Layout QEMU sees: Xen as -kernel; dom0's kernel and initramfs through -device guest-loader;
virtio-mmio devices (Xen hands them all to dom0): the test disk (/dev/vda in dom0), a
user-mode network whose host ports forward to the agent's gRPC and REST ports (through the
socat relays dom0-init.sh starts), and a virtio-serial port named hvagent.ctl that carries the
control channel (protocol in dom0-init.sh). Serial (Xen's and, through Xen, dom0's console)
goes to console.log.
"""

import argparse
import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_IMAGE = "/var/cache/hvagent-xen-arm64/image"
READY = "HVAGENT-DOM0-READY"
XEN_CMDLINE = "dom0_mem=768M dom0_max_vcpus=2 console=dtuart dtuart=/pl011@9000000 bootscrub=0 guest_loglvl=all"
DOM0_CMDLINE = "console=hvc0 earlycon=xen rdinit=/init quiet loglevel=4"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BootError(AssertionError):
    pass


class XenMachine:
    """One QEMU running Xen + dom0. `hard_timeout`: QEMU is killed after that many seconds
    whatever happens (the tier's own bound)."""

    def __init__(self, image=DEFAULT_IMAGE, workdir="/tmp/hvagent-xen-arm64", disk_size=4 << 30,
                 hard_timeout=600, memory="2G", smp=2):
        self.image = image
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.console_log = os.path.join(workdir, "console.log")
        self.disk = os.path.join(workdir, "disk.raw")
        self.ctl_path = os.path.join(workdir, "ctl.sock")
        self.grpc_port = free_port()
        self.rest_port = free_port()
        # dom0's serial TCP ticket ports ([console] tcp_port_min..max in build-dom0.sh) -> host
        self.console_ports = {port: free_port() for port in (8790, 8791)}
        self.disk_size = disk_size
        self.hard_timeout = hard_timeout
        self.memory = memory
        self.smp = smp
        self.proc = None
        self.ctl = None
        self.ctl_buf = b""
        self.seq = 0
        self.started_at = None
        self.ready_seconds = None
        self._killer = None

    def argv(self):
        img = lambda name: os.path.join(self.image, name)
        return [
            "qemu-system-aarch64",
            "-M", "virt,virtualization=on,gic-version=3", "-cpu", "cortex-a57",
            "-m", self.memory, "-smp", str(self.smp),
            "-display", "none", "-monitor", "none", "-no-reboot",
            "-chardev", f"file,id=con,path={self.console_log}", "-serial", "chardev:con",
            "-kernel", img("xen"), "-append", XEN_CMDLINE,
            "-device", f"guest-loader,addr=0x60000000,kernel={img('vmlinuz')},bootargs={DOM0_CMDLINE}",
            "-device", f"guest-loader,addr=0x64000000,initrd={img('dom0.cpio.gz')}",
            "-drive", f"if=none,id=disk0,file={self.disk},format=raw,cache=unsafe",
            "-device", "virtio-blk-device,drive=disk0",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.grpc_port}-10.0.2.15:50051,"
                       f"hostfwd=tcp:127.0.0.1:{self.rest_port}-10.0.2.15:8780"
                       + "".join(f",hostfwd=tcp:127.0.0.1:{h}-10.0.2.15:{g}" for g, h in self.console_ports.items()),
            "-device", "virtio-net-device,netdev=net0",
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=ctl,path={self.ctl_path},server=on,wait=off",
            "-device", "virtserialport,chardev=ctl,name=hvagent.ctl",
        ]

    def start(self):
        for name in ("xen", "vmlinuz", "dom0.cpio.gz"):
            if not os.path.exists(os.path.join(self.image, name)):
                raise BootError(f"no {name} in {self.image}: run build-dom0.sh")
        # A fresh, sparse, blank disk every boot: the agent must create its VG from nothing.
        with open(self.disk, "wb") as f:
            f.truncate(self.disk_size)
        for p in (self.console_log, self.ctl_path):
            if os.path.exists(p):
                os.unlink(p)
        self.started_at = time.monotonic()
        with open(os.path.join(self.workdir, "qemu.out"), "wb") as qemu_out:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=qemu_out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self._killer = threading.Timer(self.hard_timeout, self._hard_kill)
        self._killer.daemon = True
        self._killer.start()

    def _hard_kill(self):
        if self.proc and self.proc.poll() is None:
            with open(self.console_log, "a") as f:
                f.write(f"\n[run_xen.py: hard timeout {self.hard_timeout} s, killing QEMU]\n")
            self.proc.kill()

    def console(self):
        try:
            with open(self.console_log, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_for(self, marker, timeout):
        """Waits for `marker` on the serial console; returns the console text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.console()
            if marker in text:
                return text
            if self.proc.poll() is not None:
                raise BootError(f"QEMU exited with {self.proc.returncode} before '{marker}'")
            time.sleep(0.25)
        raise BootError(f"'{marker}' not on the console within {timeout} s")

    def boot(self, timeout=300):
        self.start()
        self.wait_for(READY, timeout)
        self.ready_seconds = time.monotonic() - self.started_at
        return self.ready_seconds

    def steps(self):
        """{step name: "ok" | "FAILED ..." | "skipped ..."} from dom0-init.sh's console lines."""
        out = {}
        for line in self.console().splitlines():
            i = line.find("HVAGENT-STEP ")
            if i >= 0:
                parts = line[i:].split(" ", 2)
                if len(parts) >= 3:
                    out[parts[1]] = parts[2].strip()
        return out

    # --- control channel -------------------------------------------------------------------
    def _connect(self):
        if self.ctl is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.ctl_path)
            self.ctl = s
            self.ctl_buf = b""

    def _readline(self, deadline):
        while b"\n" not in self.ctl_buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("control channel: no answer")
            self.ctl.settimeout(left)
            chunk = self.ctl.recv(65536)
            if not chunk:
                raise ConnectionError("control channel closed")
            self.ctl_buf += chunk
        line, _, self.ctl_buf = self.ctl_buf.partition(b"\n")
        return line.decode()

    def run(self, argv, timeout=60, check=False):
        """Runs argv in dom0: (exit status, stdout, stderr). No shell in between."""
        if any("\n" in a for a in argv):
            raise ValueError("an argument with a newline cannot cross the control channel")
        self._connect()
        self.seq += 1
        rid = str(self.seq)
        msg = f"RUN {rid} {len(argv)} {int(timeout)}\n" + "".join(a + "\n" for a in argv)
        self.ctl.sendall(msg.encode())
        deadline = time.monotonic() + timeout + 15
        while True:
            line = self._readline(deadline)
            if line == f"BEGIN {rid}":
                break
        out = base64.b64decode(self._readline(deadline)).decode(errors="replace")
        err = base64.b64decode(self._readline(deadline)).decode(errors="replace")
        end = self._readline(deadline).split()
        if end[:2] != ["END", rid]:
            raise ConnectionError(f"control channel: unexpected {end}")
        rc = int(end[2])
        if check and rc != 0:
            raise AssertionError(f"dom0: {argv} exited {rc}: {err.strip() or out.strip()}")
        return rc, out, err

    def wait_ctl(self, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ctl = None
                rc, out, _ = self.run(["true"], timeout=10)
                return
            except (OSError, TimeoutError, ConnectionError):
                if self.ctl is not None:
                    self.ctl.close()
                    self.ctl = None
                if time.monotonic() > deadline:
                    raise BootError("control channel does not answer")
                time.sleep(0.5)

    def poweroff(self, timeout=90):
        """Asks dom0 to power off (agent and libvirtd stopped first); Xen then stops the machine
        and QEMU exits. Returns True when that happened in time, else kills QEMU."""
        clean = False
        if self.proc and self.proc.poll() is None:
            try:
                self._connect()
                self.ctl.sendall(b"POWEROFF\n")
                self.proc.wait(timeout=timeout)
                clean = True
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        return clean

    def kill(self):
        if self._killer:
            self._killer.cancel()
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("--workdir", default="/tmp/hvagent-xen-arm64")
    ap.add_argument("--timeout", type=int, default=300, help="seconds to dom0 ready")
    ap.add_argument("--keep-running", action="store_true", help="leave QEMU running (prints ports)")
    a = ap.parse_args()
    m = XenMachine(a.image, a.workdir, hard_timeout=a.timeout + 600 if a.keep_running else a.timeout + 120)
    try:
        secs = m.boot(a.timeout)
        print(f"dom0 ready in {secs:.1f} s; console {m.console_log}")
        for k, v in m.steps().items():
            print(f"  {k}: {v}")
        m.wait_ctl()
        rc, out, err = m.run(["xl", "list"])
        print(out or err)
        if a.keep_running:
            print(f"REST 127.0.0.1:{m.rest_port} gRPC 127.0.0.1:{m.grpc_port} ctl {m.ctl_path} "
                  f"qemu pid {m.proc.pid}")
            return 0
        t = time.monotonic()
        clean = m.poweroff()
        print(f"poweroff {'clean' if clean else 'FORCED'} in {time.monotonic() - t:.1f} s")
        return 0 if clean else 1
    except BaseException as e:
        print(f"FAILED: {e}\n---- console (last 4000 chars) ----\n{m.console()[-4000:]}", file=sys.stderr)
        m.kill()
        return 1


if __name__ == "__main__":
    sys.exit(main())
