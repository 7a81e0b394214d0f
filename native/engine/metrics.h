// Operator metrics of an engine, counted where the bytes move: per-peer bytes, requests and failures,
// and a histogram of batch latency. Everything is a relaxed atomic bumped on the engine's own threads
// (a handful per request slice); JS reads a snapshot per scrape, never per transfer.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace mc {

// Counters of one peer in one role. Index 0: READ, 1: WRITE.
struct PeerCounters {
  std::atomic<uint64_t> bytes[2] = {};
  std::atomic<uint64_t> ops[2] = {};
  std::atomic<uint64_t> failed[2] = {};

  void add(bool write, uint64_t n, bool ok) {
    const int i = write ? 1 : 0;
    ops[i].fetch_add(1, std::memory_order_relaxed);
    if (ok) bytes[i].fetch_add(n, std::memory_order_relaxed);
    else failed[i].fetch_add(1, std::memory_order_relaxed);
  }
};

struct PeerSample {
  std::string peer;
  uint64_t bytes[2] = {0, 0};
  uint64_t ops[2] = {0, 0};
  uint64_t failed[2] = {0, 0};
};

// Counters per peer name, with a bounded number of names: the first `capacity` peers seen get their own
// counters, every later one shares the "other" counters, so a scrape's label set stays bounded however
// many peers come and go. Looked up when a peer or connection is created, not per request.
class PeerTable {
 public:
  static constexpr const char* kOther = "other";
  explicit PeerTable(size_t capacity) : capacity_(capacity) {}
  PeerCounters* slot(const std::string& peer);
  void snapshot(std::vector<PeerSample>* out) const;

 private:
  size_t capacity_;
  mutable std::mutex mu_;
  std::vector<std::pair<std::string, std::unique_ptr<PeerCounters>>> slots_;  // first seen first
  std::unordered_map<std::string, PeerCounters*> byName_;
  PeerCounters* other_ = nullptr;
};

// Fixed buckets (seconds) for transfer latency: 50 us to 60 s.
class LatencyHistogram {
 public:
  static constexpr size_t kBuckets = 18;
  static const double kBounds[kBuckets];
  void observeNs(int64_t ns);
  // counts has kBuckets + 1 entries (the last: above every bound), not cumulative.
  void snapshot(std::vector<uint64_t>* counts, double* sumSeconds, uint64_t* count) const;

 private:
  std::atomic<uint64_t> counts_[kBuckets + 1] = {};
  std::atomic<uint64_t> sumNs_{0};
  std::atomic<uint64_t> count_{0};
};

struct MetricsSnapshot {
  std::vector<PeerSample> initiator;  // as the side that submits: peer = the peer's data endpoint
  std::vector<PeerSample> target;     // as the side that serves: peer = the source address
  std::vector<uint64_t> latencyCounts;
  double latencySum = 0;
  uint64_t latencyCount = 0;
  uint64_t batchesOk = 0, batchesFailed = 0;
};

class EngineMetrics {
 public:
  // maxPeers 0 turns per-peer counting and the histogram off (slot() returns nullptr).
  explicit EngineMetrics(size_t maxPeers) : enabled_(maxPeers > 0), initiator_(maxPeers), target_(maxPeers) {}
  bool enabled() const { return enabled_; }
  PeerCounters* initiatorSlot(const std::string& peer) { return enabled_ ? initiator_.slot(peer) : nullptr; }
  PeerCounters* targetSlot(const std::string& peer) { return enabled_ ? target_.slot(peer) : nullptr; }
  // A token batch ended after `ns`.
  void batchDone(int64_t ns, bool ok);
  MetricsSnapshot snapshot() const;

 private:
  bool enabled_;
  PeerTable initiator_, target_;
  LatencyHistogram latency_;
  std::atomic<uint64_t> batchesOk_{0}, batchesFailed_{0};
};

}  // namespace mc
