// The Ascend runtime (CANN's libascendcl) through dlopen. Only the handful of ACL calls the engine
// needs are resolved; their signatures are ACL's public C API.
#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "../shared_library.h"
#include "device_runtime.h"

namespace mc {

namespace {

using aclError = int;
constexpr int ACL_MEMCPY_HOST_TO_DEVICE = 1;
constexpr int ACL_MEMCPY_DEVICE_TO_HOST = 2;
constexpr int ACL_MEM_MALLOC_HUGE_FIRST = 0;

struct AclApi {
  aclError (*aclInit)(const char*) = nullptr;
  aclError (*aclrtSetDevice)(int32_t) = nullptr;
  aclError (*aclrtGetDeviceCount)(uint32_t*) = nullptr;
  aclError (*aclrtMalloc)(void**, size_t, int) = nullptr;
  aclError (*aclrtFree)(void*) = nullptr;
  aclError (*aclrtMemcpy)(void*, size_t, const void*, size_t, int) = nullptr;
};

thread_local int tlsDevice = -1;
thread_local const void* tlsOwner = nullptr;

class AscendRuntime final : public DeviceRuntime {
 public:
  AscendRuntime(void* handle, std::string path, AclApi api) : handle_(handle), path_(std::move(path)), api_(api) {}
  const std::string& name() const override { return name_; }
  const std::string& libraryPath() const override { return path_; }

  Status deviceCount(int* out) override {
    uint32_t n = 0;
    if (aclError e = api_.aclrtGetDeviceCount(&n)) return err("aclrtGetDeviceCount", e);
    *out = static_cast<int>(n);
    return Status();
  }

  Status setDevice(int device) override {
    if (tlsOwner == this && tlsDevice == device) return Status();
    int count = 0;
    Status st = deviceCount(&count);
    if (!st.ok()) return st;
    if (device < 0 || device >= count) {
      return Status(Code::DEVICE_NOT_FOUND, "npu:" + std::to_string(device) + " does not exist (" + std::to_string(count) + " devices visible)");
    }
    if (aclError e = api_.aclrtSetDevice(device)) return err("aclrtSetDevice", e);
    tlsOwner = this;
    tlsDevice = device;
    switches_.fetch_add(1, std::memory_order_relaxed);
    return Status();
  }

  Status allocate(int device, uint64_t size, void** out) override {
    Status st = setDevice(device);
    if (!st.ok()) return st;
    uint64_t rounded = (size + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment;
    void* p = nullptr;
    if (aclError e = api_.aclrtMalloc(&p, rounded, ACL_MEM_MALLOC_HUGE_FIRST)) return err("aclrtMalloc", e);
    if (reinterpret_cast<uintptr_t>(p) % kDeviceAlignment != 0) {
      // Over-allocate and align up; remember the runtime's pointer for aclrtFree.
      api_.aclrtFree(p);
      void* raw = nullptr;
      if (aclError e = api_.aclrtMalloc(&raw, rounded + kDeviceAlignment, ACL_MEM_MALLOC_HUGE_FIRST)) return err("aclrtMalloc", e);
      uintptr_t aligned = (reinterpret_cast<uintptr_t>(raw) + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment;
      p = reinterpret_cast<void*>(aligned);
      std::lock_guard<std::mutex> g(mu_);
      unaligned_[p] = raw;
    }
    *out = p;
    return Status();
  }

  Status release(int device, void* ptr) override {
    Status st = setDevice(device);
    if (!st.ok()) return st;
    void* raw = ptr;
    {
      std::lock_guard<std::mutex> g(mu_);
      auto it = unaligned_.find(ptr);
      if (it != unaligned_.end()) { raw = it->second; unaligned_.erase(it); }
    }
    if (aclError e = api_.aclrtFree(raw)) return err("aclrtFree", e);
    return Status();
  }

  Status copyToDevice(int device, void* dst, const void* src, uint64_t n) override {
    Status st = setDevice(device);
    if (!st.ok()) return st;
    if (aclError e = api_.aclrtMemcpy(dst, n, src, n, ACL_MEMCPY_HOST_TO_DEVICE)) return err("aclrtMemcpy(H2D)", e);
    return Status();
  }

  Status copyToHost(int device, void* dst, const void* src, uint64_t n) override {
    Status st = setDevice(device);
    if (!st.ok()) return st;
    if (aclError e = api_.aclrtMemcpy(dst, n, src, n, ACL_MEMCPY_DEVICE_TO_HOST)) return err("aclrtMemcpy(D2H)", e);
    return Status();
  }

  uint64_t contextSwitches() const override { return switches_.load(); }

 private:
  static Status err(const char* call, aclError e) {
    return Status(Code::CONTEXT, std::string(call) + " failed with ACL error " + std::to_string(e));
  }
  void* handle_;
  std::string name_ = "npu";
  std::string path_;
  AclApi api_;
  std::atomic<uint64_t> switches_{0};
  std::mutex mu_;
  std::unordered_map<void*, void*> unaligned_;
};

}  // namespace

bool parseDeviceLocation(const std::string& location, std::string* kind, int* device) {
  auto colon = location.find(':');
  if (colon == std::string::npos) return false;
  std::string k = location.substr(0, colon);
  if (k != "npu") return false;
  const std::string num = location.substr(colon + 1);
  if (num.empty() || num.size() > 6) return false;
  int d = 0;
  for (char c : num) {
    if (c < '0' || c > '9') return false;
    d = d * 10 + (c - '0');
  }
  *kind = k;
  *device = d;
  return true;
}

std::vector<std::string> ascendRuntimeCandidates(const std::string& libraryPath) {
  std::vector<std::string> defaults = {"libascendcl.so"};
  // set_env.sh exports ASCEND_TOOLKIT_HOME (and ASCEND_HOME_PATH) even where it does not set LD_LIBRARY_PATH.
  for (const char* var : {"ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"}) {
    if (const char* home = std::getenv(var); home && *home) defaults.push_back(std::string(home) + "/lib64/libascendcl.so");
  }
  defaults.push_back("/usr/local/Ascend/ascend-toolkit/latest/lib64/libascendcl.so");
  defaults.push_back("/usr/local/Ascend/latest/lib64/libascendcl.so");
  return libraryCandidates(libraryPath, "MOONCAKE_ASCENDCL_LIBRARY", defaults);
}

Status ascendRuntime(const std::string& libraryPath, DeviceRuntime** out) {
  static std::mutex mu;
  static std::vector<std::unique_ptr<AscendRuntime>> loaded;  // one per library path, for the process
  std::lock_guard<std::mutex> g(mu);
  const std::vector<std::string> candidates = ascendRuntimeCandidates(libraryPath);
  for (auto& r : loaded) {
    for (const auto& c : candidates) if (r->libraryPath() == c) { *out = r.get(); return Status(); }
  }
  LibraryAttempts attempts;
  for (const auto& c : candidates) {
    void* h = attempts.open(c);
    if (!h) continue;
    AclApi api;
    bool ok = resolveSymbol(h, "aclInit", &api.aclInit) && resolveSymbol(h, "aclrtSetDevice", &api.aclrtSetDevice) &&
              resolveSymbol(h, "aclrtGetDeviceCount", &api.aclrtGetDeviceCount) &&
              resolveSymbol(h, "aclrtMalloc", &api.aclrtMalloc) && resolveSymbol(h, "aclrtFree", &api.aclrtFree) &&
              resolveSymbol(h, "aclrtMemcpy", &api.aclrtMemcpy);
    if (!ok) {
      attempts.reject(h, c, "not an Ascend runtime (missing ACL symbols)");
      continue;
    }
    aclError e = api.aclInit(nullptr);
    if (e != 0 && e != 100002 /* ACL_ERROR_REPEAT_INITIALIZE */) {
      dlclose(h);
      return Status(Code::CONTEXT, "aclInit failed with ACL error " + std::to_string(e));
    }
    loaded.push_back(std::make_unique<AscendRuntime>(h, c, api));
    *out = loaded.back().get();
    return Status();
  }
  return Status(Code::LIBRARY_NOT_FOUND,
                "cannot load the Ascend runtime libascendcl.so (CANN); install CANN and source its set_env.sh, or point "
                "MOONCAKE_ASCENDCL_LIBRARY at the library. Tried:" + attempts.tried());
}

}  // namespace mc
