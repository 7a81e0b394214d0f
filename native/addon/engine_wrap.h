// The engine as a JS class: one native engine (any backend), one thread-safe function that delivers
// completions in batches (completion_hub.h), and strong references to the JS memory registered with it.
// Control-plane calls return Promises (run on a pool thread when the backend's calls may block);
// transfers are submitted synchronously and complete through the hub. One file per concern:
// engine_wrap.cpp (life cycle), engine_memory.cpp, engine_segments.cpp, engine_transfers.cpp,
// engine_info.cpp, config_js.cpp (the config object).
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "completion_hub.h"
#include "engine.h"
#include "promise_worker.h"

namespace mcaddon {

// The engine for a JS config object (backend 'builtin' or 'mooncake'); throws INVALID_ARGUMENT.
std::unique_ptr<mc::Engine> engineFromConfig(Napi::Env env, Napi::Object o, mc::CompletionSink* sink, mc::EngineConfig* cfg);

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit EngineWrap(const Napi::CallbackInfo& info);
  ~EngineWrap() override;

 private:
  static void CleanupHook(void* arg);
  // Methods run only on objects this addon (this load of it) created: napi_unwrap does not check types,
  // so another addon's wrapped object passed as `this` would be reinterpreted (better-sqlite3's rule).
  static void checkTag(const Napi::CallbackInfo& info);
  template <Napi::Value (EngineWrap::*Method)(const Napi::CallbackInfo&)>
  Napi::Value Tagged(const Napi::CallbackInfo& info) {
    checkTag(info);  // before any member is touched
    return (this->*Method)(info);
  }

  mc::Engine& live(Napi::Env env);
  // A control-plane call as a Promise: `work` runs on a pool thread when the backend's calls may block
  // (the engine object and `keep` stay referenced meanwhile), else inline; `done` builds the value on the
  // JS thread, `failed` cleans up there when `work` failed.
  Napi::Value call(Napi::Env env, FunctionWorker::Work work, FunctionWorker::Done done, Napi::Value keep = Napi::Value(),
                   FunctionWorker::Failed failed = nullptr);
  // Stops the engine (joining its threads), delivers what is left when JS may run, releases the TSFN.
  void shutdown(Napi::Env env, bool jsAllowed);
  std::vector<mc::TransferRequest> requests(const Napi::CallbackInfo& info, size_t first);

  // engine_wrap.cpp
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  // engine_memory.cpp
  Napi::Value RegisterBuffer(const Napi::CallbackInfo& info);
  Napi::Value RegisterAddress(const Napi::CallbackInfo& info);
  Napi::Value AllocateManaged(const Napi::CallbackInfo& info);
  Napi::Value AllocateDevice(const Napi::CallbackInfo& info);
  Napi::Value CopyDevice(const Napi::CallbackInfo& info);
  Napi::Value Unregister(const Napi::CallbackInfo& info);
  // engine_segments.cpp
  Napi::Value OpenSegment(const Napi::CallbackInfo& info);
  Napi::Value CloseSegment(const Napi::CallbackInfo& info);
  // engine_transfers.cpp
  Napi::Value Submit(const Napi::CallbackInfo& info);
  Napi::Value Cancel(const Napi::CallbackInfo& info);
  // engine_info.cpp
  Napi::Value DataPort(const Napi::CallbackInfo& info);
  Napi::Value LocalDescriptor(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Metrics(const Napi::CallbackInfo& info);
  Napi::Value Backend(const Napi::CallbackInfo& info);
  Napi::Value BackendInfo(const Napi::CallbackInfo& info);
  Napi::Value LocalEndpoint(const Napi::CallbackInfo& info);
  Napi::Value SendNotify(const Napi::CallbackInfo& info);
  Napi::Value TakeNotifies(const Napi::CallbackInfo& info);

  napi_env env_;
  mc::EngineConfig config_;
  std::unique_ptr<mc::Engine> engine_;
  CompletionHub* hub_ = nullptr;
  Napi::FunctionReference onCompletions_;
  bool closed_ = false;
  bool stopping_ = false;  // a close() on a pool thread is in progress: every other call fails with CLOSED
  bool hookInstalled_ = false;
  std::unordered_map<uint64_t, Napi::Reference<Napi::Value>> pinned_;  // registered JS memory
};

}  // namespace mcaddon
