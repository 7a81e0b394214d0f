// Device (NPU) memory through the Ascend runtime, exercised against the stand-in libascendcl
// (test/native/standin): device memory there is NOT addressable from the host, so any code path that
// touches it directly crashes this test instead of passing by accident.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "device/device_runtime.h"
#include "engine.h"
#include "sink.h"

using namespace mc;

namespace {

DeviceRuntime* runtime() {
  DeviceRuntime* rt = nullptr;
  Status st = ascendRuntime(STANDIN_ASCENDCL, &rt);
  EXPECT_TRUE(st.ok()) << st.message;
  return rt;
}

void standinCounters(uint64_t* setDevice, uint64_t* memcpys, uint64_t* noContext) {
  void* h = dlopen(STANDIN_ASCENDCL, RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(h, nullptr);
  auto fn = reinterpret_cast<void (*)(uint64_t*, uint64_t*, uint64_t*)>(dlsym(h, "standin_counters"));
  ASSERT_NE(fn, nullptr);
  fn(setDevice, memcpys, noContext);
}

using mctest::Sink;

uint64_t addr(const void* p) { return reinterpret_cast<uint64_t>(p); }

}  // namespace

TEST(Device, LocationsParse) {
  std::string kind;
  int dev = -1;
  EXPECT_TRUE(parseDeviceLocation("npu:3", &kind, &dev));
  EXPECT_EQ(dev, 3);
  EXPECT_FALSE(parseDeviceLocation("cpu:0", &kind, &dev));
  EXPECT_FALSE(parseDeviceLocation("npu:", &kind, &dev));
  EXPECT_FALSE(parseDeviceLocation("npu:x", &kind, &dev));
  EXPECT_FALSE(parseDeviceLocation("*", &kind, &dev));
}

TEST(Device, MissingLibraryNamesTheLibraryAndTheVariable) {
  DeviceRuntime* rt = nullptr;
  Status st = ascendRuntime("/nonexistent/libascendcl.so", &rt);
  EXPECT_EQ(st.code, Code::LIBRARY_NOT_FOUND);
  EXPECT_NE(st.message.find("libascendcl.so"), std::string::npos);
  EXPECT_NE(st.message.find("MOONCAKE_ASCENDCL_LIBRARY"), std::string::npos);
}

TEST(Device, AllocationsAreAlignedAndCopiesNeedTheirThreadsContext) {
  DeviceRuntime* rt = runtime();
  ASSERT_NE(rt, nullptr);
  void* p = nullptr;
  ASSERT_TRUE(rt->allocate(0, 5000, &p).ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kDeviceAlignment, 0u);
  EXPECT_EQ(rt->allocate(7, 4096, &p).code, Code::DEVICE_NOT_FOUND);
  uint64_t set0, mc0, noctx0;
  standinCounters(&set0, &mc0, &noctx0);
  std::vector<uint8_t> in(5000), out(5000);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint8_t>(i * 7);
  // Fresh threads: each must make the device current before its first call.
  std::thread a([&] { EXPECT_TRUE(rt->copyToDevice(0, p, in.data(), in.size()).ok()); });
  a.join();
  std::thread b([&] { EXPECT_TRUE(rt->copyToHost(0, out.data(), p, out.size()).ok()); });
  b.join();
  EXPECT_EQ(in, out);
  uint64_t set1, mc1, noctx1;
  standinCounters(&set1, &mc1, &noctx1);
  EXPECT_GE(set1 - set0, 2u) << "each new thread sets the device";
  EXPECT_EQ(noctx1, noctx0) << "no call ran without a current device";
  EXPECT_TRUE(rt->release(0, p).ok());
}

// Host engine A <-> engine B whose memory is on npu:1 (and A's own npu:0): the TCP transport must
// stage through host buffers on both the client and the server side.
TEST(Device, TcpTransportStagesDeviceMemory) {
  DeviceRuntime* rt = runtime();
  ASSERT_NE(rt, nullptr);
  const uint64_t n = 3 << 20;
  Sink sa, sb;
  EngineConfig ca, cb;
  ca.localServerName = "a";
  cb.localServerName = "b";
  ca.deviceLibrary = cb.deviceLibrary = STANDIN_ASCENDCL;
  for (auto* c : {&ca, &cb}) { c->tcp.bindAddress = "127.0.0.1"; c->tcp.minPort = 0; }
  auto a = createBuiltinEngine(ca, &sa);
  auto b = createBuiltinEngine(cb, &sb);
  ASSERT_TRUE(a->start().ok());
  ASSERT_TRUE(b->start().ok());

  std::vector<uint8_t> host(n);
  std::mt19937 rng(5);
  for (auto& x : host) x = static_cast<uint8_t>(rng());
  ASSERT_TRUE(a->registerMemory(addr(host.data()), n, RegisterOptions{}).ok());
  void* bdev = nullptr;
  ASSERT_TRUE(rt->allocate(1, n, &bdev).ok());
  RegisterOptions onNpu1;
  onNpu1.location = "npu:1";
  ASSERT_TRUE(b->registerMemory(addr(bdev), n, onNpu1).ok());
  int32_t seg = -1;
  ASSERT_TRUE(a->openSegment("b", b->localDescriptor(), "127.0.0.1", &seg).ok());

  size_t bad;
  TransferRequest w{1, seg, addr(host.data()), addr(bdev), n};
  ASSERT_TRUE(a->submitAsync(1, &w, 1, 0, &bad).ok());
  ASSERT_EQ(sa.wait(1), Code::OK);
  std::vector<uint8_t> check(n);
  ASSERT_TRUE(rt->copyToHost(1, check.data(), bdev, n).ok());
  EXPECT_EQ(check, host) << "write landed on the device";

  // A local device region as source and sink.
  void* adev = nullptr;
  ASSERT_TRUE(rt->allocate(0, n, &adev).ok());
  RegisterOptions onNpu0;
  onNpu0.location = "npu:0";
  ASSERT_TRUE(a->registerMemory(addr(adev), n, onNpu0).ok());
  TransferRequest r{0, seg, addr(adev), addr(bdev), n};
  ASSERT_TRUE(a->submitAsync(2, &r, 1, 0, &bad).ok());
  ASSERT_EQ(sa.wait(2), Code::OK);
  std::fill(check.begin(), check.end(), 0);
  ASSERT_TRUE(rt->copyToHost(0, check.data(), adev, n).ok());
  EXPECT_EQ(check, host) << "read from device into device";

  std::vector<uint8_t> other(n, 0xAB);
  ASSERT_TRUE(rt->copyToDevice(0, adev, other.data(), n).ok());
  TransferRequest w2{1, seg, addr(adev), addr(bdev) + 4096, 65536};
  ASSERT_TRUE(a->submitAsync(3, &w2, 1, 0, &bad).ok());
  ASSERT_EQ(sa.wait(3), Code::OK);
  ASSERT_TRUE(rt->copyToHost(1, check.data(), bdev, n).ok());
  EXPECT_EQ(check[4096], 0xAB);
  EXPECT_EQ(check[4096 + 65535], 0xAB);
  EXPECT_EQ(check[4096 + 65536], host[4096 + 65536]);

  a->stop();
  b->stop();
  EXPECT_TRUE(a->unregisterMemory(addr(adev)).code == Code::CLOSED);
  rt->release(0, adev);
  rt->release(1, bdev);
}

// A request for a whole large device region is served through host staging a chunk at a time (4 MiB):
// a peer cannot make the server allocate the region's size per connection (a 16 GiB NPU region times
// thousands of connections). Bytes still arrive exactly, both ways.
TEST(Device, ServerStagesLargeDeviceRequestsInChunks) {
  DeviceRuntime* rt = runtime();
  ASSERT_NE(rt, nullptr);
  void* h = dlopen(STANDIN_ASCENDCL, RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(h, nullptr);
  auto largest = reinterpret_cast<size_t (*)()>(dlsym(h, "standin_largest_copy"));
  ASSERT_NE(largest, nullptr);
  const uint64_t n = 10 << 20;
  Sink sa, sb;
  EngineConfig ca, cb;
  ca.localServerName = "a";
  cb.localServerName = "b";
  cb.deviceLibrary = STANDIN_ASCENDCL;
  for (auto* c : {&ca, &cb}) { c->tcp.bindAddress = "127.0.0.1"; c->tcp.minPort = 0; }
  ca.tcp.sliceSize = 64 << 20;  // one request for the whole region
  auto a = createBuiltinEngine(ca, &sa);
  auto b = createBuiltinEngine(cb, &sb);
  ASSERT_TRUE(a->start().ok());
  ASSERT_TRUE(b->start().ok());
  std::vector<uint8_t> host(n), back(n, 0);
  std::mt19937 rng(9);
  for (auto& x : host) x = static_cast<uint8_t>(rng());
  ASSERT_TRUE(a->registerMemory(addr(host.data()), n, RegisterOptions{}).ok());
  ASSERT_TRUE(a->registerMemory(addr(back.data()), n, RegisterOptions{}).ok());
  void* bdev = nullptr;
  ASSERT_TRUE(rt->allocate(1, n, &bdev).ok());
  RegisterOptions onNpu1;
  onNpu1.location = "npu:1";
  ASSERT_TRUE(b->registerMemory(addr(bdev), n, onNpu1).ok());
  int32_t seg = -1;
  ASSERT_TRUE(a->openSegment("b", b->localDescriptor(), "127.0.0.1", &seg).ok());
  largest();
  size_t bad;
  TransferRequest w{1, seg, addr(host.data()), addr(bdev), n};
  ASSERT_TRUE(a->submitAsync(1, &w, 1, 0, &bad).ok());
  ASSERT_EQ(sa.wait(1), Code::OK);
  TransferRequest r{0, seg, addr(back.data()), addr(bdev), n};
  ASSERT_TRUE(a->submitAsync(2, &r, 1, 0, &bad).ok());
  ASSERT_EQ(sa.wait(2), Code::OK);
  EXPECT_EQ(back, host) << "10 MiB written to the device and read back";
  EXPECT_LE(largest(), 4u << 20) << "the server staged more than a chunk at once";
  a->stop();
  b->stop();
  rt->release(1, bdev);
}
