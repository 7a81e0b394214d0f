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

// Runs `streams` sender/receiver thread pairs over 127.0.0.1 for `seconds`; each send() and recv() moves
// up to blockSize bytes. Blocking (call it off the JS thread).
Status runRawTcp(unsigned streams, uint64_t blockSize, double seconds, RawTcpResult* out);

}  // namespace mc::bench
