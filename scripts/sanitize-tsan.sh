#!/usr/bin/env bash
# TSan build of the native engine and its GoogleTest suite (CMake's MC_SANITIZE=thread), run by ctest:
# the event-loop threads, submitters, completion paths and stop/cancel races under the race detector.
# Any report fails the test. Suppressions (only for code that is not ours) are in scripts/tsan.supp.
#
#   scripts/sanitize-tsan.sh [build-dir (default build-tsan)] [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=${1:-build-tsan}
shift || true
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:history_size=4:suppressions=$root/scripts/tsan.supp}
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="${CXX_SAN:-clang++}" \
  -DCMAKE_C_COMPILER="${CC_SAN:-clang}" -DMC_SANITIZE=thread "$@" >/dev/null
cmake --build "$dir"
ctest --test-dir "$dir" --output-on-failure -j2
