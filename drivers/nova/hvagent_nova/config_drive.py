"""Config drives for HvagentDriver, decided and made as Nova's libvirt driver does.

configdrive.required_by(instance) decides (the instance's config_drive, the image's
img_config_drive=mandatory, [DEFAULT] force_config_drive). Nova's own ConfigDriveBuilder makes
the ISO 9660 image (genisoimage, [DEFAULT] mkisofs_cmd) from InstanceMetadata, so the
injected files and the admin password reach the guest in Nova's layout
(openstack/latest/meta_data.json, ...).

How it reaches the guest: the ISO is uploaded as a temporary agent image of the storage pool
(ImageService.UploadImage, in the child process image_upload.py, like Glance images), and
CreateDomain makes the instance's config volume from it (DiskVolume.image): a copy the domain
owns, deleted with the domain like its other local disks. The temporary image is deleted as
soon as CreateDomain returned, whatever it answered, so nothing but the domain's own volume
outlives the spawn; one a crash left is deleted at nova-compute's next start (sweep). QEMU/KVM guests see a read-only CD-ROM (hdd on x86's IDE, sda on ARM's
SCSI); Xen on Arm guests, which have no emulated CD-ROM, a read-only xvd disk.
"""

import hashlib
import json
import os
import sys
import tempfile

from eventlet.green import subprocess
import grpc
from oslo_log import log as logging

from nova.api.metadata import base as instance_metadata
from nova import exception
from nova.virt import configdrive

from hvagent.v1 import domain_pb2, image_pb2
from hvagent_nova import client
from hvagent_nova import image_cache
from hvagent_nova import image_upload

LOG = logging.getLogger(__name__)

# Temporary agent images of config drives: this prefix + 16 hex digits of the instance UUID
# (the 20 characters a partition pool's image names hold).
PREFIX = "cfg-"


def image_name(instance):
    return PREFIX + instance.uuid.replace("-", "").lower()[:16]


def required(instance):
    return configdrive.required_by(instance)


def build(instance, injected_files, admin_password, network_info, directory):
    """Makes the ISO in `directory` with Nova's ConfigDriveBuilder; returns its path."""
    extra_md = {"admin_pass": admin_password} if admin_password else {}
    md = instance_metadata.InstanceMetadata(instance, content=injected_files or [],
                                            extra_md=extra_md, network_info=network_info)
    path = os.path.join(directory, "disk.config")
    with configdrive.ConfigDriveBuilder(instance_md=md) as cdb:
        cdb.make_drive(path)
    return path


def upload(conf, pool, name, path):
    """Uploads the ISO as agent image pool/name (raw, size and sha256 checked by the agent)."""
    with open(path, "rb") as f:
        data = f.read()  # an ISO of metadata: kilobytes to a few megabytes
    header = {"pool": pool, "name": name, "format": "IMAGE_FORMAT_RAW",
              "size_bytes": str(len(data)), "sha256": hashlib.sha256(data).hexdigest()}
    group = conf.hvagent
    spec = {"channel": {k: getattr(group, k) for k in image_cache.CHANNEL_OPTS},
            "header": header, "timeout": group.image_timeout}
    proc = subprocess.Popen([sys.executable, "-m", image_upload.__name__, json.dumps(spec)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = proc.communicate(data)
    try:
        answer = json.loads(out)
    except ValueError:
        raise exception.InternalError(
            err="hvagent: config drive upload helper exited %s without an answer"
                % proc.returncode) from None
    if "image" not in answer:
        raise exception.InstanceDeployFailure(
            reason="hvagent: config drive upload to %s/%s: %s: %s"
                   % (pool, name, answer.get("code"), answer.get("details")))


def delete_image(agent, pool, name):
    """Deletes the temporary image; one already gone is fine, a failure only logged (the
    image holds metadata of an instance, never a guest's data)."""
    try:
        agent.images.DeleteImage(image_pb2.ImageRef(pool=pool, name=name),
                                 timeout=agent.timeout)
    except grpc.RpcError as e:
        if client.code_of(e) != grpc.StatusCode.NOT_FOUND:
            LOG.warning("config drive image %s/%s not deleted: %s", pool, name, e.details())


def sweep(agent, pool):
    """Deletes every temporary config drive image of `pool` (names starting with PREFIX) and
    returns their names. Called from init_host: a config drive's image is needed only between
    its upload and CreateDomain's (or RescueDomain's) answer, and nova-compute runs no spawn
    or rescue before init_host returns, so every such image then is one a crash left (of
    nova-compute between upload and delete, or of the agent, whose delete then failed). An
    upload a crash of the agent cut short never becomes an image: the agent's own recovery
    removes it at its start (docs/images.md)."""
    listed = agent.images.ListImages(image_pb2.ListImagesRequest(pool=pool),
                                     timeout=agent.timeout).images
    gone = sorted(i.name for i in listed if i.name.startswith(PREFIX))
    for name in gone:
        delete_image(agent, pool, name)
    if gone:
        LOG.warning("config drive images left by a crash deleted from pool %s: %s",
                    pool, ", ".join(gone))
    return gone


def disk(pool, volume, image, target, xen):
    """The spec's disk: a volume the domain owns made from the image, read-only; a CD-ROM
    except on Xen."""
    d = domain_pb2.Disk(target=target, readonly=True,
                        volume=domain_pb2.DiskVolume(pool=pool, name=volume, image=image))
    if not xen:
        d.device = domain_pb2.Disk.DEVICE_CDROM
    return d


def prepare(agent, instance, injected_files, admin_password, network_info, conf, pool):
    """When the instance needs a config drive: builds it and uploads it as a temporary agent
    image; returns that image's name (None when no drive is needed). InstanceDeployFailure
    when one is needed and the pool holds no images."""
    if not required(instance):
        if injected_files or admin_password:
            LOG.info("no config drive: injected files and the admin password reach no guest",
                     instance=instance)
        return None
    if not pool:
        raise exception.InstanceDeployFailure(
            reason="hvagent: the instance needs a config drive, which reaches the agent as an "
                   "image: [hvagent] storage_pool must be a pool that holds images (partition, "
                   "or LVM with image_cache)")
    name = image_name(instance)
    # A spawn of this instance that died between upload and delete left its image: replaced.
    delete_image(agent, pool, name)
    with tempfile.TemporaryDirectory(prefix="hvcfg-") as tmp:
        path = build(instance, injected_files, admin_password, network_info, tmp)
        upload(conf, pool, name, path)
    LOG.info("config drive uploaded as agent image %s/%s", pool, name, instance=instance)
    return name
