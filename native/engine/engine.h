// The engine interface every backend implements (the built-in TCP engine here; the run-time loaded
// upstream Mooncake engine in upstream/). The addon and the tests talk only to this interface.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "batch.h"
#include "descriptor.h"
#include "device/device_runtime.h"
#include "metrics.h"
#include "status.h"
#include "tcp/tcp_transport.h"

namespace mc {

struct TransferRequest {
  uint8_t opcode = 0;  // 0 READ (remote -> local), 1 WRITE (local -> remote)
  int32_t segment = -1;
  uint64_t local = 0;   // address inside a registered local region
  uint64_t remote = 0;  // absolute address in the peer, as upstream
  uint64_t length = 0;
};

struct SegmentInfo {
  int32_t id = -1;
  std::string name;
  std::string protocol;
  std::string ip;
  uint32_t dataPort = 0;
  uint32_t protoVersion = 1;
  std::vector<BufferDesc> buffers;
};

struct RegisterOptions {
  std::string location = "cpu:0";
  std::shared_ptr<void> owner;  // keeps engine-allocated memory alive while registered
  bool remoteAccessible = true;
  std::string shmPath;  // shareable memory: path a same-host peer may map
  uint64_t shmOffset = 0;
  // Device memory (location "npu:N"): filled in from the location when not given.
  int device = -1;
  DeviceRuntime* runtime = nullptr;
};

struct EngineConfig {
  std::string localServerName;
  std::string deviceLibrary;  // Ascend runtime override (else $MOONCAKE_ASCENDCL_LIBRARY, standard paths)
  bool sameHost = true;       // memcpy to peers on this host that share their memory (see same_host.h)
  std::string advertiseHost;  // published as tcp_data_host when set
  tcp::Options tcp;
};

using StatList = std::vector<std::pair<std::string, double>>;

class Engine {
 public:
  virtual ~Engine() = default;
  virtual Status start() = 0;
  // Fails everything pending with CLOSED (reported through the sink), stops and joins all threads.
  virtual void stop() = 0;
  virtual bool closed() const = 0;
  virtual std::string backendName() const = 0;
  // JSON describing what the backend loaded (upstream: library, binding, Ascend transport, CANN); "" if nothing.
  virtual std::string backendInfo() const { return ""; }

  virtual Status registerMemory(uint64_t addr, uint64_t length, const RegisterOptions& options) = 0;
  virtual Status unregisterMemory(uint64_t addr) = 0;
  // The registered region containing [addr, addr+length), held in flight (empty when none).
  virtual RegionRef acquireLocal(uint64_t addr, uint64_t length) = 0;

  // Installs (or refreshes) a peer segment from its descriptor JSON and the peer's numeric ip.
  virtual Status openSegment(const std::string& name, const std::string& descriptorJson, const std::string& ip,
                             int32_t* id) = 0;
  virtual Status closeSegment(int32_t id) = 0;
  virtual Status segmentInfo(int32_t id, SegmentInfo* out) = 0;

  // Promise path: all requests are validated first; on a bad one nothing is started and *badIndex says
  // which. Otherwise completion is reported once through the sink with `token`.
  virtual Status submitAsync(uint64_t token, const TransferRequest* reqs, size_t n, int64_t timeoutMs,
                             size_t* badIndex) = 0;
  virtual void cancel(uint64_t token, Code why) = 0;

  // Upstream's batch model.
  virtual Status allocateBatch(size_t capacity, uint64_t* id) = 0;
  virtual Status submit(uint64_t batchId, const TransferRequest* reqs, size_t n, size_t* badIndex) = 0;
  virtual Status taskStatus(uint64_t batchId, size_t task, TaskState* state, uint64_t* bytes, Code* error) = 0;
  virtual Status batchStatus(uint64_t batchId, TaskState* state, uint64_t* bytes) = 0;
  virtual Status freeBatch(uint64_t batchId) = 0;

  virtual std::string localDescriptor() = 0;
  virtual uint16_t dataPort() const = 0;
  virtual StatList stats() = 0;
  // Per-peer counters and the latency histogram (empty when the backend keeps none).
  virtual MetricsSnapshot metrics() { return MetricsSnapshot(); }

  // Backends that run their own handshake daemon (upstream) implement these; the built-in engine's
  // control plane lives in TypeScript.
  virtual Status localEndpoint(std::string*) { return Status(Code::NOT_IMPLEMENTED, "not provided by this backend"); }
  virtual Status sendNotify(int32_t, const std::string&, const std::string&) {
    return Status(Code::NOT_IMPLEMENTED, "not provided by this backend");
  }
  virtual Status takeNotifies(std::vector<std::pair<std::string, std::string>>*) { return Status(); }
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

std::unique_ptr<Engine> createUpstreamEngine(const EngineConfig& cfg, const UpstreamConfig& up, CompletionSink* sink);

std::unique_ptr<Engine> createBuiltinEngine(const EngineConfig& cfg, CompletionSink* sink);

// Resolves the device of a registration: "npu:N" locations load the device runtime and check N.
Status resolveDevice(const EngineConfig& cfg, const std::string& location, RegisterOptions* o);

}  // namespace mc
