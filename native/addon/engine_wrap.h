// The engine as a JS class. Owns one native engine (any backend), one thread-safe function that
// delivers completions in batches, and strong references to the JS memory registered with it.
#pragma once

#include <napi.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "engine.h"

namespace mcaddon {

struct Completion {
  uint64_t token;
  int32_t code;
  uint64_t bytes;
  std::vector<int32_t> taskCodes;  // per task, only for failed batches
};

class CompletionHub;
// Runs on the JS thread for each TSFN call; drains the hub (see engine_wrap.cpp).
void deliverCompletions(Napi::Env env, Napi::Function fn, CompletionHub* hub, void* data);
using CompletionTsfn = Napi::TypedThreadSafeFunction<CompletionHub, void, deliverCompletions>;

// Receives completions on engine threads and hands them to JS in bursts: one TSFN call per burst
// (armed on empty -> non-empty), drained entirely in one JS turn. Owned by the TSFN (deleted by its
// finalizer), so a late call can never see freed memory.
class CompletionHub : public mc::CompletionSink {
 public:
  void onBatchDone(uint64_t token, mc::Code code, uint64_t bytes, std::vector<int32_t> taskCodes) override;
  // JS thread: deliver everything queued to fn. Returns the number delivered.
  size_t deliver(Napi::Env env, Napi::Function fn);

  CompletionTsfn tsfn;
  std::atomic<bool> live{true};  // false once the TSFN is released: no more calls
  int64_t pending = 0;           // JS thread only: tokens submitted and not yet delivered
  bool refed = false;            // JS thread only

 private:
  std::mutex mu_;
  std::vector<Completion> queue_;
  std::atomic<bool> armed_{false};
};

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit EngineWrap(const Napi::CallbackInfo& info);
  ~EngineWrap() override;

 private:
  static void CleanupHook(void* arg);

  mc::Engine& live(Napi::Env env);
  // Methods run only on objects this addon (this load of it) created: napi_unwrap does not check types,
  // so another addon's wrapped object passed as `this` would be reinterpreted (better-sqlite3's rule).
  static void checkTag(const Napi::CallbackInfo& info);
  template <Napi::Value (EngineWrap::*Method)(const Napi::CallbackInfo&)>
  Napi::Value Tagged(const Napi::CallbackInfo& info) {
    checkTag(info);  // before any member is touched
    return (this->*Method)(info);
  }
  // Stops the engine (joining its threads), delivers what is left when JS may run, releases the TSFN.
  void shutdown(Napi::Env env, bool jsAllowed);
  void afterDelivery(Napi::Env env, size_t delivered);
  std::vector<mc::TransferRequest> requests(const Napi::CallbackInfo& info, size_t first);

  Napi::Value DataPort(const Napi::CallbackInfo& info);
  Napi::Value RegisterBuffer(const Napi::CallbackInfo& info);
  Napi::Value RegisterAddress(const Napi::CallbackInfo& info);
  Napi::Value AllocateManaged(const Napi::CallbackInfo& info);
  Napi::Value AllocateDevice(const Napi::CallbackInfo& info);
  Napi::Value CopyDevice(const Napi::CallbackInfo& info);
  Napi::Value Unregister(const Napi::CallbackInfo& info);
  Napi::Value OpenSegment(const Napi::CallbackInfo& info);
  Napi::Value CloseSegment(const Napi::CallbackInfo& info);
  Napi::Value SegmentInfo(const Napi::CallbackInfo& info);
  Napi::Value Submit(const Napi::CallbackInfo& info);
  Napi::Value Cancel(const Napi::CallbackInfo& info);
  Napi::Value AllocateBatch(const Napi::CallbackInfo& info);
  Napi::Value SubmitBatch(const Napi::CallbackInfo& info);
  Napi::Value TaskStatus(const Napi::CallbackInfo& info);
  Napi::Value BatchStatus(const Napi::CallbackInfo& info);
  Napi::Value FreeBatch(const Napi::CallbackInfo& info);
  Napi::Value LocalDescriptor(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Metrics(const Napi::CallbackInfo& info);
  Napi::Value Backend(const Napi::CallbackInfo& info);
  Napi::Value LocalEndpoint(const Napi::CallbackInfo& info);
  Napi::Value BackendInfo(const Napi::CallbackInfo& info);
  Napi::Value SendNotify(const Napi::CallbackInfo& info);
  Napi::Value TakeNotifies(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  // Blocking engine calls (the upstream backend talks to its metadata store and peers inside them)
  // run on a libuv pool thread and return Promises; see BlockingCall in engine_wrap.cpp.
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value run(Napi::Env env, bool async, std::function<mc::Status()> work, std::function<Napi::Value(Napi::Env)> done,
                  Napi::Value keep = Napi::Value());
  Napi::Value CloseAsync(const Napi::CallbackInfo& info);
  bool started_ = false;
  bool stopping_ = false;  // closeAsync in progress

  napi_env env_;
  mc::EngineConfig config_;
  std::unique_ptr<mc::Engine> engine_;
  CompletionHub* hub_ = nullptr;
  Napi::FunctionReference onCompletions_;
  bool closed_ = false;
  bool hookInstalled_ = false;
  std::unordered_map<uint64_t, Napi::Reference<Napi::Value>> pinned_;  // registered JS memory
};

}  // namespace mcaddon
