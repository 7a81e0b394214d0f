// Transfer completions, from engine threads to JS: one thread-safe function per engine, called once per
// burst (armed on empty -> non-empty) and drained entirely in one JS turn.
#pragma once

#include <napi.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include "batch.h"

namespace mcaddon {

struct Completion {
  uint64_t token;
  int32_t code;
  uint64_t bytes;
  std::vector<int32_t> taskCodes;  // per task, only for failed batches
};

class CompletionHub;
// Runs on the JS thread for each TSFN call; drains the hub.
void deliverCompletions(Napi::Env env, Napi::Function fn, CompletionHub* hub, void* data);
using CompletionTsfn = Napi::TypedThreadSafeFunction<CompletionHub, void, deliverCompletions>;

// Receives completions on engine threads and hands them to JS in bursts. Owned by the TSFN (deleted by
// its finalizer), so a late call can never see freed memory.
class CompletionHub : public mc::CompletionSink {
 public:
  // Creates the hub and its TSFN (unref'd: only pending transfers keep the process alive).
  static CompletionHub* create(Napi::Env env, Napi::Function onCompletions);

  void onBatchDone(uint64_t token, mc::Code code, uint64_t bytes, std::vector<int32_t> taskCodes) override;
  // JS thread: deliver everything queued to fn. Returns the number delivered.
  size_t deliver(Napi::Env env, Napi::Function fn);
  // JS thread: one more transfer in flight (refs the TSFN on the first).
  void submitted(Napi::Env env);
  // JS thread: no more calls; what is queued was delivered (jsAllowed) or is dropped.
  void release(bool jsAllowed);

  int64_t pending() const { return pending_; }

 private:
  friend void deliverCompletions(Napi::Env, Napi::Function, CompletionHub*, void*);

  CompletionTsfn tsfn_;
  std::atomic<bool> live_{true};  // false once the TSFN is released: no more calls
  int64_t pending_ = 0;           // JS thread only: tokens submitted and not yet delivered
  bool refed_ = false;            // JS thread only
  std::mutex mu_;
  std::vector<Completion> queue_;
  std::atomic<bool> armed_{false};
};

}  // namespace mcaddon
