// The built-in engine: memory registry + segment table + batches over the TCP transport.
#include <mutex>
#include <unordered_map>

#include <unistd.h>

#include <cstring>

#include "engine.h"
#include "event_loop.h"
#include "host_memory.h"
#include "memory_registry.h"
#include "same_host.h"
#include "tcp/tcp_conn.h"

namespace mc {

namespace {

struct Segment {
  SegmentInfo info;
  std::shared_ptr<tcp::Peer> peer;
  bool v2 = false;
  std::unique_ptr<SharedMappings> shared;  // same-host fast path, when the peer shares its memory
};

struct Prepared {
  RegionRef local;
  std::shared_ptr<Segment> seg;
};

class BuiltinEngine final : public Engine, public CompletionSink {
 public:
  BuiltinEngine(const EngineConfig& cfg, CompletionSink* sink) : cfg_(cfg), sink_(sink), tcp_(registry_, cfg.transport) {}
  ~BuiltinEngine() override { stop(); }

  Status start() override {
    if (cfg_.localServerName.empty()) return Status(Code::INVALID_ARGUMENT, "localServerName is required");
    return tcp_.start();
  }

  void stop() override {
    if (closed_.exchange(true)) return;
    tcp_.stop();  // fails every op with CLOSED; sinks fire from the loops before they exit
    std::lock_guard<std::mutex> g(mu_);
    segments_.clear();
    byName_.clear();
  }

  bool closed() const override { return closed_.load(); }
  std::string backendName() const override { return "builtin"; }

  Status registerMemory(uint64_t addr, uint64_t length, const RegisterOptions& in) override {
    if (closed_) return Status(Code::CLOSED, "engine closed");
    RegisterOptions o = in;
    Status dst = resolveDevice(cfg_, o.location, &o);
    if (!dst.ok()) return dst;
    Code c = registry_.add(addr, length, o.location, o.owner, o.shmPath, o.shmOffset, o.remoteAccessible, o.device, o.runtime);
    if (c == Code::ADDRESS_OVERLAPPED) return Status(c, "range overlaps a registered region");
    if (c != Code::OK) return Status(c, "invalid range");
    return Status();
  }

  Status unregisterMemory(uint64_t addr) override {
    if (closed_) return Status(Code::CLOSED, "engine closed");
    Code c = registry_.remove(addr);
    if (c == Code::ADDRESS_NOT_REGISTERED) return Status(c, "no region starts at this address");
    if (c == Code::REGION_BUSY) return Status(c, "region is in use by a transfer in flight");
    return Status(c);
  }

  RegionRef acquireLocal(uint64_t addr, uint64_t length) override { return registry_.acquire(addr, length); }

  Status openSegment(const std::string& name, const std::string& descriptorJson, const std::string& ip,
                     int32_t* id) override {
    if (closed_) return Status(Code::CLOSED, "engine closed");
    SegmentDesc desc;
    Status st = decodeSegmentDesc(descriptorJson, &desc);
    if (!st.ok()) return st;
    if (desc.protocol != "tcp") {
      return Status(Code::NOT_SUPPORTED_TRANSPORT, "segment " + name + " uses protocol '" + desc.protocol +
                                                        "', the built-in backend speaks tcp");
    }
    if (desc.tcpDataPort == 0) return Status(Code::MALFORMED_JSON, "segment " + name + " has no tcp_data_port");
    Status pst;
    auto peer = tcp_.peer(ip, static_cast<uint16_t>(desc.tcpDataPort), &pst);
    if (!peer) return pst;
    auto seg = std::make_shared<Segment>();
    seg->peer = std::move(peer);
    seg->v2 = desc.tcpProtoVersion >= 2 && cfg_.transport.protoVersion >= 2;
    seg->info.name = name;
    seg->info.protocol = desc.protocol;
    seg->info.ip = ip;
    seg->info.dataPort = desc.tcpDataPort;
    seg->info.protoVersion = seg->v2 ? 2 : 1;  // the framing we use with it, not only what it advertises
    if (cfg_.sameHostFastPath) seg->shared = SharedMappings::open(desc, hostId());
    seg->info.buffers = std::move(desc.buffers);
    std::lock_guard<std::mutex> g(mu_);
    auto it = byName_.find(name);
    int32_t sid = it != byName_.end() ? it->second : nextSegment_++;
    seg->info.id = sid;
    segments_[sid] = std::move(seg);
    byName_[name] = sid;
    *id = sid;
    return Status();
  }

  Status closeSegment(int32_t id) override {
    std::lock_guard<std::mutex> g(mu_);
    auto it = segments_.find(id);
    if (it == segments_.end()) return Status(Code::SEGMENT_NOT_FOUND, "unknown segment handle");
    byName_.erase(it->second->info.name);
    segments_.erase(it);
    return Status();
  }

  Status segmentInfo(int32_t id, SegmentInfo* out) override {
    std::lock_guard<std::mutex> g(mu_);
    auto it = segments_.find(id);
    if (it == segments_.end()) return Status(Code::SEGMENT_NOT_FOUND, "unknown segment handle");
    *out = it->second->info;
    return Status();
  }

  Status submitAsync(uint64_t token, const TransferRequest* reqs, size_t n, int64_t timeoutMs,
                     size_t* badIndex) override {
    if (closed_) return Status(Code::CLOSED, "engine closed");
    if (n == 0) return Status(Code::INVALID_ARGUMENT, "empty batch");
    std::vector<Prepared> prep;
    Status st = prepare(reqs, n, &prep, badIndex);
    if (!st.ok()) return st;
    auto batch = std::make_shared<Batch>(0, n, token, this);
    batch->setStartNs(monotonicNs());
    if (timeoutMs > 0) batch->setDeadlineNs(monotonicNs() + timeoutMs * 1000000LL);
    size_t first = 0;
    batch->reserve(n, &first);
    {
      std::lock_guard<std::mutex> g(activeMu_);
      active_[token] = batch;
    }
    dispatch(batch, 0, reqs, n, prep);
    batch->seal();
    return Status();
  }

  void cancel(uint64_t token, Code why) override {
    std::shared_ptr<Batch> b;
    {
      std::lock_guard<std::mutex> g(activeMu_);
      auto it = active_.find(token);
      if (it != active_.end()) b = it->second.lock();
    }
    if (b && b->requestCancel(why)) tcp_.kick();
  }

  std::string localDescriptor() override {
    SegmentDesc d;
    d.name = cfg_.localServerName;
    d.protocol = "tcp";
    d.tcpDataPort = tcp_.port();
    d.tcpDataHost = cfg_.advertiseHost;
    d.tcpProtoVersion = 2;
    for (const auto& r : registry_.list()) {
      BufferDesc b;
      b.name = cfg_.localServerName;
      b.addr = r.addr;
      b.length = r.length;
      if (!r.shmPath.empty() && cfg_.sameHostFastPath) {
        b.shmPath = r.shmPath;
        b.shmOffset = r.shmOffset;
        d.sameHost.hostId = hostId();
        d.sameHost.pid = static_cast<uint32_t>(getpid());
      }
      d.buffers.push_back(std::move(b));
    }
    return encodeSegmentDesc(d);
  }

  uint16_t dataPort() const override { return tcp_.port(); }

  MetricsSnapshot metrics() override { return tcp_.metrics().snapshot(); }

  StatList stats() override {
    tcp::Stats s = tcp_.stats();
    return {
        {"bytesSent", static_cast<double>(s.bytesSent)},
        {"bytesReceived", static_cast<double>(s.bytesReceived)},
        {"requestsServed", static_cast<double>(s.requestsServed)},
        {"requestsRejected", static_cast<double>(s.requestsRejected)},
        {"serverConnections", static_cast<double>(s.serverConnections)},
        {"serverConnectionsTotal", static_cast<double>(s.serverConnectionsTotal)},
        {"serverConnectionsRefused", static_cast<double>(s.serverConnectionsRefused)},
        {"serverConnectionsTimedOut", static_cast<double>(s.serverConnectionsTimedOut)},
        {"serverConnectionsEvicted", static_cast<double>(s.serverConnectionsEvicted)},
        {"serverConnectionsSilent", static_cast<double>(s.serverConnectionsSilent)},
        {"clientConnections", static_cast<double>(s.clientConnections)},
        {"clientConnects", static_cast<double>(s.clientConnects)},
        {"retries", static_cast<double>(s.retries)},
        {"registeredRegions", static_cast<double>(registry_.size())},
        {"activeBatches", static_cast<double>(activeCount())},
        {"sameHostCopies", static_cast<double>(sameHostCopies_.load())},
        {"sameHostBytes", static_cast<double>(sameHostBytes_.load())},
    };
  }

  // CompletionSink (token batches): forget the batch, then tell the owner.
  void onBatchDone(uint64_t token, Code code, uint64_t bytes, std::vector<int32_t> taskCodes) override {
    int64_t start = 0;
    {
      std::lock_guard<std::mutex> g(activeMu_);
      auto it = active_.find(token);
      if (it != active_.end()) {
        if (auto b = it->second.lock()) start = b->startNs();
        active_.erase(it);
      }
    }
    if (start != 0) tcp_.metrics().batchDone(monotonicNs() - start, code == Code::OK);
    if (sink_) sink_->onBatchDone(token, code, bytes, std::move(taskCodes));
  }

 private:
  size_t activeCount() {
    std::lock_guard<std::mutex> g(activeMu_);
    return active_.size();
  }

  std::shared_ptr<Segment> findSegment(int32_t id) {
    auto it = segments_.find(id);
    return it == segments_.end() ? nullptr : it->second;
  }

  Status prepare(const TransferRequest* reqs, size_t n, std::vector<Prepared>* out, size_t* badIndex) {
    out->resize(n);
    std::lock_guard<std::mutex> g(mu_);
    for (size_t i = 0; i < n; ++i) {
      const TransferRequest& r = reqs[i];
      *badIndex = i;
      if (r.opcode > 1) return Status(Code::INVALID_ARGUMENT, "opcode must be 0 (read) or 1 (write)");
      if (r.length == 0) return Status(Code::INVALID_ARGUMENT, "length must be positive");
      if (r.remote + r.length < r.remote) return Status(Code::INVALID_ARGUMENT, "remote range wraps");
      auto seg = findSegment(r.segment);
      if (!seg) return Status(Code::SEGMENT_NOT_FOUND, "unknown segment handle " + std::to_string(r.segment));
      bool inside = false;
      for (const auto& b : seg->info.buffers) {
        if (r.remote >= b.addr && r.remote + r.length <= b.addr + b.length) { inside = true; break; }
      }
      if (!inside) {
        return Status(Code::INVALID_REMOTE_ADDRESS,
                      "remote range is outside every buffer segment " + seg->info.name + " published");
      }
      RegionRef local = registry_.acquire(r.local, r.length);
      if (!local) return Status(Code::ADDRESS_NOT_REGISTERED, "local range is not inside one registered region");
      (*out)[i].local = std::move(local);
      (*out)[i].seg = std::move(seg);
    }
    *badIndex = 0;
    return Status();
  }

  // A memcpy through a same-host mapping instead of TCP.
  struct Copy {
    uint8_t* dst;
    const uint8_t* src;
    uint64_t length;
    uint32_t task;
    PeerCounters* counters;  // the peer's metrics (nullptr: metrics off)
    bool write;
  };

  void dispatch(const std::shared_ptr<Batch>& batch, size_t first, const TransferRequest* reqs, size_t n,
                std::vector<Prepared>& prep) {
    std::vector<uint8_t*> mapped(n, nullptr);
    size_t totalSlices = 0;
    for (size_t i = 0; i < n; ++i) {
      const TransferRequest& r = reqs[i];
      const Segment& seg = *prep[i].seg;
      const Region* local = prep[i].local.get();
      if (seg.shared && local->device < 0) mapped[i] = seg.shared->translate(r.remote, r.length);
      uint32_t slices = mapped[i] ? 1 : tcp_.sliceCount(r.length);
      if (!mapped[i]) totalSlices += slices;
      batch->beginTask(first + i, r.length, slices, std::move(prep[i].local));
    }
    std::vector<Copy> copies;
    std::vector<std::shared_ptr<Segment>> keep;  // mappings stay until the copies are done
    tcp::Dispatcher tcp(tcp_, totalSlices);
    for (size_t i = 0; i < n; ++i) {
      const TransferRequest& r = reqs[i];
      const std::shared_ptr<Segment>& seg = prep[i].seg;
      uint32_t task = static_cast<uint32_t>(first + i);
      uint8_t* local = reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(r.local));
      if (mapped[i]) {
        if (!seg->shared->peerAlive()) {
          batch->sliceDone(task, 0, Code::CONNECTION_LOST);
          continue;
        }
        PeerCounters* pc = seg->peer ? seg->peer->counters : nullptr;
        copies.push_back(r.opcode == 1 ? Copy{mapped[i], local, r.length, task, pc, true} : Copy{local, mapped[i], r.length, task, pc, false});
        if (keep.empty() || keep.back() != seg) keep.push_back(seg);
        continue;
      }
      tcp.add(*seg->peer, batch, task, r.opcode == 1, local, r.remote, r.length, seg->v2, batch->task(task).localRef.get());
    }
    tcp.flush();
    if (copies.empty()) return;
    sameHostCopies_.fetch_add(copies.size(), std::memory_order_relaxed);
    std::vector<uint32_t> tasks;
    for (const Copy& c : copies) tasks.push_back(c.task);
    // Off the caller's (JS) thread: one loop runs the whole group of copies.
    auto run = [batch, copies = std::move(copies), keep = std::move(keep), this]() {
      for (const Copy& c : copies) {
        std::memcpy(c.dst, c.src, c.length);
        sameHostBytes_.fetch_add(c.length, std::memory_order_relaxed);
        if (c.counters != nullptr) c.counters->add(c.write, c.length, true);
        batch->sliceDone(c.task, c.length, Code::OK);
      }
    };
    if (!tcp_.post(std::move(run))) {
      for (uint32_t t : tasks) batch->sliceDone(t, 0, Code::CLOSED);  // stopped: nothing may touch the memory now
    }
  }

  const std::string& hostId() {
    static const std::string id = localHostId();
    return id;
  }

  std::atomic<uint64_t> sameHostCopies_{0}, sameHostBytes_{0};

  EngineConfig cfg_;
  CompletionSink* sink_;
  MemoryRegistry registry_;
  tcp::TcpTransport tcp_;
  std::atomic<bool> closed_{false};
  std::mutex mu_;
  std::unordered_map<int32_t, std::shared_ptr<Segment>> segments_;
  std::unordered_map<std::string, int32_t> byName_;
  int32_t nextSegment_ = 1;
  std::mutex activeMu_;
  std::unordered_map<uint64_t, std::weak_ptr<Batch>> active_;
};

}  // namespace

Status resolveDevice(const EngineConfig& cfg, const std::string& location, RegisterOptions* o) {
  if (o->runtime != nullptr) return Status();
  std::string kind;
  int device = -1;
  if (!parseDeviceLocation(location, &kind, &device)) return Status();
  DeviceRuntime* rt = nullptr;
  Status st = ascendRuntime(cfg.ascendRuntimeLibrary, &rt);
  if (!st.ok()) return st;
  int count = 0;
  st = rt->deviceCount(&count);
  if (!st.ok()) return st;
  if (device >= count) {
    return Status(Code::DEVICE_NOT_FOUND, location + " does not exist (" + std::to_string(count) + " NPUs visible)");
  }
  o->device = device;
  o->runtime = rt;
  return Status();
}

std::unique_ptr<Engine> createBuiltinEngine(const EngineConfig& cfg, CompletionSink* sink) {
  return std::make_unique<BuiltinEngine>(cfg, sink);
}

}  // namespace mc
