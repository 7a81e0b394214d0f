// Same-host fast path: when a peer runs on this kernel and published shareable (memfd) buffers, map
// them and move bytes with memcpy instead of TCP. Advertised in the descriptor through fields upstream
// peers ignore (`mcnode_shm`, and `mcnode_shm_path` per buffer).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "descriptor.h"

namespace mc {

class SharedMappings {
 public:
  ~SharedMappings();
  // Maps the peer's shareable buffers; nullptr when the peer is not on this host or shares nothing.
  static std::unique_ptr<SharedMappings> open(const SegmentDesc& desc, const std::string& localHostId);

  // Local pointer for the peer's [remote, remote+length), or nullptr when not inside one mapping.
  uint8_t* translate(uint64_t remote, uint64_t length) const;
  // False once the peer process has exited (its memory must not be used any more).
  bool peerAlive() const;
  size_t size() const { return maps_.size(); }

 private:
  struct Map {
    uint64_t remote;
    uint64_t length;
    uint8_t* local;
  };
  std::vector<Map> maps_;
  int pidfd_ = -1;
};

}  // namespace mc
