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
#include "engine_config.h"
#include "memory_registry.h"
#include "metrics.h"
#include "status.h"

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

using StatList = std::vector<std::pair<std::string, double>>;

class Engine {
 public:
  virtual ~Engine() = default;
  virtual Status start() = 0;
  // Fails everything pending with CLOSED (reported through the sink), stops and joins all threads.
  virtual void stop() = 0;
  virtual bool closed() const = 0;
  virtual std::string backendName() const = 0;
  // True when control-plane calls (start, stop, registration, opening segments, notifies) may block:
  // the binding then runs them on a libuv pool thread. The built-in engine answers in microseconds.
  virtual bool controlBlocks() const { return false; }
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

std::unique_ptr<Engine> createUpstreamEngine(const EngineConfig& cfg, const UpstreamConfig& up, CompletionSink* sink);

std::unique_ptr<Engine> createBuiltinEngine(const EngineConfig& cfg, CompletionSink* sink);

// Resolves the device of a registration: "npu:N" locations load the device runtime and check N.
Status resolveDevice(const EngineConfig& cfg, const std::string& location, RegisterOptions* o);

}  // namespace mc
