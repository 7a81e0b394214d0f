// A STAND-IN for CANN's libascendcl, for tests on machines without Ascend NPUs. It implements the ACL
// calls mooncake-node and upstream Mooncake's Ascend Direct transport make (the transport's list comes
// from `nm -D --undefined-only ascend_transport.so` of the npu wheel; signatures, structs and numbers
// from CANN's public acl_rt.h / acl_base.h) with host memory, but keeps the rules of real device memory
// that callers must respect:
//   1. device memory is not addressable from the host: aclrtMalloc returns addresses inside a
//      PROT_NONE reservation (touching them directly crashes), and the bytes live in a shadow buffer
//      that only the copy calls reach;
//   2. a thread must have a current device (aclrtSetDevice, or aclrtSetCurrentContext with a context
//      from aclrtGetCurrentContext) before memory and stream calls (else ACL_ERROR_RT_CONTEXT_NULL);
//   3. ASCEND_RT_VISIBLE_DEVICES picks which physical devices the logical ids 0..n-1 are (the
//      transport derives its ADXL listen port from the physical id).
// The virtual-memory and host-registration calls (aclrtMallocPhysical, aclrtReserveMemAddress,
// aclrtMapMem, aclrtHostRegister, ...) are only used by upstream's fabric-memory allocator and shared
// segments for Mooncake Store (libtransfer_engine.so links them too); they answer "feature not supported".
// It is NOT an Ascend runtime and is never shipped; tests build it into a temporary directory.
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {

constexpr uint64_t kAlign = 2ull << 20;
constexpr uint64_t kReserve = 64ull << 30;  // address space for fake device memory
constexpr int ACL_SUCCESS = 0;
constexpr int ACL_ERROR_INVALID_PARAM = 100000;
constexpr int ACL_ERROR_RT_CONTEXT_NULL = 107002;
constexpr int ACL_ERROR_RT_INVALID_DEVICEID = 107001;
constexpr int ACL_ERROR_BAD_ALLOC = 200000;
constexpr int ACL_ERROR_RT_FEATURE_NOT_SUPPORT = 207000;
constexpr int kMaxDevices = 64;
// aclrtMemcpyKind and aclrtMemLocationType, as numbered in acl_rt.h.
enum { H2H = 0, H2D = 1, D2H = 2, D2D = 3, KIND_DEFAULT = 4 };
enum { LOC_HOST = 0, LOC_DEVICE = 1, LOC_UNREGISTERED = 2 };

struct MemLocation {  // aclrtMemLocation
  uint32_t id;
  int32_t type;
};
struct PtrAttributes {  // aclrtPtrAttributes
  MemLocation location;
  uint32_t pageSize;
  uint32_t rsv[4];
};
struct MemcpyBatchAttr {  // aclrtMemcpyBatchAttr
  MemLocation dstLoc;
  MemLocation srcLoc;
  uint8_t rsv[16];
};
struct Context {  // what aclrtContext points to here: one per logical device
  int device;
};
struct Stream {  // what aclrtStream points to here: copies run at once, errors wait for the sync
  int device;
  int error;
};

struct Alloc {
  uint64_t size;
  uint8_t* shadow;
  int device;
};

std::mutex mu;
uint8_t* base = nullptr;
uint64_t next = 0;
std::map<uintptr_t, Alloc> allocs;
std::map<uintptr_t, uint64_t> hostBlocks;  // aclrtMallocHost memory
Context contexts[kMaxDevices] = {};
const bool contextsReady = [] { for (int i = 0; i < kMaxDevices; ++i) contexts[i].device = i; return true; }();
thread_local int current = -1;
thread_local std::string lastError;
std::atomic<uint64_t> setDeviceCalls{0}, memcpyCalls{0}, contextErrors{0}, hostAllocs{0};
size_t largestCopy = 0;  // guarded by mu

// Physical ids of the visible devices: ASCEND_RT_VISIBLE_DEVICES ("4,5"), else 0..STANDIN_NPU_COUNT-1.
const std::vector<int>& physicalIds() {
  static const std::vector<int> ids = [] {
    std::vector<int> v;
    if (const char* vis = std::getenv("ASCEND_RT_VISIBLE_DEVICES"); vis && *vis) {
      for (const char* p = vis; *p;) {
        v.push_back(std::atoi(p));
        while (*p && *p != ',') ++p;
        if (*p == ',') ++p;
      }
    } else {
      const char* e = std::getenv("STANDIN_NPU_COUNT");
      for (int i = 0, n = e ? std::atoi(e) : 2; i < n && i < kMaxDevices; ++i) v.push_back(i);
    }
    return v;
  }();
  return ids;
}

int deviceCount() { return static_cast<int>(physicalIds().size()); }

int fail(int code, const char* what) {
  lastError = std::string("ACL stand-in: ") + what;
  if (code == ACL_ERROR_RT_CONTEXT_NULL) contextErrors.fetch_add(1);
  return code;
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

// The copy behind aclrtMemcpy, aclrtMemcpyAsync and aclrtMemcpyBatch (caller holds no lock).
int copyBytes(void* dst, size_t destMax, const void* src, size_t count, int kind) {
  if (current < 0) return fail(ACL_ERROR_RT_CONTEXT_NULL, "no current device on this thread");
  if (count > destMax) return fail(ACL_ERROR_INVALID_PARAM, "count > destMax");
  memcpyCalls.fetch_add(1);
  std::lock_guard<std::mutex> g(mu);
  if (count > largestCopy) largestCopy = count;
  if (kind == KIND_DEFAULT) kind = (shadowOf(src, 1) ? 2 : 0) + (shadowOf(dst, 1) ? 1 : 0);  // infer from the addresses
  uint8_t* d = static_cast<uint8_t*>(dst);
  const uint8_t* s = static_cast<const uint8_t*>(src);
  if (kind == H2D || kind == D2D) { d = shadowOf(dst, count); if (!d) return fail(ACL_ERROR_INVALID_PARAM, "destination is not device memory"); }
  if (kind == D2H || kind == D2D) { s = shadowOf(src, count); if (!s) return fail(ACL_ERROR_INVALID_PARAM, "source is not device memory"); }
  if (kind == H2H && (shadowOf(dst, 1) || shadowOf(src, 1))) return fail(ACL_ERROR_INVALID_PARAM, "host-to-host copy touches device memory");
  std::memmove(d, s, count);
  return ACL_SUCCESS;
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
  if (!*out) return ACL_ERROR_BAD_ALLOC;
  std::lock_guard<std::mutex> g(mu);
  hostBlocks[reinterpret_cast<uintptr_t>(*out)] = size;
  return ACL_SUCCESS;
}

int aclrtFreeHost(void* p) {
  {
    std::lock_guard<std::mutex> g(mu);
    hostBlocks.erase(reinterpret_cast<uintptr_t>(p));
  }
  std::free(p);
  return ACL_SUCCESS;
}

// kind: 0 host->host, 1 host->device, 2 device->host, 3 device->device, 4 inferred from the addresses
int aclrtMemcpy(void* dst, size_t destMax, const void* src, size_t count, int kind) { return copyBytes(dst, destMax, src, count, kind); }

const char* aclGetRecentErrMsg() { return lastError.c_str(); }

int aclrtGetCurrentContext(void** ctx) {
  if (current < 0) return fail(ACL_ERROR_RT_CONTEXT_NULL, "aclrtGetCurrentContext: no current device on this thread");
  *ctx = &contexts[current];
  return ACL_SUCCESS;
}

int aclrtSetCurrentContext(void* ctx) {
  auto* c = static_cast<Context*>(ctx);
  if (c < contexts || c >= contexts + deviceCount()) return fail(ACL_ERROR_INVALID_PARAM, "aclrtSetCurrentContext: not a context");
  current = c->device;
  return ACL_SUCCESS;
}

int aclrtGetPhyDevIdByLogicDevId(int32_t logic, int32_t* phy) {
  if (logic < 0 || logic >= deviceCount()) return fail(ACL_ERROR_RT_INVALID_DEVICEID, "no such logical device");
  *phy = physicalIds()[logic];
  return ACL_SUCCESS;
}

int aclrtPointerGetAttributes(const void* ptr, PtrAttributes* attrs) {
  std::memset(attrs, 0, sizeof *attrs);
  std::lock_guard<std::mutex> g(mu);
  auto a = reinterpret_cast<uintptr_t>(ptr);
  auto it = allocs.upper_bound(a);
  if (it != allocs.begin() && a < std::prev(it)->first + std::prev(it)->second.size) {
    attrs->location = {static_cast<uint32_t>(std::prev(it)->second.device), LOC_DEVICE};
    attrs->pageSize = kAlign;
    return ACL_SUCCESS;
  }
  auto h = hostBlocks.upper_bound(a);
  bool host = h != hostBlocks.begin() && a < std::prev(h)->first + std::prev(h)->second;
  attrs->location = {0, host ? LOC_HOST : LOC_UNREGISTERED};
  attrs->pageSize = 4096;
  return ACL_SUCCESS;
}

int aclrtCreateStreamWithConfig(void** stream, uint32_t /*priority*/, uint32_t /*flags*/) {
  if (current < 0) return fail(ACL_ERROR_RT_CONTEXT_NULL, "aclrtCreateStreamWithConfig: no current device");
  *stream = new Stream{current, 0};
  return ACL_SUCCESS;
}

int aclrtDestroyStream(void* stream) {
  delete static_cast<Stream*>(stream);
  return ACL_SUCCESS;
}

int aclrtMemcpyAsync(void* dst, size_t destMax, const void* src, size_t count, int kind, void* stream) {
  int e = copyBytes(dst, destMax, src, count, kind);
  if (e == ACL_SUCCESS || !stream) return e;
  static_cast<Stream*>(stream)->error = e;  // reported by the next synchronize, as a device fault would be
  return ACL_SUCCESS;
}

int aclrtSynchronizeStreamWithTimeout(void* stream, int32_t /*timeoutMs*/) {
  auto* s = static_cast<Stream*>(stream);
  int e = s ? s->error : ACL_ERROR_INVALID_PARAM;
  if (s) s->error = 0;
  return e;
}

int aclrtStreamAbort(void* stream) {
  if (stream) static_cast<Stream*>(stream)->error = 0;
  return ACL_SUCCESS;
}

int aclrtMemcpyBatch(void** dsts, size_t* destMaxs, void** srcs, size_t* sizes, size_t n, MemcpyBatchAttr* attrs, size_t* attrIdx,
                     size_t numAttrs, size_t* failIndex) {
  for (size_t i = 0; i < n; ++i) {
    if (attrIdx[i] >= numAttrs) { *failIndex = i; return fail(ACL_ERROR_INVALID_PARAM, "attribute index out of range"); }
    const MemcpyBatchAttr& a = attrs[attrIdx[i]];
    int kind = (a.srcLoc.type == LOC_DEVICE ? 2 : 0) + (a.dstLoc.type == LOC_DEVICE ? 1 : 0);
    if (int e = copyBytes(dsts[i], destMaxs[i], srcs[i], sizes[i], kind)) { *failIndex = i; return e; }
  }
  return ACL_SUCCESS;
}

const char* aclrtGetSocName() { return "Ascend910B-standin"; }

// Used only by upstream's fabric-memory allocator and shared segments (Mooncake Store), which
// libtransfer_engine.so links but the transfer path never calls: not stood in.
int aclrtGetLogicDevIdByUserDevId(int32_t, int32_t*) { return fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "shared segments are not stood in"); }
int aclrtHostRegister(void*, uint64_t, int, void**) { return fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "host registration is not stood in"); }
int aclrtHostUnregister(void*) { return fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "host registration is not stood in"); }
int aclrtMemGetAllocationGranularity(const void*, int, size_t*) { return fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "VMM is not stood in"); }
int aclrtMemImportFromShareableHandleV2(const void*, int, uint64_t, void**) { return fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "VMM is not stood in"); }
int aclrtMemSetAccess(void*, size_t, const void*, size_t) { return fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "VMM is not stood in"); }
int aclrtMallocPhysical(void**, size_t, const void*, uint64_t) { return fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "VMM is not stood in"); }
int aclrtFreePhysical(void*) { return fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "VMM is not stood in"); }
int aclrtReserveMemAddress(void**, size_t, size_t, void*, uint64_t) { return fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "VMM is not stood in"); }
int aclrtReleaseMemAddress(void*) { return fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "VMM is not stood in"); }
int aclrtMapMem(void*, size_t, size_t, void*, uint64_t) { return fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "VMM is not stood in"); }
int aclrtUnmapMem(void*) { return fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "VMM is not stood in"); }

// Which stand-in this is (mooncake-node's loader reports it instead of calling it CANN).
extern const char mooncake_node_cann_standin[] = "acl";

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
