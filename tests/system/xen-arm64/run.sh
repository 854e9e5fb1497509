#!/bin/bash
# CI entry point of the Xen ARM64 system tier: fetch (cached), build dom0, boot and test.
# Every stage has its own time limit; the whole tier stays under 20 minutes.
#
#   run.sh [--agent PATH | --agent-deb DEB] [--agent-libs DIR] [--artifacts DIR]
#
# Defaults: --agent <repo>/build-arm64/agent/hvagentd (or $HVAGENTD_ARM64); without that file
# the API steps are skipped, saying so, and the Xen/dom0 bring-up is still tested.
# On failure dom0's console (and, when reachable, dom0's logs) are in the artifacts directory.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
AGENT=${HVAGENTD_ARM64:-$REPO/build-arm64/agent/hvagentd}
AGENT_LIBS=""
AGENT_DEB=""
ARTIFACTS=${HVAGENT_XEN_ARTIFACTS:-$REPO/build/system-xen-arm64-artifacts}
CACHE=${HVAGENT_XEN_CACHE:-/var/cache/hvagent-xen-arm64}
while [ $# -gt 0 ]; do
  case "$1" in
    --agent) AGENT=$2; shift 2 ;;
    --agent-libs) AGENT_LIBS=$2; shift 2 ;;
    --agent-deb) AGENT_DEB=$2; shift 2 ;;
    --artifacts) ARTIFACTS=$2; shift 2 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
WORKDIR=$(mktemp -d /tmp/hvagent-xen-arm64.XXXXXX)
IMAGE=$WORKDIR/image
T0=$(date +%s)
fail() {
  echo "run.sh: FAILED: $*" >&2
  mkdir -p "$ARTIFACTS"
  [ -f "$WORKDIR/console.log" ] && cp "$WORKDIR/console.log" "$ARTIFACTS/dom0-console.log"
  [ -f "$WORKDIR/qemu.out" ] && cp "$WORKDIR/qemu.out" "$ARTIFACTS/qemu.out"
  echo "run.sh: artifacts in $ARTIFACTS" >&2
  rm -rf "$IMAGE" "$WORKDIR/disk.raw"
  exit 1
}
[ "$(id -u)" = 0 ] || { echo "run.sh: run as root" >&2; exit 2; }

timeout 600 "$HERE/fetch.sh" "$CACHE/debs" || fail "fetch.sh (exit $?)"
T1=$(date +%s)
BUILD_ARGS=(--cache "$CACHE/debs" --out "$IMAGE" --agent "$AGENT")
[ -n "$AGENT_DEB" ] && BUILD_ARGS=(--cache "$CACHE/debs" --out "$IMAGE" --agent-deb "$AGENT_DEB")
[ -n "$AGENT_LIBS" ] && BUILD_ARGS+=(--agent-libs "$AGENT_LIBS")
timeout 300 "$HERE/build-dom0.sh" "${BUILD_ARGS[@]}" || fail "build-dom0.sh (exit $?)"
T2=$(date +%s)
[ -n "$AGENT_DEB" ] || [ -f "$AGENT" ] || echo "run.sh: agent step skipped: no arm64 hvagentd at $AGENT"

# The test bounds each boot itself (run_xen.py kills QEMU on its hard timeout); this outer
# limit only catches a hung test process.
HVAGENT_XEN_IMAGE=$IMAGE HVAGENT_XEN_WORKDIR=$WORKDIR HVAGENT_XEN_ARTIFACTS=$ARTIFACTS \
  timeout -k 10 1800 /usr/bin/python3 -m unittest -v "$HERE/test_xen_arm64.py" 2>&1 | tee "$WORKDIR/test.log"
rc=${PIPESTATUS[0]}
T3=$(date +%s)
echo "run.sh: download $(( $(cat "$CACHE/debs/download-bytes") / 1048576 )) MiB (cached), dom0 image $(( $(cat "$IMAGE/dom0-bytes") / 1048576 )) MiB;" \
     "fetch $((T1 - T0)) s, build $((T2 - T1)) s, test $((T3 - T2)) s, tier $((T3 - T0)) s"
[ "$rc" = 0 ] || fail "test_xen_arm64 (exit $rc)"
rm -rf "$WORKDIR"
echo "run.sh: OK"
