#!/usr/bin/env bash
# Installs everything the test suite needs, builds once, and runs every tier, fast ones first:
#   1. unit tests (warnings as errors)
#   2. benchmarks once in smoke mode, so they cannot rot
#   3. the unit tests again under AddressSanitizer + UndefinedBehaviorSanitizer
#   4. fuzz targets for a bounded number of runs (clang + libFuzzer)
#   5. integration tests against a real libvirtd + QEMU (the fixture starts and stops it)
#   6. the Debian package: built, installed, started and purged
#   7. the arm64 cross build and its .deb, its unit tests under qemu-aarch64
#   8. the system tier: real Xen 4.17 ARM64 under qemu-system-aarch64, the arm64 agent in dom0
# Needs root (apt-get, libvirtd). Exits non-zero on the first failing tier.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

step() { printf '\n=== %s ===\n' "$*"; }

step "no shell from the sources"
# The agent runs tools from argv vectors only; a shell anywhere is a bug (docs/security.md).
hits=$(grep -rnE '\b(system|popen)[[:space:]]*\(|/bin/sh -c|shell=True' \
         --include='*.cpp' --include='*.h' --include='*.py' --include='*.sh' \
         agent hypervisor storage common bench drivers tests deploy | grep -v '^deploy/test.sh:' || true)
if [[ -n $hits ]]; then
  printf '%s\n' "$hits" >&2
  echo "test.sh: the lines above start a shell; use an argv runner instead" >&2
  exit 1
fi

step "install dependencies"
deploy/install-deps.sh --test

step "build (warnings as errors)"
# Failpoints compiled in: the reliability tests kill the agent between steps (docs/reliability.md).
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHVAGENT_WERROR=ON -DHVAGENT_FAILPOINTS=ON >/dev/null
ninja -C build

step "unit tests"
ctest --test-dir build -L unit --output-on-failure -j "$jobs"

step "CloudStack extension: every action against a real agent on test:///default"
ctest --test-dir build -L cloudstack --output-on-failure

step "Nova compute driver: its tests and Nova's conformance suite against a real agent"
ctest --test-dir build -L nova --output-on-failure

step "benchmarks, smoke mode (small counts; figures only, no timing assertions)"
ctest --test-dir build -L bench --output-on-failure

step "unit tests under ASan + UBSan"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DHVAGENT_WERROR=ON -DHVAGENT_SANITIZE=ON >/dev/null
ninja -C build-asan unit_tests
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
LSAN_OPTIONS=suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan -L unit --output-on-failure -j "$jobs"

step "fuzz tests (clang + libFuzzer, bounded runs)"
CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DHVAGENT_FUZZ=ON -DHVAGENT_WERROR=ON >/dev/null
ninja -C build-fuzz fuzzers
ctest --test-dir build-fuzz -L fuzz --output-on-failure

step "integration tests (real libvirtd + QEMU)"
ctest --test-dir build -L integration --output-on-failure

step "Debian package: built by CPack, installed with apt, started, purged"
ctest --test-dir build -L package --output-on-failure

step "arm64: cross build (sysroot from Debian's arm64 packages), .deb, unit tests under qemu-aarch64"
deploy/cross/build-arm64.sh

step "system: real Xen ARM64 (qemu-system-aarch64), a guest on an LV through the agent's API"
# dom0 gets the agent from the arm64 .deb the previous tier built (its Depends checked against
# dom0's own Debian packages).
tests/system/xen-arm64/run.sh --agent-deb "$(ls build-arm64/hvagent_*_arm64.deb)"

step "all tiers passed"
