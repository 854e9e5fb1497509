#!/usr/bin/python3
"""Depends of the arm64 package, computed the way dpkg-shlibdeps does for a native build.

dpkg-shlibdeps cannot run on a cross build: it asks dpkg which installed package owns each
library, and the arm64 libraries are unpacked into a sysroot, never installed. This does the same
lookup by hand. For every shared library a binary NEEDs (readelf -d), it finds the arm64 .deb
that ships that file (the .debs make-arm64-sysroot.sh downloaded). From that package's own
`shlibs` control file it takes the dependency, e.g. "libgrpc++1.51 (>= 1.51.1)".

    arm64-depends.py [--cache /var/cache/hvagent-arm64] BINARY...

Prints one Depends line (comma-separated, sorted). Fails, naming the library, when a NEEDED
library has no package or no shlibs entry: a Depends line that silently misses a library would
install and then not start. Runs tools from argv lists, never a shell."""

import argparse
import os
import re
import subprocess
import sys


def run(argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def needed(binary):
    return re.findall(r"\(NEEDED\).*\[(.+?)\]", run(["readelf", "-d", binary]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="/var/cache/hvagent-arm64")
    ap.add_argument("binaries", nargs="+")
    args = ap.parse_args()
    stamp = os.path.join(args.cache, "sysroot", ".hvagent-packages")
    debs_dir = os.path.join(args.cache, "debs")
    wanted = [line.split("=", 1) for line in open(stamp).read().split()]
    debs = {}
    for name, version in wanted:
        prefix = f"{name}_{version.replace(':', '%3a')}_"
        matches = [f for f in os.listdir(debs_dir) if f.startswith(prefix) and f.endswith(".deb")]
        if matches:
            debs[name] = os.path.join(debs_dir, matches[0])

    sonames = sorted({so for b in args.binaries for so in needed(b)})
    # soname -> the package whose file list has .../<soname>
    owner = {}
    for name, deb in sorted(debs.items()):
        for line in run(["dpkg-deb", "-c", deb]).splitlines():
            fields = line.split(None, 5)  # mode owner size date time path[ -> target]
            if len(fields) < 6:
                continue
            path = fields[5].split(" -> ")[0]
            base = os.path.basename(path)
            if base in sonames and "/lib" in path and base not in owner:
                owner[base] = name
    depends = set()
    for so in sonames:
        if so not in owner:
            sys.exit(f"arm64-depends: no package in {debs_dir} ships {so}")
        pkg = owner[so]
        shlibs = subprocess.run(["dpkg-deb", "-I", debs[pkg], "shlibs"], capture_output=True, text=True).stdout
        m = re.match(r"(.+?)\.so\.(.+)$", so) or re.match(r"(.+?)-(.+?)\.so$", so)
        dep = None
        for line in shlibs.splitlines():
            fields = line.split(None, 2)
            if len(fields) == 3 and m and fields[0] == m.group(1) and fields[1] == m.group(2):
                dep = fields[2].strip()
        if dep is None:
            sys.exit(f"arm64-depends: {pkg} has no shlibs entry for {so}")
        depends.add(dep)
    print(", ".join(sorted(depends)))


if __name__ == "__main__":
    main()
