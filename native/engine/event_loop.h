// One epoll event loop on its own thread. Sockets are non-blocking; handlers run on the loop thread.
// Other threads hand work over with post(), which coalesces wake-ups through an eventfd.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "status.h"

namespace mc {

class EventHandler {
 public:
  virtual ~EventHandler() = default;
  virtual void onEvents(uint32_t events) = 0;
};

// Called on the loop thread about every tickMs.
class Ticker {
 public:
  virtual ~Ticker() = default;
  virtual void onTick(int64_t nowNs) = 0;
};

int64_t monotonicNs();

class EventLoop {
 public:
  explicit EventLoop(std::string name, int tickMs = 10);
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Creates the epoll and wake descriptors (start() does it too). Enough for add/modify/remove and
  // pollOnce() on the caller's thread, without a loop thread: what deterministic harnesses use.
  Status init();
  Status start();
  // Runs queued tasks, then stops and joins the thread. Idempotent. Must not be called from the loop.
  void stop();
  bool inLoopThread() const { return std::this_thread::get_id() == tid_.load(); }

  // Queue fn to run on the loop thread; safe from any thread. Returns false once stopping.
  bool post(std::function<void()> fn);
  // Runs fn on the loop thread and waits for it (or runs it inline when called on the loop thread).
  void runSync(const std::function<void()>& fn);

  // One round on the calling thread, for a loop that was init()ed but not started: waits up to
  // timeoutMs for events, runs their handlers, then the posted tasks, then the tickers if one is due.
  void pollOnce(int timeoutMs);

  // Loop thread only.
  bool add(int fd, uint32_t events, EventHandler* h);
  bool modify(int fd, uint32_t events, EventHandler* h);
  void remove(int fd);
  void addTicker(Ticker* t);
  void removeTicker(Ticker* t);

 private:
  void run();
  // One round: epoll_wait, handlers, posted tasks, due tickers. False when epoll_wait failed.
  bool round(int timeoutMs);
  void drainPosted();

  std::string name_;
  int tickMs_;
  int epfd_ = -1;
  int wakefd_ = -1;
  std::thread thread_;
  std::atomic<std::thread::id> tid_{};
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::vector<std::function<void()>> posted_;
  bool wakePending_ = false;
  bool stopped_ = false;  // set by the loop thread on exit; post() refuses afterwards
  std::vector<Ticker*> tickers_;
  int64_t nextTick_ = 0;
};

}  // namespace mc
