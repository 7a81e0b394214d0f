#include "event_loop.h"

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <ctime>

namespace mc {

int64_t monotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

EventLoop::EventLoop(std::string name, int tickMs) : name_(std::move(name)), tickMs_(tickMs) {}

EventLoop::~EventLoop() {
  stop();
  if (wakefd_ >= 0) close(wakefd_);
  if (epfd_ >= 0) close(epfd_);
}

Status EventLoop::init() {
  if (epfd_ >= 0) return Status();
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return Status(Code::SOCKET, "epoll_create1 failed");
  wakefd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wakefd_ < 0) return Status(Code::SOCKET, "eventfd failed");
  struct epoll_event ev {};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // nullptr marks the wake fd
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, wakefd_, &ev) != 0) return Status(Code::SOCKET, "epoll_ctl failed");
  nextTick_ = monotonicNs() + tickMs_ * 1000000LL;
  return Status();
}

Status EventLoop::start() {
  Status st = init();
  if (!st.ok()) return st;
  thread_ = std::thread([this] { run(); });
  return Status();
}

void EventLoop::pollOnce(int timeoutMs) { round(timeoutMs); }

void EventLoop::stop() {
  if (!thread_.joinable()) return;
  stopping_.store(true);
  uint64_t one = 1;
  ssize_t n = write(wakefd_, &one, sizeof one);
  (void)n;
  thread_.join();
}

bool EventLoop::post(std::function<void()> fn) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (stopped_) return false;
    posted_.push_back(std::move(fn));
    if (!wakePending_) { wakePending_ = true; wake = true; }
  }
  if (wake && !inLoopThread()) {
    uint64_t one = 1;
    ssize_t n = write(wakefd_, &one, sizeof one);
    (void)n;
  }
  return true;
}

void EventLoop::runSync(const std::function<void()>& fn) {
  if (inLoopThread()) { fn(); return; }
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  bool posted = post([&] {
    fn();
    std::lock_guard<std::mutex> g(m);
    done = true;
    cv.notify_one();
  });
  if (!posted) { fn(); return; }  // the loop has stopped: nothing else runs on its objects
  std::unique_lock<std::mutex> lk(m);
  cv.wait(lk, [&] { return done; });
}

bool EventLoop::add(int fd, uint32_t events, EventHandler* h) {
  struct epoll_event ev {};
  ev.events = events;
  ev.data.ptr = h;
  return epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0;
}

bool EventLoop::modify(int fd, uint32_t events, EventHandler* h) {
  struct epoll_event ev {};
  ev.events = events;
  ev.data.ptr = h;
  return epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) == 0;
}

void EventLoop::remove(int fd) { epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr); }

void EventLoop::addTicker(Ticker* t) { tickers_.push_back(t); }

void EventLoop::removeTicker(Ticker* t) { tickers_.erase(std::remove(tickers_.begin(), tickers_.end(), t), tickers_.end()); }

void EventLoop::drainPosted() {
  for (int rounds = 0; rounds < 64; ++rounds) {
    std::vector<std::function<void()>> batch;
    {
      std::lock_guard<std::mutex> g(mu_);
      if (posted_.empty()) { wakePending_ = false; return; }
      batch.swap(posted_);
    }
    for (auto& fn : batch) fn();
  }
  // Still busy after many rounds: leave the rest for the next iteration, which will not block.
}

bool EventLoop::round(int timeoutMs) {
  constexpr int kMaxEvents = 256;
  struct epoll_event events[kMaxEvents];
  int n = epoll_wait(epfd_, events, kMaxEvents, timeoutMs);
  if (n < 0 && errno != EINTR) return false;
  for (int i = 0; i < n; ++i) {
    auto* h = static_cast<EventHandler*>(events[i].data.ptr);
    if (h == nullptr) {
      uint64_t v;
      ssize_t r = read(wakefd_, &v, sizeof v);
      (void)r;
      continue;
    }
    h->onEvents(events[i].events);
  }
  drainPosted();
  int64_t now = monotonicNs();
  if (now >= nextTick_) {
    nextTick_ = now + tickMs_ * 1000000LL;
    auto tickers = tickers_;  // handlers may unregister themselves
    for (Ticker* t : tickers) t->onTick(now);
  }
  return true;
}

void EventLoop::run() {
  tid_.store(std::this_thread::get_id());
  pthread_setname_np(pthread_self(), name_.substr(0, 15).c_str());
  while (true) {
    bool havePosted;
    {
      std::lock_guard<std::mutex> g(mu_);
      havePosted = !posted_.empty();
    }
    int64_t now = monotonicNs();
    int timeout = havePosted ? 0 : static_cast<int>(std::max<int64_t>(0, (nextTick_ - now) / 1000000LL) + 1);
    if (!round(timeout)) break;
    if (stopping_.load()) break;
  }
  // Final drain: anything posted from now on is refused, so no task is silently dropped.
  for (;;) {
    std::vector<std::function<void()>> batch;
    {
      std::lock_guard<std::mutex> g(mu_);
      batch.swap(posted_);
      if (batch.empty()) { stopped_ = true; break; }
    }
    for (auto& fn : batch) fn();
  }
  tid_.store(std::thread::id());
}

}  // namespace mc
