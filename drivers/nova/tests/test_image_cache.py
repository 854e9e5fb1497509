"""The driver's image cache (issue 18, item 5) against a real hvagentd (libvirt's
test:///default) with a partition pool on a real loop device: Glance images are streamed to the
agent's ImageService.UploadImage once per host, root volumes are made from them by the agent,
and manage_image_cache removes only the driver's unused, old images. Glance is Nova's
GlanceFixture, its download streaming the image in pieces (agent_fixture.stream_glance_downloads).
Root only (losetup); the pure-Python parts run everywhere."""

import hashlib
import io
import http.client
import os
import subprocess
import time
import unittest
import unittest.mock
import uuid

import eventlet

from nova import exception
from nova import test
from nova.tests import fixtures as nova_fixtures
from nova.tests.unit import utils as test_utils
from nova.virt import fake

from hvagent.v1 import domain_pb2, image_pb2, storage_pb2

import agent_fixture
from hvagent_nova import driver as hv_driver
from hvagent_nova import config_drive
from hvagent_nova import image_cache

MiB = 1 << 20
POOL = agent_fixture.POOL
IMAGE_BYTES = 3 * MiB


class PartitionPoolAgent(agent_fixture.AgentProcess):
    """The fixture's agent with a partition pool (the kind that holds images) on a sparse
    loop device instead of the LVM one; its journal in its own directory."""

    DISK_MIB = 4096  # sparse: two 1 GiB roots and a few small images

    def _make_pool(self):
        disk = os.path.join(self.tmp, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(self.DISK_MIB * MiB)
        self.loop = subprocess.run(["losetup", "--find", "--show", "--partscan", disk],
                                   check=True, capture_output=True, text=True).stdout.strip()
        self.pool = POOL
        return ('[reliability]\nstate_dir = "%s"\n'
                '[[storage.pools]]\nname = "%s"\ntype = "partition"\ndisk = "%s"\n'
                'wipe = "none"\n' % (os.path.join(self.tmp, "state"), POOL, self.loop))


class NamesTestCase(unittest.TestCase):

    def test_image_name_is_the_prefix_and_15_hex_digits_of_the_glance_id(self):
        self.assertEqual("nova-0123456789abcde",
                         image_cache.image_name("01234567-89AB-CDEF-0123-456789abcdef"))
        self.assertLessEqual(len(image_cache.image_name(str(uuid.uuid4()))), 20)

    def test_md5_feed_passes_every_piece_when_it_matches(self):
        pieces = [b"a" * 10, b"b" * 10, b"c"]
        out = io.BytesIO()
        out.close = lambda: None  # keep the bytes readable
        feed = image_cache.Md5Feed(out, hashlib.md5(b"".join(pieces)).hexdigest())
        for p in pieces:
            feed.write(p)
        self.assertEqual(b"".join(pieces[:-1]), out.getvalue())  # the last one held back
        feed.close()
        self.assertEqual(b"".join(pieces), out.getvalue())
        self.assertTrue(feed.ok)

    def test_md5_feed_holds_the_last_piece_back_on_a_mismatch(self):
        pieces = [b"a" * 10, b"b" * 10, b"c"]
        out = io.BytesIO()
        closed = []
        out.close = lambda: closed.append(True)
        feed = image_cache.Md5Feed(out, hashlib.md5(b"other").hexdigest())
        for p in pieces:
            feed.write(p)
        feed.close()
        self.assertEqual(b"".join(pieces[:-1]), out.getvalue())
        self.assertFalse(feed.ok)
        self.assertEqual([True], closed)  # the stream ends short: the agent discards it

    def test_nova_download_without_a_destination_yields_nothing(self):
        """Why the driver hands Nova a file (download(data=...)): Nova 26's own download, asked
        for no destination, closes glanceclient's response before returning it, so iterating
        it yields nothing. Against a real Glance the agent got empty uploads (issue 29). This
        runs Nova's GlanceImageServiceV2 on glanceclient's IterableWithLength, as a real
        Glance answers."""
        from glanceclient.common import utils as glance_utils
        from nova.image import glance as nova_glance

        class Body(object):
            def __init__(self, pieces):
                self._pieces, self.closed = iter(pieces), False

            def __iter__(self):
                for p in self._pieces:
                    if self.closed:
                        return
                    yield p

            def close(self):
                self.closed = True

        pieces = [b"x" * 1000, b"y" * 1000]
        client = unittest.mock.Mock()
        response = unittest.mock.Mock(headers={})  # glanceclient reads a request id from it
        client.call.side_effect = lambda *a, **k: glance_utils.RequestIdProxy(
            (glance_utils.IterableWithLength(Body(pieces), 2000), response))
        service = nova_glance.GlanceImageServiceV2(client=client)
        ctxt = unittest.mock.Mock()
        self.assertEqual(b"", b"".join(service.download(ctxt, "id")))
        out = io.BytesIO()
        service.download(ctxt, "id", data=out)
        self.assertEqual(b"".join(pieces), out.getvalue())


@unittest.skipIf(agent_fixture.pool_possible(), agent_fixture.pool_possible())
class ImageCacheTestCase(test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.agent = PartitionPoolAgent(with_pool=True)

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
        self.flags(remove_unused_original_minimum_age_seconds=3600, group="image_cache")
        self.drv = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        self.drv.init_host("myhostname")
        self.ctxt = test_utils.get_test_admin_context()
        self.trace = []
        agent_fixture.stream_glance_downloads(self.glance, self.trace)
        # InstanceMetadata (config drives) asks Neutron for the instance's security groups;
        # there is no Neutron here: none.
        self.stub_out("nova.network.security_group_api.get_instance_security_groups",
                      lambda context, instance, detailed=False: [])
        self.addCleanup(self._cleanup)

    @property
    def downloads(self):
        return self.trace.count("download-start")

    def glance_image(self, blob, sha512=None, md5=None, disk_format="raw"):
        """A Glance image holding `blob`, with Glance's multihash (sha512, right unless given)
        or only an md5 `checksum` when `md5` is given."""
        meta = {"id": str(uuid.uuid4()), "name": "img", "status": "active",
                "disk_format": disk_format, "container_format": "bare", "size": len(blob),
                "properties": {}}
        if md5 is not None:
            meta["checksum"] = md5
        else:
            meta["checksum"] = hashlib.md5(blob).hexdigest()
            meta["os_hash_algo"] = "sha512"
            meta["os_hash_value"] = sha512 or hashlib.sha512(blob).hexdigest()
        self.glance.create(None, meta)
        self.glance._imagedata[meta["id"]] = blob
        return meta["id"]

    # ---- agent ----

    def _cleanup(self):
        a = self.drv.agent
        for d in a.domains.ListDomains(domain_pb2.ListDomainsRequest()).domains:
            if d.name.startswith("instance-"):
                a.domains.DeleteDomain(domain_pb2.DeleteDomainRequest(
                    name=d.name, force=True, delete_volumes=True))
        for v in self.volumes().values():
            a.storage.DeleteVolume(storage_pb2.VolumeRef(pool=POOL, name=v.name))
        for i in self.images().values():
            a.images.DeleteImage(image_pb2.ImageRef(pool=POOL, name=i.name))

    def volumes(self):
        vols = self.drv.agent.storage.ListVolumes(storage_pb2.ListVolumesRequest(pool=POOL))
        return {v.name: v for v in vols.volumes if v.state != storage_pb2.VOLUME_STATE_DELETING}

    def images(self):
        return {i.name: i for i in self.drv.agent.images.ListImages(
            image_pb2.ListImagesRequest(pool=POOL)).images}

    def partitions(self):
        out = subprocess.run(["lsblk", "-rno", "NAME", self.agent.loop], check=True,
                             capture_output=True, text=True).stdout.split()
        return sorted(out)

    def operator_image(self, name, blob):
        """An image somebody else put on the host (REST PUT, as an operator's curl would)."""
        host, port = self.agent.rest_addr.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("PUT", "/v1/pools/%s/images/%s?format=IMAGE_FORMAT_RAW" % (POOL, name),
                     body=blob, headers={"Content-Length": str(len(blob))})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        self.assertEqual(201, resp.status, body)

    # ---- Nova ----

    def instance(self, image_id, root_gb=1):
        flavor = test_utils.get_test_flavor(options={
            "root_gb": root_gb, "ephemeral_gb": 0, "swap": 0, "vcpus": 1, "memory_mb": 128})
        inst = test_utils.get_test_instance(self.ctxt, flavor=flavor, obj=True)
        inst.uuid = str(uuid.uuid4())
        inst.image_ref = image_id
        return inst

    def spawn(self, inst):
        image = test_utils.get_test_image_object(self.ctxt, inst)
        self.drv.spawn(self.ctxt, inst, image, [], None, {}, network_info=[])

    def root_sha256(self, inst, size):
        vol = self.volumes()[self.drv._volume_name(inst, "root")]
        with open(vol.path, "rb") as f:
            return hashlib.sha256(f.read(size)).hexdigest()

    # ---- tests ----

    def iso_file(self, device, path):
        """A file of the ISO 9660 image on `device` (Rock Ridge names), read with isoinfo."""
        return subprocess.run(["isoinfo", "-R", "-i", device, "-x", path], check=True,
                              capture_output=True).stdout

    def test_config_drive_is_made_by_nova_uploaded_and_attached_as_an_owned_volume(self):
        """Nova's ConfigDriveBuilder makes the ISO; the agent's copy of it is a volume the
        domain owns, holding meta_data.json (uuid, admin password, injected file); the
        temporary image is gone after the spawn, the volume after the destroy."""
        blob = os.urandom(IMAGE_BYTES)
        inst = self.instance(self.glance_image(blob))
        inst.config_drive = "True"
        agent_fixture.with_metadata_fields(inst)
        image = test_utils.get_test_image_object(self.ctxt, inst)
        self.drv.spawn(self.ctxt, inst, image, [("/etc/motd", b"hello from nova")], "pw-1234",
                       {}, network_info=[])
        vols = self.volumes()
        cfg = vols[self.drv._volume_name(inst, "config")]
        self.assertEqual(inst.name, cfg.attached_to)
        self.assertEqual(storage_pb2.VOLUME_OWNERSHIP_OWNED, cfg.ownership)
        meta = self.iso_file(cfg.path, "/openstack/latest/meta_data.json").decode()
        self.assertIn('"uuid": "%s"' % inst.uuid, meta)
        self.assertIn('"admin_pass": "pw-1234"', meta)
        self.assertIn('"path": "/etc/motd"', meta)
        self.assertEqual(b"hello from nova", self.iso_file(cfg.path, "/openstack/content/0000"))
        self.assertNotIn(config_drive.image_name(inst), self.images())
        self.drv.destroy(self.ctxt, inst, [])
        deadline = time.time() + 30
        while cfg.name in self.volumes():
            self.assertLess(time.time(), deadline, "config volume left")
            time.sleep(0.05)

    def test_config_drive_image_is_deleted_when_create_domain_fails(self):
        """A CreateDomain the agent refuses (the name is taken) leaves neither the temporary
        image nor a config volume."""
        blob = os.urandom(IMAGE_BYTES)
        inst = self.instance(self.glance_image(blob))
        self.drv.agent.domains.CreateDomain(domain_pb2.CreateDomainRequest(
            spec=domain_pb2.DomainSpec(name=inst.name, vcpus=1, memory_mib=64)))
        inst.config_drive = "True"
        agent_fixture.with_metadata_fields(inst)
        before = set(self.volumes())
        self.assertRaises(exception.InstanceExists, self.spawn, inst)
        self.assertNotIn(config_drive.image_name(inst), self.images())
        self.assertEqual(before, set(self.volumes()))

    def test_init_host_deletes_config_drive_images_a_crash_left_and_nothing_else(self):
        """nova-compute killed between the config drive's upload and CreateDomain: its cfg-
        image stays in the pool, with an operator's image beside it. The next start
        (init_host) deletes the cfg- image and keeps the other; a spawn then works."""
        inst = self.instance(self.glance_image(os.urandom(IMAGE_BYTES)))
        inst.config_drive = "True"
        agent_fixture.with_metadata_fields(inst)
        left = config_drive.prepare(self.drv.agent, inst, [], "pw", [], hv_driver.CONF, POOL)
        self.operator_image("cfgless1", os.urandom(1 << 20))
        self.assertIn(left, self.images())
        restarted = hv_driver.HvagentDriver(fake.FakeVirtAPI())
        restarted.init_host("myhostname")
        images = self.images()
        self.assertNotIn(left, images)
        self.assertIn("cfgless1", images)
        self.spawn(inst)
        self.assertIn(self.drv._volume_name(inst, "config"), self.volumes())
        self.assertNotIn(left, self.images())

    def test_rescue_gets_its_own_config_drive_with_the_rescue_password_gone_at_unrescue(self):
        """As Nova's libvirt driver: the rescue of an instance that needs a config drive boots
        with a fresh one (admin_pass = the rescue password, no injected files) beside the
        spawn's; the temporary image is gone at once, the rescue's volume at unrescue."""
        inst = self.instance(self.glance_image(os.urandom(IMAGE_BYTES)))
        inst.config_drive = "True"
        agent_fixture.with_metadata_fields(inst)
        image = test_utils.get_test_image_object(self.ctxt, inst)
        self.drv.spawn(self.ctxt, inst, image, [("/etc/motd", b"spawned")], "pw-spawn", {},
                       network_info=[])
        self.drv.rescue(self.ctxt, inst, [], image, "pw-rescue", None)
        vols = self.volumes()
        cfg = vols[self.drv._volume_name(inst, "rescue-config")]
        self.assertEqual(inst.name, cfg.attached_to)
        meta = self.iso_file(cfg.path, "/openstack/latest/meta_data.json").decode()
        self.assertIn('"admin_pass": "pw-rescue"', meta)
        self.assertNotIn("/etc/motd", meta)
        self.assertIn(self.drv._volume_name(inst, "config"), vols, "the spawn's drive stays")
        self.assertNotIn(config_drive.image_name(inst), self.images())
        self.drv.unrescue(self.ctxt, inst)
        deadline = time.time() + 30
        while cfg.name in self.volumes():
            self.assertLess(time.time(), deadline, "the rescue's config drive outlived unrescue")
            time.sleep(0.05)
        self.assertIn(self.drv._volume_name(inst, "config"), self.volumes())

    def test_no_config_drive_unless_required(self):
        inst = self.instance(self.glance_image(os.urandom(IMAGE_BYTES)))
        self.spawn(inst)
        self.assertNotIn(self.drv._volume_name(inst, "config"), self.volumes())

    def test_two_spawns_of_one_image_upload_it_once(self):
        blob = os.urandom(IMAGE_BYTES)
        image_id = self.glance_image(blob)
        a, b = self.instance(image_id), self.instance(image_id)
        real_ensure = self.drv._images.ensure

        def ensure(*args, **kwargs):
            self.trace.append("ensure")
            return real_ensure(*args, **kwargs)
        self.drv._images.ensure = ensure
        spawns = [eventlet.spawn(self.spawn, inst) for inst in (a, b)]
        for s in spawns:
            s.wait()

        # Both asked for the image before the one upload finished: the second waited for it.
        self.assertEqual(["ensure", "download-start", "ensure", "download-end"],
                         self.trace[:4], self.trace)
        self.assertEqual(1, self.downloads)
        self.assertEqual(1, self.drv._images.uploads)
        name = image_cache.image_name(image_id)
        images = self.images()
        self.assertEqual([name], list(images))
        self.assertEqual(image_pb2.IMAGE_STATE_READY, images[name].state)
        self.assertEqual(hashlib.sha256(blob).hexdigest(), images[name].sha256)
        self.assertEqual(IMAGE_BYTES, images[name].virtual_size_bytes)
        vols = self.volumes()
        for inst in (a, b):
            root = vols[self.drv._volume_name(inst, "root")]
            self.assertEqual(1 << 30, root.size_bytes)  # the flavor's root_gb, not the image's
            self.assertEqual(inst.name, root.attached_to)
            # CreateDomain made it from the image: the domain owns it.
            self.assertEqual(storage_pb2.VOLUME_OWNERSHIP_OWNED, root.ownership)
            self.assertEqual(hashlib.sha256(blob).hexdigest(), self.root_sha256(inst, len(blob)))

        # A third spawn later finds the image and uploads nothing.
        c = self.instance(image_id)
        self.spawn(c)
        self.assertEqual(1, self.downloads)

        # destroy's DeleteDomain deletes the root volume with the domain that owns it; the image
        # stays for the next spawn.
        for inst in (a, b, c):
            self.drv.destroy(self.ctxt, inst, [])
        self.assertEqual({}, self.volumes())
        self.assertEqual([name], list(self.images()))

    def assert_spawn_leaves_nothing(self, image_id, message):
        before = self.partitions()
        inst = self.instance(image_id)
        e = self.assertRaises(exception.ImageUnacceptable, self.spawn, inst)
        self.assertIn(message, str(e))
        self.assertFalse(self.drv.instance_exists(inst))
        self.assertEqual({}, self.volumes())
        self.assertEqual({}, self.images())
        self.assertEqual(before, self.partitions())

    def test_a_sha512_mismatch_fails_the_spawn_and_leaves_nothing(self):
        blob = os.urandom(IMAGE_BYTES)
        image_id = self.glance_image(blob, sha512=hashlib.sha512(b"other bytes").hexdigest())
        self.assert_spawn_leaves_nothing(image_id, "FAILED_PRECONDITION")
        self.assertEqual(1, self.downloads)

    def test_an_md5_mismatch_fails_the_spawn_and_leaves_nothing(self):
        # Glance without a multihash: the driver checks the md5 and holds the last piece back.
        blob = os.urandom(IMAGE_BYTES)
        image_id = self.glance_image(blob, md5=hashlib.md5(b"other bytes").hexdigest())
        self.assert_spawn_leaves_nothing(image_id, "md5")

    def test_an_md5_match_is_uploaded(self):
        blob = os.urandom(IMAGE_BYTES)
        image_id = self.glance_image(blob, md5=hashlib.md5(blob).hexdigest())
        inst = self.instance(image_id)
        self.spawn(inst)
        self.assertEqual(hashlib.sha256(blob).hexdigest(), self.root_sha256(inst, len(blob)))

    def test_a_short_glance_stream_fails_the_spawn_and_leaves_nothing(self):
        blob = os.urandom(IMAGE_BYTES)
        image_id = self.glance_image(blob)
        self.glance._imagedata[image_id] = blob[:-1000]  # Glance's size says more
        self.assert_spawn_leaves_nothing(image_id, "size_bytes")

    def test_a_glance_stream_that_breaks_fails_the_spawn_and_leaves_nothing(self):
        blob = os.urandom(IMAGE_BYTES)
        image_id = self.glance_image(blob)
        before = self.partitions()

        def broken(context, image_id, data=None, dst_path=None, trusted_certs=None):
            data.write(blob[:MiB])
            eventlet.sleep(0.2)  # the agent has the first MiB by now
            raise ConnectionResetError("Glance went away")
        self.glance.download = broken
        inst = self.instance(image_id)
        self.assertRaises(ConnectionResetError, self.spawn, inst)
        self.assertFalse(self.drv.instance_exists(inst))
        self.assertEqual({}, self.volumes())
        # The killed child's stream reads as cancelled: the agent wipes and drops the image.
        deadline = time.monotonic() + 30
        while self.images() or self.partitions() != before:
            self.assertLess(time.monotonic(), deadline, "left: %s" % self.images())
            time.sleep(0.1)

    def test_an_image_of_a_size_no_sector_divides_reaches_the_root_volume(self):
        blob = os.urandom(MiB + 1234)
        image_id = self.glance_image(blob)
        inst = self.instance(image_id)
        self.spawn(inst)
        self.assertEqual(len(blob), self.images()[image_cache.image_name(image_id)]
                         .virtual_size_bytes)
        self.assertEqual(hashlib.sha256(blob).hexdigest(), self.root_sha256(inst, len(blob)))

    def test_an_image_larger_than_the_flavors_root_disk_is_refused(self):
        image_id = self.glance_image(os.urandom(IMAGE_BYTES))
        inst = self.instance(image_id)
        with unittest.mock.patch.object(hv_driver.HvagentDriver, "_local_disks",
                                        return_value=[("root", 1 * MiB)]):
            self.assertRaises(exception.FlavorDiskSmallerThanImage, self.spawn, inst)
        self.assertFalse(self.drv.instance_exists(inst))
        self.assertEqual({}, self.volumes())

    def test_a_spawn_failing_after_create_domain_leaves_no_root_volume(self):
        blob = os.urandom(MiB)
        image_id = self.glance_image(blob)
        inst = self.instance(image_id)
        self.drv.cache_image(self.ctxt, image_id)  # the image's own partition is no leftover
        before = self.partitions()
        real_act = self.drv._act

        def act(method, instance):
            if method == self.drv.agent.domains.StartDomain:
                raise exception.InstanceDeployFailure(reason="start refused by the test")
            return real_act(method, instance)
        with unittest.mock.patch.object(self.drv, "_act", side_effect=act):
            self.assertRaises(exception.InstanceDeployFailure, self.spawn, inst)
        self.assertFalse(self.drv.instance_exists(inst))
        deadline = time.monotonic() + 30
        while self.volumes() or self.partitions() != before:
            self.assertLess(time.monotonic(), deadline, "left: %s" % self.volumes())
            time.sleep(0.1)
        self.assertEqual([image_cache.image_name(image_id)], list(self.images()))

    def test_a_spawn_whose_image_the_agent_refuses_leaves_no_domain_or_volume(self):
        # The image vanishes between the driver's check and CreateDomain: the agent refuses the
        # disk (NOT_FOUND naming spec.disks[0].volume.image) with nothing made.
        image_id = self.glance_image(os.urandom(MiB))
        inst = self.instance(image_id)
        real = self.drv._root_image_name

        def gone(*args, **kwargs):
            name = real(*args, **kwargs)
            self.drv.agent.images.DeleteImage(image_pb2.ImageRef(pool=POOL, name=name))
            return name
        before = self.partitions()
        with unittest.mock.patch.object(self.drv, "_root_image_name", side_effect=gone):
            e = self.assertRaises(exception.InstanceDeployFailure, self.spawn, inst)
        self.assertIn("spec.disks[0].volume.image", str(e))
        self.assertFalse(self.drv.instance_exists(inst))
        self.assertEqual({}, self.volumes())
        self.assertEqual(before, self.partitions())

    def test_other_greenthreads_run_while_create_domain_copies(self):
        # The copy runs inside CreateDomain. Made slow here with a blocking (unpatched) sleep
        # around the real call: on eventlet's hub thread it would stop every greenthread.
        image_id = self.glance_image(os.urandom(MiB))
        inst = self.instance(image_id)
        real_create = self.drv._create_on_own_channel
        blocking_sleep = eventlet.patcher.original("time").sleep
        ticks = []
        during = []

        def slow_create(request, timeout):
            start = len(ticks)
            blocking_sleep(1.0)
            during.append(len(ticks) - start)
            return real_create(request, timeout)

        def ticker():
            while True:
                ticks.append(time.monotonic())
                eventlet.sleep(0.05)
        t = eventlet.spawn(ticker)
        try:
            with unittest.mock.patch.object(self.drv, "_create_on_own_channel",
                                            side_effect=slow_create):
                self.spawn(inst)
        finally:
            t.kill()
        self.assertEqual(1, len(during))
        self.assertGreaterEqual(during[0], 5, "the event loop stood still during CreateDomain")
        root = self.volumes()[self.drv._volume_name(inst, "root")]
        self.assertEqual(storage_pb2.VOLUME_OWNERSHIP_OWNED, root.ownership)

    def test_destroy_still_deletes_a_borrowed_root_an_older_driver_made(self):
        # Before roots were made inside CreateDomain the driver made them first and the domain
        # borrowed them: such an instance's destroy must not leave its root behind.
        image_id = self.glance_image(os.urandom(MiB))
        inst = self.instance(image_id)
        self.drv.cache_image(self.ctxt, image_id)
        name = self.drv._volume_name(inst, "root")
        a = self.drv.agent
        a.storage.CreateVolume(storage_pb2.CreateVolumeRequest(
            pool=POOL, name=name, size_bytes=1 << 30, image=image_cache.image_name(image_id)),
            timeout=120)
        spec = domain_pb2.DomainSpec(name=inst.name, uuid=inst.uuid, vcpus=1, memory_mib=128)
        spec.firmware.type = domain_pb2.FirmwareBoot.TYPE_UNSPECIFIED
        spec.disks.add(target="vda", volume=domain_pb2.DiskVolume(pool=POOL, name=name))
        a.domains.CreateDomain(domain_pb2.CreateDomainRequest(spec=spec), timeout=60)
        self.assertEqual(storage_pb2.VOLUME_OWNERSHIP_BORROWED, self.volumes()[name].ownership)
        self.drv.destroy(self.ctxt, inst, [])
        self.assertFalse(self.drv.instance_exists(inst))
        deadline = time.monotonic() + 30
        while self.volumes():
            self.assertLess(time.monotonic(), deadline, "left: %s" % self.volumes())
            time.sleep(0.1)

    def test_manage_image_cache_removes_only_unused_old_driver_images(self):
        used_id = self.glance_image(os.urandom(MiB))
        unused_id = self.glance_image(os.urandom(MiB))
        used, unused = image_cache.image_name(used_id), image_cache.image_name(unused_id)
        inst = self.instance(used_id)
        self.spawn(inst)
        self.assertTrue(self.drv.cache_image(self.ctxt, unused_id))   # uploaded now
        self.assertFalse(self.drv.cache_image(self.ctxt, unused_id))  # the agent has it
        self.operator_image("golden1", os.urandom(MiB))  # not the driver's
        now = [1000.0]
        self.drv._images._clock = lambda: now[0]

        # Unused, but not for long enough yet.
        self.drv.manage_image_cache(self.ctxt, [inst])
        self.assertEqual({used, unused, "golden1"}, set(self.images()))
        now[0] += 3599
        self.drv.manage_image_cache(self.ctxt, [inst])
        self.assertEqual({used, unused, "golden1"}, set(self.images()))
        # [image_cache] remove_unused_base_images = false keeps everything.
        now[0] += 2
        self.flags(remove_unused_base_images=False, group="image_cache")
        self.drv.manage_image_cache(self.ctxt, [inst])
        self.assertEqual({used, unused, "golden1"}, set(self.images()))
        self.flags(remove_unused_base_images=True, group="image_cache")
        self.drv.manage_image_cache(self.ctxt, [inst])
        self.assertEqual({used, "golden1"}, set(self.images()))

        # The instance goes: its image is unused from the next pass on, and removed once old.
        self.drv.destroy(self.ctxt, inst, [])
        self.drv.manage_image_cache(self.ctxt, [])
        self.assertEqual({used, "golden1"}, set(self.images()))
        now[0] += 3600
        self.drv.manage_image_cache(self.ctxt, [])
        self.assertEqual({"golden1"}, set(self.images()))

    def test_an_image_a_spawn_is_using_is_never_removed(self):
        self.flags(remove_unused_original_minimum_age_seconds=0, group="image_cache")
        image_id = self.glance_image(os.urandom(MiB))
        self.drv.cache_image(self.ctxt, image_id)
        with self.drv._images.using(image_id):
            # The instance is not in the list yet (nova passes what its database holds).
            self.drv.manage_image_cache(self.ctxt, [])
            self.assertEqual([image_cache.image_name(image_id)], list(self.images()))
        self.drv.manage_image_cache(self.ctxt, [])
        self.assertEqual({}, self.images())


class UploaderTestCase(unittest.TestCase):

    def test_the_upload_child_runs_without_eventlet(self):
        # What image_upload.py relies on: nothing it imports monkey-patches threading.
        out = subprocess.run(
            ["/usr/bin/python3", "-c",
             "import hvagent_nova.image_upload, threading, eventlet.patcher as p; "
             "print(p.is_monkey_patched('thread'))"],
            capture_output=True, text=True, timeout=60, check=True).stdout.strip()
        self.assertEqual("False", out)

