#!/usr/bin/env bash
# Installs everything the test suite needs, builds, and runs every tier, fast ones first:
#   static       no shell started from the sources
#   unit         unit tests (warnings as errors)
#   cloudstack   the CloudStack extension against a real agent on test:///default
#   nova         the Nova compute driver's tests and Nova's conformance suite
#   bench        benchmarks once in smoke mode, so they cannot rot
#   asan         the unit tests again under AddressSanitizer + UndefinedBehaviorSanitizer (clang)
#   fuzz         fuzz targets for a bounded number of runs (clang + libFuzzer, asan's tree)
#   integration  against a real libvirtd + QEMU (the fixture starts and stops it)
#   package      the Debian package: built, installed, started and purged
#   scripts      README's two commands in README's order: deploy/run-dev.sh until the agent
#                serves, then this script's unit tier on the same checkout (late: it builds
#                build/ again, without tests and failpoints, as a user's first command does)
#   arm64        the arm64 cross build and its .deb, its unit tests under qemu-aarch64
#   openstack    a whole OpenStack from Debian's archive on this host (Keystone, Glance, Placement,
#                Neutron, Nova with the hvagent driver's .deb) booting servers through the agent's
#                .deb: tests/cloud/openstack/run.sh, the openstack CLI as a user types it
#   system       real Xen 4.17 ARM64 under qemu-system-aarch64, the arm64 agent in dom0
#
#   deploy/test.sh                      every tier (what .ci/run runs)
#   deploy/test.sh --tier unit [--tier nova ...]   those tiers only, in the order above, after
#                                       the install and build they need
#   deploy/test.sh --list               the tier names
#
# Build folders are test.sh's own: build-test/ (unit to package), build-asan/ (asan and fuzz),
# build-arm64/; each is configured with every option spelled out, every run. deploy/run-dev.sh
# builds build/ with the tests off, and the two never share a CMake cache (issue 27: they did,
# and six tiers found no tests and passed).
# Each tier prints its counts and wall time; a CTest tier runs with --no-tests=error and must run
# at least its floor (below). The last line is the total: "N passed, N failed, N skipped".
# Needs root (apt-get, libvirtd). Exits non-zero on the first failing tier.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

# The tests each tier ran when its floor was last set (passed + failed: skipped tests do not
# count). A tier that runs fewer fails, whatever the cause: a lost label, a test binary that no
# longer lists its tests, a cache with BUILD_TESTING=OFF, tests that started skipping.
# Raise a floor in the commit that adds tests; lower it only in the commit that removes some.
# arm64 is unit less the 42 tests build-arm64.sh excludes under qemu-user; asan and arm64 also
# skip the one failpoint death test (built without failpoints). A tier not listed
# (static, scripts) is one check: it must pass.
declare -A floor=(
  [unit]=961 [cloudstack]=2 [nova]=9 [bench]=3 [asan]=960 [fuzz]=5 [integration]=35
  [package]=2 [arm64]=918 [openstack]=10 [system]=28
)

tiers=(static unit cloudstack nova bench asan fuzz integration package scripts arm64 openstack system)
declare -A title=(
  [static]="no shell from the sources"
  [unit]="unit tests"
  [scripts]="README's commands in README's order: deploy/run-dev.sh, then deploy/test.sh --tier unit"
  [cloudstack]="CloudStack extension: every action against a real agent on test:///default"
  [nova]="Nova compute driver: its tests and Nova's conformance suite against a real agent"
  [bench]="benchmarks, smoke mode (small counts; figures only, no timing assertions)"
  [asan]="unit tests under ASan + UBSan (clang, in the tree the fuzz tier shares)"
  [fuzz]="fuzz tests (clang + libFuzzer, bounded runs, in build-asan/)"
  [integration]="integration tests (real libvirtd + QEMU)"
  [package]="Debian package: built by CPack, installed with apt, started, purged"
  [arm64]="arm64: cross build (sysroot from Debian's arm64 packages), .deb, unit tests under qemu-aarch64"
  [openstack]="OpenStack on this host: Keystone, Glance, Placement, Neutron, Nova boot servers through the agent"
  [system]="system: real Xen ARM64 (qemu-system-aarch64), a guest on an LV through the agent's API"
)
# Tiers that test build-test/.
declare -A needs_build=([unit]=1 [scripts]=1 [cloudstack]=1 [nova]=1 [bench]=1 [integration]=1 [package]=1
                       [openstack]=1)

usage() {
  echo "usage: deploy/test.sh [--tier NAME]... | --list    (tiers: ${tiers[*]})" >&2
  exit 2
}
declare -A wanted=()
while (($#)); do
  case $1 in
    --tier) (($# >= 2)) || usage; wanted[$2]=1; shift 2 ;;
    --tier=*) wanted[${1#--tier=}]=1; shift ;;
    --list) printf '%s\n' "${tiers[@]}"; exit 0 ;;
    *) usage ;;
  esac
done
for t in "${!wanted[@]}"; do [[ -v title[$t] ]] || { echo "test.sh: no tier '$t'" >&2; usage; }; done
selected=()
for t in "${tiers[@]}"; do
  if ((${#wanted[@]} == 0)) || [[ -v wanted[$t] ]]; then selected+=("$t"); fi
done

step() { printf '\n=== %s ===\n' "$*"; }

# Totals over every tier so far, and the tier running now.
passed=0 failed=0 skipped=0
current="" tier_t0=0 tier_passed=0 tier_failed=0 tier_skipped=0
dev_pid=""  # run-dev.sh, while the scripts tier runs it

count() {  # count PASSED FAILED SKIPPED: add to the tier and the totals
  tier_passed=$((tier_passed + $1)) tier_failed=$((tier_failed + $2)) tier_skipped=$((tier_skipped + $3))
  passed=$((passed + $1)) failed=$((failed + $2)) skipped=$((skipped + $3))
}

tier_line() {  # tier_line VERDICT
  printf '\n=== %s: %s%d passed, %d failed, %d skipped in %d s ===\n' "$current" "$1" \
    "$tier_passed" "$tier_failed" "$tier_skipped" $((SECONDS - tier_t0))
}

on_exit() {
  local rc=$?
  if [[ -n $dev_pid ]] && kill -0 "$dev_pid" 2>/dev/null; then
    kill -KILL -- "-$dev_pid" 2>/dev/null || true  # run-dev.sh's process group (setsid below)
  fi
  if ((rc != 0)) && [[ -n $current ]]; then
    # A tier that failed outside its tests (a build, a script) counts as one failed test.
    ((tier_failed > 0)) || count 0 1 0
    tier_line "FAILED, "
  fi
  printf '%d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
  exit "$rc"
}
trap on_exit EXIT

fail() { echo "test.sh: $current: $*" >&2; exit 1; }

check_floor() {  # check_floor RAN
  local want=${floor[$current]:-1}
  ((want >= 1)) || want=1
  if (($1 < want)); then
    fail "ran $1 tests, fewer than its floor of $want (deploy/test.sh, floor table): tests were lost"
  fi
}

# Counts a CTest JUnit file as "PASSED FAILED SKIPPED". CTest writes status="notrun" both for a
# test that skipped itself (SKIP_RETURN_CODE, SKIP_REGULAR_EXPRESSION: GTEST_SKIP) and for one
# it could not start (missing executable, failed fixture); only the first kind is a skip.
junit_counts() {
  [[ -s $1 ]] || { echo "0 0 0"; return; }
  /usr/bin/python3 - "$1" <<'PY'
import sys
import xml.etree.ElementTree as ET

passed = failed = skipped = 0
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    status = case.get("status")
    skip = case.find("skipped")
    if status == "run":
        passed += 1
    elif status == "disabled" or (status == "notrun" and skip is not None
                                  and skip.get("message", "").startswith("SKIP_")):
        skipped += 1
    else:
        failed += 1
print(passed, failed, skipped)
PY
}

tally_junit() {  # tally_junit XML CTEST_EXIT: count the tier's tests, then fail or check the floor
  local p=0 f=0 s=0
  read -r p f s < <(junit_counts "$1") || true  # an unreadable file counts nothing: the floor fails
  count "${p:-0}" "${f:-0}" "${s:-0}"
  (($2 == 0)) || fail "the test run exited $2 (failed tests, or none found: every ctest here has --no-tests=error)"
  check_floor $((${p:-0} + ${f:-0}))
}

ctest_tier() {  # ctest_tier BUILD_DIR CTEST_ARGS...: CTest on one build folder, counted from JUnit
  local dir=$1 xml rc=0
  shift
  xml=$PWD/$dir/ctest-$current.xml
  rm -f "$xml"
  ctest --test-dir "$dir" --no-tests=error --output-on-failure --output-junit "$xml" "$@" || rc=$?
  tally_junit "$xml" "$rc"
}

free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

tier_static() {
  # The agent runs tools from argv vectors only; a shell anywhere is a bug (docs/security.md).
  local hits
  hits=$(grep -rnE '\b(system|popen)[[:space:]]*\(|/bin/sh -c|shell=True' \
           --include='*.cpp' --include='*.h' --include='*.py' --include='*.sh' \
           agent hypervisor storage common bench drivers tests deploy | grep -v '^deploy/test.sh:' || true)
  if [[ -n $hits ]]; then
    printf '%s\n' "$hits" >&2
    fail "the lines above start a shell; use an argv runner instead"
  fi
  count 1 0 0
}

tier_unit() { ctest_tier build-test -L unit -j "$jobs"; }

tier_scripts() {
  # A new user's order: run-dev.sh configures build/ with the tests off; test.sh must still test.
  [[ -z ${HVAGENT_SCRIPTS_TIER:-} ]] || fail "runs deploy/test.sh, so it cannot run inside it"
  local grpc rest log=build-test/scripts-run-dev.log inner=build-test/scripts-unit.log rc=0 last ran
  grpc=127.0.0.1:$(free_port) rest=127.0.0.1:$(free_port)
  # run-dev.sh appends its arguments to hvagentd's command line after its own listen addresses,
  # and a later flag wins: free ports, so a developer's agent on the default ones is no obstacle.
  # setsid: its own process group (its build included), to stop it by its id alone.
  # ccache (CMakeLists.txt) serves most of build/'s compiles from build-test/'s.
  setsid deploy/run-dev.sh --grpc-listen "$grpc" --rest-listen "$rest" >"$log" 2>&1 &
  dev_pid=$!
  local deadline=$((SECONDS + 3600))  # it installs and builds first
  until curl -sf -o /dev/null "http://$rest/healthz"; do
    if ! kill -0 "$dev_pid" 2>/dev/null; then
      tail -n 30 "$log" >&2
      fail "run-dev.sh exited before its agent served (whole output: $log)"
    fi
    if ((SECONDS > deadline)); then
      tail -n 30 "$log" >&2
      fail "no /healthz from run-dev.sh's agent within an hour (whole output: $log)"
    fi
    sleep 2
  done
  echo "run-dev.sh: its agent serves REST on $rest, gRPC on $grpc after $((SECONDS - tier_t0)) s"
  # README's two example calls.
  curl -sf "http://$rest/v1/host" >/dev/null || fail "GET /v1/host failed"
  build/agent/hvctl --server "$grpc" list >/dev/null || fail "build/agent/hvctl list exited $?"
  kill -INT "$dev_pid"  # README: Ctrl-C stops it (run-dev.sh exec'd hvagentd: same pid)
  for _ in $(seq 60); do kill -0 "$dev_pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$dev_pid" 2>/dev/null; then fail "hvagentd still running 30 s after SIGINT"; fi
  wait "$dev_pid" || rc=$?
  dev_pid=""
  ((rc == 0)) || { tail -n 30 "$log" >&2; fail "run-dev.sh's agent exited $rc on SIGINT"; }
  grep -qx 'BUILD_TESTING:BOOL=OFF' build/CMakeCache.txt ||
    fail "build/ is not as run-dev.sh configures it (BUILD_TESTING not OFF)"

  # The unit tier by the very code path CI uses, on the same checkout.
  HVAGENT_SCRIPTS_TIER=1 deploy/test.sh --tier unit 2>&1 | tee "$inner" || rc=${PIPESTATUS[0]}
  ((rc == 0)) || fail "deploy/test.sh --tier unit exited $rc after run-dev.sh"
  last=$(tail -n 1 "$inner")
  [[ $last =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed ]] || fail "no summary line from the unit tier: $last"
  ran=$((BASH_REMATCH[1] + BASH_REMATCH[2]))
  ((ran >= floor[unit])) || fail "the unit tier after run-dev.sh ran $ran tests, floor ${floor[unit]}"
  grep -qx 'BUILD_TESTING:BOOL=OFF' build/CMakeCache.txt || fail "test.sh changed run-dev.sh's build/"
  count 1 0 0
}

tier_cloudstack() { ctest_tier build-test -L cloudstack; }

tier_nova() { ctest_tier build-test -L nova; }

tier_bench() { ctest_tier build-test -L bench; }

# The asan and fuzz tiers share one tree, build-asan/, compiled by clang-14 with ASan, UBSan and
# libFuzzer's coverage instrumentation: the sources are compiled once for both tiers (they were two
# trees, gcc's and clang's, and CI compiled the libraries twice). -O0 with -g1 (line tables): ASan's
# reports keep function, file and line, at the least compile time.
configure_asan() {
  # A tree an older test.sh configured with gcc: CMake cannot switch its compiler in place.
  if [[ -e build-asan/CMakeCache.txt ]] &&
     ! grep -q '^CMAKE_CXX_COMPILER:[A-Z]*=.*clang++-14$' build-asan/CMakeCache.txt; then
    rm -rf build-asan
  fi
  CC=clang-14 CXX=clang++-14 cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug \
    -DBUILD_TESTING=ON -DHVAGENT_WERROR=ON -DCMAKE_C_FLAGS_DEBUG=-g1 -DCMAKE_CXX_FLAGS_DEBUG=-g1 \
    -DHVAGENT_SANITIZE=ON -DHVAGENT_FUZZ=ON -DHVAGENT_FAILPOINTS=OFF -DHVAGENT_WITH_XENCTRL=ON \
    >/dev/null
}

tier_asan() {
  configure_asan
  ninja -C build-asan unit_tests
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  LSAN_OPTIONS=suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest_tier build-asan -L unit -j "$jobs"
}

tier_fuzz() {
  configure_asan
  ninja -C build-asan fuzzers  # after the asan tier: the fuzzers' own files and their links
  ctest_tier build-asan -L fuzz -j "$jobs"  # each fuzzer is one process, one core
}

tier_integration() { ctest_tier build-test -L integration; }

tier_package() { ctest_tier build-test -L package; }

tier_arm64() {
  # build-arm64.sh runs the arm64 unit tests itself and leaves their JUnit file here.
  local xml=build-arm64/ctest-unit.xml rc=0
  rm -f "$xml"
  HVAGENT_ARM64_BUILD=build-arm64 deploy/cross/build-arm64.sh || rc=$?
  tally_junit "$xml" "$rc"
}

tally_unittest() {  # tally_unittest LOG EXIT WHAT: count from unittest's summary ("Ran N tests", "skipped=N")
  local log=$1 rc=$2 ran skip fails summary
  ran=$(sed -n 's/^Ran \([0-9][0-9]*\) tests\{0,1\} in .*/\1/p' "$log" | tail -n 1)
  summary=$(grep -E '^(OK|FAILED)( \(.*\))?$' "$log" | tail -n 1 || true)
  ran=${ran:-0} skip=0 fails=0
  if [[ $summary =~ skipped=([0-9]+) ]]; then skip=${BASH_REMATCH[1]}; fi
  if [[ $summary =~ failures=([0-9]+) ]]; then fails=$((fails + BASH_REMATCH[1])); fi
  if [[ $summary =~ errors=([0-9]+) ]]; then fails=$((fails + BASH_REMATCH[1])); fi
  count $((ran - skip - fails)) "$fails" "$skip"
  ((rc == 0)) || fail "$3 exited $rc"
  check_floor $((ran - skip))
}

tier_openstack() {
  # The agent's .deb as the package tier made it (CPack in build-test/), made again here when
  # that tier did not run or the binary is newer; run.sh builds the Nova driver's .deb itself
  # (drivers/nova/build-deb.sh, seconds).
  local log=build-test/openstack.log rc=0 deb
  deb=$(ls build-test/hvagent_*_amd64.deb 2>/dev/null | head -n 1 || true)
  if [[ -z $deb || $deb -ot build-test/agent/hvagentd ]]; then
    (cd build-test && cpack -G DEB >/dev/null)
    deb=$(ls build-test/hvagent_*_amd64.deb | head -n 1)
  fi
  rm -rf build-test/openstack-logs
  tests/cloud/openstack/run.sh --agent-deb "$deb" --keep-logs build-test/openstack-logs \
    2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
  tally_unittest "$log" "$rc" tests/cloud/openstack/run.sh
}

tier_system() {
  # dom0 gets the agent from the arm64 .deb the arm64 tier built (its Depends checked against
  # dom0's own Debian packages).
  local log=build-test/system-xen-arm64.log rc=0 deb
  deb=$(ls build-arm64/hvagent_*_arm64.deb) || fail "no arm64 .deb: run the arm64 tier first"
  mkdir -p build-test
  tests/system/xen-arm64/run.sh --agent-deb "$deb" --artifacts "$PWD/build-test/system-xen-arm64-artifacts" \
    2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
  tally_unittest "$log" "$rc" tests/system/xen-arm64/run.sh
}

# --- run ------------------------------------------------------------------------------------------
installed="" built=""
begin() {  # begin NAME: what a failure from here on is reported as
  current=$1 tier_t0=$SECONDS tier_passed=0 tier_failed=0 tier_skipped=0
}
prepare() {  # prepare TIER: install and build once, just before the first tier that needs it
  if [[ $1 != static && -z $installed ]]; then
    begin install
    step "install dependencies"
    deploy/install-deps.sh --test
    installed=1
  fi
  if [[ -v needs_build[$1] && -z $built ]]; then
    begin build
    step "build build-test/ (warnings as errors, failpoints on)"
    # Failpoints compiled in: the reliability tests kill the agent between steps
    # (docs/reliability.md). Every option given, so no earlier configure of build-test/ counts.
    cmake -S . -B build-test -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=ON \
      -DHVAGENT_WERROR=ON -DHVAGENT_FAILPOINTS=ON -DHVAGENT_SANITIZE=OFF -DHVAGENT_FUZZ=OFF \
      -DHVAGENT_WITH_XENCTRL=ON >/dev/null
    # -Werror is not in ccache's hash (CMakeLists.txt), and a cached compile replays its warnings
    # without failing: any warning in the output fails the build here, however it was compiled.
    ninja -C build-test | tee build-test/build.log
    if grep -E '(^|: )warning: ' build-test/build.log >&2; then
      fail "the build printed the warnings above (warnings are errors here)"
    fi
    echo "built in $((SECONDS - tier_t0)) s"
    built=1
  fi
  current=""
}

for t in "${selected[@]}"; do
  prepare "$t"
  begin "$t"
  step "${title[$t]}"
  "tier_$t"
  tier_line ""
  current=""
done

if ((${#wanted[@]} == 0)); then step "all tiers passed"; else step "tiers passed: ${selected[*]}"; fi
