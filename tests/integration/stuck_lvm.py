"""Test double for lvm2, for test_reliability: runs the real lvm (a copy, given as the first
argument when installed) unless the marker file exists, in which case it hangs like lvm2 on a
sick disk. Also the launcher that installs it: `stuck_lvm.py launch REAL_COPY MARKER -- ARGV...`
bind-mounts a generated double over /usr/sbin/lvm (meant to run inside `unshare --mount`, so only
that process tree sees it) and execs ARGV. No shell anywhere."""

import os
import subprocess
import sys
import time

TOOL = "/usr/sbin/lvm"  # /sbin/lvm on merged-/usr Debian


def hang_or_run(real, marker, args):
    if os.path.exists(marker):
        while True:
            time.sleep(3600)
    os.execv(real, ["lvm"] + args)


def launch(real, marker, argv):
    double = os.path.join(os.path.dirname(real), "lvm-double")
    with open(double, "w") as f:
        f.write("#!/usr/bin/python3\nimport sys\nsys.path.insert(0, %r)\nimport stuck_lvm\n"
                "stuck_lvm.hang_or_run(%r, %r, sys.argv[1:])\n" % (os.path.dirname(os.path.abspath(__file__)), real, marker))
    os.chmod(double, 0o755)
    subprocess.run(["mount", "--bind", double, TOOL], check=True)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[1] == "launch" and sys.argv[4] == "--":
        launch(sys.argv[2], sys.argv[3], sys.argv[5:])
    else:
        sys.exit("usage: stuck_lvm.py launch REAL_COPY MARKER -- ARGV...")
