// Device memory behind a run-time loaded vendor runtime (Ascend's libascendcl today). Nothing here
// links against a vendor library: the runtime is dlopen'ed on first use, so the addon builds and
// loads on machines without CANN.
//
// Threading rule: device runtimes keep a current device per thread. Every call below first makes
// `device` current on the calling thread (cached per thread), so engine threads, libuv pool threads
// and the JS thread can all use it safely.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../status.h"

namespace mc {

class DeviceRuntime {
 public:
  virtual ~DeviceRuntime() = default;
  virtual const std::string& name() const = 0;          // e.g. "npu"
  virtual const std::string& libraryPath() const = 0;
  virtual Status deviceCount(int* out) = 0;
  virtual Status setDevice(int device) = 0;            // make current on this thread (cached)
  // Device allocations are rounded up to and aligned on kDeviceAlignment.
  virtual Status allocate(int device, uint64_t size, void** out) = 0;
  virtual Status release(int device, void* ptr) = 0;
  virtual Status copyToDevice(int device, void* dst, const void* src, uint64_t n) = 0;
  virtual Status copyToHost(int device, void* dst, const void* src, uint64_t n) = 0;
  // Per-thread context switches performed so far (for tests and diagnostics).
  virtual uint64_t contextSwitches() const = 0;
};

constexpr uint64_t kDeviceAlignment = 2ull << 20;  // 2 MiB, what the Ascend transports require

// Loads the Ascend runtime once per process: `libraryPath` if given, else $MOONCAKE_ASCENDCL_LIBRARY,
// else libascendcl.so from the loader path and CANN's usual install directories. Fails with
// LIBRARY_NOT_FOUND naming the library and the variable that points to it.
Status ascendRuntime(const std::string& libraryPath, DeviceRuntime** out);

// Where libascendcl.so is looked for, in order: `libraryPath` if given, else $MOONCAKE_ASCENDCL_LIBRARY,
// else the loader path, $ASCEND_TOOLKIT_HOME/lib64, $ASCEND_HOME_PATH/lib64 and CANN's default
// install directories. The upstream backend loads CANN for the wheel from the same place.
std::vector<std::string> ascendRuntimeCandidates(const std::string& libraryPath);

// Parses "npu:3" into ("npu", 3); false for host locations ("cpu:0", "*", ...).
bool parseDeviceLocation(const std::string& location, std::string* kind, int* device);

}  // namespace mc
