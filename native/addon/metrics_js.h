// The engine's metrics snapshot as one JS object (read once per scrape).
#pragma once

#include <napi.h>

#include "metrics.h"

namespace mcaddon {

// { initiator: PeerRow[], target: PeerRow[], latency: { bounds, counts, sum, count }, batches: { ok, failed } }
// PeerRow: { peer, bytes: [read, write], ops: [read, write], failed: [read, write] }. Counts are
// doubles (exact below 2^53).
Napi::Object metricsToJs(Napi::Env env, const mc::MetricsSnapshot& s);

}  // namespace mcaddon
