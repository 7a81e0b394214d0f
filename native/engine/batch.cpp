#include "batch.h"

namespace mc {

Batch::Batch(uint64_t id, size_t capacity, uint64_t token, CompletionSink* sink)
    : id_(id), capacity_(capacity), token_(token), sink_(sink), tasks_(new Task[capacity == 0 ? 1 : capacity]) {}

bool Batch::reserve(size_t n, size_t* first) {
  size_t cur = size_.load(std::memory_order_relaxed);
  do {
    if (cur + n > capacity_) return false;
  } while (!size_.compare_exchange_weak(cur, cur + n, std::memory_order_acq_rel));
  *first = cur;
  unfinished_.fetch_add(n, std::memory_order_acq_rel);
  return true;
}

void Batch::beginTask(size_t i, uint64_t length, uint32_t slices, RegionRef localRef) {
  Task& t = tasks_[i];
  t.length = length;
  t.localRef = std::move(localRef);
  t.pendingSlices.store(slices, std::memory_order_release);
}

void Batch::sliceDone(size_t i, uint64_t bytes, Code code) {
  Task& t = tasks_[i];
  if (code == Code::OK) {
    t.transferred.fetch_add(bytes, std::memory_order_relaxed);
  } else {
    int32_t expected = 0;
    t.error.compare_exchange_strong(expected, static_cast<int32_t>(code));
  }
  if (t.pendingSlices.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  int32_t err = t.error.load(std::memory_order_acquire);
  t.localRef.release();
  TaskState s = TaskState::COMPLETED;
  if (err != 0) s = err == static_cast<int32_t>(Code::TIMEOUT) ? TaskState::TIMEOUT : TaskState::FAILED;
  t.state.store(static_cast<uint8_t>(s), std::memory_order_release);
  taskEnded();
}

void Batch::failTask(size_t i, Code code) {
  Task& t = tasks_[i];
  t.error.store(static_cast<int32_t>(code), std::memory_order_release);
  t.localRef.release();
  t.state.store(static_cast<uint8_t>(code == Code::TIMEOUT ? TaskState::TIMEOUT : TaskState::FAILED),
                std::memory_order_release);
  taskEnded();
}

void Batch::seal() { taskEnded(); }

bool Batch::requestCancel(Code why) {
  int32_t expected = 0;
  return cancel_.compare_exchange_strong(expected, static_cast<int32_t>(why), std::memory_order_acq_rel);
}

void Batch::taskEnded() {
  if (unfinished_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  if (token_ == 0 || sink_ == nullptr || reported_.exchange(true)) return;
  // Everything ended: compute the batch result once.
  size_t n = size();
  uint64_t bytes = 0;
  Code first = Code::OK;
  std::vector<int32_t> codes;
  for (size_t k = 0; k < n; ++k) {
    bytes += tasks_[k].transferred.load(std::memory_order_relaxed);
    int32_t e = tasks_[k].error.load(std::memory_order_acquire);
    if (e != 0 && first == Code::OK) first = static_cast<Code>(e);
  }
  if (first != Code::OK) {
    // A cancelled batch reports why it was cancelled, whatever its tasks saw.
    Code c = cancelCode();
    if (c != Code::OK) first = c;
    codes.resize(n);
    for (size_t k = 0; k < n; ++k) codes[k] = tasks_[k].error.load(std::memory_order_acquire);
  }
  sink_->onBatchDone(token_, first, bytes, std::move(codes));
}

bool Batch::allTerminal() const {
  size_t n = size();
  for (size_t k = 0; k < n; ++k) {
    if (!isTerminal(static_cast<TaskState>(tasks_[k].state.load(std::memory_order_acquire)))) return false;
  }
  return true;
}

TaskState Batch::aggregate(uint64_t* bytes) const {
  size_t n = size();
  uint64_t total = 0;
  bool failed = false, waiting = false;
  for (size_t k = 0; k < n; ++k) {
    total += tasks_[k].transferred.load(std::memory_order_relaxed);
    auto s = static_cast<TaskState>(tasks_[k].state.load(std::memory_order_acquire));
    if (s == TaskState::FAILED || s == TaskState::TIMEOUT || s == TaskState::CANCELED) failed = true;
    else if (s != TaskState::COMPLETED) waiting = true;
  }
  if (bytes) *bytes = total;
  if (failed) return TaskState::FAILED;
  if (waiting) return TaskState::WAITING;
  return TaskState::COMPLETED;
}

}  // namespace mc
