// Engine-allocated host memory: page-aligned, zero-filled, optionally backed by a memfd so a peer on
// the same host can map it (the same-host fast path).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "status.h"

namespace mc {

class HostAllocation {
 public:
  ~HostAllocation();
  static Status create(uint64_t length, bool shareable, std::shared_ptr<HostAllocation>* out);
  uint8_t* data() const { return data_; }
  uint64_t length() const { return length_; }
  int fd() const { return fd_; }
  // Path a process of the same user on this host can open to map the memory ("" when not shareable).
  const std::string& shmPath() const { return shmPath_; }

 private:
  HostAllocation() = default;
  uint8_t* data_ = nullptr;
  uint64_t length_ = 0;
  int fd_ = -1;
  std::string shmPath_;
};

// Identifies this kernel + user namespace: equal ids mean memfds of one can be opened by the other.
std::string localHostId();

}  // namespace mc
