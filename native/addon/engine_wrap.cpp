#include "engine_wrap.h"

#include "addon.h"

namespace mcaddon {

Napi::Function EngineWrap::Define(Napi::Env env) {
  return DefineClass(env, "Engine",
                     {
                         InstanceMethod("start", &EngineWrap::Tagged<&EngineWrap::Start>),
                         InstanceMethod("close", &EngineWrap::Tagged<&EngineWrap::Close>),
                         InstanceMethod("registerBuffer", &EngineWrap::Tagged<&EngineWrap::RegisterBuffer>),
                         InstanceMethod("registerAddress", &EngineWrap::Tagged<&EngineWrap::RegisterAddress>),
                         InstanceMethod("allocateManaged", &EngineWrap::Tagged<&EngineWrap::AllocateManaged>),
                         InstanceMethod("allocateDevice", &EngineWrap::Tagged<&EngineWrap::AllocateDevice>),
                         InstanceMethod("copyDevice", &EngineWrap::Tagged<&EngineWrap::CopyDevice>),
                         InstanceMethod("unregister", &EngineWrap::Tagged<&EngineWrap::Unregister>),
                         InstanceMethod("openSegment", &EngineWrap::Tagged<&EngineWrap::OpenSegment>),
                         InstanceMethod("closeSegment", &EngineWrap::Tagged<&EngineWrap::CloseSegment>),
                         InstanceMethod("submit", &EngineWrap::Tagged<&EngineWrap::Submit>),
                         InstanceMethod("cancel", &EngineWrap::Tagged<&EngineWrap::Cancel>),
                         InstanceMethod("dataPort", &EngineWrap::Tagged<&EngineWrap::DataPort>),
                         InstanceMethod("localDescriptor", &EngineWrap::Tagged<&EngineWrap::LocalDescriptor>),
                         InstanceMethod("stats", &EngineWrap::Tagged<&EngineWrap::Stats>),
                         InstanceMethod("metrics", &EngineWrap::Tagged<&EngineWrap::Metrics>),
                         InstanceMethod("backend", &EngineWrap::Tagged<&EngineWrap::Backend>),
                         InstanceMethod("backendInfo", &EngineWrap::Tagged<&EngineWrap::BackendInfo>),
                         InstanceMethod("localEndpoint", &EngineWrap::Tagged<&EngineWrap::LocalEndpoint>),
                         InstanceMethod("sendNotify", &EngineWrap::Tagged<&EngineWrap::SendNotify>),
                         InstanceMethod("takeNotifies", &EngineWrap::Tagged<&EngineWrap::TakeNotifies>),
                     });
}

// new Engine(config, onCompletions(tokens: Float64Array, codes: Int32Array, bytes: Float64Array, details[])).
// Nothing runs until start().
EngineWrap::EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info), env_(info.Env()) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throwStatus(env, mc::Status(mc::Code::INVALID_ARGUMENT, "engine config must be an object"));
  if (!info[1].IsFunction()) throwStatus(env, mc::Status(mc::Code::INVALID_ARGUMENT, "onCompletions must be a function"));
  onCompletions_ = Napi::Persistent(info[1].As<Napi::Function>());
  hub_ = CompletionHub::create(env, info[1].As<Napi::Function>());
  try {
    engine_ = engineFromConfig(env, info[0].As<Napi::Object>(), hub_, &config_);
  } catch (...) {
    hub_->release(true);
    hub_ = nullptr;
    closed_ = true;
    throw;
  }
  napi_type_tag_object(env, info.This(), &env.GetInstanceData<Addon>()->engineTag);
  napi_add_env_cleanup_hook(env_, &EngineWrap::CleanupHook, this);
  hookInstalled_ = true;
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

Napi::Value EngineWrap::call(Napi::Env env, FunctionWorker::Work work, FunctionWorker::Done done, Napi::Value keep,
                             FunctionWorker::Failed failed) {
  if (engine_->controlBlocks()) {
    auto* w = new FunctionWorker(env, std::move(work), std::move(done), std::move(failed));
    w->keep(Value());  // the engine object (and so the engine) outlives the call
    if (!keep.IsEmpty()) w->keep(keep);
    return w->start();
  }
  mc::Status st = work();
  if (!st.ok() && failed) failed(env);
  return settledPromise(env, st, done);
}

// start() -> Promise<void>: starts the data plane (the upstream backend creates its engine and talks to
// its metadata store). A failed start closes the engine.
Napi::Value EngineWrap::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  return call(env, [&e] { return e.start(); }, nullptr, Napi::Value(), [this](Napi::Env env2) { shutdown(env2, true); });
}

// close() -> Promise<void>: stops the engine (on a pool thread when its shutdown may block), then, on the
// JS thread, delivers what is left (as CLOSED) and releases the thread-safe function. Idempotent.
Napi::Value EngineWrap::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_ || stopping_ || !engine_) return settledPromise(env, mc::Status(), nullptr);
  if (!engine_->controlBlocks()) {
    shutdown(env, true);
    return settledPromise(env, mc::Status(), nullptr);
  }
  mc::Engine* e = engine_.get();
  stopping_ = true;
  return call(env, [e] { e->stop(); return mc::Status(); }, [this](Napi::Env env2) {
    shutdown(env2, true);
    return env2.Undefined();
  });
}

void EngineWrap::shutdown(Napi::Env env, bool jsAllowed) {
  if (closed_) return;
  closed_ = true;
  if (engine_) engine_->stop();  // joins every engine thread; what was pending is now queued as CLOSED
  if (hub_) {
    if (jsAllowed && !onCompletions_.IsEmpty()) hub_->deliver(env, onCompletions_.Value());
    hub_->release(jsAllowed);
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

Napi::Promise settledPromise(Napi::Env env, const mc::Status& st, const FunctionWorker::Done& done) {
  auto d = Napi::Promise::Deferred::New(env);
  if (st.ok()) d.Resolve(done ? done(env) : env.Undefined());
  else d.Reject(makeError(env, st).Value());
  return d.Promise();
}

}  // namespace mcaddon
