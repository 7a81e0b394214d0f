#include "metrics_js.h"

namespace mcaddon {

namespace {

Napi::Array pair(Napi::Env env, const uint64_t v[2]) {
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, static_cast<double>(v[0])));
  a.Set(1u, Napi::Number::New(env, static_cast<double>(v[1])));
  return a;
}

Napi::Array peers(Napi::Env env, const std::vector<mc::PeerSample>& rows) {
  Napi::Array out = Napi::Array::New(env, rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("peer", rows[i].peer);
    o.Set("bytes", pair(env, rows[i].bytes));
    o.Set("ops", pair(env, rows[i].ops));
    o.Set("failed", pair(env, rows[i].failed));
    out.Set(static_cast<uint32_t>(i), o);
  }
  return out;
}

}  // namespace

Napi::Object metricsToJs(Napi::Env env, const mc::MetricsSnapshot& s) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("initiator", peers(env, s.initiator));
  out.Set("target", peers(env, s.target));
  Napi::Object lat = Napi::Object::New(env);
  const size_t nb = s.latencyCounts.empty() ? 0 : mc::LatencyHistogram::kBuckets;
  Napi::Array bounds = Napi::Array::New(env, nb);
  Napi::Array counts = Napi::Array::New(env, s.latencyCounts.size());
  for (size_t i = 0; i < nb; ++i) bounds.Set(static_cast<uint32_t>(i), Napi::Number::New(env, mc::LatencyHistogram::kBounds[i]));
  for (size_t i = 0; i < s.latencyCounts.size(); ++i) {
    counts.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(s.latencyCounts[i])));
  }
  lat.Set("bounds", bounds);
  lat.Set("counts", counts);
  lat.Set("sum", Napi::Number::New(env, s.latencySum));
  lat.Set("count", Napi::Number::New(env, static_cast<double>(s.latencyCount)));
  out.Set("latency", lat);
  Napi::Object batches = Napi::Object::New(env);
  batches.Set("ok", Napi::Number::New(env, static_cast<double>(s.batchesOk)));
  batches.Set("failed", Napi::Number::New(env, static_cast<double>(s.batchesFailed)));
  out.Set("batches", batches);
  return out;
}

}  // namespace mcaddon
