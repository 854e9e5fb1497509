#!/usr/bin/env bash
# Builds an arm64 (aarch64) sysroot for cross-building hvagent, from Debian's own arm64 packages:
# the -dev packages of deploy/install-deps.sh and their dependency closure are fetched with
# `apt-get download` and unpacked with `dpkg -x`. Nothing foreign is installed into the build
# machine's dpkg database; the only change to it is `dpkg --add-architecture arm64` (so apt
# knows arm64 package lists). Idempotent: downloads only missing .debs and re-extracts only when
# the package set changed.
#   deploy/cross/make-arm64-sysroot.sh            prints the sysroot path last
# Environment: HVAGENT_ARM64_CACHE (default /var/cache/hvagent-arm64) holds debs/ and sysroot/.
# Needs root (dpkg --add-architecture, apt-get update) the first time only.
set -euo pipefail

cache=${HVAGENT_ARM64_CACHE:-/var/cache/hvagent-arm64}
debs=$cache/debs
sysroot=$cache/sysroot

# The arm64 counterparts of every -dev package in deploy/install-deps.sh's build_pkgs (read
# from there, so a new dependency reaches the sysroot by itself), plus the C/C++ runtime dev
# files. protobuf-compiler-grpc is here only because gRPC's CMake config checks that its plugin
# executables exist under the sysroot's /usr/bin; the build runs the host's plugin and protoc.
here=$(cd "$(dirname "$0")" && pwd)
mapfile -t dev_pkgs < <(sed -n '/^build_pkgs=(/,/^)/p' "$here/../install-deps.sh" |
                        sed 's/#.*//' | grep -oE '[a-z0-9][a-z0-9.+-]*-dev\b' | sort -u)
((${#dev_pkgs[@]})) || { echo "make-arm64-sysroot: no -dev packages in install-deps.sh" >&2; exit 1; }
pkgs=(libc6-dev libstdc++-12-dev protobuf-compiler-grpc "${dev_pkgs[@]}")

SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
log() { printf 'make-arm64-sysroot: %s\n' "$*" >&2; }

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  log "dpkg --add-architecture arm64"
  $SUDO dpkg --add-architecture arm64
fi
if ! compgen -G '/var/lib/apt/lists/*_binary-arm64_Packages*' >/dev/null; then
  log "apt-get update (arm64 package lists)"
  $SUDO apt-get update -qq
fi

# Resolve against an empty dpkg status with arm64 as the native architecture: apt then lists
# the whole arm64 closure (Depends and Pre-Depends, no Recommends) regardless of what the
# build machine has installed, and unqualified dependencies resolve to arm64 too.
mkdir -p "$cache"
: > "$cache/empty-status"
apt_opts=(-o Dir::State::status="$cache/empty-status" -o APT::Architecture=arm64
          -o APT::Architectures::=arm64 -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0)
resolve() {
  apt-get "${apt_opts[@]}" install -s -qq --no-install-recommends "${pkgs[@]/%/:arm64}" |
    sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1=\2/p' | sed 's/:arm64=/=/' | sort -u
}
if ! wanted=$(resolve) || [[ -z $wanted ]]; then
  log "resolution failed; refreshing package lists once"
  $SUDO apt-get update -qq
  wanted=$(resolve)
fi
log "$(wc -l <<<"$wanted") arm64 packages in the closure"

# Download what is missing (apt-get download checks the archive's hashes).
mkdir -p "$debs"
missing=()
while IFS='=' read -r name ver; do
  compgen -G "$debs/${name}_${ver//:/%3a}_*.deb" >/dev/null || missing+=("$name=$ver")
done <<<"$wanted"
if ((${#missing[@]})); then
  log "downloading ${#missing[@]} .debs into $debs"
  t0=$(date +%s)
  (cd "$debs" && apt-get "${apt_opts[@]}" -o APT::Sandbox::User=root download -qq "${missing[@]}")
  log "download took $(( $(date +%s) - t0 )) s; cache holds $(du -sm "$debs" | cut -f1) MB"
fi
files=()
while IFS='=' read -r name ver; do
  f=$(compgen -G "$debs/${name}_${ver//:/%3a}_*.deb" | head -1)
  [[ -n $f ]] || { log "missing .deb for $name=$ver"; exit 1; }
  files+=("$f")
done <<<"$wanted"

# Extract only when the package set changed since the last successful run.
stamp=$sysroot/.hvagent-packages
if [[ -f $stamp ]] && [[ "$(cat "$stamp")" == "$wanted" ]]; then
  log "sysroot up to date: $sysroot"
  echo "$sysroot"
  exit 0
fi
tmp=$sysroot.tmp
rm -rf "$tmp"
mkdir -p "$tmp"
log "extracting ${#files[@]} packages into $sysroot"
for f in "${files[@]}"; do dpkg -x "$f" "$tmp"; done

# Absolute symlinks (e.g. usr/lib/aarch64-linux-gnu/libfoo.so -> /lib/aarch64-linux-gnu/...)
# would point into the build machine; make them relative so they resolve inside the sysroot.
while IFS= read -r -d '' link; do
  target=$(readlink "$link")
  [[ $target == /* ]] || continue
  rel=$(realpath -m --relative-to="$(dirname "$link")" "$tmp$target")
  ln -sfn "$rel" "$link"
done < <(find "$tmp" -type l -print0)

# Debian's .pc files use prefix=/usr; with PKG_CONFIG_SYSROOT_DIR set, pkg-config prepends the
# sysroot to -I/-L itself, so they need no rewriting. Same for CMake configs, which compute
# their prefix from their own location, and for libc's linker scripts (ld applies --sysroot).
printf '%s\n' "$wanted" > "$tmp/.hvagent-packages"
rm -rf "$sysroot"
mv "$tmp" "$sysroot"
log "sysroot ready: $sysroot ($(du -sm "$sysroot" | cut -f1) MB)"
echo "$sysroot"
