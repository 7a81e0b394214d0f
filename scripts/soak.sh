#!/usr/bin/env bash
# Soak: 4 engine processes move mixed, verified traffic among themselves (reads and writes
# of 1 B to 1 MiB, batches, notifies, segments closed and reopened, regions registered and
# unregistered) while RSS, descriptors and threads of every process are sampled; prints start, end,
# max and slope per process and exits non-zero on any failed or mismatched transfer, descriptor or
# thread growth, or an RSS slope after the warm-up above --max-rss-slope MiB/min (default 2).
#
# Usage: scripts/soak.sh [seconds (default 600)] [test/reliability/soak.cjs options: --sample S,
#        --max-size BYTES, --json FILE, --max-rss-slope MIB_PER_MIN, --pause MS, --quiet]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-600}
shift || true
if [ ! -f dist/index.js ] || [ -z "$(ls build/Release/*.node prebuilds/*/*.node 2>/dev/null | head -1)" ]; then
  npm run build
fi
exec node test/reliability/soak.cjs --duration "$duration" "$@"
