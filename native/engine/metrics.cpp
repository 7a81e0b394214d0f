#include "metrics.h"

namespace mc {

PeerCounters* PeerTable::slot(const std::string& peer) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = byName_.find(peer);
  if (it != byName_.end()) return it->second;
  if (slots_.size() >= capacity_ || peer == kOther) {
    if (other_ == nullptr) {
      slots_.emplace_back(kOther, std::make_unique<PeerCounters>());
      other_ = slots_.back().second.get();
      byName_.emplace(kOther, other_);
    }
    return other_;
  }
  slots_.emplace_back(peer, std::make_unique<PeerCounters>());
  PeerCounters* c = slots_.back().second.get();
  byName_.emplace(peer, c);
  return c;
}

void PeerTable::snapshot(std::vector<PeerSample>* out) const {
  std::lock_guard<std::mutex> g(mu_);
  out->reserve(slots_.size());
  for (const auto& s : slots_) {
    PeerSample p;
    p.peer = s.first;
    for (int i = 0; i < 2; ++i) {
      p.bytes[i] = s.second->bytes[i].load(std::memory_order_relaxed);
      p.ops[i] = s.second->ops[i].load(std::memory_order_relaxed);
      p.failed[i] = s.second->failed[i].load(std::memory_order_relaxed);
    }
    out->push_back(std::move(p));
  }
}

const double LatencyHistogram::kBounds[LatencyHistogram::kBuckets] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,    0.1,    0.25,    0.5,    1,     2.5,    5,     10,   60};

void LatencyHistogram::observeNs(int64_t ns) {
  if (ns < 0) ns = 0;
  const double s = static_cast<double>(ns) / 1e9;
  size_t i = 0;
  while (i < kBuckets && s > kBounds[i]) ++i;
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  sumNs_.fetch_add(static_cast<uint64_t>(ns), std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

void LatencyHistogram::snapshot(std::vector<uint64_t>* counts, double* sumSeconds, uint64_t* count) const {
  // The total is read first: a scrape racing an observation may see a bucket count the total does not
  // include yet, never the other way round (the exposition takes the total from the buckets anyway).
  *count = count_.load(std::memory_order_relaxed);
  *sumSeconds = static_cast<double>(sumNs_.load(std::memory_order_relaxed)) / 1e9;
  counts->assign(kBuckets + 1, 0);
  for (size_t i = 0; i <= kBuckets; ++i) (*counts)[i] = counts_[i].load(std::memory_order_relaxed);
}

void EngineMetrics::batchDone(int64_t ns, bool ok) {
  (ok ? batchesOk_ : batchesFailed_).fetch_add(1, std::memory_order_relaxed);
  if (enabled_) latency_.observeNs(ns);
}

MetricsSnapshot EngineMetrics::snapshot() const {
  MetricsSnapshot s;
  initiator_.snapshot(&s.initiator);
  target_.snapshot(&s.target);
  if (enabled_) latency_.snapshot(&s.latencyCounts, &s.latencySum, &s.latencyCount);
  s.batchesOk = batchesOk_.load(std::memory_order_relaxed);
  s.batchesFailed = batchesFailed_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace mc
