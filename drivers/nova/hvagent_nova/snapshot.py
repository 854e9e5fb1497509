"""Nova's snapshot() for HvagentDriver: an instance's root volume becomes a Glance image.

1. The agent copies the root volume into a temporary agent image (ImageService.
   CreateImageFromVolume): a running guest is paused for the copy only and resumed after it
   (on partition pools a copy under pause is the only consistent way; they have no snapshots).
2. The image is streamed out (StorageService.ExportVolume) by a child process (image_export.py:
   grpcio's streams stall under eventlet) whose stdout Glance's upload reads as a file; the
   stream's sha256 trailer is checked against the bytes handed to Glance, and a mismatch fails
   the upload.
3. The temporary image is deleted whatever happened.
Task states as Nova's libvirt driver sets them: IMAGE_PENDING_UPLOAD before the copy, then
IMAGE_UPLOADING (expected IMAGE_PENDING_UPLOAD) before the upload.
"""

import json
import sys
import time

import eventlet

from eventlet.green import subprocess
from oslo_log import log as logging

from nova.compute import task_states
from nova import exception
from nova.image import glance

from hvagent.v1 import image_pb2
from hvagent_nova import client
from hvagent_nova import image_cache
from hvagent_nova import image_export

LOG = logging.getLogger(__name__)

# Agent images made for a snapshot: this prefix + 14 hex digits of the Glance id (the 20
# characters a partition pool's image names hold).
PREFIX = "snap-"


def image_name(image_id):
    return PREFIX + image_id.replace("-", "")[:14]


def metadata(instance, snap, image_meta):
    """What Glance records for the snapshot (the libvirt driver's fields): a raw disk."""
    props = {"image_location": "snapshot", "image_state": "available",
             "owner_id": instance.project_id}
    for key in ("kernel_id", "ramdisk_id", "os_type"):
        value = getattr(instance, key, None)
        if value:
            props[key] = value
    container = (image_meta.container_format
                 if image_meta.obj_attr_is_set("container_format") else "bare")
    return {"status": "active", "name": snap["name"], "disk_format": "raw",
            "container_format": container, "properties": props}


class ExportReader(object):
    """The child's stdout as the file Glance reads. At its end the child's answer must say the
    bytes were whole and matched the trailer's sha256; otherwise read() raises, and Glance's
    upload fails rather than keep a wrong image."""

    def __init__(self, proc):
        self._proc = proc
        self.done = False

    def read(self, size=-1):
        data = self._proc.stdout.read(size if size and size > 0 else 1 << 20)
        if not data and not self.done:
            self.done = True
            self._check()
        return data

    def _check(self):
        self._proc.wait()
        lines = self._proc.stderr.read().decode(errors="replace").strip().splitlines()
        try:
            answer = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise exception.InternalError(err="hvagent: the export helper exited %s without an "
                                              "answer" % self._proc.returncode) from None
        if "sha256" not in answer:
            raise client.to_nova(image_cache._Status(answer.get("code"), answer.get("details")),
                                 "export")
        LOG.info("exported %d bytes (%d as data, the rest zero runs), sha256 %s checked",
                 answer["size"], answer["data_bytes"], answer["sha256"])


def snapshot(drv, context, instance, image_id, update_task_state, pool, root, conf):
    """See the module's docstring. `drv` is the HvagentDriver, `root` the root volume's name."""
    image_api = glance.API()
    snap = image_api.get(context, image_id)
    name = image_name(image_id)
    update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
    made = drv.agent.call(drv.agent.images.CreateImageFromVolume,
                          image_pb2.CreateImageFromVolumeRequest(pool=pool, volume=root, name=name),
                          instance, extra_timeout=conf.hvagent.image_timeout)
    LOG.info("agent image %s/%s made from root volume %s (%d bytes%s)", pool, name, root,
             made.image.virtual_size_bytes,
             ", guest paused %d ms" % made.paused_ms if made.paused else "", instance=instance)
    try:
        update_task_state(task_state=task_states.IMAGE_UPLOADING,
                          expected_state=task_states.IMAGE_PENDING_UPLOAD)
        _upload(drv, context, image_api, image_id, metadata(instance, snap, instance.image_meta),
                pool, name, conf)
    finally:
        _delete_image(drv, pool, name)


def _delete_image(drv, pool, name, wait=60):
    """Deletes the temporary image. An export the agent still streams (the child was killed a
    moment ago) holds it against deletes until the agent sees its caller gone: retried."""
    deadline = time.monotonic() + wait
    while True:
        try:
            drv.agent.call(drv.agent.images.DeleteImage, image_pb2.ImageRef(pool=pool, name=name))
            return
        except exception.NotFound:
            return
        except exception.Invalid as e:
            if time.monotonic() > deadline:
                LOG.error("agent image %s/%s left behind: %s", pool, name, e)
                return
            eventlet.sleep(0.2)


def _upload(drv, context, image_api, image_id, meta, pool, name, conf):
    group = conf.hvagent
    spec = {"channel": {k: getattr(group, k) for k in image_cache.CHANNEL_OPTS},
            "request": {"pool": pool, "name": name, "image": True},
            "timeout": group.image_timeout}
    proc = subprocess.Popen([sys.executable, "-m", image_export.__name__, json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = ExportReader(proc)
    try:
        image_api.update(context, image_id, meta, reader)
    finally:
        if not reader.done:
            # Glance stopped reading (an error, or it needed no data): the child's export is
            # cancelled by its death, which the agent sees as the caller gone.
            proc.kill()
            proc.wait()
