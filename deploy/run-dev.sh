#!/usr/bin/env bash
# Installs what hvagent needs (Debian packages), builds it, and runs hvagentd in the
# foreground on libvirt's built-in test driver (test:///default): no hypervisor needed.
# Ctrl-C stops it. Extra arguments go to hvagentd (e.g. --hypervisor-uri qemu:///system).
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF >/dev/null
ninja -C build hvagentd hvctl

GRPC=127.0.0.1:50051
REST=127.0.0.1:8780
cat <<MSG

hvagentd is starting on test:///default
  gRPC  $GRPC   (health service and reflection on)
  REST  http://$REST

Try, from another terminal:
  curl -s http://$REST/v1/host
  build/agent/hvctl --server $GRPC list

MSG
exec build/agent/hvagentd --grpc-listen "$GRPC" --rest-listen "$REST" "$@"
