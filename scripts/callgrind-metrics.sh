#!/usr/bin/env bash
# Instructions executed by a fixed transfer workload (test/native/metrics_cost.cpp: WRITE batches of
# 64 x 4 KiB between two engines over 127.0.0.1) with the engine's per-peer metrics on and off, counted
# by callgrind: a cost figure that machine load does not blur. Needs valgrind and the native build
# (scripts/test-native.sh builds mc_metrics_cost).
#   scripts/callgrind-metrics.sh [build-dir] [batches]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build-native}
batches=${2:-200}
bin="$dir/mc_metrics_cost"
[ -x "$bin" ] || { echo "callgrind-metrics: build $bin first (scripts/test-native.sh)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() {
  valgrind --tool=callgrind --callgrind-out-file="$tmp/out.$1" "$bin" "$1" "$batches" >/dev/null 2>"$tmp/log.$1"
  grep -E '^(summary|totals):' "$tmp/out.$1" | head -1 | awk '{print $2}'
}
on=$(count 64)
off=$(count 0)
echo "instructions, $batches batches of 64 x 4 KiB WRITEs: metrics on $on, off $off, ratio on/off $(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.4f", a / b }'), per request $(awk -v a="$on" -v b="$off" -v n="$batches" 'BEGIN { printf "%+.1f", (a - b) / (n * 64) }')"
