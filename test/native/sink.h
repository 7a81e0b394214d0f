// A CompletionSink for the C++ tests: records each token's outcome and lets a test wait for it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <vector>

#include "batch.h"

namespace mctest {

struct Done {
  mc::Code code = mc::Code::TIMEOUT;
  uint64_t bytes = 0;
  std::vector<int32_t> taskCodes;
};

class Sink : public mc::CompletionSink {
 public:
  void onBatchDone(uint64_t token, mc::Code code, uint64_t bytes, std::vector<int32_t> codes) override {
    std::lock_guard<std::mutex> g(mu_);
    done_[token] = {code, bytes, std::move(codes)};
    cv_.notify_all();
  }
  // False when the completion did not come within `ms`.
  bool wait(uint64_t token, Done* out, int ms = 20000) {
    std::unique_lock<std::mutex> lk(mu_);
    if (!cv_.wait_for(lk, std::chrono::milliseconds(ms), [&] { return done_.count(token) > 0; })) return false;
    *out = done_[token];
    return true;
  }
  // The token's code, or TIMEOUT when it did not complete within `ms`.
  mc::Code wait(uint64_t token, int ms = 20000) {
    Done d;
    return wait(token, &d, ms) ? d.code : mc::Code::TIMEOUT;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Done> done_;
};

}  // namespace mctest
