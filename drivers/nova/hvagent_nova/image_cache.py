"""Nova's image cache kept as agent images (ImageService), one per Glance image and host.

A Glance image becomes the agent image ``nova-`` + the first 15 hex digits of its id (the
agent's image names hold 20 characters), uploaded once by ImageService.UploadImage from
Glance's data iterator (see image_upload.py for why a child process streams it). Root disks
are then made from it by the agent (CreateVolume with the image), so nova-compute never needs
the agent's block devices and never holds an image in memory or on its own disk.

Checksums: the agent verifies sha256 or sha512, so Glance's ``os_hash_algo``/``os_hash_value``
(sha512 by default) are handed to it. An image with only Glance's md5 ``checksum`` is verified
here while the bytes flow: the last piece is held back until the md5 is known, and a mismatch
ends the stream short, so the agent discards the partial image (DATA_LOSS) and nothing stays.

Concurrent spawns of one image in this nova-compute share one upload through a lock per image
in this process (the later ones wait and find the image READY). When another process (a second
nova-compute, an operator) is importing the same name, the agent answers ALREADY_EXISTS and the
image shows IMPORTING: we wait for it to become READY rather than upload again.
"""

import collections
import contextlib
import hashlib
import json
import sys
import time

from eventlet.green import subprocess
import grpc
from google.protobuf import json_format
from oslo_concurrency import lockutils
from oslo_log import log as logging

from nova import exception
from nova.image import glance

from hvagent.v1 import image_pb2

from hvagent_nova import client
from hvagent_nova import image_upload

LOG = logging.getLogger(__name__)

PREFIX = "nova-"
ID_DIGITS = 15
FORMATS = {"raw": image_pb2.IMAGE_FORMAT_RAW, "ami": image_pb2.IMAGE_FORMAT_RAW,
           "qcow2": image_pb2.IMAGE_FORMAT_QCOW2}
CHANNEL_OPTS = ("address", "plaintext", "ca_file", "cert_file", "key_file", "tls_server_name")
POLL_SECONDS = 1.0


def image_name(image_id):
    """The agent image holding Glance image `image_id`."""
    return PREFIX + str(image_id).replace("-", "").lower()[:ID_DIGITS]


def _glance_hash(meta):
    """(algorithm, lowercase hex) of Glance's multihash, from the image's base properties or
    (older Glance schemas) its properties; (None, None) without one."""
    props = meta.get("properties") or {}
    algo = meta.get("os_hash_algo") or props.get("os_hash_algo")
    value = meta.get("os_hash_value") or props.get("os_hash_value")
    if not algo or not value:
        return None, None
    return str(algo).lower(), str(value).lower()


class Md5Feed(object):
    """The file nova.image.glance's download(data=...) writes the image into: each piece goes
    on to `out` (the upload child's stdin), the last one held back until the md5 of all of them
    is known (`expected`, Glance's checksum; None: nothing to check). `close` gives that piece
    and closes `out` on a match; on a mismatch the stream ends short, so the agent discards the
    image, and `ok` is False."""

    def __init__(self, out, expected):
        self._out = out
        self._expected = expected.lower() if expected else None
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._held = None
        self.ok = True

    def write(self, piece):
        if not self._expected:
            self._out.write(piece)
            return
        self._md5.update(piece)
        if self._held is not None:
            self._out.write(self._held)
        self._held = piece

    def close(self):
        if self._expected and self._md5.hexdigest() != self._expected:
            self.ok = False
        elif self._held is not None:
            self._out.write(self._held)
        self._held = None
        self._out.close()


class ImageCache(object):
    """The driver's agent images in one pool: ensure one exists for a Glance image (upload),
    say which are in use, and remove the driver's old unused ones."""

    def __init__(self, agent_fn, conf, clock=time.monotonic):
        self._agent_fn = agent_fn   # the driver's lazily made client.Agent
        self._conf = conf
        self._clock = clock
        self._in_flight = collections.Counter()   # image name -> spawns using it right now
        self._unused_since = {}                   # image name -> clock() when first seen unused
        self.uploads = 0                          # uploads this process started (tests, logs)

    @property
    def agent(self):
        return self._agent_fn()

    # -- using an image -------------------------------------------------------------------

    @contextlib.contextmanager
    def using(self, image_id):
        """Marks the image as in use for the block (a spawn between upload and its root
        volume): manage_image_cache never removes it meanwhile."""
        name = image_name(image_id)
        self._in_flight[name] += 1
        self._unused_since.pop(name, None)
        try:
            yield name
        finally:
            self._in_flight[name] -= 1
            if not self._in_flight[name]:
                del self._in_flight[name]

    def ensure(self, context, pool, image_id):
        """(Image, uploaded) for Glance image `image_id` in `pool`, uploading it when the pool
        has none. Raises ImageUnacceptable for a format the agent cannot import, bytes that do
        not match Glance's size or checksum, or an agent image of that name that is not this
        Glance image."""
        name = image_name(image_id)
        with lockutils.lock("hvagent-image-" + name):
            meta = glance.API().get(context, image_id)
            deadline = self._clock() + self._conf.hvagent.image_timeout
            tried_upload = False
            while True:
                image = self._get(pool, name)
                if image is not None and image.state == image_pb2.IMAGE_STATE_READY:
                    self._check_same(image, meta, image_id)
                    return image, tried_upload
                if image is None and not tried_upload:
                    tried_upload = True
                    image = self._upload(context, pool, name, image_id, meta)
                    if image is not None:
                        return image, True
                    continue  # somebody else's import of this name: wait for it
                if image is None:
                    raise exception.ImageUnacceptable(
                        image_id=image_id,
                        reason="hvagent: another import of %s/%s failed" % (pool, name))
                if self._clock() > deadline:
                    raise exception.ImageUnacceptable(
                        image_id=image_id,
                        reason="hvagent: %s/%s still importing after %d s ([hvagent] "
                               "image_timeout)" % (pool, name, self._conf.hvagent.image_timeout))
                time.sleep(POLL_SECONDS)

    def _get(self, pool, name):
        try:
            return self.agent.call(self.agent.images.GetImage,
                                   image_pb2.ImageRef(pool=pool, name=name))
        except exception.NotFound:
            return None

    @staticmethod
    def _check_same(image, meta, image_id):
        """An agent image found under the derived name must be this Glance image: same raw
        size, and the same sha256 where Glance has one (the agent records the raw disk's)."""
        algo, value = _glance_hash(meta)
        size = int(meta.get("size") or 0)  # an int from Glance; a string from Nova's fixture
        raw = FORMATS.get(meta.get("disk_format") or "raw") == image_pb2.IMAGE_FORMAT_RAW
        if ((raw and size and image.virtual_size_bytes != size)
                or (raw and algo == "sha256" and image.sha256 != value)):
            raise exception.ImageUnacceptable(
                image_id=image_id,
                reason="hvagent: agent image %s/%s holds other bytes (%d bytes, sha256 %s) than "
                       "this Glance image (%d bytes)" % (image.pool, image.name,
                                                         image.virtual_size_bytes, image.sha256,
                                                         size))

    def _header(self, pool, name, image_id, meta):
        fmt = meta.get("disk_format") or "raw"
        if fmt not in FORMATS:
            raise exception.ImageUnacceptable(
                image_id=image_id, reason="hvagent: disk format %s cannot be imported (raw, "
                                          "ami and qcow2 can)" % fmt)
        size = int(meta.get("size") or 0)  # an int from Glance; a string from Nova's fixture
        if not size:
            raise exception.ImageUnacceptable(
                image_id=image_id, reason="hvagent: Glance gives the image no size, and the "
                                          "agent needs the exact byte count")
        header = {"pool": pool, "name": name, "format": image_pb2.ImageFormat.Name(FORMATS[fmt]),
                  "size_bytes": str(size)}
        algo, value = _glance_hash(meta)
        if algo in ("sha256", "sha512"):
            header[algo] = value
        elif not meta.get("checksum"):
            LOG.warning("Glance image %s has neither a sha256/sha512 multihash nor an md5 "
                        "checksum: only its size is checked", image_id)
        return header

    def _upload(self, context, pool, name, image_id, meta):
        """Streams the Glance image into a new agent image. None when the agent says another
        import of that name runs (ALREADY_EXISTS): the caller waits for it."""
        header = self._header(pool, name, image_id, meta)
        algo, _ = _glance_hash(meta)
        group = self._conf.hvagent
        spec = {"channel": {k: getattr(group, k) for k in CHANNEL_OPTS},
                "header": header, "timeout": group.image_timeout}
        LOG.info("uploading Glance image %s (%s bytes, %s) to the agent as %s/%s", image_id,
                 header["size_bytes"], header["format"], pool, name)
        self.uploads += 1
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", image_upload.__name__, json.dumps(spec)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        md5 = Md5Feed(proc.stdin, None if algo in ("sha256", "sha512") else meta.get("checksum"))
        try:
            # Glance writes into the pipe (data=): Nova 26's download() without a destination
            # returns glanceclient's iterator already closed (_verify_and_write's finally), so
            # it yields nothing and the agent got an empty upload (found against real Nova).
            glance.API().download(context, image_id, data=md5)
            md5.close()
        except BrokenPipeError:
            pass  # the agent ended the upload early: its answer says why
        except BaseException:
            # Glance's stream broke: the child is killed, so the agent sees the upload
            # cancelled and discards its partial image.
            proc.kill()
            proc.wait()
            raise
        out = proc.stdout.read()
        proc.wait()
        try:
            answer = json.loads(out)
        except ValueError:
            raise exception.InternalError(
                err="hvagent: image upload helper exited %s without an answer"
                    % proc.returncode) from None
        if not md5.ok:
            raise exception.ImageUnacceptable(
                image_id=image_id, reason="hvagent: the image's bytes do not match Glance's md5 "
                                          "checksum %s" % meta.get("checksum"))
        if "image" in answer:
            LOG.info("agent image %s/%s ready in %.1f s", pool, name,
                     time.monotonic() - started)
            image = image_pb2.Image()
            json_format.ParseDict(answer["image"], image)
            return image
        code, details = answer.get("code"), answer.get("details")
        if code == "ALREADY_EXISTS":
            LOG.info("agent image %s/%s is being imported by somebody else: waiting (%s)",
                     pool, name, details)
            return None
        if code in ("FAILED_PRECONDITION", "DATA_LOSS", "INVALID_ARGUMENT"):
            # Checksum mismatch, fewer or more bytes than Glance's size: the agent kept nothing.
            raise exception.ImageUnacceptable(image_id=image_id,
                                              reason="hvagent: %s: %s" % (code, details))
        raise client.to_nova(_Status(code, details), self.agent.address)

    # -- removing unused images -----------------------------------------------------------

    def sweep(self, pool, used_image_ids, min_age):
        """Deletes the READY agent images of this driver (prefix) in `pool` that no instance
        uses and that have been seen unused for at least `min_age` seconds by this process.
        Returns the names deleted. An image still importing, one somebody else named, one in
        use or one the agent refuses to delete (a copy from it runs; a volume clones from it)
        stays."""
        used = {image_name(i) for i in used_image_ids if i} | set(self._in_flight)
        now = self._clock()
        deleted = []
        images = self.agent.call(self.agent.images.ListImages,
                                 image_pb2.ListImagesRequest(pool=pool)).images
        present = set()
        for image in images:
            if not image.name.startswith(PREFIX):
                continue
            present.add(image.name)
            if image.state != image_pb2.IMAGE_STATE_READY or image.name in used:
                self._unused_since.pop(image.name, None)
                continue
            since = self._unused_since.setdefault(image.name, now)
            if now - since < min_age:
                LOG.debug("agent image %s/%s unused for %d s of %d", pool, image.name,
                          now - since, min_age)
                continue
            if self._delete(pool, image.name):
                deleted.append(image.name)
        for name in set(self._unused_since) - present:
            del self._unused_since[name]
        return deleted

    def _delete(self, pool, name):
        try:
            self.agent.images.DeleteImage(image_pb2.ImageRef(pool=pool, name=name),
                                          timeout=self.agent.timeout)
        except grpc.RpcError as e:
            code = client.code_of(e)
            if code == grpc.StatusCode.NOT_FOUND:
                self._unused_since.pop(name, None)
                return False
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                LOG.info("agent image %s/%s kept: %s", pool, name, e.details())
                return False
            raise client.to_nova(e, self.agent.address) from None
        self._unused_since.pop(name, None)
        LOG.info("removed unused agent image %s/%s", pool, name)
        return True


class _Status(object):
    """A gRPC status the child process reported, shaped as client.to_nova reads an RpcError."""

    def __init__(self, code, details):
        self._code = getattr(grpc.StatusCode, code or "UNKNOWN", grpc.StatusCode.UNKNOWN)
        self._details = details

    def code(self):
        return self._code

    def details(self):
        return self._details
