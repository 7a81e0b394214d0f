// Batches of transfer tasks, numbered like upstream's batch model: a batch has a fixed capacity, tasks
// get consecutive ids as they are submitted, each task ends COMPLETED or FAILED with a code, and the
// batch can be freed once every task is terminal. A batch submitted through the Promise path carries a
// token; when its last task ends the engine reports (token, code, bytes) to its CompletionSink.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "memory_registry.h"
#include "status.h"

namespace mc {

class CompletionSink {
 public:
  virtual ~CompletionSink() = default;
  // Called once per token, on an engine thread (or on the caller's thread for synchronous failures).
  virtual void onBatchDone(uint64_t token, Code code, uint64_t bytes, std::vector<int32_t> taskCodes) = 0;
};

struct Task {
  std::atomic<uint32_t> pendingSlices{0};
  std::atomic<uint64_t> transferred{0};
  std::atomic<int32_t> error{0};  // first failing Code
  std::atomic<uint8_t> state{static_cast<uint8_t>(TaskState::WAITING)};
  uint64_t length = 0;
  RegionRef localRef;  // released by whoever finishes the task
};

class Batch : public std::enable_shared_from_this<Batch> {
 public:
  Batch(uint64_t id, size_t capacity, uint64_t token, CompletionSink* sink);

  uint64_t id() const { return id_; }
  uint64_t token() const { return token_; }
  size_t capacity() const { return capacity_; }
  size_t size() const { return size_.load(std::memory_order_acquire); }
  Task& task(size_t i) { return tasks_[i]; }

  // Reserves n consecutive task slots; false when the capacity would be exceeded.
  bool reserve(size_t n, size_t* first);
  // Marks the task as having `slices` outstanding pieces (call before dispatching them).
  void beginTask(size_t i, uint64_t length, uint32_t slices, RegionRef localRef);
  // One slice ended; the last one decides the task's state.
  void sliceDone(size_t i, uint64_t bytes, Code code);
  // Ends a task that never started (validation failure, cancellation before dispatch).
  void failTask(size_t i, Code code);
  // For the Promise path: declare that no more tasks will be added, so completion can be reported.
  void seal();

  // Cancellation requested by the caller (ABORTED) or a deadline (TIMEOUT); 0 when none.
  Code cancelCode() const { return static_cast<Code>(cancel_.load(std::memory_order_acquire)); }
  bool requestCancel(Code why);
  int64_t deadlineNs() const { return deadlineNs_; }
  int64_t startNs() const { return startNs_; }
  void setStartNs(int64_t s) { startNs_ = s; }
  void setDeadlineNs(int64_t d) { deadlineNs_ = d; }

  bool allTerminal() const;
  // Aggregated state: COMPLETED if all tasks completed, FAILED if any failed, else WAITING.
  TaskState aggregate(uint64_t* bytes) const;

 private:
  void taskEnded();

  uint64_t id_;
  size_t capacity_;
  uint64_t token_;
  CompletionSink* sink_;
  std::unique_ptr<Task[]> tasks_;
  std::atomic<size_t> size_{0};
  std::atomic<size_t> unfinished_{1};  // +1 until sealed, for token batches
  std::atomic<int32_t> cancel_{0};
  int64_t deadlineNs_ = 0;
  int64_t startNs_ = 0;
  std::atomic<bool> reported_{false};
};

}  // namespace mc
