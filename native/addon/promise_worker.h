// The one base for binding calls that settle a Promise (duckdb-node-neo's PromiseWorker model): the
// work runs on a libuv pool thread and returns a Status; back on the JS thread the Promise resolves with
// Result() or rejects with the package's MooncakeError for the Status. JS values the call uses stay
// referenced (keep()) until it settles. Only for bounded blocking calls: nothing here waits on I/O that
// a peer controls for long (transfers complete through the engine's thread-safe function instead).
#pragma once

#include <napi.h>

#include <functional>
#include <utility>
#include <vector>

#include "addon.h"
#include "status.h"

namespace mcaddon {

class PromiseWorker : public Napi::AsyncWorker {
 public:
  explicit PromiseWorker(Napi::Env env, const char* name = "mooncake-node:call")
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)) {}

  // Keeps `v` (the engine object, a buffer) referenced until the Promise settles.
  void keep(Napi::Value v) { kept_.push_back(Napi::Persistent(v)); }

  // Queues the work; the worker deletes itself once the Promise is settled.
  Napi::Promise start() {
    Napi::Promise p = deferred_.Promise();
    Queue();
    return p;
  }

 protected:
  // Pool thread: no JS, no Napi values.
  virtual mc::Status Run() = 0;
  // JS thread, after Run() succeeded: the resolution value.
  virtual Napi::Value Result(Napi::Env env) { return env.Undefined(); }
  // JS thread, before the Promise settles either way.
  virtual void Settled(Napi::Env env, bool ok) {}

 private:
  void Execute() final {
    status_ = Run();
    if (!status_.ok()) SetError(status_.message.empty() ? mc::codeName(status_.code) : status_.message);
  }
  void OnOK() final {
    Settled(Env(), true);
    deferred_.Resolve(Result(Env()));
  }
  void OnError(const Napi::Error&) final {
    Settled(Env(), false);
    deferred_.Reject(makeError(Env(), status_).Value());
  }

  Napi::Promise::Deferred deferred_;
  std::vector<Napi::Reference<Napi::Value>> kept_;
  mc::Status status_;
};

// A PromiseWorker from functions: `work` on the pool thread, `done` (optional) builds the value on the
// JS thread, `failed` (optional) cleans up on the JS thread when `work` failed.
class FunctionWorker final : public PromiseWorker {
 public:
  using Work = std::function<mc::Status()>;
  using Done = std::function<Napi::Value(Napi::Env)>;
  using Failed = std::function<void(Napi::Env)>;
  FunctionWorker(Napi::Env env, Work work, Done done, Failed failed = nullptr)
      : PromiseWorker(env, "mooncake-node:engine-call"), work_(std::move(work)), done_(std::move(done)), failed_(std::move(failed)) {}

 protected:
  mc::Status Run() override { return work_(); }
  Napi::Value Result(Napi::Env env) override { return done_ ? done_(env) : env.Undefined(); }
  void Settled(Napi::Env env, bool ok) override {
    if (!ok && failed_) failed_(env);
  }

 private:
  Work work_;
  Done done_;
  Failed failed_;
};

// A Promise already settled with `st` (resolved with done(env) when ok): the same shape of answer as
// a worker's, for calls that need no pool thread.
Napi::Promise settledPromise(Napi::Env env, const mc::Status& st, const FunctionWorker::Done& done);

}  // namespace mcaddon
