// What an engine is created with. Plain settings only: the data plane's knobs (the built-in TCP
// transport reads them all; the upstream backend only the metrics bound) and the upstream backend's own.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mc {

struct TransportOptions {
  unsigned ioThreads = 1;
  unsigned connectionsPerPeer = 2;
  uint64_t sliceSize = 1 << 20;          // requests above this are split across connections
  unsigned maxInflightPerConnection = 64;  // requests sent but not yet answered, per connection
  int idleTimeoutMs = 30000;             // no progress while work is outstanding (upstream: 30 s status wait)
  int connectTimeoutMs = 5000;
  unsigned retries = 1;                  // resends of requests caught by another request's connection failure
  std::string bindAddress;               // empty: dual-stack any
  uint16_t port = 0;                     // 0: pick in [minPort, maxPort], then any
  uint16_t minPort = 15000;
  uint16_t maxPort = 17000;
  unsigned maxServerConnections = 4096;
  unsigned maxServerConnectionsPerPeer = 0;  // per source address; 0: a quarter of maxServerConnections, >= 64
  int firstByteTimeoutMs = 5000;         // a connection that sends nothing for this long is closed
  int protoVersion = 2;                  // highest framing used as a client (MC_TCP_PROTO=1 forces v1)
  std::vector<std::string> allowedPeers; // numeric IPs allowed to connect to the data port; empty = any
  unsigned metricsMaxPeers = 64;         // peers with their own metrics counters (the rest: "other"); 0 = off
};

struct EngineConfig {
  std::string localServerName;
  std::string ascendRuntimeLibrary;  // Ascend runtime override (else $MOONCAKE_ASCENDCL_LIBRARY, standard paths)
  bool sameHostFastPath = true;      // memcpy to peers on this host that share their memory (see same_host.h)
  std::string advertiseHost;         // published as tcp_data_host when set
  TransportOptions transport;
};

// The upstream backend's own settings (upstream handles metadata and its handshake itself).
struct UpstreamConfig {
  std::string library;         // libtransfer_engine.so; else $MOONCAKE_TE_LIBRARY, standard paths
  std::string metadataServer;  // upstream connection string (http://..., etcd://..., P2PHANDSHAKE)
  std::string protocol = "tcp";
  std::string ipOrHost;        // passed to createTransferEngine (ignored by upstream's default mode)
  uint64_t rpcPort = 12345;
  // "npu:N": made current on every thread before it calls into upstream (ascend_direct takes its
  // device from the calling thread's context, from createTransferEngine on).
  std::string device;
};

}  // namespace mc
