"""Streams an agent image out of StorageService.ExportVolume to stdout; a child of nova-compute.

Why a child process: as for image_upload.py, grpcio's streaming calls stall under eventlet's
monkey patching. This process has no eventlet; nova-compute reads our stdout through a green
pipe (Glance's upload reads it as a file), so its other green threads go on, and pipe and HTTP/2
flow control pace the agent's reads to Glance's upload: one message per side in memory.

Zero runs arrive as counts and leave as zero bytes (Glance stores the raw image whole). Every
byte written is hashed; the stream's sha256 trailer must match it.

argv[1]: JSON {"channel": {[hvagent] options}, "request": {ExportVolumeRequest fields},
"timeout": seconds}. stdout: the raw bytes. stderr's last line: JSON {"sha256": hex, "size":
bytes, "data_bytes": bytes sent as data} or {"code": gRPC status name, "details": message}.
Exit status 0 when the bytes are whole and their hash matched, 1 otherwise (2: bad arguments).
"""

import hashlib
import json
import sys

import grpc
from google.protobuf import json_format

from hvagent.v1 import storage_pb2
from hvagent.v1 import storage_pb2_grpc

ZEROS = bytes(1 << 20)


class Options(object):
    """The [hvagent] options client.make_channel reads, from a dict."""

    def __init__(self, values):
        for key in ("address", "plaintext", "ca_file", "cert_file", "key_file",
                    "tls_server_name"):
            setattr(self, key, values.get(key))


def copy_out(stream, out):
    """Writes the export's bytes to `out`; returns the answer for stderr."""
    digest = hashlib.sha256()
    size = data = 0
    trailer = None
    for chunk in stream:
        part = chunk.WhichOneof("part")
        if part == "data":
            digest.update(chunk.data)
            out.write(chunk.data)
            size += len(chunk.data)
            data += len(chunk.data)
        elif part == "zeros":
            left = chunk.zeros
            while left:
                piece = ZEROS[:min(left, len(ZEROS))]
                digest.update(piece)
                out.write(piece)
                left -= len(piece)
            size += chunk.zeros
        elif part == "trailer":
            trailer = chunk.trailer
    out.flush()
    got = digest.hexdigest()
    if trailer is None:
        return {"code": "DATA_LOSS", "details": "the export ended without its sha256 trailer"}
    if trailer.sha256 != got or trailer.size_bytes != size:
        return {"code": "DATA_LOSS", "details": "sha256 mismatch: got %s (%d bytes), agent sent %s "
                                                "(%d bytes)" % (got, size, trailer.sha256,
                                                                trailer.size_bytes)}
    return {"sha256": got, "size": size, "data_bytes": data}


def main(argv):
    from hvagent_nova import client  # after argv is checked: nova is imported with it

    try:
        spec = json.loads(argv[1])
        request = json_format.ParseDict(spec["request"], storage_pb2.ExportVolumeRequest())
    except (IndexError, ValueError, KeyError, json_format.ParseError) as e:
        sys.stderr.write("usage: image_export JSON: %s\n" % e)
        return 2
    stub = storage_pb2_grpc.StorageServiceStub(client.make_channel(Options(spec["channel"])))
    try:
        answer = copy_out(stub.ExportVolume(request, timeout=spec["timeout"]), sys.stdout.buffer)
    except grpc.RpcError as e:
        answer = {"code": e.code().name, "details": e.details() or e.code().name}
    except BrokenPipeError:
        answer = {"code": "CANCELLED", "details": "the reader went away"}
    sys.stderr.write(json.dumps(answer) + "\n")
    sys.stderr.flush()
    return 0 if "sha256" in answer else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
