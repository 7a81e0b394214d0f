// The ceiling for the TCP transport: plain blocking sockets over loopback, N streams, each moving
// fixed-size blocks as fast as the kernel allows (no headers, no protocol). Used by `bench --compare`.
#pragma once

#include <cstdint>

#include "../status.h"

namespace mc::bench {

struct RawTcpResult {
  uint64_t bytes = 0;
  double seconds = 0;
};

// Runs `streams` sender/receiver thread pairs over 127.0.0.1 for `seconds`, as a ceiling: send()/recv()
// calls of `ioSize` bytes (0: bulk, max(blockSize, 8 MiB)). Like the engine bench, the bytes come from
// and land in `bufferSize`-byte buffers walked in order (the same working set, not one cache-hot block).
// Smaller calls can be faster than bulk ones: what the sender copies into the kernel is still in the
// cache when the receiver copies it out. Blocking (call it off the JS thread).
Status runRawTcp(unsigned streams, uint64_t blockSize, uint64_t bufferSize, double seconds, uint64_t ioSize, RawTcpResult* out);

// Single-threaded memcpy bandwidth over `bufferSize`-byte buffers in `blockSize` pieces (the ceiling of
// the same-host fast path).
Status runMemcpy(uint64_t blockSize, uint64_t bufferSize, double seconds, RawTcpResult* out);

}  // namespace mc::bench
