#!/usr/bin/env bash
# The vitest suite against an AddressSanitizer build of the addon.
#
#   scripts/sanitize-node.sh [vitest args...]     (default: test/engine; "all": the whole suite but
#                                                   test/package, see below)
#
# Builds the addon with cmake-js and MC_SANITIZE=address,undefined (clang) into build-asan-node/
# (NODE_ASAN_BUILD_DIR to override), points the package at it through node-gyp-build's override
# (MOONCAKE_NODE_PREBUILD=<dir holding build/Release/mooncake_node.node>) and runs node with clang's
# ASan runtime preloaded. Leak detection is off: V8 keeps memory until exit by design. Every ASan or
# UBSan report aborts the worker, which fails its test file; reports are also written to
# build-asan-node/reports/ (ASAN_LOG_DIR) and the script fails if any exist.
# Under ASan, tests that assert an RSS ceiling (soak, hostile) cannot hold it (shadow memory and the
# free quarantine), and start-up deadlines are tighter on a loaded machine: see docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${NODE_ASAN_BUILD_DIR:-$root/build-asan-node}
mkdir -p "$out"
echo "== building the ASan addon in $out"
node node_modules/cmake-js/bin/cmake-js compile -O "$out/build" \
  --CDMC_SANITIZE=address,undefined --CDCMAKE_CXX_COMPILER=clang++ --CDCMAKE_C_COMPILER=clang \
  --CDCMAKE_BUILD_TYPE=RelWithDebInfo >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
addon="$out/build/Release/mooncake_node.node"
[ -f "$addon" ] || { echo "no addon at $addon" >&2; exit 1; }
[ -f dist/index.js ] || node scripts/build-ts.js

runtime=$(clang++ -print-file-name=libclang_rt.asan-x86_64.so)
[ -f "$runtime" ] || { echo "clang's ASan runtime not found (apt-get install libclang-rt-14-dev)" >&2; exit 1; }
logs=${ASAN_LOG_DIR:-$out/reports}
rm -rf "$logs"
mkdir -p "$logs"

args=("$@")
[ ${#args[@]} -eq 0 ] && args=(test/engine)
# "all": everything but test/package, whose tests build, pack and load addons of their own (from
# prebuilds and cmake-js), never the ASan build.
[ "${args[0]}" = all ] && args=(--exclude 'test/package/**' "${args[@]:1}")

# The addon must be the one loaded: check it before running anything.
MOONCAKE_NODE_PREBUILD="$out" LD_PRELOAD="$runtime" ASAN_OPTIONS=detect_leaks=0 node -e "
  const p = require('node-gyp-build').path('$root');
  if (p !== '$addon') { console.error('loaded ' + p + ', not the ASan build'); process.exit(1); }
  require('$root/dist/index.js'); console.log('ASan addon:', p);"

echo "== vitest ${args[*]:-(all)} against the ASan addon"
set +e
MOONCAKE_NODE_PREBUILD="$out" LD_PRELOAD="$runtime" \
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$logs/asan:detect_stack_use_after_return=0" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan" \
  node node_modules/vitest/vitest.mjs run "${args[@]}"
rc=$?
set -e
reports=$(find "$logs" -type f | wc -l)
if [ "$reports" -gt 0 ]; then
  echo "== $reports sanitizer report(s):"
  for f in "$logs"/*; do echo "--- $f"; head -60 "$f"; done
  exit 1
fi
echo "== sanitizer reports: 0 (vitest exit $rc)"
exit $rc
