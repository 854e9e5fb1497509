#!/usr/bin/env bash
# The one place that lists hvagent's system packages (Debian 12 "bookworm").
# Idempotent: installs only what is missing; safe to run again and again.
#   deploy/install-deps.sh            build + run dependencies
#   deploy/install-deps.sh --test     also what the test suite needs (libvirtd, QEMU, Python gRPC)
set -euo pipefail

build_pkgs=(
  build-essential cmake ninja-build pkg-config git ccache
  protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev libgrpc-dev
  libabsl-dev libcpprest-dev libboost1.74-dev libspdlog-dev libfmt-dev libssl-dev libtomlplusplus-dev libcurl4-openssl-dev
  libvirt-dev libxml2-dev libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  libgtest-dev libgmock-dev
  lvm2 fdisk parted util-linux
  libxen-dev libsystemd-dev
  curl ca-certificates
)
test_pkgs=(
  libvirt-daemon-system qemu-system-x86 qemu-utils cpio xz-utils
  python3-grpcio python3-protobuf
  clang-14 libclang-rt-14-dev
  prometheus systemd
  crossbuild-essential-arm64 qemu-user
  python3-nova python3-os-vif python3-oslotest python3-fixtures python3-testtools python3-ddt
  genisoimage syslinux syslinux-common mtools dosfstools
  python3-wsgi-intercept python3-requests-mock python3-testscenarios python3-osprofiler
  openapi-specification python3-jsonschema python3-yaml
  openvswitch-switch tcpdump
  libjs-xterm python3-websocket chromium
  python3-cryptography
  python3-pip python3-wheel python3-setuptools
)

want=("${build_pkgs[@]}")
if [[ "${1:-}" == "--test" ]]; then want+=("${test_pkgs[@]}"); fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#want[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# libvirt-daemon-system's postinst starts daemons; policy-rc.d keeps the package from
# starting services on machines without systemd (CI containers). Tests start what they need.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
