"""Builds hvagent-nova. The gRPC stubs (package hvagent.v1) are generated at build time from
../../proto with the system protoc and grpc_python_plugin, into the build directory only.

    /usr/bin/python3 setup.py build && /usr/bin/python3 setup.py install --root=/ --prefix=/usr
    (or: HVAGENT_PROTO_DIR=/path/to/proto ... when building outside the source tree)
"""

import glob
import os
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithStubs(build_py):
    def run(self):
        proto_dir = os.environ.get("HVAGENT_PROTO_DIR", os.path.join(HERE, "..", "..", "proto"))
        out = os.path.join(self.build_lib)
        os.makedirs(os.path.join(out, "hvagent", "v1"), exist_ok=True)
        for init in ("hvagent/__init__.py", "hvagent/v1/__init__.py"):
            open(os.path.join(out, init), "a").close()
        protos = sorted(glob.glob(os.path.join(proto_dir, "hvagent", "v1", "*.proto")))
        if not protos:
            raise SystemExit("no protos under %s (set HVAGENT_PROTO_DIR)" % proto_dir)
        subprocess.run(["protoc", "-I", proto_dir, "--python_out=" + out,
                        "--grpc_python_out=" + out,
                        "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin", *protos],
                       check=True)
        self.packages = ["hvagent_nova"]
        super().run()


setup(cmdclass={"build_py": BuildWithStubs}, packages=["hvagent_nova"])
