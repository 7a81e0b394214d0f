// Registered local memory: non-overlapping [addr, addr+length) ranges, O(log n) bounds lookup, and an
// in-flight count per region so a region used by a transfer cannot be unregistered underneath it.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "status.h"

namespace mc {

class DeviceRuntime;

struct Region {
  uint64_t addr = 0;
  uint64_t length = 0;
  std::string location;
  bool remoteAccessible = true;
  std::shared_ptr<void> owner;  // keeps engine-allocated memory alive while registered
  std::string shmPath;          // non-empty for shareable (same-host fast path) memory
  uint64_t shmOffset = 0;
  int device = -1;                    // >= 0: device memory, reachable only through `runtime`
  DeviceRuntime* runtime = nullptr;
  mutable std::atomic<int64_t> inflight{0};
};

// Holds one in-flight use of a region. Movable, releases on destruction. Safe on any thread.
class RegionRef {
 public:
  RegionRef() = default;
  explicit RegionRef(std::shared_ptr<const Region> r) : r_(std::move(r)) {}
  RegionRef(RegionRef&& o) noexcept : r_(std::move(o.r_)) {}
  RegionRef& operator=(RegionRef&& o) noexcept {
    if (this != &o) { release(); r_ = std::move(o.r_); }
    return *this;
  }
  RegionRef(const RegionRef&) = delete;
  RegionRef& operator=(const RegionRef&) = delete;
  ~RegionRef() { release(); }
  void release() {
    if (r_) { r_->inflight.fetch_sub(1, std::memory_order_acq_rel); r_.reset(); }
  }
  explicit operator bool() const { return static_cast<bool>(r_); }
  const Region* get() const { return r_.get(); }

 private:
  std::shared_ptr<const Region> r_;
};

struct RegionInfo {
  uint64_t addr;
  uint64_t length;
  std::string location;
  std::string shmPath;
  uint64_t shmOffset;
};

class MemoryRegistry {
 public:
  // INVALID_ARGUMENT for length 0, a null address or a wrapping range; ADDRESS_OVERLAPPED if it
  // intersects any registered region.
  Code add(uint64_t addr, uint64_t length, const std::string& location, std::shared_ptr<void> owner = nullptr,
           const std::string& shmPath = "", uint64_t shmOffset = 0, bool remoteAccessible = true, int device = -1,
           DeviceRuntime* runtime = nullptr);
  // ADDRESS_NOT_REGISTERED unless addr is the base of a region; REGION_BUSY while it is in use.
  Code remove(uint64_t addr);
  // The region that contains all of [addr, addr+length), with its in-flight count raised; an empty ref
  // when none does (length 0 and wrapping ranges never match).
  RegionRef acquire(uint64_t addr, uint64_t length, bool remote = false) const;
  bool contains(uint64_t addr, uint64_t length) const;
  std::vector<RegionInfo> list() const;  // in registration order
  size_t size() const;

 private:
  mutable std::shared_mutex mu_;
  std::map<uint64_t, std::shared_ptr<Region>> byAddr_;
  std::vector<uint64_t> order_;  // registration order of base addresses
};

}  // namespace mc
