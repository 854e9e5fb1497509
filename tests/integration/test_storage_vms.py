"""VMs whose disks are pool volumes, end to end: the agent is configured with a partition pool
on one loop device and an LVM pool on another, and is driven through gRPC and REST against the
real libvirtd + QEMU of this tier.

- partition-backed disk: the VM is created with a new volume and started; QEMU itself must
  hold the partition's device node open (read from /proc/<qemu pid>/fd).
- LV-backed disk: this machine's kernel has no device-mapper, so an LV has no device node and
  the VM is only defined; the test reads the domain XML libvirt stored and lvm2's own tags.
- hostile input through the API is refused with nothing changed (no domain, no volume, no LV,
  no partition)."""

import os
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET

import grpc

from agent_harness import unique_name, virsh
from loop_pools import LoopPoolsTestCase, lvm_argv, run
from hvagent.v1 import domain_pb2, storage_pb2

MiB = 1 << 20


class StorageVmTest(LoopPoolsTestCase):
    # ---- helpers ----

    def spec_with_volume(self, name, pool, volume, size, target="vda"):
        spec = domain_pb2.DomainSpec(name=name, vcpus=1, memory_mib=64, serial_console=True)
        spec.firmware.type = domain_pb2.FirmwareBoot.TYPE_BIOS
        disk = spec.disks.add(target=target)
        disk.volume.pool = pool
        disk.volume.name = volume
        disk.volume.create_size_bytes = size
        return spec

    def volumes(self, pool):
        return {v.name: v for v in self.agent.storage.ListVolumes(storage_pb2.ListVolumesRequest(pool=pool)).volumes}

    def lvs(self):
        out = run(lvm_argv("lvs", "--noheadings", "--separator", "|", "-o", "lv_name,lv_tags", self.vg)).stdout
        rows = {}
        for line in out.splitlines():
            if line.strip():
                name, tags = line.strip().split("|")
                rows[name] = set(t for t in tags.split(",") if t)
        return rows

    def partitions(self):
        return run(["sfdisk", "--json", self.disk], check=False).stdout

    def wait_volume_gone(self, pool, name, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                self.agent.storage.GetVolume(storage_pb2.VolumeRef(pool=pool, name=name))
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    return
                raise
            time.sleep(0.1)
        self.fail(f"volume {pool}/{name} still there after {timeout} s")

    def qemu_open_devices(self, name):
        with open(f"/run/libvirt/qemu/{name}.pid") as f:
            pid = int(f.read().strip())
        fd_dir = f"/proc/{pid}/fd"
        targets = set()
        for fd in os.listdir(fd_dir):
            try:
                targets.add(os.readlink(os.path.join(fd_dir, fd)))
            except OSError:
                pass  # closed meanwhile
        return targets

    # ---- tests ----

    def test_partition_backed_vm_runs_with_the_partition_open_in_qemu(self):
        name = unique_name("part")
        dom = self.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(
            spec=self.spec_with_volume(name, "disk1", "root", 32 * MiB), start=True))
        self.assertEqual(dom.state, domain_pb2.DOMAIN_STATE_RUNNING)
        vol = self.volumes("disk1")["root"]
        self.assertEqual(vol.attached_to, name)
        self.assertTrue(vol.path.startswith(self.disk + "p"), vol.path)
        self.assertIn(vol.path, self.qemu_open_devices(name))
        # libvirt stored it as a raw block disk on that partition.
        xml = ET.fromstring(virsh("dumpxml", name).stdout)
        disk = xml.find("./devices/disk")
        self.assertEqual(disk.get("type"), "block")
        self.assertEqual(disk.find("source").get("dev"), vol.path)
        self.assertEqual(disk.find("driver").get("type"), "raw")
        # The volume is in use: deleting it is refused while the VM exists.
        with self.assertRaises(grpc.RpcError) as cm:
            self.agent.storage.DeleteVolume(storage_pb2.VolumeRef(pool="disk1", name="root"))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)

        # Deleting the VM with its volumes wipes and removes the partition.
        self.agent.domains.DeleteDomain(domain_pb2.DeleteDomainRequest(name=name, force=True, delete_volumes=True))
        self.wait_volume_gone("disk1", "root")
        self.assertNotIn(name, virsh("list", "--all", "--name").stdout.split())
        self.assertNotIn('"name":"hvagent:root', self.partitions().replace(" ", ""))

    def test_lv_backed_vm_is_stored_by_libvirt_with_the_lv_as_its_disk(self):
        name = unique_name("lv")
        body = {"spec": {"name": name, "vcpus": 1, "memory_mib": 64, "firmware": {"type": "TYPE_BIOS"},
                         "disks": [{"target": "vda", "volume": {"pool": "vg", "name": "root",
                                                                 "create_size_bytes": str(16 * MiB)}}]},
                "start": False}
        status, dom = self.agent.rest("POST", "/v1/domains", body)
        self.assertEqual(status, 201, dom)
        xml = ET.fromstring(virsh("dumpxml", "--inactive", name).stdout)
        disks = xml.findall("./devices/disk")
        self.assertEqual(len(disks), 1)
        self.assertEqual(disks[0].get("type"), "block")
        self.assertEqual(disks[0].find("source").get("dev"), f"/dev/{self.vg}/root")
        self.assertEqual(disks[0].find("target").get("dev"), "vda")
        self.assertEqual(disks[0].find("target").get("bus"), "virtio")
        # lvm2's own record: ours, attached to this VM, and owned by it (created with it).
        self.assertEqual(self.lvs()["root"], {"hvagent", f"hvagent_vm_{name}", f"hvagent_owned_by_{name}"})

        # Deleting the VM without its volumes frees the LV and keeps it.
        status, _ = self.agent.rest("DELETE", f"/v1/domains/{name}")
        self.assertEqual(status, 204)
        self.assertEqual(self.lvs()["root"], {"hvagent"})
        status, vol = self.agent.rest("GET", "/v1/pools/vg/volumes/root")
        self.assertEqual((status, vol["attached_to"]), (200, ""))
        status, _ = self.agent.rest("DELETE", "/v1/pools/vg/volumes/root")
        self.assertEqual(status, 202)
        self.wait_volume_gone("vg", "root")
        self.assertNotIn("root", self.lvs())

    def test_delete_with_volumes_deletes_only_what_the_domain_created(self):
        """Issue 22 as reported: a volume holding data, named as an existing volume in
        CreateDomain next to a new root volume, survived `DELETE ?delete_volumes=true` with its
        bytes; the root volume the domain created is deleted. Ownership shows in the API, in
        hvctl, and in the GPT partition names themselves."""
        name = unique_name("own")[:13]  # partition names: volume and domain fit 27 characters
        status, vol = self.agent.rest("POST", "/v1/pools/disk1/volumes", {"name": "data17", "size_bytes": str(4 * MiB)})
        self.assertEqual(status, 201, vol)
        payload = os.urandom(4 * MiB)
        with open(vol["path"], "r+b") as f:
            f.write(payload)
        body = {"spec": {"name": name, "vcpus": 1, "memory_mib": 64, "firmware": {"type": "TYPE_BIOS"},
                         "disks": [{"target": "vda", "volume": {"pool": "disk1", "name": "root17",
                                                                 "create_size_bytes": str(8 * MiB)}},
                                   {"target": "vdb", "volume": {"pool": "disk1", "name": "data17"}}]},
                "start": True}
        status, dom = self.agent.rest("POST", "/v1/domains", body)
        self.assertEqual(status, 201, dom)
        vols = self.volumes("disk1")
        self.assertEqual((vols["root17"].attached_to, vols["root17"].ownership), (name, storage_pb2.VOLUME_OWNERSHIP_OWNED))
        self.assertEqual((vols["data17"].attached_to, vols["data17"].ownership),
                         (name, storage_pb2.VOLUME_OWNERSHIP_BORROWED))
        labels = self.partitions()
        self.assertIn(f"hvagent:root17={name}", labels)
        self.assertIn(f"hvagent:data17@{name}", labels)
        hvctl = os.path.join(os.path.dirname(os.environ["HVAGENTD"]), "hvctl")
        table = run([hvctl, "--server", self.agent.grpc_addr, "volumes", "disk1"]).stdout.splitlines()
        self.assertEqual(table[0].split()[:5], ["VOLUME", "SIZE", "ATTACHED", "TO", "OWNERSHIP"])
        rows = {line.split()[0]: line.split() for line in table[1:]}
        self.assertEqual(rows["root17"][4], "owned")
        self.assertEqual(rows["data17"][4], "borrowed")

        status, _ = self.agent.rest("DELETE", f"/v1/domains/{name}?force=true&delete_volumes=true")
        self.assertEqual(status, 204)
        self.wait_volume_gone("disk1", "root17")
        status, vol = self.agent.rest("GET", "/v1/pools/disk1/volumes/data17")
        self.assertEqual((status, vol["attached_to"], vol["ownership"], vol["state"]),
                         (200, "", "VOLUME_OWNERSHIP_UNSPECIFIED", "VOLUME_STATE_AVAILABLE"))
        with open(vol["path"], "rb") as f:
            self.assertEqual(f.read(len(payload)), payload)
        self.assertEqual(self.agent.rest("DELETE", "/v1/pools/disk1/volumes/data17")[0], 202)
        self.wait_volume_gone("disk1", "data17")

    def test_hostile_input_is_refused_with_nothing_changed(self):
        name = unique_name("bad")
        before = (sorted(virsh("list", "--all", "--name").stdout.split()), self.lvs(), self.partitions())
        cases = [
            # (what, disk JSON, expected HTTP status, field the message must name)
            ("device path outside the pools", {"target": "vda", "type": "TYPE_BLOCK",
                                               "source_path": "../../etc/passwd"}, 400, "spec.disks[0].source_path"),
            ("pool that is not configured", {"target": "vda", "volume": {"pool": "nope", "name": "root",
                                                                         "create_size_bytes": "1048576"}},
             404, "'nope' is not a configured pool"),
            ("shell characters in an LV name", {"target": "vda", "volume": {"pool": "vg", "name": "a;rm -rf /",
                                                                            "create_size_bytes": "1048576"}},
             400, "volume: name: "),
            ("LVM-reserved LV name", {"target": "vda", "volume": {"pool": "vg", "name": "snapshot",
                                                                  "create_size_bytes": "1048576"}}, 400, "volume: name: "),
            ("LVM-reserved LV suffix", {"target": "vda", "volume": {"pool": "vg", "name": "x_tdata",
                                                                    "create_size_bytes": "1048576"}}, 400, "volume: name: "),
            ("path as a partition name", {"target": "vda", "volume": {"pool": "disk1", "name": "../../etc/passwd",
                                                                      "create_size_bytes": "1048576"}},
             400, "volume: name: "),
            ("negative size", {"target": "vda", "volume": {"pool": "vg", "name": "root",
                                                          "create_size_bytes": "-1"}}, 400, "request body"),
            ("size past uint64", {"target": "vda", "volume": {"pool": "vg", "name": "root",
                                                             "create_size_bytes": "18446744073709551616"}},
             400, "request body"),
            ("size lvm2 cannot hold", {"target": "vda", "volume": {"pool": "vg", "name": "root",
                                                                  "create_size_bytes": str(1 << 63)}},
             400, "size_bytes"),
            ("bigger than the pool", {"target": "vda", "volume": {"pool": "vg", "name": "root",
                                                                 "create_size_bytes": str(1 << 40)}},
             507, "is full"),
            ("bigger than the disk", {"target": "vda", "volume": {"pool": "disk1", "name": "root",
                                                                 "create_size_bytes": str(1 << 40)}},
             507, ""),
            ("path and volume at once", {"target": "vda", "source_path": "/dev/sda",
                                         "volume": {"pool": "vg", "name": "root", "create_size_bytes": "1048576"}},
             400, "not both"),
        ]
        for what, disk, code, words in cases:
            with self.subTest(what):
                body = {"spec": {"name": name, "vcpus": 1, "memory_mib": 64, "firmware": {"type": "TYPE_BIOS"},
                                 "disks": [disk]}, "start": True}
                status, err = self.agent.rest("POST", "/v1/domains", body)
                self.assertEqual(status, code, err)
                self.assertIn(words, err["message"])
        # Hostile volume requests straight to the storage API, over gRPC.
        for pool, vol, size, code in [("nope", "v", MiB, grpc.StatusCode.NOT_FOUND),
                                      ("vg", "$(reboot)", MiB, grpc.StatusCode.INVALID_ARGUMENT),
                                      ("vg", "-n", MiB, grpc.StatusCode.INVALID_ARGUMENT),
                                      ("vg", "v", 0, grpc.StatusCode.INVALID_ARGUMENT),
                                      ("disk1", "a" * 64, MiB, grpc.StatusCode.INVALID_ARGUMENT)]:
            with self.subTest(pool=pool, volume=vol):
                with self.assertRaises(grpc.RpcError) as cm:
                    self.agent.storage.CreateVolume(storage_pb2.CreateVolumeRequest(pool=pool, name=vol,
                                                                                   size_bytes=size))
                self.assertEqual(cm.exception.code(), code, cm.exception.details())
        pools = {p.name: p for p in self.agent.storage.ListPools(storage_pb2.ListPoolsRequest()).pools}
        self.assertEqual(pools["vg"].volume_count, 0)
        self.assertEqual(pools["disk1"].volume_count, 0)
        after = (sorted(virsh("list", "--all", "--name").stdout.split()), self.lvs(), self.partitions())
        self.assertEqual(before, after)
        self.assertEqual(self.volumes("vg"), {})
        self.assertEqual(self.volumes("disk1"), {})

    def test_config_naming_a_device_outside_dev_is_refused_at_start(self):
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write('[[storage.pools]]\nname = "p"\ntype = "partition"\ndisk = "/dev/../etc/passwd"\n')
        try:
            r = subprocess.run([os.environ["HVAGENTD"], "--config", f.name, "--hypervisor-uri", "test:///default"],
                               capture_output=True, text=True, timeout=30)
        finally:
            os.unlink(f.name)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("disk", r.stderr)
