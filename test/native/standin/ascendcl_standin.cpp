// A STAND-IN for CANN's libascendcl, for tests on machines without Ascend NPUs. It implements the ACL
// calls mooncake-node uses with host memory, but keeps the two rules of real device memory that the
// engine must respect:
//   1. device memory is not addressable from the host: aclrtMalloc returns addresses inside a
//      PROT_NONE reservation (touching them directly crashes), and the bytes live in a shadow buffer
//      that only aclrtMemcpy reaches;
//   2. a thread must have called aclrtSetDevice before memory calls (else ACL_ERROR_RT_CONTEXT_NULL).
// It is NOT an Ascend runtime and is never shipped; tests build it into a temporary directory.
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace {

constexpr uint64_t kAlign = 2ull << 20;
constexpr uint64_t kReserve = 64ull << 30;  // address space for fake device memory
constexpr int ACL_SUCCESS = 0;
constexpr int ACL_ERROR_INVALID_PARAM = 100000;
constexpr int ACL_ERROR_RT_CONTEXT_NULL = 107002;
constexpr int ACL_ERROR_RT_INVALID_DEVICEID = 107001;
constexpr int ACL_ERROR_BAD_ALLOC = 200000;

struct Alloc {
  uint64_t size;
  uint8_t* shadow;
  int device;
};

std::mutex mu;
uint8_t* base = nullptr;
uint64_t next = 0;
std::map<uintptr_t, Alloc> allocs;
thread_local int current = -1;
std::atomic<uint64_t> setDeviceCalls{0}, memcpyCalls{0}, contextErrors{0}, hostAllocs{0};
size_t largestCopy = 0;  // guarded by mu

int deviceCount() {
  const char* e = std::getenv("STANDIN_NPU_COUNT");
  return e ? std::atoi(e) : 2;
}

// Finds the allocation containing [p, p+n); returns its shadow address.
uint8_t* shadowOf(const void* p, uint64_t n) {
  auto a = reinterpret_cast<uintptr_t>(p);
  auto it = allocs.upper_bound(a);
  if (it == allocs.begin()) return nullptr;
  --it;
  if (a < it->first || a + n > it->first + it->second.size) return nullptr;
  return it->second.shadow + (a - it->first);
}

}  // namespace

extern "C" {

int aclInit(const char*) {
  std::lock_guard<std::mutex> g(mu);
  if (!base) {
    void* p = mmap(nullptr, kReserve + kAlign, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return ACL_ERROR_BAD_ALLOC;
    base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(p) + kAlign - 1) / kAlign * kAlign);
  }
  return ACL_SUCCESS;
}

int aclFinalize() { return ACL_SUCCESS; }

int aclrtGetDeviceCount(uint32_t* count) {
  *count = static_cast<uint32_t>(deviceCount());
  return ACL_SUCCESS;
}

int aclrtSetDevice(int32_t device) {
  if (device < 0 || device >= deviceCount()) return ACL_ERROR_RT_INVALID_DEVICEID;
  current = device;
  setDeviceCalls.fetch_add(1);
  return ACL_SUCCESS;
}

int aclrtGetDevice(int32_t* device) {
  if (current < 0) return ACL_ERROR_RT_CONTEXT_NULL;
  *device = current;
  return ACL_SUCCESS;
}

int aclrtMalloc(void** out, size_t size, int /*policy*/) {
  if (current < 0) { contextErrors.fetch_add(1); return ACL_ERROR_RT_CONTEXT_NULL; }
  if (size == 0 || !out) return ACL_ERROR_INVALID_PARAM;
  std::lock_guard<std::mutex> g(mu);
  uint64_t rounded = (size + kAlign - 1) / kAlign * kAlign;
  if (next + rounded > kReserve) return ACL_ERROR_BAD_ALLOC;
  auto* shadow = static_cast<uint8_t*>(std::calloc(1, size));
  if (!shadow) return ACL_ERROR_BAD_ALLOC;
  uint8_t* addr = base + next;
  next += rounded;
  allocs[reinterpret_cast<uintptr_t>(addr)] = Alloc{size, shadow, current};
  *out = addr;
  return ACL_SUCCESS;
}

int aclrtFree(void* p) {
  if (current < 0) { contextErrors.fetch_add(1); return ACL_ERROR_RT_CONTEXT_NULL; }
  std::lock_guard<std::mutex> g(mu);
  auto it = allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == allocs.end()) return ACL_ERROR_INVALID_PARAM;
  std::free(it->second.shadow);
  allocs.erase(it);
  return ACL_SUCCESS;
}

int aclrtMallocHost(void** out, size_t size) {
  *out = std::malloc(size);
  hostAllocs.fetch_add(1);
  return *out ? ACL_SUCCESS : ACL_ERROR_BAD_ALLOC;
}

int aclrtFreeHost(void* p) {
  std::free(p);
  return ACL_SUCCESS;
}

// kind: 0 host->host, 1 host->device, 2 device->host, 3 device->device
int aclrtMemcpy(void* dst, size_t destMax, const void* src, size_t count, int kind) {
  if (current < 0) { contextErrors.fetch_add(1); return ACL_ERROR_RT_CONTEXT_NULL; }
  if (count > destMax) return ACL_ERROR_INVALID_PARAM;
  memcpyCalls.fetch_add(1);
  std::lock_guard<std::mutex> g(mu);
  if (count > largestCopy) largestCopy = count;
  uint8_t* d = static_cast<uint8_t*>(dst);
  const uint8_t* s = static_cast<const uint8_t*>(src);
  if (kind == 1 || kind == 3) { d = shadowOf(dst, count); if (!d) return ACL_ERROR_INVALID_PARAM; }
  if (kind == 2 || kind == 3) { s = shadowOf(src, count); if (!s) return ACL_ERROR_INVALID_PARAM; }
  if (kind == 0 && (shadowOf(dst, 1) || shadowOf(src, 1))) return ACL_ERROR_INVALID_PARAM;
  std::memmove(d, s, count);
  return ACL_SUCCESS;
}

// Test hooks (not ACL API).
// The largest single copy since the last call (then reset).
size_t standin_largest_copy() {
  std::lock_guard<std::mutex> g(mu);
  size_t n = largestCopy;
  largestCopy = 0;
  return n;
}

void standin_counters(uint64_t* setDevice, uint64_t* memcpys, uint64_t* noContext) {
  *setDevice = setDeviceCalls.load();
  *memcpys = memcpyCalls.load();
  *noContext = contextErrors.load();
}

}  // extern "C"
