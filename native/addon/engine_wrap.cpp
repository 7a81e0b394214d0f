#include "engine_wrap.h"

#include <cmath>
#include <functional>

#include "addon.h"
#include "host_memory.h"

namespace mcaddon {

namespace {

mc::Status invalid(const std::string& m) { return mc::Status(mc::Code::INVALID_ARGUMENT, m); }

void addU(Napi::Env env, Napi::Object obj, const char* key, unsigned* out) {
  Napi::Value v = obj.Get(key);
  if (v.IsUndefined() || v.IsNull()) return;
  *out = static_cast<unsigned>(toLength(env, v, key));
}

mc::EngineConfig parseConfig(Napi::Env env, Napi::Object o) {
  mc::EngineConfig cfg;
  cfg.localServerName = toString(env, o.Get("localServerName"), "localServerName");
  if (o.Get("sameHost").IsBoolean()) cfg.sameHost = o.Get("sameHost").As<Napi::Boolean>().Value();
  Napi::Value devLib = o.Get("deviceLibrary");
  if (devLib.IsString()) cfg.deviceLibrary = devLib.As<Napi::String>().Utf8Value();
  mc::tcp::Options& t = cfg.tcp;
  addU(env, o, "ioThreads", &t.ioThreads);
  addU(env, o, "connectionsPerPeer", &t.connectionsPerPeer);
  addU(env, o, "maxInflightPerConnection", &t.maxInflightPerConnection);
  addU(env, o, "retries", &t.retries);
  addU(env, o, "maxServerConnections", &t.maxServerConnections);
  addU(env, o, "maxServerConnectionsPerPeer", &t.maxServerConnectionsPerPeer);
  unsigned tmp = 0;
  if (!o.Get("firstByteTimeoutMs").IsUndefined()) { addU(env, o, "firstByteTimeoutMs", &tmp); t.firstByteTimeoutMs = static_cast<int>(tmp); }
  if (!o.Get("sliceSize").IsUndefined()) t.sliceSize = toLength(env, o.Get("sliceSize"), "sliceSize");
  if (!o.Get("idleTimeoutMs").IsUndefined()) { addU(env, o, "idleTimeoutMs", &tmp); t.idleTimeoutMs = static_cast<int>(tmp); }
  if (!o.Get("connectTimeoutMs").IsUndefined()) { addU(env, o, "connectTimeoutMs", &tmp); t.connectTimeoutMs = static_cast<int>(tmp); }
  if (!o.Get("protoVersion").IsUndefined()) { addU(env, o, "protoVersion", &tmp); t.protoVersion = static_cast<int>(tmp); }
  if (!o.Get("port").IsUndefined()) { addU(env, o, "port", &tmp); t.port = static_cast<uint16_t>(tmp); }
  if (!o.Get("minPort").IsUndefined()) { addU(env, o, "minPort", &tmp); t.minPort = static_cast<uint16_t>(tmp); }
  if (!o.Get("maxPort").IsUndefined()) { addU(env, o, "maxPort", &tmp); t.maxPort = static_cast<uint16_t>(tmp); }
  Napi::Value adv = o.Get("advertiseAddress");
  if (adv.IsString()) cfg.advertiseHost = adv.As<Napi::String>().Utf8Value();
  Napi::Value bind = o.Get("bindAddress");
  if (bind.IsString()) t.bindAddress = bind.As<Napi::String>().Utf8Value();
  Napi::Value allow = o.Get("allowedPeers");
  if (allow.IsArray()) {
    Napi::Array a = allow.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) t.allowedPeers.push_back(toString(env, a.Get(i), "allowedPeers[]"));
  }
  return cfg;
}

template <typename T>
T typedArg(const Napi::CallbackInfo& info, size_t i, napi_typedarray_type type, const char* what) {
  Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) {
    throwStatus(info.Env(), invalid(std::string(what) + " has the wrong array type"));
  }
  return v.As<T>();
}

}  // namespace

// ---- CompletionHub ----------------------------------------------------------------------------

void CompletionHub::onBatchDone(uint64_t token, mc::Code code, uint64_t bytes, std::vector<int32_t> taskCodes) {
  {
    std::lock_guard<std::mutex> g(mu_);
    queue_.push_back({token, static_cast<int32_t>(code), bytes, std::move(taskCodes)});
  }
  if (!armed_.exchange(true) && live.load()) tsfn.NonBlockingCall();
}

size_t CompletionHub::deliver(Napi::Env env, Napi::Function fn) {
  std::vector<Completion> batch;
  armed_.store(false);
  {
    std::lock_guard<std::mutex> g(mu_);
    batch.swap(queue_);
  }
  if (batch.empty()) return 0;
  size_t n = batch.size();
  Napi::Float64Array tokens = Napi::Float64Array::New(env, n);
  Napi::Int32Array codes = Napi::Int32Array::New(env, n);
  Napi::Float64Array bytes = Napi::Float64Array::New(env, n);
  Napi::Array details = Napi::Array::New(env, n);
  for (size_t i = 0; i < n; ++i) {
    tokens[i] = static_cast<double>(batch[i].token);
    codes[i] = batch[i].code;
    bytes[i] = static_cast<double>(batch[i].bytes);
    if (!batch[i].taskCodes.empty()) {
      Napi::Int32Array tc = Napi::Int32Array::New(env, batch[i].taskCodes.size());
      for (size_t k = 0; k < batch[i].taskCodes.size(); ++k) tc[k] = batch[i].taskCodes[k];
      details.Set(static_cast<uint32_t>(i), tc);
    }
  }
  pending -= static_cast<int64_t>(n);
  try {
    fn.Call({tokens, codes, bytes, details});
  } catch (const Napi::Error& e) {
    napi_fatal_exception(env, e.Value());  // surfaces as 'uncaughtException' like any callback error
  }
  return n;
}

namespace {

// A bounded blocking engine call on a libuv pool thread (AsyncWorker): `work` runs there and returns a
// Status; `done` builds the resolution value back on the JS thread. The receiver (the engine object)
// and any `keep` values stay referenced until it finishes.
class BlockingCall : public Napi::AsyncWorker {
 public:
  using Work = std::function<mc::Status()>;
  using Done = std::function<Napi::Value(Napi::Env)>;
  using Failed = std::function<void(Napi::Env)>;
  BlockingCall(Napi::Object receiver, Work work, Done done, Failed failed = nullptr)
      : Napi::AsyncWorker(receiver.Env(), "mooncake-node:engine-call"), deferred_(Napi::Promise::Deferred::New(receiver.Env())),
        work_(std::move(work)), done_(std::move(done)), failed_(std::move(failed)) {
    keep(receiver);  // the engine object (and so the engine) outlives the call
  }
  void keep(Napi::Value v) { kept_.push_back(Napi::Persistent(v)); }
  Napi::Promise queue() {
    Napi::Promise p = deferred_.Promise();
    Queue();
    return p;
  }
  void Execute() override {
    status_ = work_();
    if (!status_.ok()) SetError(status_.message.empty() ? mc::codeName(status_.code) : status_.message);
  }
  void OnOK() override { deferred_.Resolve(done_ ? done_(Env()) : Env().Undefined()); }
  void OnError(const Napi::Error&) override {
    if (failed_) failed_(Env());
    deferred_.Reject(makeError(Env(), status_).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  Done done_;
  Failed failed_;
  std::vector<Napi::Reference<Napi::Value>> kept_;
  mc::Status status_;
};

// The (pointer, length) of JS memory, or an error.
mc::Status viewOf(const Napi::Value& v, uint8_t** data, size_t* len) {
  Napi::ArrayBuffer ab;
  size_t off = 0, n = 0;
  if (v.IsArrayBuffer()) {
    ab = v.As<Napi::ArrayBuffer>();
    if (!ab.IsDetached()) n = ab.ByteLength();
  } else if (v.IsTypedArray()) {
    Napi::TypedArray ta = v.As<Napi::TypedArray>();
    ab = ta.ArrayBuffer();
    off = ta.ByteOffset();
    n = ta.ByteLength();
  } else if (v.IsDataView()) {
    Napi::DataView dv = v.As<Napi::DataView>();
    ab = dv.ArrayBuffer();
    off = dv.ByteOffset();
    n = dv.ByteLength();
  } else {
    return invalid("memory must be an ArrayBuffer, a TypedArray, a Buffer or a DataView");
  }
  if (ab.IsDetached()) return invalid("the ArrayBuffer is detached");
  if (n == 0 || ab.Data() == nullptr) return invalid("cannot register empty memory");
  *data = static_cast<uint8_t*>(ab.Data()) + off;
  *len = n;
  return mc::Status();
}

}  // namespace

// ---- EngineWrap ---------------------------------------------------------------------------------

Napi::Function EngineWrap::Define(Napi::Env env) {
  return DefineClass(env, "Engine",
                     {
                         InstanceMethod("dataPort", &EngineWrap::Tagged<&EngineWrap::DataPort>),
                         InstanceMethod("registerBuffer", &EngineWrap::Tagged<&EngineWrap::RegisterBuffer>),
                         InstanceMethod("registerAddress", &EngineWrap::Tagged<&EngineWrap::RegisterAddress>),
                         InstanceMethod("allocateManaged", &EngineWrap::Tagged<&EngineWrap::AllocateManaged>),
                         InstanceMethod("allocateDevice", &EngineWrap::Tagged<&EngineWrap::AllocateDevice>),
                         InstanceMethod("copyDevice", &EngineWrap::Tagged<&EngineWrap::CopyDevice>),
                         InstanceMethod("unregister", &EngineWrap::Tagged<&EngineWrap::Unregister>),
                         InstanceMethod("openSegment", &EngineWrap::Tagged<&EngineWrap::OpenSegment>),
                         InstanceMethod("closeSegment", &EngineWrap::Tagged<&EngineWrap::CloseSegment>),
                         InstanceMethod("segmentInfo", &EngineWrap::Tagged<&EngineWrap::SegmentInfo>),
                         InstanceMethod("submit", &EngineWrap::Tagged<&EngineWrap::Submit>),
                         InstanceMethod("cancel", &EngineWrap::Tagged<&EngineWrap::Cancel>),
                         InstanceMethod("allocateBatch", &EngineWrap::Tagged<&EngineWrap::AllocateBatch>),
                         InstanceMethod("submitBatch", &EngineWrap::Tagged<&EngineWrap::SubmitBatch>),
                         InstanceMethod("taskStatus", &EngineWrap::Tagged<&EngineWrap::TaskStatus>),
                         InstanceMethod("batchStatus", &EngineWrap::Tagged<&EngineWrap::BatchStatus>),
                         InstanceMethod("freeBatch", &EngineWrap::Tagged<&EngineWrap::FreeBatch>),
                         InstanceMethod("localDescriptor", &EngineWrap::Tagged<&EngineWrap::LocalDescriptor>),
                         InstanceMethod("stats", &EngineWrap::Tagged<&EngineWrap::Stats>),
                         InstanceMethod("backend", &EngineWrap::Tagged<&EngineWrap::Backend>),
                         InstanceMethod("localEndpoint", &EngineWrap::Tagged<&EngineWrap::LocalEndpoint>),
                         InstanceMethod("backendInfo", &EngineWrap::Tagged<&EngineWrap::BackendInfo>),
                         InstanceMethod("sendNotify", &EngineWrap::Tagged<&EngineWrap::SendNotify>),
                         InstanceMethod("takeNotifies", &EngineWrap::Tagged<&EngineWrap::TakeNotifies>),
                         InstanceMethod("close", &EngineWrap::Tagged<&EngineWrap::Close>),
                         InstanceMethod("start", &EngineWrap::Tagged<&EngineWrap::Start>),
                         InstanceMethod("closeAsync", &EngineWrap::Tagged<&EngineWrap::CloseAsync>),
                     });
}

// new Engine(config, onCompletions(tokens: Float64Array, codes: Int32Array, bytes: Float64Array, details[]))
EngineWrap::EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info), env_(info.Env()) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throwStatus(env, invalid("engine config must be an object"));
  if (!info[1].IsFunction()) throwStatus(env, invalid("onCompletions must be a function"));
  mc::EngineConfig cfg = parseConfig(env, info[0].As<Napi::Object>());
  config_ = cfg;
  onCompletions_ = Napi::Persistent(info[1].As<Napi::Function>());

  hub_ = new CompletionHub();
  hub_->tsfn = CompletionTsfn::New(
      env, info[1].As<Napi::Function>(), "mooncake-node:completions", 0, 1, hub_,
      [](Napi::Env, void*, CompletionHub* hub) { delete hub; }, static_cast<void*>(nullptr));
  hub_->tsfn.Unref(env);  // only pending transfers keep the process alive

  Napi::Object o = info[0].As<Napi::Object>();
  std::string backend = o.Get("backend").IsString() ? o.Get("backend").As<Napi::String>().Utf8Value() : "builtin";
  if (backend == "mooncake") {
    mc::UpstreamConfig up;
    if (o.Get("library").IsString()) up.library = o.Get("library").As<Napi::String>().Utf8Value();
    up.metadataServer = toString(env, o.Get("metadataServer"), "metadataServer");
    if (o.Get("protocol").IsString()) up.protocol = o.Get("protocol").As<Napi::String>().Utf8Value();
    if (o.Get("advertiseAddress").IsString()) up.ipOrHost = o.Get("advertiseAddress").As<Napi::String>().Utf8Value();
    if (!o.Get("rpcPort").IsUndefined()) up.rpcPort = toLength(env, o.Get("rpcPort"), "rpcPort");
    if (o.Get("device").IsString()) up.device = o.Get("device").As<Napi::String>().Utf8Value();
    engine_ = mc::createUpstreamEngine(cfg, up, hub_);
  } else if (backend == "builtin") {
    engine_ = mc::createBuiltinEngine(cfg, hub_);
  } else {
    throwStatus(env, invalid("unknown backend '" + backend + "'"));
  }
  napi_type_tag_object(env, info.This(), &env.GetInstanceData<Addon>()->engineTag);
  napi_add_env_cleanup_hook(env_, &EngineWrap::CleanupHook, this);
  hookInstalled_ = true;
  if (backend == "builtin") {  // starts in microseconds: no Promise needed
    mc::Status st = engine_->start();
    if (!st.ok()) {
      shutdown(env, false);
      throwStatus(env, st);
    }
    started_ = true;
  }
}

// start() -> Promise<void>: the upstream backend creates its engine (and talks to its metadata store).
Napi::Value EngineWrap::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  if (started_) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Resolve(env.Undefined());
    return d.Promise();
  }
  auto* call = new BlockingCall(
      Value(), [&e] { return e.start(); },
      [this](Napi::Env) { started_ = true; return Value().Env().Undefined(); },
      [this](Napi::Env env2) { shutdown(env2, true); });
  return call->queue();
}

// closeAsync(): stops the engine on a pool thread (upstream's shutdown talks to its metadata store),
// then, back on the JS thread, delivers what is left and releases the thread-safe function.
Napi::Value EngineWrap::CloseAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_ || !engine_) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Resolve(env.Undefined());
    return d.Promise();
  }
  mc::Engine* e = engine_.get();
  stopping_ = true;  // every other call now fails with CLOSED
  return (new BlockingCall(Value(), [e] { e->stop(); return mc::Status(); },
                           [this](Napi::Env env2) { shutdown(env2, true); return env2.Undefined(); }))
      ->queue();
}

EngineWrap::~EngineWrap() {
  // Reached only after close() in practice (the TSFN keeps the JS callback, and so us, alive until
  // then); still, never leave engine threads running behind a collected wrapper.
  shutdown(Napi::Env(env_), false);
}

void EngineWrap::CleanupHook(void* arg) {
  auto* self = static_cast<EngineWrap*>(arg);
  self->hookInstalled_ = false;  // the hook is being consumed
  self->shutdown(Napi::Env(self->env_), false);
}

void deliverCompletions(Napi::Env env, Napi::Function fn, CompletionHub* hub, void*) {
  if (env == nullptr || hub == nullptr) return;  // tearing down: nothing may run
  size_t n = hub->deliver(env, fn);
  if (n > 0 && hub->pending <= 0 && hub->refed) {
    hub->refed = false;
    hub->tsfn.Unref(env);
  }
}

void EngineWrap::afterDelivery(Napi::Env env, size_t) {
  if (hub_ && hub_->pending <= 0 && hub_->refed) {
    hub_->refed = false;
    hub_->tsfn.Unref(env);
  }
}

void EngineWrap::shutdown(Napi::Env env, bool jsAllowed) {
  if (closed_) return;
  closed_ = true;
  if (engine_) engine_->stop();  // joins every engine thread; what was pending is now queued as CLOSED
  if (hub_) {
    if (jsAllowed && !onCompletions_.IsEmpty()) hub_->deliver(env, onCompletions_.Value());
    hub_->live.store(false);
    if (jsAllowed) hub_->tsfn.Release();
    else hub_->tsfn.Abort();
    hub_ = nullptr;
  }
  pinned_.clear();  // JS memory may be collected now that no thread can touch it
  if (hookInstalled_) {
    napi_remove_env_cleanup_hook(env_, &EngineWrap::CleanupHook, this);
    hookInstalled_ = false;
  }
}

void EngineWrap::checkTag(const Napi::CallbackInfo& info) {
  bool ok = false;
  Addon* addon = info.Env().GetInstanceData<Addon>();
  if (addon == nullptr || !info.This().IsObject() ||
      napi_check_object_type_tag(info.Env(), info.This(), &addon->engineTag, &ok) != napi_ok || !ok) {
    throw Napi::TypeError::New(info.Env(), "not a mooncake-node engine (method called on another object)");
  }
}

mc::Engine& EngineWrap::live(Napi::Env env) {
  if (closed_ || stopping_ || !engine_) throwStatus(env, mc::Status(mc::Code::CLOSED, "the engine is closed"));
  return *engine_;
}

Napi::Value EngineWrap::DataPort(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), live(info.Env()).dataPort());
}

// Runs an engine call inline, or with `async` on a libuv pool thread (a bounded blocking call: the
// upstream backend talks to its metadata store inside) returning a Promise. `done` builds the result on
// the JS thread either way.
Napi::Value EngineWrap::run(Napi::Env env, bool async, std::function<mc::Status()> work,
                            std::function<Napi::Value(Napi::Env)> done, Napi::Value keep) {
  if (async) {
    auto* call = new BlockingCall(Value(), std::move(work), std::move(done));
    if (!keep.IsEmpty()) call->keep(keep);
    return call->queue();
  }
  mc::Status st = work();
  if (!st.ok()) throwStatus(env, st);
  return done ? done(env) : env.Undefined();
}

static bool asyncArg(const Napi::CallbackInfo& info, size_t i) { return info[i].IsBoolean() && info[i].As<Napi::Boolean>().Value(); }

// registerBuffer(view: ArrayBuffer | ArrayBufferView, location, remoteAccessible, async?) -> bigint address.
// The view stays referenced (pinned) until unregistered.
Napi::Value EngineWrap::RegisterBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  uint8_t* data = nullptr;
  size_t len = 0;
  mc::Status vs = viewOf(info[0], &data, &len);
  if (!vs.ok()) throwStatus(env, vs);
  mc::RegisterOptions o;
  o.location = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "cpu:0";
  o.remoteAccessible = !info[2].IsBoolean() || info[2].As<Napi::Boolean>().Value();
  uint64_t addr = reinterpret_cast<uint64_t>(data);
  auto view = std::make_shared<Napi::Reference<Napi::Value>>(Napi::Persistent(info[0]));
  return run(env, asyncArg(info, 3), [&e, addr, len, o] { return e.registerMemory(addr, len, o); },
             [this, addr, view](Napi::Env env2) {
               if (!closed_) pinned_.emplace(addr, Napi::Persistent(view->Value()));
               return Napi::BigInt::New(env2, addr).As<Napi::Value>();
             },
             info[0]);
}

// registerAddress(address: bigint, length: number, location, remoteAccessible, async?)
Napi::Value EngineWrap::RegisterAddress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  uint64_t addr = toU64(env, info[0], "address");
  uint64_t len = toLength(env, info[1], "length");
  mc::RegisterOptions o;
  o.location = info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "cpu:0";
  o.remoteAccessible = !info[3].IsBoolean() || info[3].As<Napi::Boolean>().Value();
  return run(env, asyncArg(info, 4), [&e, addr, len, o] { return e.registerMemory(addr, len, o); }, nullptr);
}

// allocateManaged(size, shareable, location) -> { buffer: ArrayBuffer, address: bigint }
Napi::Value EngineWrap::AllocateManaged(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  uint64_t size = toLength(env, info[0], "size");
  bool shareable = info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  bool async = info[3].IsBoolean() && info[3].As<Napi::Boolean>().Value();
  std::shared_ptr<mc::HostAllocation> mem;
  mc::Status st = mc::HostAllocation::create(size, shareable, &mem);
  if (!st.ok()) throwStatus(env, st);
  mc::RegisterOptions o;
  o.location = info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "cpu:0";
  o.owner = mem;
  o.shmPath = mem->shmPath();
  uint64_t addr = reinterpret_cast<uint64_t>(mem->data());
  auto result = [mem, size, addr](Napi::Env env2) -> Napi::Value {
    auto* hold = new std::shared_ptr<mc::HostAllocation>(mem);
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(
        env2, mem->data(), size, [](Napi::Env, void*, std::shared_ptr<mc::HostAllocation>* h) { delete h; }, hold);
    Napi::Object out = Napi::Object::New(env2);
    out.Set("buffer", ab);
    out.Set("address", Napi::BigInt::New(env2, addr));
    out.Set("shmPath", Napi::String::New(env2, mem->shmPath()));
    return out;
  };
  return run(env, async, [&e, addr, size, o] { return e.registerMemory(addr, size, o); }, result);
}

// allocateDevice(location "npu:N", size, async?) -> { address: bigint, length, device } (a Promise of
// it when async). The memory is freed when the region is unregistered (and no transfer uses it).
Napi::Value EngineWrap::AllocateDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  std::string location = toString(env, info[0], "location");
  uint64_t size = toLength(env, info[1], "size");
  bool async = info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
  if (size == 0) throwStatus(env, invalid("size must be positive"));
  mc::RegisterOptions o;
  o.location = location;
  mc::Status st = mc::resolveDevice(config_, location, &o);
  if (!st.ok()) throwStatus(env, st);
  if (o.runtime == nullptr) throwStatus(env, invalid("location must name a device, e.g. npu:0"));
  void* ptr = nullptr;
  st = o.runtime->allocate(o.device, size, &ptr);
  if (!st.ok()) throwStatus(env, st);
  mc::DeviceRuntime* rt = o.runtime;
  int device = o.device;
  o.owner = std::shared_ptr<void>(ptr, [rt, device](void* p) { rt->release(device, p); });
  uint64_t addr = reinterpret_cast<uint64_t>(ptr);
  auto result = [addr, size, device](Napi::Env env2) -> Napi::Value {
    Napi::Object out = Napi::Object::New(env2);
    out.Set("address", Napi::BigInt::New(env2, addr));
    out.Set("length", Napi::Number::New(env2, static_cast<double>(size)));
    out.Set("device", Napi::Number::New(env2, device));
    return out;
  };
  return run(env, async, [&e, addr, size, o] { return e.registerMemory(addr, size, o); }, result);  // on failure the owner frees it
}

namespace {

// Copies between a JS view and registered device memory on a libuv pool thread (a bounded blocking
// call). The view stays referenced and the region stays registered until the copy is done.
class DeviceCopyWorker : public Napi::AsyncWorker {
 public:
  DeviceCopyWorker(Napi::Env env, mc::RegionRef ref, bool toDevice, uint8_t* devicePtr, uint8_t* host, uint64_t n, Napi::Value view)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), ref_(std::move(ref)), toDevice_(toDevice),
        dev_(devicePtr), host_(host), n_(n), view_(Napi::Persistent(view)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    const mc::Region* r = ref_.get();
    status_ = toDevice_ ? r->runtime->copyToDevice(r->device, dev_, host_, n_) : r->runtime->copyToHost(r->device, host_, dev_, n_);
    if (!status_.ok()) SetError(status_.message);
  }
  void OnOK() override {
    ref_.release();
    deferred_.Resolve(Env().Undefined());
  }
  void OnError(const Napi::Error&) override {
    ref_.release();
    deferred_.Reject(makeError(Env(), status_).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  mc::RegionRef ref_;
  bool toDevice_;
  uint8_t* dev_;
  uint8_t* host_;
  uint64_t n_;
  Napi::Reference<Napi::Value> view_;
  mc::Status status_;
};

}  // namespace

// copyDevice(toDevice: boolean, deviceAddress: bigint, view: ArrayBufferView) -> Promise<void>
Napi::Value EngineWrap::CopyDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  bool toDevice = info[0].ToBoolean().Value();
  uint64_t addr = toU64(env, info[1], "deviceAddress");
  if (!info[2].IsTypedArray() && !info[2].IsDataView()) throwStatus(env, invalid("host memory must be a Buffer, TypedArray or DataView"));
  uint8_t* host = nullptr;
  size_t n = 0;
  Napi::ArrayBuffer ab;
  if (info[2].IsTypedArray()) {
    Napi::TypedArray ta = info[2].As<Napi::TypedArray>();
    ab = ta.ArrayBuffer();
    if (!ab.IsDetached()) { host = static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset(); n = ta.ByteLength(); }
  } else {
    Napi::DataView dv = info[2].As<Napi::DataView>();
    ab = dv.ArrayBuffer();
    if (!ab.IsDetached()) { host = static_cast<uint8_t*>(ab.Data()) + dv.ByteOffset(); n = dv.ByteLength(); }
  }
  if (ab.IsDetached() || n == 0) throwStatus(env, invalid("host memory is empty or detached"));
  mc::RegionRef ref = e.acquireLocal(addr, n);
  if (!ref) throwStatus(env, mc::Status(mc::Code::ADDRESS_NOT_REGISTERED, "the device range is not inside one registered region"));
  if (ref.get()->device < 0 || ref.get()->runtime == nullptr) throwStatus(env, invalid("the region is host memory, not device memory"));
  auto* w = new DeviceCopyWorker(env, std::move(ref), toDevice, reinterpret_cast<uint8_t*>(addr), host, n, info[2]);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// unregister(address, async?)
Napi::Value EngineWrap::Unregister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  uint64_t addr = toU64(env, info[0], "address");
  return run(env, asyncArg(info, 1), [&e, addr] { return e.unregisterMemory(addr); },
             [this, addr](Napi::Env env2) {
               pinned_.erase(addr);
               return env2.Undefined();
             });
}

// openSegment(name, descriptorJson, ip, async?) -> handle
Napi::Value EngineWrap::OpenSegment(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  std::string name = toString(env, info[0], "name"), desc = toString(env, info[1], "descriptor"), ip = toString(env, info[2], "ip");
  auto id = std::make_shared<int32_t>(-1);
  return run(env, asyncArg(info, 3), [&e, name, desc, ip, id] { return e.openSegment(name, desc, ip, id.get()); },
             [id](Napi::Env env2) { return Napi::Number::New(env2, *id).As<Napi::Value>(); });
}

Napi::Value EngineWrap::CloseSegment(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Status st = live(env).closeSegment(static_cast<int32_t>(toLength(env, info[0], "segment")));
  if (!st.ok()) throwStatus(env, st);
  return env.Undefined();
}

Napi::Value EngineWrap::SegmentInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::SegmentInfo s;
  mc::Status st = live(env).segmentInfo(static_cast<int32_t>(toLength(env, info[0], "segment")), &s);
  if (!st.ok()) throwStatus(env, st);
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", s.id);
  o.Set("name", s.name);
  o.Set("protocol", s.protocol);
  o.Set("ip", s.ip);
  o.Set("dataPort", s.dataPort);
  o.Set("protoVersion", s.protoVersion);
  Napi::Array bufs = Napi::Array::New(env, s.buffers.size());
  for (size_t i = 0; i < s.buffers.size(); ++i) {
    Napi::Object b = Napi::Object::New(env);
    b.Set("name", s.buffers[i].name);
    b.Set("address", Napi::BigInt::New(env, s.buffers[i].addr));
    b.Set("length", Napi::Number::New(env, static_cast<double>(s.buffers[i].length)));
    bufs.Set(static_cast<uint32_t>(i), b);
  }
  o.Set("buffers", bufs);
  return o;
}

// Arrays from `first`: opcodes Uint8Array, segments Int32Array, locals BigUint64Array,
// remotes BigUint64Array, lengths Float64Array -- all the same length.
std::vector<mc::TransferRequest> EngineWrap::requests(const Napi::CallbackInfo& info, size_t first) {
  Napi::Env env = info.Env();
  auto ops = typedArg<Napi::Uint8Array>(info, first, napi_uint8_array, "opcodes");
  auto segs = typedArg<Napi::Int32Array>(info, first + 1, napi_int32_array, "segments");
  auto locals = typedArg<Napi::BigUint64Array>(info, first + 2, napi_biguint64_array, "locals");
  auto remotes = typedArg<Napi::BigUint64Array>(info, first + 3, napi_biguint64_array, "remotes");
  auto lens = typedArg<Napi::Float64Array>(info, first + 4, napi_float64_array, "lengths");
  size_t n = ops.ElementLength();
  if (segs.ElementLength() != n || locals.ElementLength() != n || remotes.ElementLength() != n ||
      lens.ElementLength() != n) {
    throwStatus(env, invalid("request arrays differ in length"));
  }
  std::vector<mc::TransferRequest> reqs(n);
  for (size_t i = 0; i < n; ++i) {
    double l = lens[i];
    if (!(l >= 0 && l <= 9007199254740991.0) || std::floor(l) != l) {
      throwStatus(env, invalid("length must be a safe non-negative integer"), static_cast<int64_t>(i));
    }
    reqs[i] = {ops[i], segs[i], locals[i], remotes[i], static_cast<uint64_t>(l)};
  }
  return reqs;
}

// submit(token, opcodes, segments, locals, remotes, lengths, timeoutMs)
Napi::Value EngineWrap::Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  double tok = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  if (!(tok >= 1 && tok <= 9007199254740991.0)) throwStatus(env, invalid("bad token"));
  std::vector<mc::TransferRequest> reqs = requests(info, 1);
  int64_t timeoutMs = info[6].IsNumber() ? static_cast<int64_t>(info[6].As<Napi::Number>().DoubleValue()) : 0;
  size_t bad = 0;
  mc::Status st = e.submitAsync(static_cast<uint64_t>(tok), reqs.data(), reqs.size(), timeoutMs, &bad);
  if (!st.ok()) throwStatus(env, st, static_cast<int64_t>(bad));
  if (hub_->pending++ == 0 && !hub_->refed) {
    hub_->refed = true;
    hub_->tsfn.Ref(env);
  }
  return env.Undefined();
}

// cancel(token, reason: 'abort' | 'timeout')
Napi::Value EngineWrap::Cancel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) return env.Undefined();
  double tok = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  bool timeout = info[1].IsString() && info[1].As<Napi::String>().Utf8Value() == "timeout";
  if (tok >= 1) engine_->cancel(static_cast<uint64_t>(tok), timeout ? mc::Code::TIMEOUT : mc::Code::ABORTED);
  return env.Undefined();
}

Napi::Value EngineWrap::AllocateBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id = 0;
  mc::Status st = live(env).allocateBatch(toLength(env, info[0], "capacity"), &id);
  if (!st.ok()) throwStatus(env, st);
  return Napi::BigInt::New(env, id);
}

Napi::Value EngineWrap::SubmitBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  uint64_t id = toU64(env, info[0], "batchId");
  std::vector<mc::TransferRequest> reqs = requests(info, 1);
  size_t bad = 0;
  mc::Status st = e.submit(id, reqs.data(), reqs.size(), &bad);
  if (!st.ok()) throwStatus(env, st, static_cast<int64_t>(bad));
  return env.Undefined();
}

Napi::Value EngineWrap::TaskStatus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::TaskState s;
  uint64_t bytes = 0;
  mc::Code err = mc::Code::OK;
  mc::Status st = live(env).taskStatus(toU64(env, info[0], "batchId"), toLength(env, info[1], "task"), &s, &bytes, &err);
  if (!st.ok()) throwStatus(env, st);
  Napi::Array out = Napi::Array::New(env, 3);
  out.Set(0u, Napi::Number::New(env, static_cast<int>(s)));
  out.Set(1u, Napi::Number::New(env, static_cast<double>(bytes)));
  out.Set(2u, Napi::Number::New(env, static_cast<int>(err)));
  return out;
}

Napi::Value EngineWrap::BatchStatus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::TaskState s;
  uint64_t bytes = 0;
  mc::Status st = live(env).batchStatus(toU64(env, info[0], "batchId"), &s, &bytes);
  if (!st.ok()) throwStatus(env, st);
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, static_cast<int>(s)));
  out.Set(1u, Napi::Number::New(env, static_cast<double>(bytes)));
  return out;
}

Napi::Value EngineWrap::FreeBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Status st = live(env).freeBatch(toU64(env, info[0], "batchId"));
  if (!st.ok()) throwStatus(env, st);
  return env.Undefined();
}

Napi::Value EngineWrap::LocalDescriptor(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), live(info.Env()).localDescriptor());
}

Napi::Value EngineWrap::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  for (const auto& kv : live(env).stats()) o.Set(kv.first, Napi::Number::New(env, kv.second));
  o.Set("pendingBatches", Napi::Number::New(env, hub_ ? static_cast<double>(hub_->pending) : 0));
  return o;
}

Napi::Value EngineWrap::Backend(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), live(info.Env()).backendName());
}

Napi::Value EngineWrap::BackendInfo(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), live(info.Env()).backendInfo());
}

Napi::Value EngineWrap::LocalEndpoint(const Napi::CallbackInfo& info) {
  std::string ep;
  mc::Status st = live(info.Env()).localEndpoint(&ep);
  if (!st.ok()) throwStatus(info.Env(), st);
  return Napi::String::New(info.Env(), ep);
}

// sendNotify(segment, name, msg, async?): for backends with their own handshake daemon.
Napi::Value EngineWrap::SendNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  int32_t seg = static_cast<int32_t>(toLength(env, info[0], "segment"));
  std::string name = toString(env, info[1], "name"), msg = toString(env, info[2], "msg");
  return run(env, asyncArg(info, 3), [&e, seg, name, msg] { return e.sendNotify(seg, name, msg); }, nullptr);
}

// takeNotifies() -> [name, msg][]
Napi::Value EngineWrap::TakeNotifies(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<std::pair<std::string, std::string>> list;
  mc::Status st = live(env).takeNotifies(&list);
  if (!st.ok()) throwStatus(env, st);
  Napi::Array out = Napi::Array::New(env, list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    Napi::Array pair = Napi::Array::New(env, 2);
    pair.Set(0u, list[i].first);
    pair.Set(1u, list[i].second);
    out.Set(static_cast<uint32_t>(i), pair);
  }
  return out;
}

// close(): synchronous; every pending completion is delivered (as CLOSED) before it returns.
Napi::Value EngineWrap::Close(const Napi::CallbackInfo& info) {
  shutdown(info.Env(), true);
  return info.Env().Undefined();
}

}  // namespace mcaddon
