"""LoopPoolsTestCase: an agent test class whose agent has two real storage pools on loop devices,
a GPT disk ("disk1", partition pool) and an lvm2 VG ("vg"), made before the agent starts and
removed (VG, PVs, loops, files) after it stops. Subclasses add their own config with
extra_config() and may override pool_image_bytes."""

import json
import os
import shutil
import subprocess
import tempfile
import uuid

from agent_harness import AgentTestCase

LVM = "/sbin/lvm"
MiB = 1 << 20


def run(argv, check=True):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"{argv} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def _dm_usable():
    try:
        fd = os.open("/dev/mapper/control", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def lvm_argv(sub, *args):
    """lvm2 as the agent runs it: without device-mapper (this CI kernel), activation is off."""
    argv = [LVM, sub]
    if not os.path.exists("/dev/mapper/control") or not _dm_usable():
        argv += ["--config", "global{activation=0}"]
    return argv + list(args)


def attach_loop(path):
    return run(["losetup", "--find", "--show", "--partscan", path]).stdout.strip()


class LoopPoolsTestCase(AgentTestCase):
    pool_image_bytes = 256 * MiB

    def image_pool_state(self, scratch):
        """What a failed image import or upload must leave as it was: disk1's partitions, the
        kernel's block devices of the disk, the pool's images and volumes, the files in the
        agent's scratch directory `scratch`, and no operation still running."""
        table = json.loads(run(["sfdisk", "--json", self.disk]).stdout)["partitiontable"].get("partitions", [])
        lsblk = run(["lsblk", "-rno", "NAME", self.disk]).stdout.split()
        status, images = self.agent.rest("GET", "/v1/pools/disk1/images")
        self.assertEqual(status, 200, images)
        status, volumes = self.agent.rest("GET", "/v1/pools/disk1/volumes")
        self.assertEqual(status, 200, volumes)
        status, running = self.agent.rest("GET", "/v1/operations?running_only=true")
        return {"table": [(p["node"], p.get("name")) for p in table], "lsblk": lsblk, "images": images["images"],
                "volumes": volumes["volumes"], "scratch": os.listdir(scratch), "running": running["operations"]}

    @classmethod
    def setUpClass(cls):
        cls.vg = f"hvit_vg_{uuid.uuid4().hex[:8]}"
        cls.loopdir = tempfile.mkdtemp(prefix="hvit-pools-")
        cls.loops = []
        try:
            for name in ("disk.img", "pv.img"):
                path = os.path.join(cls.loopdir, name)
                with open(path, "wb") as f:
                    f.truncate(cls.pool_image_bytes)
                cls.loops.append(attach_loop(path))
            cls.disk, cls.pv = cls.loops
            super().setUpClass()
        except BaseException:
            cls._remove_loops()
            raise

    @classmethod
    def extra_config(cls):
        return ""

    @classmethod
    def agent_config(cls):
        return cls.extra_config() + f"""
[[storage.pools]]
name = "disk1"
type = "partition"
disk = "{cls.disk}"
wipe = "zero"

[[storage.pools]]
name = "vg"
type = "lvm"
volume_group = "{cls.vg}"
physical_volumes = ["{cls.pv}"]
wipe = "none"
"""

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls._remove_loops()

    @classmethod
    def _remove_loops(cls):
        run(lvm_argv("vgremove", "-ff", "-y", cls.vg), check=False)
        for loop in cls.loops:
            run(lvm_argv("pvremove", "-ff", "-y", loop), check=False)
            run(["losetup", "-d", loop], check=False)
        shutil.rmtree(cls.loopdir, ignore_errors=True)
