// Instruction-count probe for the engine's metrics (run under callgrind by scripts/callgrind-metrics.sh):
// a fixed number of WRITE batches between two built-in engines over 127.0.0.1, with per-peer metrics on
// (argv[1] > 0: that many peers tracked) or off (0). Fixed work, so the two counts compare directly.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "engine.h"
#include "sink.h"

using namespace mc;

int main(int argc, char** argv) {
  const unsigned maxPeers = argc > 1 ? static_cast<unsigned>(std::atoi(argv[1])) : 64;
  const int batches = argc > 2 ? std::atoi(argv[2]) : 200;
  const size_t perBatch = 64, block = 4096;
  struct Side {
    mctest::Sink sink;
    std::vector<uint8_t> mem;
    std::unique_ptr<Engine> engine;
  };
  Side s[2];
  for (Side& x : s) {
    x.mem.resize(perBatch * block);
    EngineConfig cfg;
    cfg.localServerName = "cost";
    cfg.transport.bindAddress = "127.0.0.1";
    cfg.transport.minPort = 0;
    cfg.transport.metricsMaxPeers = maxPeers;
    x.engine = createBuiltinEngine(cfg, &x.sink);
    if (!x.engine->start().ok()) return 1;
    if (!x.engine->registerMemory(reinterpret_cast<uint64_t>(x.mem.data()), x.mem.size(), RegisterOptions{}).ok()) return 1;
  }
  int32_t seg = -1;
  if (!s[0].engine->openSegment("peer", s[1].engine->localDescriptor(), "127.0.0.1", &seg).ok()) return 1;
  std::vector<TransferRequest> reqs(perBatch);
  for (size_t i = 0; i < perBatch; ++i) {
    reqs[i] = {1, seg, reinterpret_cast<uint64_t>(s[0].mem.data()) + i * block, reinterpret_cast<uint64_t>(s[1].mem.data()) + i * block, block};
  }
  for (int b = 0; b < batches; ++b) {
    size_t bad = 0;
    if (!s[0].engine->submitAsync(static_cast<uint64_t>(b + 1), reqs.data(), reqs.size(), 0, &bad).ok()) return 1;
    if (s[0].sink.wait(static_cast<uint64_t>(b + 1)) != Code::OK) return 1;
  }
  MetricsSnapshot m = s[0].engine->metrics();
  std::printf("batches %d, requests %zu, peers tracked %zu\n", batches, static_cast<size_t>(batches) * perBatch, m.initiator.size());
  return 0;
}
