// Same-host fast path: shareable (memfd) memory published in the descriptor is mapped by a peer on the
// same kernel and copied with memcpy instead of TCP.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>

#include "engine.h"
#include "sink.h"
#include "host_memory.h"
#include "json.h"

using namespace mc;

namespace {

using mctest::Sink;

double stat(Engine& e, const char* name) {
  for (auto& kv : e.stats()) if (kv.first == name) return kv.second;
  return -1;
}

std::unique_ptr<Engine> make(const char* name, Sink* sink, bool sameHost) {
  EngineConfig c;
  c.localServerName = name;
  c.sameHostFastPath = sameHost;
  c.transport.bindAddress = "127.0.0.1";
  c.transport.minPort = 0;
  auto e = createBuiltinEngine(c, sink);
  EXPECT_TRUE(e->start().ok());
  return e;
}

}  // namespace

TEST(SameHost, SharedMemoryIsCopiedWithoutTcp) {
  for (bool enabled : {true, false}) {
    Sink sa, sb;
    auto a = make("a", &sa, enabled);
    auto b = make("b", &sb, enabled);
    const uint64_t n = 4 << 20;
    std::shared_ptr<HostAllocation> am, bm;
    ASSERT_TRUE(HostAllocation::create(n, true, &am).ok());
    ASSERT_TRUE(HostAllocation::create(n, true, &bm).ok());
    RegisterOptions oa, ob;
    oa.owner = am;
    oa.shmPath = am->shmPath();
    ob.owner = bm;
    ob.shmPath = bm->shmPath();
    ASSERT_TRUE(a->registerMemory(reinterpret_cast<uint64_t>(am->data()), n, oa).ok());
    ASSERT_TRUE(b->registerMemory(reinterpret_cast<uint64_t>(bm->data()), n, ob).ok());
    std::string desc = b->localDescriptor();
    EXPECT_EQ(desc.find("mcnode_shm") != std::string::npos, enabled) << desc;
    int32_t seg = -1;
    ASSERT_TRUE(a->openSegment("b", desc, "127.0.0.1", &seg).ok());
    for (uint64_t i = 0; i < n; ++i) am->data()[i] = static_cast<uint8_t>(i * 31 + 7);
    size_t bad;
    uint64_t base = reinterpret_cast<uint64_t>(bm->data());
    TransferRequest w{1, seg, reinterpret_cast<uint64_t>(am->data()), base + 4096, n - 8192};
    ASSERT_TRUE(a->submitAsync(1, &w, 1, 0, &bad).ok());
    ASSERT_EQ(sa.wait(1), Code::OK);
    EXPECT_EQ(std::memcmp(bm->data() + 4096, am->data(), n - 8192), 0);
    std::memset(am->data(), 0, n);
    TransferRequest r{0, seg, reinterpret_cast<uint64_t>(am->data()), base + 4096, 65536};
    ASSERT_TRUE(a->submitAsync(2, &r, 1, 0, &bad).ok());
    ASSERT_EQ(sa.wait(2), Code::OK);
    EXPECT_EQ(std::memcmp(am->data(), bm->data() + 4096, 65536), 0);
    if (enabled) {
      EXPECT_EQ(stat(*a, "sameHostCopies"), 2);
      EXPECT_EQ(stat(*b, "requestsServed"), 0) << "no byte went over TCP";
    } else {
      EXPECT_EQ(stat(*a, "sameHostCopies"), 0);
      EXPECT_GE(stat(*b, "requestsServed"), 2);
    }
    a->stop();
    b->stop();
  }
}

TEST(SameHost, ForeignHostIdsAreNotMapped) {
  Sink sa;
  auto a = make("a", &sa, true);
  std::shared_ptr<HostAllocation> bm;
  ASSERT_TRUE(HostAllocation::create(1 << 20, true, &bm).ok());
  json::Value d = json::Value::object();
  json::Value bufs = json::Value::array();
  json::Value b = json::Value::object();
  b.set("name", json::Value::string("x"));
  b.set("addr", json::Value::uinteger(reinterpret_cast<uint64_t>(bm->data())));
  b.set("length", json::Value::uinteger(1 << 20));
  b.set("mcnode_shm_path", json::Value::string(bm->shmPath()));
  bufs.push(b);
  d.set("buffers", bufs);
  d.set("name", json::Value::string("x"));
  d.set("protocol", json::Value::string("tcp"));
  d.set("tcp_data_port", json::Value::uinteger(1));
  json::Value sh = json::Value::object();
  sh.set("host_id", json::Value::string("another-machine"));
  sh.set("pid", json::Value::uinteger(1));
  d.set("mcnode_shm", sh);
  int32_t seg = -1;
  ASSERT_TRUE(a->openSegment("x", json::write(d), "127.0.0.1", &seg).ok());
  std::vector<uint8_t> local(4096);
  ASSERT_TRUE(a->registerMemory(reinterpret_cast<uint64_t>(local.data()), local.size(), RegisterOptions{}).ok());
  size_t bad;
  TransferRequest w{1, seg, reinterpret_cast<uint64_t>(local.data()), reinterpret_cast<uint64_t>(bm->data()), 4096};
  ASSERT_TRUE(a->submitAsync(1, &w, 1, 0, &bad).ok());
  EXPECT_NE(sa.wait(1), Code::OK) << "went to TCP port 1, not through a mapping";
  EXPECT_EQ(stat(*a, "sameHostCopies"), 0);
  a->stop();
}
