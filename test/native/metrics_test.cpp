// The engine's metrics: the bounded peer table, the latency histogram, and per-peer counts on both
// sides of a real loopback transfer (checked against the bytes moved).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "engine.h"
#include "metrics.h"
#include "sink.h"

using namespace mc;

namespace {

const PeerSample* find(const std::vector<PeerSample>& rows, const std::string& peer) {
  for (const auto& r : rows) if (r.peer == peer) return &r;
  return nullptr;
}

TEST(Metrics, PeerTableKeepsAtMostCapacityNamesAndFoldsTheRestIntoOther) {
  PeerTable t(2);
  PeerCounters* a = t.slot("a");
  EXPECT_EQ(a, t.slot("a"));
  PeerCounters* b = t.slot("b");
  PeerCounters* c = t.slot("c");
  PeerCounters* d = t.slot("d");
  EXPECT_NE(a, b);
  EXPECT_EQ(c, d);  // both "other"
  a->add(true, 100, true);
  c->add(false, 7, true);
  d->add(false, 9, false);
  std::vector<PeerSample> rows;
  t.snapshot(&rows);
  ASSERT_EQ(rows.size(), 3u);
  const PeerSample* other = find(rows, "other");
  ASSERT_NE(other, nullptr);
  EXPECT_EQ(other->bytes[0], 7u);  // a failed request moves no bytes
  EXPECT_EQ(other->ops[0], 2u);
  EXPECT_EQ(other->failed[0], 1u);
  EXPECT_EQ(find(rows, "a")->bytes[1], 100u);
  EXPECT_EQ(find(rows, "c"), nullptr);
}

TEST(Metrics, HistogramBucketsByUpperBound) {
  EngineMetrics m(4);
  m.batchDone(40'000, true);             // 40 us: first bucket (<= 50 us)
  m.batchDone(50'000, true);             // exactly 50 us: still the first
  m.batchDone(2'000'000, false);         // 2 ms: <= 2.5 ms
  m.batchDone(120'000'000'000LL, true);  // 2 min: above every bound
  MetricsSnapshot s = m.snapshot();
  ASSERT_EQ(s.latencyCounts.size(), LatencyHistogram::kBuckets + 1);
  EXPECT_EQ(s.latencyCounts[0], 2u);
  EXPECT_EQ(s.latencyCounts[5], 1u);
  EXPECT_DOUBLE_EQ(LatencyHistogram::kBounds[5], 0.0025);
  EXPECT_EQ(s.latencyCounts[LatencyHistogram::kBuckets], 1u);
  EXPECT_EQ(s.latencyCount, 4u);
  EXPECT_NEAR(s.latencySum, 120.00209, 1e-6);
  EXPECT_EQ(s.batchesOk, 3u);
  EXPECT_EQ(s.batchesFailed, 1u);
  EngineMetrics off(0);
  off.batchDone(1000, true);
  EXPECT_EQ(off.initiatorSlot("x"), nullptr);
  EXPECT_TRUE(off.snapshot().latencyCounts.empty());
  EXPECT_EQ(off.snapshot().batchesOk, 1u);
}

struct Node {
  mctest::Sink sink;
  std::vector<uint8_t> mem;
  std::unique_ptr<Engine> engine;
  Node(size_t bytes, unsigned maxPeers) : mem(bytes) {
    EngineConfig cfg;
    cfg.localServerName = "n";
    cfg.transport.bindAddress = "127.0.0.1";
    cfg.transport.minPort = 0;
    cfg.transport.sliceSize = 64 * 1024;
    cfg.transport.metricsMaxPeers = maxPeers;
    engine = createBuiltinEngine(cfg, &sink);
    EXPECT_TRUE(engine->start().ok());
    EXPECT_TRUE(engine->registerMemory(reinterpret_cast<uint64_t>(mem.data()), mem.size(), RegisterOptions{}).ok());
  }
};

TEST(Metrics, LoopbackTransfersAreCountedPerPeerOnBothSides) {
  Node a(1 << 20, 8), b(1 << 20, 8);
  int32_t seg = -1;
  ASSERT_TRUE(a.engine->openSegment("b", b.engine->localDescriptor(), "127.0.0.1", &seg).ok());
  for (size_t i = 0; i < a.mem.size(); ++i) a.mem[i] = static_cast<uint8_t>(i * 7);
  TransferRequest w{1, seg, reinterpret_cast<uint64_t>(a.mem.data()), reinterpret_cast<uint64_t>(b.mem.data()), 256 * 1024};
  size_t bad = 0;
  ASSERT_TRUE(a.engine->submitAsync(1, &w, 1, 0, &bad).ok());
  ASSERT_EQ(a.sink.wait(1), Code::OK);
  ASSERT_EQ(std::memcmp(a.mem.data(), b.mem.data(), 256 * 1024), 0);
  TransferRequest r{0, seg, reinterpret_cast<uint64_t>(a.mem.data()) + 4096, reinterpret_cast<uint64_t>(b.mem.data()), 4096};
  ASSERT_TRUE(a.engine->submitAsync(2, &r, 1, 0, &bad).ok());
  ASSERT_EQ(a.sink.wait(2), Code::OK);

  SegmentInfo info;
  ASSERT_TRUE(a.engine->segmentInfo(seg, &info).ok());
  MetricsSnapshot sa = a.engine->metrics();
  ASSERT_EQ(sa.initiator.size(), 1u);
  EXPECT_EQ(sa.initiator[0].peer, "127.0.0.1:" + std::to_string(b.engine->dataPort()));
  EXPECT_EQ(sa.initiator[0].bytes[1], 256u * 1024);
  EXPECT_EQ(sa.initiator[0].ops[1], 4u);  // four 64 KiB slices
  EXPECT_EQ(sa.initiator[0].bytes[0], 4096u);
  EXPECT_EQ(sa.initiator[0].ops[0], 1u);
  EXPECT_EQ(sa.latencyCount, 2u);
  EXPECT_EQ(sa.batchesOk, 2u);
  MetricsSnapshot sb = b.engine->metrics();
  ASSERT_EQ(sb.target.size(), 1u);
  EXPECT_EQ(sb.target[0].peer, "127.0.0.1");
  EXPECT_EQ(sb.target[0].bytes[1], 256u * 1024);
  EXPECT_EQ(sb.target[0].ops[1], 4u);
  EXPECT_EQ(sb.target[0].bytes[0], 4096u);
  EXPECT_TRUE(sb.initiator.empty());
}

TEST(Metrics, OffKeepsNoPerPeerCounters) {
  Node a(1 << 16, 0), b(1 << 16, 0);
  int32_t seg = -1;
  ASSERT_TRUE(a.engine->openSegment("b", b.engine->localDescriptor(), "127.0.0.1", &seg).ok());
  TransferRequest w{1, seg, reinterpret_cast<uint64_t>(a.mem.data()), reinterpret_cast<uint64_t>(b.mem.data()), 4096};
  size_t bad = 0;
  ASSERT_TRUE(a.engine->submitAsync(1, &w, 1, 0, &bad).ok());
  ASSERT_EQ(a.sink.wait(1), Code::OK);
  EXPECT_TRUE(a.engine->metrics().initiator.empty());
  EXPECT_TRUE(b.engine->metrics().target.empty());
  EXPECT_EQ(a.engine->metrics().batchesOk, 1u);
}

}  // namespace
