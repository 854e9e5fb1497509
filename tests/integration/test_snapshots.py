"""Volume snapshots (StorageService.CreateSnapshot & co., docs/snapshots.md) against real lvm2 on
a loop-device VG and a real GPT partition pool. This host's kernel has no device-mapper, so lvm2
can make no snapshot here (the agent says so before running it); what runs here is every refusal,
and the metadata paths with an LV lvm2 itself made under the snapshot naming scheme: it is listed
as a snapshot and never as a volume, counted in the pool, blocks the volume's delete until
`cascade`, and cascade removes it with real lvremove. The real snapshots, thin and classic, with a
guest that writes, are in the Xen ARM64 dom0 tier (tests/system/xen-arm64)."""

import json
import subprocess
import time

import grpc

from hvagent.v1 import storage_pb2, storage_pb2_grpc
from loop_pools import LoopPoolsTestCase, lvm_argv, run

MiB = 1 << 20


class SnapshotsTest(LoopPoolsTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.storage = storage_pb2_grpc.StorageServiceStub(cls.agent.channel)

    def make_volume(self, pool, name, size=8 * MiB):
        status, body = self.agent.rest("POST", f"/v1/pools/{pool}/volumes", {"name": name, "size_bytes": str(size)})
        self.assertEqual(status, 201, body)

    def lv_names(self):
        out = run(lvm_argv("lvs", "--reportformat", "json", "-o", "lv_name,lv_tags", self.vg)).stdout
        return {lv["lv_name"]: lv["lv_tags"] for lv in json.loads(out)["report"][0]["lv"]}

    def test_a_partition_pool_answers_unimplemented_naming_its_kind(self):
        self.make_volume("disk1", "pvol")
        base = "/v1/pools/disk1/volumes/pvol/snapshots"
        for method, path, body in (("POST", base, {"name": "s1"}), ("GET", base, None),
                                   ("POST", base + "/s1:revert", None), ("DELETE", base + "/s1", None)):
            status, err = self.agent.rest(method, path, body)
            self.assertEqual(status, 501, (method, path, err))
            self.assertIn("partition pool", err["message"])
        with self.assertRaises(grpc.RpcError) as e:
            self.storage.CreateSnapshot(storage_pb2.CreateSnapshotRequest(pool="disk1", volume="pvol", name="s1"))
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        status, _ = self.agent.rest("DELETE", "/v1/pools/disk1/volumes/pvol")  # no snapshots: no cascade needed
        self.assertEqual(status, 202)

    def test_bad_names_unknown_volumes_and_no_device_mapper_are_clear_and_change_nothing(self):
        self.make_volume("vg", "v1")
        before = self.lv_names()
        for bad in ("a/b", "..", "../../etc/passwd", "x" * 49, "-x", "s_tmeta"):
            status, err = self.agent.rest("POST", "/v1/pools/vg/volumes/v1/snapshots", {"name": bad})
            self.assertEqual(status, 400, (bad, err))
            self.assertTrue(err["message"].startswith("snapshot: "), err)
        status, err = self.agent.rest("POST", "/v1/pools/vg/volumes/ghost/snapshots", {"name": "s1"})
        self.assertEqual(status, 404, err)
        status, err = self.agent.rest("POST", "/v1/pools/nopool/volumes/v1/snapshots", {"name": "s1"})
        self.assertEqual(status, 404, err)
        # lvm2 makes no snapshot without device-mapper; the agent says so instead of running it.
        status, err = self.agent.rest("POST", "/v1/pools/vg/volumes/v1/snapshots", {"name": "s1"})
        self.assertEqual(status, 409, err)
        self.assertIn("device-mapper", err["message"])
        status, err = self.agent.rest("POST", "/v1/pools/vg/volumes/v1/snapshots/nosuch:revert")
        self.assertEqual(status, 404, err)
        status, err = self.agent.rest("POST", "/v1/pools/vg/volumes/v1/snapshots/a..b:revert")
        self.assertIn(status, (400, 404), err)
        status, listed = self.agent.rest("GET", "/v1/pools/vg/volumes/v1/snapshots")
        self.assertEqual((status, listed.get("snapshots", [])), (200, []))
        self.assertEqual(self.lv_names(), before)

    def test_a_snapshot_lv_is_never_a_volume_and_holds_its_volumes_delete_until_cascade(self):
        self.make_volume("vg", "v2")
        # What the agent would have made with device-mapper: an LV named by the scheme, tagged as a
        # snapshot (here a plain LV made by lvm2 itself, metadata only).
        run(lvm_argv("lvcreate", "-an", "-Zn", "--yes", "-n", "hvsnap+v2+keep", "-L", "4m",
                     "--addtag", "hvagent_snapshot", self.vg))
        deadline = time.monotonic() + 10  # the agent's lvm2 report is cached up to 5 s
        while True:
            status, listed = self.agent.rest("GET", "/v1/pools/vg/volumes/v2/snapshots")
            self.assertEqual(status, 200, listed)
            if listed.get("snapshots") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual([s["name"] for s in listed["snapshots"]], ["keep"])
        status, volumes = self.agent.rest("GET", "/v1/pools/vg/volumes")
        names = [v["name"] for v in volumes["volumes"]]
        self.assertNotIn("hvsnap+v2+keep", names)
        self.assertIn("v2", names)
        status, pool = self.agent.rest("GET", "/v1/pools/vg")
        self.assertEqual(pool.get("snapshot_count"), 1, pool)
        status, err = self.agent.rest("DELETE", "/v1/pools/vg/volumes/v2")
        self.assertEqual(status, 409, err)
        self.assertIn("keep", err["message"])
        self.assertIn("cascade", err["message"])
        self.assertIn("hvsnap+v2+keep", self.lv_names())
        status, _ = self.agent.rest("DELETE", "/v1/pools/vg/volumes/v2?cascade=true")
        self.assertEqual(status, 202)
        for _ in range(100):
            if "v2" not in self.lv_names():
                break
            subprocess.run(["sleep", "0.1"])
        lvs = self.lv_names()
        self.assertNotIn("hvsnap+v2+keep", lvs)
        self.assertNotIn("v2", lvs)
