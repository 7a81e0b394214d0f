// The upstream backend: the same Engine interface over an installed Mooncake libtransfer_engine.so
// (loaded at run time), for the transports the built-in engine does not have (ascend/HCCL/ADXL,
// rdma, ...). Upstream owns metadata and the handshake daemon; this class owns validation, a mirror
// of the registered regions (so busy regions cannot be unregistered and device regions get their
// device context), and one poller thread that turns upstream's polled task states into completions.
#include <condition_variable>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>

#include "../engine.h"
#include "../event_loop.h"
#include "../json.h"
#include "upstream_api.h"

namespace mc {

namespace {

struct Active {
  std::shared_ptr<Batch> batch;  // our bookkeeping (token, per-task states)
  uint64_t upstreamBatch = 0;
  size_t n = 0;
  int device = -1;  // device whose context the poller needs for this batch (-1: host only)
  DeviceRuntime* runtime = nullptr;
  std::vector<PeerCounters*> peers;  // per task: the segment's metrics (empty: metrics off)
  std::vector<bool> writes;
};

// Validated on the caller's thread, handed to upstream on the submitter thread.
struct Pending {
  uint64_t token;
  Active active;
  std::vector<upstream::transfer_request> entries;
};

class UpstreamEngine final : public Engine, public CompletionSink {
 public:
  UpstreamEngine(const EngineConfig& cfg, const UpstreamConfig& up, CompletionSink* sink)
      : cfg_(cfg), up_(up), sink_(sink), metrics_(cfg.transport.metricsMaxPeers) {}
  ~UpstreamEngine() override { stop(); }

  Status start() override {
    Status st = upstream::loadApi(up_.library, cfg_.ascendRuntimeLibrary, &api_);
    if (!st.ok()) return st;
    if (api_->lazy && !upstream::forceTcp()) {
      return Status(Code::LIBRARY_NOT_FOUND, api_->path + " was loaded for TCP only (MC_FORCE_TCP was set then) because its Ascend "
                                             "transport cannot run: " + api_->ascend.problem + ". Set MC_FORCE_TCP=1 for every engine of this process");
    }
    if (api_->ascend.usable && !upstream::forceTcp() && up_.device.empty()) {
      return Status(Code::CONTEXT, "this Mooncake build installs its Ascend transport at start, which takes its NPU from the thread "
                                   "creating the engine: pass device: 'npu:N' (or set MC_FORCE_TCP=1 for TCP only)");
    }
    if (!up_.device.empty()) {
      RegisterOptions d;
      st = resolveDevice(cfg_, up_.device, &d);
      if (!st.ok()) return st;
      if (d.runtime == nullptr) return Status(Code::INVALID_ARGUMENT, "device must look like npu:0, got " + up_.device);
      device_ = d.device;
      runtime_ = d.runtime;
      st = enterDevice();
      if (!st.ok()) return st;
    }
    engine_ = api_->createTransferEngine(up_.metadataServer.c_str(), cfg_.localServerName.c_str(), up_.ipOrHost.c_str(),
                                         up_.rpcPort, 0);
    if (engine_ == nullptr) {
      return Status(Code::METADATA, "upstream createTransferEngine failed (metadata server " + up_.metadataServer +
                                        ", name " + cfg_.localServerName + "); see upstream's log for the reason");
    }
    if (api_->installTransport(engine_, up_.protocol.c_str(), nullptr) == nullptr) {
      api_->destroyTransferEngine(engine_);
      engine_ = nullptr;
      return Status(Code::NOT_SUPPORTED_TRANSPORT, "the loaded Mooncake build (" + api_->path + ") cannot install protocol '" +
                                                       up_.protocol + "'; use a build with that transport enabled");
    }
    running_ = true;
    poller_ = std::thread([this] { poll(); });
    submitter_ = std::thread([this] { submitLoop(); });
    return Status();
  }

  void stop() override {
    if (!engine_) return;
    {
      std::unique_lock<std::mutex> lk(mu_);
      if (closing_) return;
      closing_ = true;
      // Upstream cannot cancel: let in-flight batches reach a terminal state (bounded), so no memory
      // is touched after we report them, then stop polling.
      cv_.notify_all();
      drained_.wait_for(lk, std::chrono::seconds(30), [&] { return active_.empty() && queued_.empty() && !submitting_; });
      running_ = false;
      cv_.notify_all();
      submitCv_.notify_all();
    }
    if (submitter_.joinable()) submitter_.join();
    if (poller_.joinable()) poller_.join();
    for (auto& p : queued_) for (size_t i = 0; i < p.active.n; ++i) p.active.batch->failTask(i, Code::CLOSED);
    queued_.clear();
    std::vector<Active> left;
    {
      std::lock_guard<std::mutex> g(mu_);
      for (auto& kv : active_) left.push_back(std::move(kv.second));
      active_.clear();
    }
    for (auto& a : left) for (size_t i = 0; i < a.n; ++i) if (!isTerminal(taskState(*a.batch, i))) a.batch->failTask(i, Code::CLOSED);
    std::unique_lock<std::shared_mutex> life(lifeMu_);  // no API call is inside upstream now
    enterDevice();
    api_->destroyTransferEngine(engine_);
    engine_ = nullptr;
  }

  bool closed() const override { return closing_; }
  bool controlBlocks() const override { return true; }  // upstream talks to its metadata store and peers
  std::string backendName() const override { return "mooncake"; }

  std::string backendInfo() const override {
    if (!api_) return "";
    json::Value o = json::Value::object();
    o.set("library", json::Value::string(api_->path));
    o.set("lazyBinding", json::Value::boolean(api_->lazy));
    o.set("forceTcp", json::Value::boolean(upstream::forceTcp()));
    const auto& a = api_->ascend;
    o.set("ascendTransport", json::Value::string(!a.present ? "absent" : a.usable ? "ready" : "unusable"));
    if (!a.problem.empty()) o.set("ascendProblem", json::Value::string(a.problem));
    json::Value cann = json::Value::array();
    for (const auto& l : a.cann) {
      json::Value e = json::Value::object();
      e.set("name", json::Value::string(l.name));
      if (!l.path.empty()) e.set("path", json::Value::string(l.path));
      if (!l.standin.empty()) e.set("standin", json::Value::string(l.standin));
      cann.push(std::move(e));
    }
    o.set("cann", std::move(cann));
    return json::write(o);
  }

  Status registerMemory(uint64_t addr, uint64_t length, const RegisterOptions& in) override {
    Status gs;
    auto life = enter(&gs);
    if (!gs.ok()) return gs;
    RegisterOptions o = in;
    Status st = resolveDevice(cfg_, o.location, &o);
    if (!st.ok()) return st;
    Code c = registry_.add(addr, length, o.location, o.owner, "", 0, o.remoteAccessible, o.device, o.runtime);
    if (c != Code::OK) return Status(c, c == Code::ADDRESS_OVERLAPPED ? "range overlaps a registered region" : "invalid range");
    if (o.runtime) o.runtime->setDevice(o.device);  // upstream may touch the device from this thread
    int rc = api_->registerLocalMemory(engine_, reinterpret_cast<void*>(addr), length, o.location.c_str(), o.remoteAccessible ? 1 : 0);
    if (rc != 0) {
      registry_.remove(addr);
      return Status(upstream::mapError(rc), "upstream registerLocalMemory failed (" + std::to_string(rc) + ")");
    }
    return Status();
  }

  Status unregisterMemory(uint64_t addr) override {
    Status gs;
    auto life = enter(&gs);
    if (!gs.ok()) return gs;
    RegionRef probe = registry_.acquire(addr, 1);
    DeviceRuntime* rt = probe ? probe.get()->runtime : nullptr;
    int dev = probe ? probe.get()->device : -1;
    probe.release();
    Code c = registry_.remove(addr);
    if (c != Code::OK) return Status(c, c == Code::REGION_BUSY ? "region is in use by a transfer in flight" : "no region starts at this address");
    if (rt) rt->setDevice(dev);
    int rc = api_->unregisterLocalMemory(engine_, reinterpret_cast<void*>(addr));
    if (rc != 0) return Status(upstream::mapError(rc), "upstream unregisterLocalMemory failed (" + std::to_string(rc) + ")");
    return Status();
  }

  RegionRef acquireLocal(uint64_t addr, uint64_t length) override { return registry_.acquire(addr, length); }

  Status openSegment(const std::string& name, const std::string& descriptorJson, const std::string&, int32_t* id) override {
    Status gs;
    auto life = enter(&gs);
    if (!gs.ok()) return gs;
    int32_t sid = api_->openSegment(engine_, name.c_str());
    if (sid < 0) return Status(Code::SEGMENT_NOT_FOUND, "upstream could not open segment " + name + " (" + std::to_string(sid) + ")");
    SegmentInfo info;
    info.id = sid;
    info.name = name;
    SegmentDesc desc;
    if (!descriptorJson.empty() && decodeSegmentDesc(descriptorJson, &desc).ok()) {
      info.protocol = desc.protocol;
      info.dataPort = desc.tcpDataPort;
      info.protoVersion = desc.tcpProtoVersion;
      info.buffers = desc.buffers;
    } else {
      info.protocol = up_.protocol;
    }
    PeerCounters* counters = metrics_.initiatorSlot(name);
    std::lock_guard<std::mutex> g(mu_);
    segments_[sid] = info;
    segCounters_[sid] = counters;
    *id = sid;
    return Status();
  }

  Status closeSegment(int32_t id) override {
    Status gs;
    auto life = enter(&gs);
    if (!gs.ok()) return gs;
    std::lock_guard<std::mutex> g(mu_);
    if (!segments_.erase(id)) return Status(Code::SEGMENT_NOT_FOUND, "unknown segment handle");
    segCounters_.erase(id);
    api_->closeSegment(engine_, id);
    return Status();
  }

  Status segmentInfo(int32_t id, SegmentInfo* out) override {
    std::lock_guard<std::mutex> g(mu_);
    auto it = segments_.find(id);
    if (it == segments_.end()) return Status(Code::SEGMENT_NOT_FOUND, "unknown segment handle");
    *out = it->second;
    return Status();
  }

  Status submitAsync(uint64_t token, const TransferRequest* reqs, size_t n, int64_t timeoutMs, size_t* badIndex) override {
    if (closing_) return Status(Code::CLOSED, "engine closed");
    if (n == 0) return Status(Code::INVALID_ARGUMENT, "empty batch");
    auto batch = std::make_shared<Batch>(0, n, token, this);
    batch->setStartNs(monotonicNs());
    Pending p;
    Status st = prepare(batch, reqs, n, badIndex, &p);
    if (!st.ok()) return st;
    if (timeoutMs > 0) batch->setDeadlineNs(monotonicNs() + timeoutMs * 1000000LL);
    p.token = token;
    batch->seal();
    {
      // Upstream's submit may block (its first transfer to a peer fetches rpc_meta synchronously), so
      // it never runs on the caller's (JS) thread.
      std::lock_guard<std::mutex> g(mu_);
      queued_.push_back(std::move(p));
    }
    submitCv_.notify_one();
    return Status();
  }

  void cancel(uint64_t token, Code why) override {
    // Upstream cannot recall a posted transfer: the batch settles (with `why`) once upstream reports
    // every task terminal, so the memory is never touched after the Promise settles. Batches still in
    // the submit queue are dropped before upstream sees them.
    std::lock_guard<std::mutex> g(mu_);
    auto it = active_.find(token);
    if (it != active_.end()) it->second.batch->requestCancel(why);
    for (auto& p : queued_) if (p.token == token) p.active.batch->requestCancel(why);
  }

  std::string localDescriptor() override { return ""; }  // upstream publishes its own descriptor
  uint16_t dataPort() const override { return 0; }

  MetricsSnapshot metrics() override { return metrics_.snapshot(); }

  StatList stats() override {
    std::lock_guard<std::mutex> g(mu_);
    return {{"registeredRegions", static_cast<double>(registry_.size())}, {"activeBatches", static_cast<double>(active_.size())},
            {"completedBatches", static_cast<double>(completed_)}};
  }

  Status localEndpoint(std::string* out) override {
    Status gs;
    auto life = enter(&gs);
    if (!gs.ok()) return gs;
    if (!api_->getLocalIpAndPort) return Status(Code::NOT_IMPLEMENTED, "this Mooncake build has no getLocalIpAndPort");
    char buf[256] = {0};
    int rc = api_->getLocalIpAndPort(engine_, buf, sizeof buf);
    if (rc != 0) return Status(upstream::mapError(rc), "getLocalIpAndPort failed");
    *out = buf;
    return Status();
  }

  Status sendNotify(int32_t segment, const std::string& name, const std::string& msg) override {
    Status gs;
    auto life = enter(&gs);
    if (!gs.ok()) return gs;
    if (!api_->genNotifyInEngine) return Status(Code::NOT_IMPLEMENTED, "this Mooncake build has no genNotifyInEngine");
    upstream::notify_msg m{const_cast<char*>(name.c_str()), const_cast<char*>(msg.c_str())};
    int rc = api_->genNotifyInEngine(engine_, static_cast<uint64_t>(segment), m);
    if (rc != 0) return Status(upstream::mapError(rc), "upstream genNotifyInEngine failed (" + std::to_string(rc) + ")");
    return Status();
  }

  Status takeNotifies(std::vector<std::pair<std::string, std::string>>* out) override {
    Status gs;
    auto life = enter(&gs);
    if (!gs.ok()) return Status();  // closed: nothing more will arrive
    if (!api_->getNotifsFromEngine) return Status();
    int size = 0;
    upstream::notify_msg* list = api_->getNotifsFromEngine(engine_, &size);
    for (int i = 0; list && i < size; ++i) out->emplace_back(list[i].name ? list[i].name : "", list[i].msg ? list[i].msg : "");
    if (list && api_->freeNotifsMsgBuf) api_->freeNotifsMsgBuf(list, size);
    return Status();
  }

  void onBatchDone(uint64_t token, Code code, uint64_t bytes, std::vector<int32_t> taskCodes) override {
    if (sink_) sink_->onBatchDone(token, code, bytes, std::move(taskCodes));
  }

 private:
  static TaskState taskState(Batch& b, size_t i) { return static_cast<TaskState>(b.task(i).state.load()); }

  // Held by every call into upstream from outside the engine's own threads: stop() destroys the
  // upstream engine only when no such call is inside it.
  std::shared_lock<std::shared_mutex> enter(Status* st) {
    std::shared_lock<std::shared_mutex> lk(lifeMu_);
    if (engine_ == nullptr || closing_) *st = Status(Code::CLOSED, "engine closed");
    else *st = enterDevice();  // this thread is about to call into upstream
    return lk;
  }

  // Validates against our mirror (nothing reaches upstream on a bad request) and builds entries.
  Status translate(const TransferRequest* reqs, size_t n, size_t* badIndex, std::vector<upstream::transfer_request>* out,
                   std::vector<RegionRef>* refs) {
    std::lock_guard<std::mutex> g(mu_);
    out->resize(n);
    for (size_t i = 0; i < n; ++i) {
      const TransferRequest& r = reqs[i];
      *badIndex = i;
      if (r.opcode > 1) return Status(Code::INVALID_ARGUMENT, "opcode must be 0 (read) or 1 (write)");
      if (r.length == 0) return Status(Code::INVALID_ARGUMENT, "length must be positive");
      if (!segments_.count(r.segment)) return Status(Code::SEGMENT_NOT_FOUND, "unknown segment handle " + std::to_string(r.segment));
      RegionRef ref = registry_.acquire(r.local, r.length);
      if (!ref) return Status(Code::ADDRESS_NOT_REGISTERED, "local range is not inside one registered region");
      (*out)[i] = upstream::transfer_request{r.opcode, reinterpret_cast<void*>(r.local), r.segment, 0, r.remote, r.length};
      if (refs) refs->push_back(std::move(ref));
    }
    *badIndex = 0;
    return Status();
  }

  Status prepare(const std::shared_ptr<Batch>& batch, const TransferRequest* reqs, size_t n, size_t* badIndex, Pending* p) {
    std::vector<RegionRef> refs;
    Status st = translate(reqs, n, badIndex, &p->entries, &refs);
    if (!st.ok()) return st;
    size_t first = 0;
    batch->reserve(n, &first);
    Active& a = p->active;
    for (size_t i = 0; i < n; ++i) {
      const Region* r = refs[i].get();
      if (r->device >= 0 && a.device < 0) { a.device = r->device; a.runtime = r->runtime; }
      batch->beginTask(i, reqs[i].length, 1, std::move(refs[i]));
    }
    a.batch = batch;
    a.n = n;
    if (metrics_.enabled()) {
      std::lock_guard<std::mutex> g(mu_);
      for (size_t i = 0; i < n; ++i) {
        auto it = segCounters_.find(reqs[i].segment);
        a.peers.push_back(it == segCounters_.end() ? nullptr : it->second);
        a.writes.push_back(reqs[i].opcode == 1);
      }
    }
    return Status();
  }

  // Makes the engine's device current on the calling thread (no-op without one).
  Status enterDevice() { return runtime_ ? runtime_->setDevice(device_) : Status(); }

  // Hands queued batches to upstream, one after another, on its own thread.
  void submitLoop() {
    enterDevice();
    int lastDevice = device_;
    while (true) {
      Pending p;
      {
        std::unique_lock<std::mutex> lk(mu_);
        submitCv_.wait(lk, [&] { return !running_ || !queued_.empty(); });
        if (queued_.empty()) return;  // stopping
        p = std::move(queued_.front());
        queued_.pop_front();
        submitting_ = true;
      }
      Active& a = p.active;
      if (a.batch->deadlineNs() != 0 && monotonicNs() >= a.batch->deadlineNs()) a.batch->requestCancel(Code::TIMEOUT);
      Code cancelled = a.batch->cancelCode();
      if (cancelled != Code::OK) {
        for (size_t i = 0; i < a.n; ++i) a.batch->failTask(i, cancelled);
      } else {
        if (a.runtime && a.device != lastDevice) {  // upstream may touch the device from this thread
          a.runtime->setDevice(a.device);
          lastDevice = a.device;
        }
        uint64_t b = api_->allocateBatchID(engine_, a.n);
        int rc = b == upstream::kInvalidBatch ? -2 : api_->submitTransfer(engine_, b, p.entries.data(), a.n);
        if (rc != 0) {
          if (b != upstream::kInvalidBatch) api_->freeBatchID(engine_, b);
          for (size_t i = 0; i < a.n; ++i) a.batch->failTask(i, upstream::mapError(rc));
        } else {
          a.upstreamBatch = b;
          std::lock_guard<std::mutex> g(mu_);
          active_[p.token] = std::move(a);
          cv_.notify_all();
        }
      }
      std::lock_guard<std::mutex> g(mu_);
      submitting_ = false;
      if (active_.empty() && queued_.empty()) drained_.notify_all();
    }
  }

  // One thread polls upstream's task states for every Promise batch and reports finished ones.
  void poll() {
    enterDevice();
    int lastDevice = device_;
    while (true) {
      std::vector<std::pair<uint64_t, Active*>> work;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return !running_ || !active_.empty(); });
        if (!running_) return;
        for (auto& kv : active_) work.emplace_back(kv.first, &kv.second);
      }
      bool progressed = false;
      const int64_t now = monotonicNs();
      for (auto& [token, a] : work) {
        // A passed deadline cannot recall upstream's transfer either: the batch settles with TIMEOUT
        // once upstream reports its tasks terminal (failed ones; a batch that still completes succeeds).
        if (a->batch->deadlineNs() != 0 && now >= a->batch->deadlineNs()) a->batch->requestCancel(Code::TIMEOUT);
        if (a->runtime && a->device != lastDevice) {  // upstream's transports may need the device current
          a->runtime->setDevice(a->device);
          lastDevice = a->device;
        }
        bool all = true;
        for (size_t i = 0; i < a->n; ++i) {
          if (isTerminal(taskState(*a->batch, i))) continue;
          upstream::transfer_status s{};
          PeerCounters* pc = i < a->peers.size() ? a->peers[i] : nullptr;
          if (api_->getTransferStatus(engine_, a->upstreamBatch, i, &s) != 0) {
            if (pc) pc->add(a->writes[i], 0, false);
            a->batch->failTask(i, Code::PROTOCOL_ERROR);
            continue;
          }
          const bool done = s.status == 4, failed = s.status == 5 || s.status == 6 || s.status == 3 || s.status == 2;
          if (pc && (done || failed)) pc->add(a->writes[i], s.transferred_bytes, done);
          if (done) a->batch->sliceDone(i, s.transferred_bytes, Code::OK);
          else if (s.status == 5) a->batch->sliceDone(i, 0, Code::TIMEOUT);
          else if (failed) a->batch->sliceDone(i, 0, Code::CONNECTION_LOST);
          else all = false;
        }
        if (all) {
          uint64_t moved = 0;
          metrics_.batchDone(monotonicNs() - a->batch->startNs(), a->batch->aggregate(&moved) == TaskState::COMPLETED);
          api_->freeBatchID(engine_, a->upstreamBatch);
          std::lock_guard<std::mutex> g(mu_);
          active_.erase(token);
          ++completed_;
          progressed = true;
          if (active_.empty() && queued_.empty() && !submitting_) drained_.notify_all();
        }
      }
      if (!progressed) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  EngineConfig cfg_;
  UpstreamConfig up_;
  CompletionSink* sink_;
  const upstream::Api* api_ = nullptr;
  upstream::engine_t engine_ = nullptr;
  MemoryRegistry registry_;
  std::mutex mu_;
  std::condition_variable cv_, drained_;
  std::unordered_map<uint64_t, Active> active_;
  std::unordered_map<int32_t, SegmentInfo> segments_;
  std::shared_mutex lifeMu_;
  DeviceRuntime* runtime_ = nullptr;
  int device_ = -1;
  std::thread poller_, submitter_;
  std::condition_variable submitCv_;
  std::deque<Pending> queued_;
  bool submitting_ = false;
  std::atomic<bool> closing_{false};
  bool running_ = false;
  uint64_t completed_ = 0;
  std::unordered_map<int32_t, PeerCounters*> segCounters_;
  EngineMetrics metrics_;
};

}  // namespace

std::unique_ptr<Engine> createUpstreamEngine(const EngineConfig& cfg, const UpstreamConfig& up, CompletionSink* sink) {
  return std::make_unique<UpstreamEngine>(cfg, up, sink);
}

}  // namespace mc
