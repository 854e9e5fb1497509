#!/usr/bin/env bash
# Builds python3-hvagent-nova_<version>_all.deb, the Nova compute driver as its own Debian
# package, for nova-compute hosts (any architecture: the package is pure Python):
#   /usr/lib/python3/dist-packages/hvagent_nova/        the driver
#   /usr/lib/python3/dist-packages/hvagent/v1/          gRPC stubs generated now from proto/
#   /usr/lib/python3/dist-packages/hvagent_nova-*.dist-info   metadata and the oslo.config entry
#                                                       point (oslo-config-generator --namespace hvagent)
#   /usr/lib/python3/dist-packages/nova/virt/hvagent.py the one-line module Nova 26's loader needs,
#                                                       so nova.conf says compute_driver = hvagent.HvagentDriver
# The files come from the wheel Debian's pip builds (setup.py runs protoc), installed with
# --target into a staging root; dpkg-deb builds the package with root ownership. Depends are
# Debian's packages of what the driver imports. postinst/prerm byte-compile and clean like
# dh_python3's (py3compile / py3clean), so a purge leaves no __pycache__ behind.
# Usage: drivers/nova/build-deb.sh OUTDIR   (prints the .deb's path)
set -euo pipefail
out=$(realpath -m "${1:?usage: build-deb.sh OUTDIR}")
here=$(cd "$(dirname "$0")" && pwd)
proto=$(cd "$here/../../proto" && pwd)
version=$(sed -n 's/^version *= *//p' "$here/setup.cfg")
name=python3-hvagent-nova
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A copy, so the build leaves nothing (build/, *.egg-info) in the source tree.
mkdir -p "$work/src"
cp -r "$here/hvagent_nova" "$here/setup.py" "$here/setup.cfg" "$here/README.md" "$work/src/"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore HVAGENT_PROTO_DIR=$proto PYTHONDONTWRITEBYTECODE=1
unset PYTHONPATH
(cd "$work" && /usr/bin/python3 -m pip wheel -q --no-deps --no-build-isolation --no-index -w dist ./src)
root=$work/root
site=$root/usr/lib/python3/dist-packages
/usr/bin/python3 -m pip install -q --no-deps --no-index --no-compile --target "$site" "$work"/dist/*.whl
# pip --target writes an INSTALLER and a RECORD for pip's own bookkeeping; dpkg owns these files.
rm -f "$site"/hvagent_nova-*.dist-info/{INSTALLER,RECORD,REQUESTED,direct_url.json}
mkdir -p "$site/nova/virt"
printf '%s\n' '"""compute_driver = hvagent.HvagentDriver: Nova 26 loads drivers from nova.virt only."""' \
  'from hvagent_nova.driver import HvagentDriver  # noqa: F401' > "$site/nova/virt/hvagent.py"
mkdir -p "$root/usr/share/doc/$name"
cp "$here/README.md" "$root/usr/share/doc/$name/README.md"
cp "$here/../../docs/openstack.md" "$root/usr/share/doc/$name/openstack.md"

mkdir -p "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: all
Section: python
Priority: optional
Maintainer: hvagent developers <hvagent@localhost>
Installed-Size: $size
Depends: python3:any, python3-nova, python3-os-vif, python3-grpcio, python3-protobuf, python3-oslo.config, genisoimage
Recommends: qemu-utils
Description: OpenStack Nova compute driver for hosts run by hvagent
 nova-compute drives an ARM64 Xen (or KVM) host through the hvagent agent's
 gRPC API: instances, their disks on the host's LVM and partition pools,
 lifecycle events and placement inventory. Set compute_driver =
 hvagent.HvagentDriver and the [hvagent] options (oslo-config-generator
 --namespace hvagent lists them).
CONTROL
cat > "$root/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  py3compile -p python3-hvagent-nova
fi
SCRIPT
cat > "$root/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
# py3clean (python3-minimal, which python3 depends on) removes the .pyc of this package's files.
py3clean -p python3-hvagent-nova
SCRIPT
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm"
find "$root" -path "$root/DEBIAN" -prune -o -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +
mkdir -p "$out"
deb=$out/${name}_${version}_all.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
