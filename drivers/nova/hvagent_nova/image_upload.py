"""Streams stdin to the agent's ImageService.UploadImage; run as a child of nova-compute.

Why a child process: nova-compute runs under eventlet, and grpc's client-streaming call feeds
its request iterator from a thread of the process's ``threading`` module. Under eventlet's
monkey patching that thread is a green thread, which never runs while the calling thread
blocks inside grpc's C core: the upload stalls until its deadline (measured with grpcio 1.51).
This process has no eventlet. nova-compute writes the image's bytes into our stdin through a
green pipe, so its other green threads go on while HTTP/2 flow control paces the upload to the
pool's speed, and at most one chunk per side is ever in memory.

argv[1]: JSON {"channel": {[hvagent] options}, "header": {UploadImageHeader fields},
"timeout": seconds}. stdout: one JSON line, {"image": {Image fields}} or {"code": gRPC status
name, "details": the agent's message}. Exit status 0 in both cases (2: bad arguments).
"""

import json
import sys

import grpc
from google.protobuf import json_format

from hvagent.v1 import image_pb2
from hvagent.v1 import image_pb2_grpc

# Below the agent's per-message limit ([rest] max_body_bytes, 1 MiB by default); the size the
# agent's docs recommend.
CHUNK = 256 * 1024


class Options(object):
    """The [hvagent] options client.make_channel reads, from a dict."""

    def __init__(self, values):
        for key in ("address", "plaintext", "ca_file", "cert_file", "key_file",
                    "tls_server_name"):
            setattr(self, key, values.get(key))


def requests(header, stream):
    yield image_pb2.UploadImageRequest(header=header)
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return
        yield image_pb2.UploadImageRequest(chunk=chunk)


def main(argv):
    from hvagent_nova import client  # after argv is checked: nova is imported with it

    try:
        spec = json.loads(argv[1])
        header = json_format.ParseDict(spec["header"], image_pb2.UploadImageHeader())
    except (IndexError, ValueError, KeyError, json_format.ParseError) as e:
        sys.stderr.write("usage: image_upload JSON: %s\n" % e)
        return 2
    channel = client.make_channel(Options(spec["channel"]))
    stub = image_pb2_grpc.ImageServiceStub(channel)
    try:
        image = stub.UploadImage(requests(header, sys.stdin.buffer), timeout=spec["timeout"])
        out = {"image": json_format.MessageToDict(image, preserving_proto_field_name=True)}
    except grpc.RpcError as e:
        out = {"code": e.code().name, "details": e.details() or e.code().name}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
