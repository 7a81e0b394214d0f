#include "completion_hub.h"

namespace mcaddon {

CompletionHub* CompletionHub::create(Napi::Env env, Napi::Function onCompletions) {
  auto* hub = new CompletionHub();
  hub->tsfn_ = CompletionTsfn::New(
      env, onCompletions, "mooncake-node:completions", 0, 1, hub, [](Napi::Env, void*, CompletionHub* h) { delete h; },
      static_cast<void*>(nullptr));
  hub->tsfn_.Unref(env);
  return hub;
}

void CompletionHub::onBatchDone(uint64_t token, mc::Code code, uint64_t bytes, std::vector<int32_t> taskCodes) {
  {
    std::lock_guard<std::mutex> g(mu_);
    queue_.push_back({token, static_cast<int32_t>(code), bytes, std::move(taskCodes)});
  }
  if (!armed_.exchange(true) && live_.load()) tsfn_.NonBlockingCall();
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
  pending_ -= static_cast<int64_t>(n);
  try {
    fn.Call({tokens, codes, bytes, details});
  } catch (const Napi::Error& e) {
    napi_fatal_exception(env, e.Value());  // surfaces as 'uncaughtException' like any callback error
  }
  return n;
}

void CompletionHub::submitted(Napi::Env env) {
  if (pending_++ == 0 && !refed_) {
    refed_ = true;
    tsfn_.Ref(env);
  }
}

void CompletionHub::release(bool jsAllowed) {
  live_.store(false);
  if (jsAllowed) tsfn_.Release();
  else tsfn_.Abort();
}

void deliverCompletions(Napi::Env env, Napi::Function fn, CompletionHub* hub, void*) {
  if (env == nullptr || hub == nullptr) return;  // tearing down: nothing may run
  size_t n = hub->deliver(env, fn);
  if (n > 0 && hub->pending_ <= 0 && hub->refed_) {
    hub->refed_ = false;
    hub->tsfn_.Unref(env);
  }
}

}  // namespace mcaddon
