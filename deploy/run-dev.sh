#!/usr/bin/env bash
# Installs what hvagent needs (Debian packages), builds it, and runs hvagentd in the
# foreground on libvirt's built-in test driver (test:///default): no hypervisor needed.
# Ctrl-C stops it. Extra arguments go to hvagentd (e.g. --hypervisor-uri qemu:///system).
# It serves plain text on loopback without authentication (--plaintext-loopback), for
# development only; docs/security.md shows a TLS setup.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF >/dev/null
ninja -C build hvagentd hvctl

GRPC=127.0.0.1:50051
REST=127.0.0.1:8780
cat <<MSG

hvagentd is starting on test:///default in DEVELOPMENT MODE (--plaintext-loopback):
plain text, loopback only, no authentication. For TLS, roles and tokens see docs/security.md
(deploy/dev-certs.sh makes a development CA and certificates).
  gRPC  $GRPC   (health service and reflection on)
  REST  http://$REST

Try, from another terminal:
  curl -s http://$REST/v1/host
  build/agent/hvctl --server $GRPC list

MSG
# On the test driver (no --hypervisor-uri, no --config given), its capacity file: the driver's
# fake host is full before anything is created, and the agent admits by capacity on every
# driver (deploy/test-driver.toml says why).
extra=()
case " $* " in
  *" --hypervisor-uri"* | *" --config"*) ;;
  *) extra=(--config deploy/test-driver.toml) ;;
esac
exec build/agent/hvagentd --plaintext-loopback --grpc-listen "$GRPC" --rest-listen "$REST" "${extra[@]}" "$@"
