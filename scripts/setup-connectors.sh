#!/usr/bin/env bash
# Installs the released connector code the real-connector suites (test/connectors) run as peers, into the
# upstream venv made by scripts/setup-upstream-peer.sh (run that first):
#
#   <venv>/connectors/vllm-ascend-<version>/vllm_ascend/distributed/kv_transfer/...
#       only the connector files of the released vllm-ascend sdists, pinned by sha256;
#   <venv>/connectors/vllm-<version>/vllm/distributed/kv_transfer/kv_connector/...
#       only vLLM's MooncakeConnector package (and the two helper modules it needs) from the released vLLM
#       wheel, pinned by sha256 (the wheel is about 240 MB: downloaded once, kept in the cache);
#   <venv>/connectors/connectors.json
#       what is installed (the suites read it; no file, no suite: they skip and say why).
#
# plus the pure-Python packages those files import at module level and need for real (msgspec, pyzmq,
# numpy; for vLLM's bootstrap server and client fastapi, uvicorn, pydantic and httpx). torch, torch_npu and
# the rest of vllm are NOT installed: test/connectors/peers/connector_loader.py stubs them with an import hook,
# while `mooncake.engine` stays the real wheel engine.
#
# Downloads are cached under $MOONCAKE_NODE_CACHE (default ~/.cache/mooncake-node): a re-run with a warm
# cache needs no network. One function per connector; add the next connector as another setup_* function.
#
# Usage: scripts/setup-connectors.sh [--force]
# Environment: MOONCAKE_UPSTREAM_VENV (default <repo>/.venv-upstream), MOONCAKE_NODE_CACHE.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MOONCAKE_UPSTREAM_VENV:-$repo/.venv-upstream}
cache=${MOONCAKE_NODE_CACHE:-$HOME/.cache/mooncake-node}
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup-connectors: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

say() { echo "setup-connectors: $*" >&2; }  # stderr: stdout of the setup_* functions is their JSON
die() { echo "setup-connectors: ERROR: $*" >&2; exit 1; }

[ -x "$venv/bin/python" ] || die "no venv at $venv: run scripts/setup-upstream-peer.sh first"
root=$venv/connectors
mkdir -p "$root" "$cache"

# --- Python packages the connector modules import for real (pinned, with what they pull in) -----------
RUNTIME_PACKAGES=(msgspec==0.23.0 pyzmq==27.3.0 numpy==2.4.6
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
  annotated-doc==0.0.7 typing-inspection==0.4.5 typing_extensions==4.16.0 click==8.5.1 h11==0.16.0
  httpx==0.29.0 httpcore==1.0.9 anyio==4.16.0 idna==3.21 certifi==2026.10.19.post1)
ensure_runtime() {
  if "$venv/bin/python" - "${RUNTIME_PACKAGES[@]}" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(0 if all(version(n) == v for n, v in (p.split("==") for p in sys.argv[1:])) else 1)
PY
  then
    return 0
  fi
  say "installing ${RUNTIME_PACKAGES[*]} into $venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q --cache-dir "$cache/pip" "${RUNTIME_PACKAGES[@]}" \
    || die "pip could not install ${RUNTIME_PACKAGES[*]}"
}

# keep_if_pinned <tmp dir> <file name> <sha256> <cache path>: moves the download into the cache when its
# sha256 is the pinned one, refuses it otherwise; the tmp dir is removed either way.
keep_if_pinned() {
  local tmp=$1 file=$2 sha=$3 path=$4 got
  [ -f "$tmp/$file" ] || { ls "$tmp" >&2; rm -rf "$tmp"; die "pip did not produce $file"; }
  got=$(sha256sum "$tmp/$file" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    rm -rf "$tmp"
    die "$file has sha256 $got, pinned $sha: refusing it"
  fi
  mv "$tmp/$file" "$path"
  rm -rf "$tmp"
}

# --- a pinned sdist, downloaded once -----------------------------------------------------------------
# fetch_sdist <name> <version> <sha256> <file name>: prints the cached path. pip downloads sdists by
# preparing their metadata, which for vllm-ascend needs setuptools_scm and a SOC_VERSION (no NPU is
# touched); that happens in a small build venv of its own, kept in the cache.
fetch_sdist() {
  local name=$1 version=$2 sha=$3 file=$4 dir=$cache/sdists
  local path=$dir/$file
  mkdir -p "$dir"
  if [ -f "$path" ] && echo "$sha  $path" | sha256sum -c --status; then
    echo "$path"; return 0
  fi
  local bv=$cache/build-venv
  if [ ! -x "$bv/bin/python" ]; then
    "$venv/bin/python" -m venv "$bv" >&2 || die "cannot create the build venv $bv"
  fi
  "$bv/bin/python" -m pip install --disable-pip-version-check -q --cache-dir "$cache/pip" \
    setuptools==65.5.0 setuptools_scm==10.3.4 vcs-versioning==2.6.0 packaging==26.4 wheel==0.48.0 >&2 \
    || die "pip could not install the sdist build tools"
  local tmp
  tmp=$(mktemp -d)
  say "downloading $name==$version (sdist)"
  SOC_VERSION=ascend910b1 "$bv/bin/python" -m pip download --disable-pip-version-check -q --no-deps --no-build-isolation \
    --no-binary "$name" -d "$tmp" "$name==$version" >&2 || { rm -rf "$tmp"; die "pip download $name==$version failed"; }
  keep_if_pinned "$tmp" "$file" "$sha" "$path"
  echo "$path"
}

# --- vllm-ascend: MooncakeConnectorV1 (pull) and MooncakeLayerwiseConnector (push) -------------------
VLLM_ASCEND_RELEASES=(
  "0.23.0.post1 a3b9f4a5dd7aa50c37e03d1f35937c4ae5aeacc49b734cac74d59ce5757738e1"
  "0.18.0 8df042cfaae06fab993bff5f38bb45097634c3f398b2cf74e068347abdddb344"
)
VLLM_ASCEND_FILES=(
  vllm_ascend/distributed/kv_transfer/kv_p2p/mooncake_connector.py
  vllm_ascend/distributed/kv_transfer/kv_p2p/mooncake_layerwise_connector.py
  vllm_ascend/distributed/kv_transfer/utils/mooncake_transfer_engine.py
  vllm_ascend/distributed/kv_transfer/utils/utils.py
)
setup_vllm_ascend() {
  local entries=() release version sha tarball dest f
  for release in "${VLLM_ASCEND_RELEASES[@]}"; do
    read -r version sha <<<"$release"
    dest=$root/vllm-ascend-$version
    if [ "$force" -eq 1 ] || [ ! -f "$dest/.sha256" ] || [ "$(cat "$dest/.sha256")" != "$sha" ]; then
      tarball=$(fetch_sdist vllm-ascend "$version" "$sha" "vllm_ascend-$version.tar.gz")
      rm -rf "$dest"
      mkdir -p "$dest"
      tar -xzf "$tarball" -C "$dest" --strip-components=1 "${VLLM_ASCEND_FILES[@]/#/vllm_ascend-$version/}" \
        || die "cannot extract the connector files from $tarball"
      # Packages of their own, so nothing else of vllm_ascend is imported from disk (the loader stubs it).
      for f in vllm_ascend vllm_ascend/distributed vllm_ascend/distributed/kv_transfer \
               vllm_ascend/distributed/kv_transfer/kv_p2p vllm_ascend/distributed/kv_transfer/utils; do
        : > "$dest/$f/__init__.py"
      done
      echo "$sha" > "$dest/.sha256"
      say "vllm-ascend $version: connector files in $dest"
    fi
    entries+=("{\"version\":\"$version\",\"sha256\":\"$sha\",\"path\":\"$dest\"}")
  done
  local IFS=,
  echo "\"vllm-ascend\":[${entries[*]}]"
}

# --- vLLM: MooncakeConnector (the prefill writes on the decode's request, HTTP bootstrap server) ----------
# 0.34.0 is the newest release; its connector loads with torch and the rest of vllm stubbed (the worker's
# attention-backend probes get "no kernel block size"; test/connectors/peers/vllm_peer.py).
VLLM_RELEASES=(
  "0.34.0 79ca4b3cd74aec08c4bf476bdf0cb15735b605ae5368526a2faae1e30f044ca2 vllm-0.34.0-cp38-abi3-manylinux_2_28_x86_64.whl"
)
VLLM_FILES=(
  vllm/distributed/kv_transfer/kv_connector/v1/mooncake/mooncake_connector.py
  vllm/distributed/kv_transfer/kv_connector/v1/mooncake/mooncake_utils.py
  vllm/distributed/kv_transfer/kv_connector/v1/mooncake/stats.py
  vllm/distributed/kv_transfer/kv_connector/v1/metrics.py
  vllm/distributed/kv_transfer/kv_connector/utils.py
)
# fetch_wheel <name> <version> <sha256> <file name>: prints the cached path (pip download, no dependencies).
fetch_wheel() {
  local name=$1 version=$2 sha=$3 file=$4 dir=$cache/wheels
  local path=$dir/$file
  mkdir -p "$dir"
  if [ -f "$path" ] && echo "$sha  $path" | sha256sum -c --status; then
    echo "$path"; return 0
  fi
  local tmp started=$SECONDS
  tmp=$(mktemp -d)
  say "downloading $name==$version (wheel, about 240 MB, kept in $dir)"
  "$venv/bin/python" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
    -d "$tmp" "$name==$version" >&2 || { rm -rf "$tmp"; die "pip download $name==$version failed"; }
  keep_if_pinned "$tmp" "$file" "$sha" "$path"
  say "$file: $(du -m "$path" | cut -f1) MB in $((SECONDS - started)) s"
  echo "$path"
}
setup_vllm() {
  local entries=() release version sha file wheel dest
  for release in "${VLLM_RELEASES[@]}"; do
    read -r version sha file <<<"$release"
    dest=$root/vllm-$version
    if [ "$force" -eq 1 ] || [ ! -f "$dest/.sha256" ] || [ "$(cat "$dest/.sha256")" != "$sha" ]; then
      wheel=$(fetch_wheel vllm "$version" "$sha" "$file")
      rm -rf "$dest"
      mkdir -p "$dest"
      "$venv/bin/python" - "$wheel" "$dest" "${VLLM_FILES[@]}" <<'PY' || die "cannot extract the connector files from $wheel"
import os, sys, zipfile
wheel, dest, *names = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for n in names:
        z.extract(n, dest)
# Packages of their own, so nothing else of vllm is imported from disk (the loader stubs it).
for n in names:
    d = os.path.dirname(n)
    while d:
        open(os.path.join(dest, d, "__init__.py"), "a").close()
        d = os.path.dirname(d)
PY
      echo "$sha" > "$dest/.sha256"
      say "vllm $version: connector files in $dest"
    fi
    entries+=("{\"version\":\"$version\",\"sha256\":\"$sha\",\"path\":\"$dest\"}")
  done
  local IFS=,
  echo "\"vllm\":[${entries[*]}]"
}

ensure_runtime
connectors="$(setup_vllm_ascend),$(setup_vllm)"
printf '{"venv":"%s","python":"%s","loader":"%s",%s}\n' "$venv" "$venv/bin/python" \
  "$repo/test/connectors/peers/connector_loader.py" "$connectors" > "$root/connectors.json.tmp"
"$venv/bin/python" -c 'import json, sys; json.load(open(sys.argv[1]))' "$root/connectors.json.tmp" \
  || die "internal error: $root/connectors.json.tmp is not JSON"
mv "$root/connectors.json.tmp" "$root/connectors.json"

# Check: the real modules load with the stubs (and the real mooncake engine).
for dir in "$root"/vllm-ascend-*/ "$root"/vllm-[0-9]*/; do
  out=$(cd /tmp && "$venv/bin/python" "$repo/test/connectors/peers/connector_loader.py" --check "$dir" 2>&1) \
    || die "the connector files in $dir do not load: $out"
  say "$(basename "$dir"): $out"
done
say "ready: $root/connectors.json"
