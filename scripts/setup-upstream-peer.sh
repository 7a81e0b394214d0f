#!/usr/bin/env bash
# Installs the real upstream Mooncake peer used by interop tests and benchmarks:
#   <repo>/.venv-upstream/      with  mooncake-transfer-engine-non-cuda==0.3.13.post1
# which provides `mooncake.engine` (Python TransferEngine), `mooncake_http_metadata_server` and the
# `transfer_engine_bench` binary; and the Ascend build the `mooncake` backend loads on Ascend hosts:
#   <repo>/.venv-upstream-npu/  with  mooncake-transfer-engine-npu==0.3.13.post1 (sha256-pinned)
# (its own venv: both wheels install the `mooncake` Python package), plus empty STAND-INS for the
# three CANN libraries its ascend_transport.so links (scripts/setup-upstream-npu.sh).
#
# Usage: scripts/setup-upstream-peer.sh [--force] [--verify]
#   --force   recreate the venv from scratch
#   --verify  run the full verification even when the marker says it is installed
# Environment:
#   MOONCAKE_UPSTREAM_VENV    venv directory (default <repo>/.venv-upstream)
#   MOONCAKE_UPSTREAM_PYTHON  interpreter used to create the venv (default: python3.11, else python3; >= 3.10)
#   MOONCAKE_UPSTREAM_NPU_VENV  venv for the npu wheel (default <repo>/.venv-upstream-npu)
#   MOONCAKE_WHEEL_CACHE        download cache for pinned wheels (default ~/.cache/mooncake-node/wheels)
#
# Idempotent: a marker (.mooncake-upstream.json in the venv) records the installed version; when it
# matches and the files exist the script only re-checks the shared libraries and exits.
set -euo pipefail

PACKAGE=mooncake-transfer-engine-non-cuda
VERSION=0.3.13.post1
MARKER_NAME=.mooncake-upstream.json

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MOONCAKE_UPSTREAM_VENV:-$repo/.venv-upstream}
marker=$venv/$MARKER_NAME
force=0
verify=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --verify) verify=1 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup-upstream-peer: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

say() { echo "setup-upstream-peer: $*"; }
die() { echo "setup-upstream-peer: ERROR: $*" >&2; exit 1; }

# Proxy variables are left alone here (pip may need them to reach PyPI); the upstream processes that
# tests start run without them (test/helpers/upstream.ts).

# --- shared libraries the wheel links against ------------------------------------------------------
# soname -> Debian package. The wheel bundles glog/gflags/jsoncpp/asio/yaml-cpp but not these.
declare -A LIB_PACKAGE=(
  [libibverbs.so.1]=libibverbs1
  [libnuma.so.1]=libnuma1
  [libcurl.so.4]=libcurl4
)

have_lib() { ldconfig -p 2>/dev/null | grep -q "[[:space:]]$1 " || [ -e "/lib/x86_64-linux-gnu/$1" ] || [ -e "/usr/lib/x86_64-linux-gnu/$1" ] || [ -e "/usr/lib64/$1" ]; }

ensure_libs() {
  local missing=() pkgs=() lib
  for lib in "${!LIB_PACKAGE[@]}"; do
    have_lib "$lib" || { missing+=("$lib"); pkgs+=("${LIB_PACKAGE[$lib]}"); }
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "missing shared libraries: ${missing[*]} (Debian packages: ${pkgs[*]})"
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${pkgs[*]} with apt-get"
    apt-get update -qq || die "apt-get update failed; install ${pkgs[*]} manually"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null || die "apt-get install ${pkgs[*]} failed"
    for lib in "${missing[@]}"; do have_lib "$lib" || die "$lib is still missing after installing ${pkgs[*]}"; done
  elif command -v apt-get >/dev/null 2>&1; then
    die "run as root or install them: sudo apt-get install -y ${pkgs[*]}"
  else
    die "install the packages that provide ${missing[*]} (Debian/Ubuntu: ${pkgs[*]}; RHEL/Fedora: rdma-core libibverbs numactl-libs libcurl)"
  fi
}

# --- locating the installed pieces -----------------------------------------------------------------
site_packages() { "$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])'; }

paths_json() {
  local sp=$1
  printf '{"package":"%s","version":"%s","venv":"%s","python":"%s","metadataServer":"%s","bench":"%s","benchWrapper":"%s","sitePackages":"%s"}\n' \
    "$PACKAGE" "$VERSION" "$venv" "$venv/bin/python" "$venv/bin/mooncake_http_metadata_server" \
    "$sp/mooncake/transfer_engine_bench" "$venv/bin/transfer_engine_bench" "$sp"
}

print_paths() {
  local sp=$1
  say "ready: $PACKAGE $VERSION"
  echo "  venv:            $venv"
  echo "  python:          $venv/bin/python"
  echo "  metadata server: $venv/bin/mooncake_http_metadata_server"
  echo "  bench:           $sp/mooncake/transfer_engine_bench"
  echo "  marker:          $marker"
}

verify_install() {
  local sp=$1 out
  [ -x "$venv/bin/python" ] || die "$venv/bin/python is missing"
  [ -f "$venv/bin/mooncake_http_metadata_server" ] || die "mooncake_http_metadata_server is missing from $venv/bin"
  [ -f "$sp/mooncake/transfer_engine_bench" ] || die "transfer_engine_bench is missing from $sp/mooncake"
  local unresolved
  unresolved=$( { ldd "$sp/mooncake/engine.so"; ldd "$sp/mooncake/transfer_engine_bench"; } 2>&1 | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')
  [ -z "$unresolved" ] || die "unresolved shared libraries: $unresolved(check 'ldd $sp/mooncake/engine.so')"
  out=$(cd /tmp && "$venv/bin/python" -c 'import mooncake.engine as e; assert hasattr(e, "TransferEngine"); print("ok")' 2>&1) \
    || die "cannot import mooncake.engine: $out"
  [ "$out" = ok ] || die "unexpected output importing mooncake.engine: $out"
  # gflags exits 1 for --help; what matters is that the binary loads and prints its flags.
  out=$(cd /tmp && timeout 30 "$sp/mooncake/transfer_engine_bench" --help 2>&1 || true)
  case "$out" in
    *metadata_server*) ;;
    *) die "transfer_engine_bench --help did not run: $(printf '%s' "$out" | head -c 400)" ;;
  esac
}

# --- fast path ---------------------------------------------------------------------------------------
ensure_libs
if [ "$force" -eq 0 ] && [ -f "$marker" ] && grep -q "\"version\":\"$VERSION\"" "$marker" && [ -x "$venv/bin/python" ]; then
  sp=$(site_packages) || die "the venv at $venv is broken (python does not run); rerun with --force"
  if [ -f "$sp/mooncake/transfer_engine_bench" ] && [ -f "$venv/bin/mooncake_http_metadata_server" ]; then
    [ "$verify" -eq 1 ] && verify_install "$sp"
    print_paths "$sp"
    bash "$repo/scripts/setup-upstream-npu.sh" "$venv/bin/python" $([ "$force" -eq 1 ] && echo --force)
    exit 0
  fi
  say "marker found but files are missing; reinstalling"
fi

# --- create the venv ---------------------------------------------------------------------------------
pick_python() {
  local c
  for c in ${MOONCAKE_UPSTREAM_PYTHON:-} python3.11 python3; do
    [ -n "$c" ] || continue
    command -v "$c" >/dev/null 2>&1 || continue
    if "$c" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 10) else 1)' >/dev/null 2>&1; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

if [ "$force" -eq 1 ] && [ -d "$venv" ]; then
  say "removing $venv (--force)"
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  py=$(pick_python) || die "need Python >= 3.10 with the venv module (set MOONCAKE_UPSTREAM_PYTHON); the wheel requires it"
  say "creating $venv with $py ($("$py" --version 2>&1))"
  "$py" -m venv "$venv" || die "python -m venv failed (Debian: apt-get install python3-venv)"
fi
# Keep the venv out of git even if the repository's .gitignore does not list it.
[ -f "$venv/.gitignore" ] || echo '*' > "$venv/.gitignore"

say "installing $PACKAGE==$VERSION (about 60 MB; this takes a while the first time)"
"$venv/bin/python" -m pip install --disable-pip-version-check -q "$PACKAGE==$VERSION" \
  || die "pip could not install $PACKAGE==$VERSION (is PyPI reachable? does a wheel exist for $("$venv/bin/python" --version 2>&1)?)"

sp=$(site_packages)
verify_install "$sp"
paths_json "$sp" > "$marker.tmp" && mv "$marker.tmp" "$marker"
print_paths "$sp"
bash "$repo/scripts/setup-upstream-npu.sh" "$venv/bin/python" $([ "$force" -eq 1 ] && echo --force)
