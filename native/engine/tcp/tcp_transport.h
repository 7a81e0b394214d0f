// The built-in TCP transport, wire-compatible with upstream Mooncake's classic TCP transport.
//
// Server side: a listener (published as tcp_data_port) accepts connections; each connection reads
// 24-byte headers and serves READ/WRITE strictly inside one registered region, answering v2 requests
// with status frames and rejecting anything else without touching memory.
//
// Client side: per peer (ip, data port) a fixed set of persistent connections. Requests larger than
// sliceSize are split across them; each connection pipelines several requests (responses come back in
// order), which upstream servers handle because they serve one request after another.
//
// All socket I/O runs on a few epoll loop threads; submitters only queue work and wake a loop.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../batch.h"
#include "../device/device_runtime.h"
#include "../engine_config.h"
#include "../event_loop.h"
#include "../memory_registry.h"
#include "../metrics.h"
#include "../net.h"
#include "wire.h"

namespace mc::tcp {

// The transport runs with the engine's transport settings (engine_config.h).
using Options = TransportOptions;

struct Stats {
  uint64_t bytesSent = 0, bytesReceived = 0;
  uint64_t requestsServed = 0, requestsRejected = 0;
  uint64_t serverConnections = 0, serverConnectionsTotal = 0, serverConnectionsRefused = 0;
  uint64_t serverConnectionsTimedOut = 0;
  uint64_t serverConnectionsEvicted = 0;  // silent connections closed to make room (also in Refused)
  uint64_t serverConnectionsSilent = 0;   // closed for sending nothing within firstByteTimeoutMs
  uint64_t clientConnections = 0, clientConnects = 0, retries = 0;
};

// One request slice on a client connection.
struct Op {
  std::shared_ptr<Batch> batch;
  uint32_t task = 0;
  bool write = false;
  bool v2 = false;
  bool inRecvQ = false;
  uint8_t retries = 0;
  uint8_t statusHave = 0;
  uint8_t* local = nullptr;
  uint64_t remote = 0;
  uint64_t length = 0;
  uint64_t sent = 0;   // bytes of header + payload handed to the kernel
  uint64_t recvd = 0;  // payload bytes received (READ)
  uint8_t hdr[kHeaderSize];
  uint8_t status[kStatusSize];
  // Device memory: `local` points at host staging; devPtr is the device address it mirrors.
  uint8_t* devPtr = nullptr;
  int device = -1;
  DeviceRuntime* runtime = nullptr;
  bool staged = false;
  std::unique_ptr<uint8_t[]> staging;

  // Back to a blank op for the pool (drops the batch reference and any staging).
  void reset() {
    batch.reset();
    staging.reset();
    task = 0;
    write = v2 = inRecvQ = staged = false;
    retries = statusHave = 0;
    local = devPtr = nullptr;
    remote = length = sent = recvd = 0;
    device = -1;
    runtime = nullptr;
  }
};

class Peer;
class ClientConn;
class ServerConn;
class Listener;

// Per-loop state: the loop plus the connections it owns and a scratch receive buffer.
struct LoopCtx {
  std::unique_ptr<EventLoop> loop;
  std::vector<uint8_t> scratch;
  std::unordered_map<ServerConn*, std::unique_ptr<ServerConn>> servers;
  std::vector<ClientConn*> clients;  // owned by their Peer
  std::unique_ptr<Ticker> reaper;    // closes stalled server connections
};

class TcpTransport {
 public:
  TcpTransport(MemoryRegistry& registry, Options opts);
  ~TcpTransport();
  TcpTransport(const TcpTransport&) = delete;
  TcpTransport& operator=(const TcpTransport&) = delete;

  Status start();
  // Fails every queued or in-flight request with CLOSED, closes all sockets and joins the threads.
  void stop();
  bool running() const { return running_.load(); }
  uint16_t port() const { return port_; }
  const Options& options() const { return opts_; }

  // The peer for a numeric ip and data port (created on first use, shared afterwards).
  std::shared_ptr<Peer> peer(const std::string& ip, uint16_t port, Status* st);

  // Splits one task into slices and queues them on the peer's connections. Thread-safe. The batch task
  // must have been begun with sliceCount(length) slices.
  uint32_t sliceCount(uint64_t length) const;

  // Ops are recycled through a pool, so a request costs no allocation once the pool is warm.
  void takeOps(size_t n, std::vector<Op*>* out);
  void recycleOps(std::vector<Op*>* ops);  // ops must be reset; the vector is emptied
  // Wakes every loop to look for cancelled or expired batches now rather than at the next tick.
  void kick();
  // Runs `task` on one of the loops (round robin); false once the transport stopped (it will not run).
  bool post(std::function<void()> task) { return loopFor(nextLoopIndex()).loop->post(std::move(task)); }

  Stats stats() const;
  EngineMetrics& metrics() { return metrics_; }
  MemoryRegistry& registry() { return registry_; }

 private:
  // The connection classes run on the transport's loops and keep its counters and per-source slots.
  friend class ClientConn;
  friend class Peer;
  friend class ServerConn;
  friend class ServerReaper;
  friend class Listener;

  LoopCtx& loopFor(size_t i) { return *loops_[i % loops_.size()]; }
  size_t nextLoopIndex() { return rr_.fetch_add(1) % loops_.size(); }
  // Takes a connection out of the listener (after its first bytes arrived): a ServerConn on some loop.
  void onServerAccepted(int fd, std::string source);
  bool peerAllowed(const sockaddr* sa) const;
  // Connections per source address (key: sourceKey()), counted from accept until closed.
  unsigned perPeerCap() const;
  unsigned sourceCount(const std::string& key);
  void sourceAdd(const std::string& key);
  void sourceRelease(const std::string& key);

  std::atomic<uint64_t> bytesSent{0}, bytesReceived{0}, requestsServed{0}, requestsRejected{0};
  std::atomic<uint64_t> serverConns{0}, serverConnsTotal{0}, serverConnsRefused{0}, serverConnsTimedOut{0};
  std::atomic<uint64_t> serverConnsEvicted{0}, serverConnsSilent{0};
  std::atomic<uint64_t> clientConns{0}, clientConnects{0}, retriesDone{0};

  MemoryRegistry& registry_;
  Options opts_;
  EngineMetrics metrics_;
  std::vector<std::unique_ptr<LoopCtx>> loops_;
  std::unique_ptr<Listener> listener_;
  uint16_t port_ = 0;
  std::atomic<bool> running_{false};
  std::atomic<size_t> rr_{0};
  std::mutex peersMu_;
  std::unordered_map<std::string, std::shared_ptr<Peer>> peers_;
  std::mutex poolMu_;
  std::vector<Op*> pool_;
  std::mutex sourcesMu_;
  std::unordered_map<std::string, unsigned> sources_;
};

// A peer's address as 16 bytes (IPv4 as IPv4-mapped IPv6), so every spelling of one host is one key.
std::string sourceKey(const sockaddr* sa);
// The numeric address of a sourceKey() (IPv4 for IPv4-mapped keys), "?" for anything else.
std::string sourceText(const std::string& key);

// Collects one submission's slices per connection, then hands each connection its share with one
// lock and at most one wake-up.
class Dispatcher {
 public:
  Dispatcher(TcpTransport& t, size_t expectedOps);
  ~Dispatcher() { flush(); }
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  // Splits one task into slices across the peer's connections. The batch task must have been begun
  // with t.sliceCount(length) slices. `localRegion` holds `local` (device regions are staged).
  void add(Peer& peer, const std::shared_ptr<Batch>& batch, uint32_t task, bool write, uint8_t* local,
           uint64_t remote, uint64_t length, bool v2, const Region* localRegion = nullptr);
  void flush();

 private:
  struct Lane {
    ClientConn* conn;
    std::vector<Op*> ops;
    uint64_t bytes = 0;
  };
  Op* newOp();
  Lane& lane(ClientConn* c);
  ClientConn* pick(Peer& peer);

  TcpTransport& t_;
  std::vector<Op*> spare_;
  std::vector<Lane> lanes_;
};

}  // namespace mc::tcp
