#!/usr/bin/env bash
# Installs upstream Mooncake's Ascend wheel, the library vllm-ascend hosts already have, so the
# `mooncake` backend runs against the real libtransfer_engine.so in CI:
#   <repo>/.venv-upstream-npu/   mooncake-transfer-engine-npu==0.3.13.post1 (pip install --no-deps)
#   <repo>/.venv-upstream-npu/cann-empty-standin/   libascendcl.so, libllm_datadist.so, libmetadef.so
# The wheel is downloaded once, checked against its pinned sha256 and cached (MOONCAKE_WHEEL_CACHE,
# default ~/.cache/mooncake-node/wheels). It gets a venv of its own because the non-cuda wheel in
# .venv-upstream installs the same `mooncake` Python package.
#
# The three libraries in cann-empty-standin/ are EMPTY STAND-INS, not CANN: they only let the
# dynamic loader map the wheel's ascend_transport.so (which links them) on a machine without CANN.
# They export no ACL/ADXL function, so only TCP works with them (MC_FORCE_TCP=1); the tests build
# working stand-ins of their own for the ascend transport (test/native/standin/).
#
# Usage: scripts/setup-upstream-npu.sh [PYTHON] [--force]
#   PYTHON   interpreter that creates the venv and downloads the wheel (default python3.11, else
#            python3); the wheel is built for CPython 3.11 on x86_64.
# Idempotent: a marker (.mooncake-upstream-npu.json) records what is installed; re-runs only check it.
set -euo pipefail

PACKAGE=mooncake-transfer-engine-npu
VERSION=0.3.13.post1
WHEEL=mooncake_transfer_engine_npu-0.3.13.post1-cp311-cp311-manylinux_2_35_x86_64.whl
SHA256=dd846b8f71caff9b2488c7c6969ece25686f97c6c62ad38a574ca56ae0a93970
MARKER_NAME=.mooncake-upstream-npu.json
STANDIN_LIBS=(libascendcl.so libllm_datadist.so libmetadef.so)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MOONCAKE_UPSTREAM_NPU_VENV:-$repo/.venv-upstream-npu}
cache=${MOONCAKE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mooncake-node/wheels}
marker=$venv/$MARKER_NAME
standin=$venv/cann-empty-standin
py=""
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "setup-upstream-npu: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    *) py=$arg ;;
  esac
done

say() { echo "setup-upstream-npu: $*"; }
die() { echo "setup-upstream-npu: ERROR: $*" >&2; exit 1; }

[ "$(uname -m)" = x86_64 ] || { say "skipped: the pinned wheel is for x86_64, this is $(uname -m)"; exit 0; }
if [ -z "$py" ]; then
  for c in python3.11 python3; do command -v "$c" >/dev/null 2>&1 && { py=$c; break; }; done
fi
[ -n "$py" ] || die "no python3 found"
pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
[ "$pyver" = 3.11 ] || die "$WHEEL needs CPython 3.11; $py is $pyver (pass a 3.11 interpreter)"

site_packages() { "$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])'; }

print_paths() {
  say "ready: $PACKAGE $VERSION"
  echo "  venv:               $venv"
  echo "  library:            $1/mooncake/libtransfer_engine.so"
  echo "  CANN stand-ins:     $standin (empty; TCP only, MC_FORCE_TCP=1)"
}

# --- empty CANN stand-ins (cheap; rebuilt whenever one is missing) ---------------------------------
build_standins() {
  mkdir -p "$standin"
  local lib
  for lib in "${STANDIN_LIBS[@]}"; do
    [ -f "$standin/$lib" ] && continue
    printf '/* EMPTY STAND-IN for CANN %s, built by scripts/setup-upstream-npu.sh: no ACL/ADXL API. */\nconst char mooncake_node_cann_standin[] = "empty";\n' "$lib" \
      | gcc -x c -shared -fPIC -Wl,-soname,"$lib" -o "$standin/$lib.tmp" - || die "gcc could not build the empty stand-in $lib"
    mv "$standin/$lib.tmp" "$standin/$lib"
  done
  cat > "$standin/README" <<EOF
EMPTY STAND-INS for CANN's ${STANDIN_LIBS[*]}, built by scripts/setup-upstream-npu.sh.
They are not CANN. They let the loader map $PACKAGE's ascend_transport.so on machines
without CANN; with them only upstream's TCP transport works (set MC_FORCE_TCP=1).
EOF
}

# --- fast path ----------------------------------------------------------------------------------------
if [ "$force" -eq 0 ] && [ -f "$marker" ] && grep -q "\"sha256\":\"$SHA256\"" "$marker" && [ -x "$venv/bin/python" ]; then
  sp=$(site_packages) || die "the venv at $venv is broken; rerun with --force"
  if [ -f "$sp/mooncake/libtransfer_engine.so" ] && [ -f "$sp/mooncake/ascend_transport.so" ]; then
    build_standins
    print_paths "$sp"
    exit 0
  fi
  say "marker found but files are missing; reinstalling"
fi

# --- download (cached, sha256-checked) ------------------------------------------------------------
mkdir -p "$cache"
wheel=$cache/$WHEEL
check_sum() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }
if [ -f "$wheel" ] && ! check_sum "$wheel"; then
  say "cached $WHEEL does not match its sha256; downloading it again"
  rm -f "$wheel"
fi
if [ ! -f "$wheel" ]; then
  say "downloading $PACKAGE==$VERSION (17 MB) into $cache"
  req=$(mktemp)
  trap 'rm -f "$req"' EXIT
  echo "$PACKAGE==$VERSION --hash=sha256:$SHA256" > "$req"
  "$py" -m pip download --disable-pip-version-check -q --no-deps --require-hashes --only-binary=:all: -d "$cache" -r "$req" \
    || die "pip could not download $PACKAGE==$VERSION (is PyPI reachable?)"
  [ -f "$wheel" ] || die "pip downloaded something other than $WHEEL: $(ls "$cache")"
fi
check_sum "$wheel" || die "$wheel does not match the pinned sha256 $SHA256"

# --- venv + install -----------------------------------------------------------------------------------
if [ "$force" -eq 1 ] && [ -d "$venv" ]; then
  say "removing $venv (--force)"
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$py" -m venv "$venv" || die "python -m venv failed (Debian: apt-get install python3-venv)"
fi
[ -f "$venv/.gitignore" ] || echo '*' > "$venv/.gitignore"
# --no-deps: the backend needs the shared libraries only, not the wheel's Python dependencies.
"$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps --no-index --force-reinstall "$wheel" \
  || die "pip could not install $wheel"
sp=$(site_packages)
for f in libtransfer_engine.so ascend_transport.so; do
  [ -f "$sp/mooncake/$f" ] || die "$f is missing from $sp/mooncake"
done
build_standins
printf '{"package":"%s","version":"%s","sha256":"%s","venv":"%s","python":"%s","library":"%s","cannStandin":"%s"}\n' \
  "$PACKAGE" "$VERSION" "$SHA256" "$venv" "$venv/bin/python" "$sp/mooncake/libtransfer_engine.so" "$standin" > "$marker.tmp"
mv "$marker.tmp" "$marker"
print_paths "$sp"
