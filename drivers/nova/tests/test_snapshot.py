"""The driver's snapshot() against a real hvagentd (libvirt's test:///default) with a partition
pool on a real loop device (test_image_cache's agent): the root volume of a running instance is
copied by the agent into a temporary image with the guest paused, streamed out by ExportVolume
in a child process into Glance's upload, and the temporary image is deleted. Glance is Nova's
GlanceFixture whose update() here reads the data it is given, as glanceclient's upload would.
Root only (losetup)."""

import hashlib
import os
import unittest
import uuid

from nova.compute import task_states
from nova import exception
from nova import test
from nova.tests import fixtures as nova_fixtures
from nova.tests.unit import utils as test_utils
from nova.virt import fake

from hvagent.v1 import domain_pb2, image_pb2, storage_pb2

import agent_fixture
import test_image_cache as cache_tests
from hvagent_nova import driver as hv_driver
from hvagent_nova import snapshot as hv_snapshot

MiB = 1 << 20
POOL = agent_fixture.POOL


@unittest.skipIf(agent_fixture.pool_possible(), agent_fixture.pool_possible())
class SnapshotTestCase(test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.agent = cache_tests.PartitionPoolAgent(with_pool=True)

    @classmethod
    def tearDownClass(cls):
        code = cls.agent.stop()
        super().tearDownClass()
        agent_fixture.assert_clean_exit(code)

    def setUp(self):
        super().setUp()
        self.glance = self.useFixture(nova_fixtures.GlanceFixture(self))
        self.flags(address=self.agent.grpc_addr, plaintext=True, storage_pool=POOL,
                   lifecycle_event_delay=0, group="hvagent")
        self.drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        self.drv.init_host("myhostname")
        self.ctxt = test_utils.get_test_admin_context()
        agent_fixture.stream_glance_downloads(self.glance)
        self.uploads = []
        plain_update = self.glance.update

        def update(context, image_id, metadata, data=None, purge_props=False):
            if data is not None:
                digest, size = hashlib.sha256(), 0
                while True:
                    piece = data.read(1 << 20)
                    if not piece:
                        break
                    digest.update(piece)
                    size += len(piece)
                self.uploads.append((image_id, metadata, digest.hexdigest(), size))
            return plain_update(context, image_id, metadata, purge_props=purge_props)
        self.glance.update = update
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        a = self.drv.agent
        for d in a.domains.ListDomains(domain_pb2.ListDomainsRequest()).domains:
            if d.name.startswith("instance-"):
                a.domains.DeleteDomain(domain_pb2.DeleteDomainRequest(
                    name=d.name, force=True, delete_volumes=True))
        for v in a.storage.ListVolumes(storage_pb2.ListVolumesRequest(pool=POOL)).volumes:
            if v.state != storage_pb2.VOLUME_STATE_DELETING:
                a.storage.DeleteVolume(storage_pb2.VolumeRef(pool=POOL, name=v.name))
        for i in self.images():
            a.images.DeleteImage(image_pb2.ImageRef(pool=POOL, name=i))

    def images(self):
        return [i.name for i in self.drv.agent.images.ListImages(
            image_pb2.ListImagesRequest(pool=POOL)).images]

    def running_instance(self):
        blob = os.urandom(3 * MiB)
        meta = {"id": str(uuid.uuid4()), "name": "img", "status": "active", "disk_format": "raw",
                "container_format": "bare", "size": len(blob), "properties": {},
                "checksum": hashlib.md5(blob).hexdigest(), "os_hash_algo": "sha512",
                "os_hash_value": hashlib.sha512(blob).hexdigest()}
        self.glance.create(None, meta)
        self.glance._imagedata[meta["id"]] = blob
        flavor = test_utils.get_test_flavor(options={
            "root_gb": 1, "ephemeral_gb": 0, "swap": 0, "vcpus": 1, "memory_mb": 128})
        inst = test_utils.get_test_instance(self.ctxt, flavor=flavor, obj=True)
        inst.uuid = str(uuid.uuid4())
        inst.image_ref = meta["id"]
        image = test_utils.get_test_image_object(self.ctxt, inst)
        self.drv.spawn(self.ctxt, inst, image, [], None, {}, network_info=[])
        return inst, blob

    def test_snapshot_of_a_running_instance_uploads_its_root_disk_and_keeps_no_image(self):
        inst, blob = self.running_instance()
        images_before = self.images()
        root = self.drv.agent.storage.GetVolume(storage_pb2.VolumeRef(
            pool=POOL, name=self.drv._volume_name(inst, "root")))
        with open(root.path, "rb") as f:
            root_sha = hashlib.sha256(f.read()).hexdigest()
        snap = self.glance.create(self.ctxt, {"name": "snap-1"})
        states = []

        def update_task_state(task_state, expected_state=None):
            states.append((task_state, expected_state))
        self.drv.snapshot(self.ctxt, inst, snap["id"], update_task_state)

        self.assertEqual([(task_states.IMAGE_PENDING_UPLOAD, None),
                          (task_states.IMAGE_UPLOADING, task_states.IMAGE_PENDING_UPLOAD)], states)
        self.assertEqual(1, len(self.uploads))
        image_id, meta, sha, size = self.uploads[0]
        self.assertEqual(snap["id"], image_id)
        self.assertEqual((root_sha, 1 << 30), (sha, size))  # the whole raw root disk
        with open(root.path, "rb") as f:
            self.assertEqual(hashlib.sha256(blob).hexdigest(), hashlib.sha256(f.read(len(blob))).hexdigest())
        self.assertEqual(("raw", "snap-1", "active"),
                         (meta["disk_format"], meta["name"], meta["status"]))
        self.assertEqual("snapshot", meta["properties"]["image_location"])
        # The temporary image is gone; the instance runs on.
        self.assertEqual(images_before, self.images())
        self.assertNotIn(hv_snapshot.image_name(snap["id"]), self.images())
        self.assertEqual(domain_pb2.DOMAIN_STATE_RUNNING, self.drv._get_domain(inst).state)

    def test_snapshot_of_an_instance_that_does_not_run_is_instance_not_running(self):
        inst = test_utils.get_test_instance(self.ctxt, obj=True)
        inst.uuid = str(uuid.uuid4())
        snap = self.glance.create(self.ctxt, {"name": "snap-2"})
        self.assertRaises(exception.InstanceNotRunning, self.drv.snapshot, self.ctxt, inst,
                          snap["id"], lambda *a, **k: None)
        self.assertEqual([], self.uploads)

    def test_a_glance_that_stops_reading_leaves_no_image_behind(self):
        inst, _ = self.running_instance()
        images_before = self.images()
        snap = self.glance.create(self.ctxt, {"name": "snap-3"})

        def failing_update(context, image_id, metadata, data=None, purge_props=False):
            data.read(1 << 20)
            raise exception.ImageNotAuthorized(image_id=image_id)
        self.glance.update = failing_update
        self.assertRaises(exception.ImageNotAuthorized, self.drv.snapshot, self.ctxt, inst,
                          snap["id"], lambda *a, **k: None)
        self.assertEqual(images_before, self.images())
        self.assertEqual(domain_pb2.DOMAIN_STATE_RUNNING, self.drv._get_domain(inst).state)
