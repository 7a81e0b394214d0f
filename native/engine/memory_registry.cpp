#include "memory_registry.h"

#include <algorithm>
#include <mutex>

namespace mc {

Code MemoryRegistry::add(uint64_t addr, uint64_t length, const std::string& location, std::shared_ptr<void> owner,
                         const std::string& shmPath, uint64_t shmOffset, bool remoteAccessible, int device,
                         DeviceRuntime* runtime) {
  if (addr == 0 || length == 0 || addr + length < addr) return Code::INVALID_ARGUMENT;
  std::unique_lock lock(mu_);
  auto next = byAddr_.lower_bound(addr);
  if (next != byAddr_.end() && next->first < addr + length) return Code::ADDRESS_OVERLAPPED;
  if (next != byAddr_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second->length > addr) return Code::ADDRESS_OVERLAPPED;
  }
  auto r = std::make_shared<Region>();
  r->addr = addr;
  r->length = length;
  r->location = location;
  r->owner = std::move(owner);
  r->shmPath = shmPath;
  r->shmOffset = shmOffset;
  r->remoteAccessible = remoteAccessible;
  r->device = device;
  r->runtime = runtime;
  byAddr_.emplace(addr, std::move(r));
  order_.push_back(addr);
  return Code::OK;
}

Code MemoryRegistry::remove(uint64_t addr) {
  std::unique_lock lock(mu_);
  auto it = byAddr_.find(addr);
  if (it == byAddr_.end()) return Code::ADDRESS_NOT_REGISTERED;
  if (it->second->inflight.load(std::memory_order_acquire) != 0) return Code::REGION_BUSY;
  byAddr_.erase(it);
  order_.erase(std::find(order_.begin(), order_.end(), addr));
  return Code::OK;
}

RegionRef MemoryRegistry::acquire(uint64_t addr, uint64_t length, bool remote) const {
  if (length == 0 || addr + length < addr) return RegionRef();
  std::shared_lock lock(mu_);
  auto it = byAddr_.upper_bound(addr);
  if (it == byAddr_.begin()) return RegionRef();
  --it;
  const auto& r = it->second;
  if (addr < r->addr || addr + length > r->addr + r->length) return RegionRef();
  if (remote && !r->remoteAccessible) return RegionRef();
  r->inflight.fetch_add(1, std::memory_order_acq_rel);
  return RegionRef(r);
}

bool MemoryRegistry::contains(uint64_t addr, uint64_t length) const {
  RegionRef ref = acquire(addr, length);
  return static_cast<bool>(ref);
}

std::vector<RegionInfo> MemoryRegistry::list() const {
  std::shared_lock lock(mu_);
  std::vector<RegionInfo> out;
  out.reserve(order_.size());
  for (uint64_t a : order_) {
    const auto& r = byAddr_.at(a);
    out.push_back({r->addr, r->length, r->location, r->shmPath, r->shmOffset});
  }
  return out;
}

size_t MemoryRegistry::size() const {
  std::shared_lock lock(mu_);
  return byAddr_.size();
}

}  // namespace mc
