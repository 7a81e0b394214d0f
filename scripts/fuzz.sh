#!/usr/bin/env bash
# Builds and runs every fuzz target for N seconds each (default 30), exiting non-zero on any crash.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#
# C++ targets (libFuzzer + ASan + UBSan, Debian's clang): tcp_server, tcp_client, json, descriptor, built from
# fuzz/CMakeLists.txt into $FUZZ_BUILD_DIR (default build-fuzz/).
# JS targets (fuzz/js: a coverage-guided mutation fuzzer on V8's precise coverage, because jazzer.js's
# prebuilt addon needs glibc 2.38): handshake, handshake_json, kv_config, rpc_meta, compiled into
# $FUZZ_BUILD_DIR/js.
#
# Each target reads the committed seeds in fuzz/corpus/<target>/ and writes what it finds to
# fuzz/corpus-run/<target>/ (git-ignored), so the committed corpus never grows; FUZZ_FRESH=1 empties
# corpus-run first. Crash inputs land in fuzz/corpus-run/ as <target>-crash-*. Logs and a summary
# (executions, coverage, crashes per target) go to $FUZZ_BUILD_DIR/logs/.
# FUZZ_NICE (default 10) lowers the fuzzers' priority; FUZZ_JOBS>1 runs that many targets at once.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-30}
shift || true
all=(tcp_server tcp_client json descriptor handshake handshake_json kv_config rpc_meta)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
build=${FUZZ_BUILD_DIR:-build-fuzz}
case "$build" in /*) ;; *) build="$root/$build" ;; esac
nice_level=${FUZZ_NICE:-10}
jobs=${FUZZ_JOBS:-1}
logs="$build/logs"
mkdir -p "$logs" fuzz/corpus-run

is_cpp() { case "$1" in tcp_server|tcp_client|json|descriptor) return 0 ;; *) return 1 ;; esac; }
need_cpp=0 need_js=0
for t in "${targets[@]}"; do
  case " ${all[*]} " in *" $t "*) ;; *) echo "unknown fuzz target: $t (known: ${all[*]})" >&2; exit 2 ;; esac
  if is_cpp "$t"; then need_cpp=1; else need_js=1; fi
done

if [ $need_cpp = 1 ]; then
  echo "== building C++ fuzz targets in $build"
  cmake -S fuzz -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="${CXX_FUZZ:-clang++}" >/dev/null
  cmake --build "$build" >"$logs/build.log" 2>&1 || { tail -40 "$logs/build.log"; exit 1; }
fi
if [ $need_js = 1 ]; then
  echo "== compiling JS fuzz targets in $build/js"
  node node_modules/typescript/bin/tsc -p fuzz/js/tsconfig.json --outDir "$build/js"
fi

# Per-target options: inputs large enough for a WRITE body past the 32 KiB direct-receive threshold.
max_len() { case "$1" in tcp_server) echo 70000 ;; *) echo 16384 ;; esac; }

run_one() {
  local t=$1 run="fuzz/corpus-run/$t" log="$logs/$t.log"
  [ "${FUZZ_FRESH:-0}" = 1 ] && rm -rf "$run"
  mkdir -p "$run"
  local rc=0
  if is_cpp "$t"; then
    # -timeout: a single input running this long is a hang; -rss_limit_mb: a leak or runaway allocation.
    nice -n "$nice_level" "$build/fuzz_$t" -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=30 \
      -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="fuzz/corpus-run/$t-" \
      "$run" "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
    local last execs
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "$t: rc=$rc execs=${execs:-?} $(echo "$last" | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' || true) crashes=$(ls fuzz/corpus-run/"$t"-crash-* fuzz/corpus-run/"$t"-leak-* fuzz/corpus-run/"$t"-timeout-* fuzz/corpus-run/"$t"-oom-* 2>/dev/null | wc -l)"
  else
    nice -n "$nice_level" node "$build/js/fuzz/js/run.js" --target "$t" --seconds "$secs" --corpus "$run" \
      --seeds "fuzz/corpus/$t" --artifacts fuzz/corpus-run >"$log" 2>&1 || rc=$?
    echo "$t: rc=$rc $(grep -E '^DONE' "$log" | tail -1 | sed 's/^DONE //')"
  fi
  if [ $rc -ne 0 ]; then
    echo "---- $t FAILED (rc=$rc); last lines of $log:"
    tail -30 "$log"
  fi
  return $rc
}

summary="$logs/summary.txt"
: >"$summary"
fail=0
if [ "$jobs" -gt 1 ]; then
  pids=()
  for t in "${targets[@]}"; do
    ( run_one "$t" >"$logs/$t.summary" 2>&1 ) &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || fail=1
    cat "$logs/${targets[$i]}.summary" | tee -a "$summary"
  done
else
  for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${secs}s"
    run_one "$t" | tee -a "$summary" || fail=1
  done
fi
echo "== fuzz summary (${secs}s per target; logs in $logs)"
grep -E '^[a-z_]+: rc=' "$summary" || true
if [ $fail -ne 0 ]; then
  echo "fuzz: FAILED (crash inputs in fuzz/corpus-run/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, 0 crashes"
