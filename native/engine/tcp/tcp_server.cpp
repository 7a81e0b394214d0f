// Server side of the TCP transport: serves READ/WRITE requests strictly inside one registered region.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "tcp_conn.h"

namespace mc::tcp {

namespace {
constexpr size_t kMaxIov = 64;
constexpr uint64_t kDirectRecv = 32 * 1024;
constexpr uint64_t kMaxQueuedOut = 16ull << 20;  // stop reading requests while this much READ data waits
constexpr int kMaxReadsPerEvent = 64;
}  // namespace

ServerConn::ServerConn(TcpTransport& t, LoopCtx& ctx, int fd, std::string source)
    : t_(t), ctx_(ctx), fd_(fd), source_(std::move(source)) {}

ServerConn::~ServerConn() {
  if (fd_ >= 0) {
    ::close(fd_);
    releaseSlot();
  }
}

void ServerConn::releaseSlot() {
  t_.serverConns.fetch_sub(1, std::memory_order_relaxed);
  t_.sourceRelease(source_);
  source_.clear();
}

bool ServerConn::start() {
  net::setNoDelay(fd_);
  net::setKeepAlive(fd_, t_.options().idleTimeoutMs);
  lastProgress_ = monotonicNs();
  return ctx_.loop->add(fd_, EPOLLIN | EPOLLRDHUP, this);
}

bool ServerConn::stalled(int64_t now, int64_t limitNs) const {
  if (fd_ < 0) return false;
  const bool midRequest = hdrHave_ > 0 || inBody_ || !out_.empty() || closeAfterFlush_;
  return midRequest && now - lastProgress_ > limitNs;
}

void ServerReaper::onTick(int64_t now) {
  if (now < nextScan_) return;
  const int64_t limit = static_cast<int64_t>(t_.options().idleTimeoutMs) * 1000000LL;
  nextScan_ = now + std::min<int64_t>(100000000LL, std::max<int64_t>(limit / 4, 10000000LL));
  std::vector<ServerConn*> stalled;
  for (auto& kv : ctx_.servers) if (kv.first->stalled(now, limit)) stalled.push_back(kv.first);
  for (ServerConn* s : stalled) {
    t_.serverConnsTimedOut.fetch_add(1, std::memory_order_relaxed);
    s->close();  // releases the region references it held; erased from ctx_.servers later
  }
}

void ServerConn::close() {
  if (fd_ < 0) return;
  ctx_.loop->remove(fd_);
  ::close(fd_);
  fd_ = -1;
  releaseSlot();
  out_.clear();
  bodyRef_.release();
  LoopCtx* ctx = &ctx_;
  ServerConn* self = this;
  // Deleted after the current round of events, which may still name this handler.
  ctx_.loop->post([ctx, self] { ctx->servers.erase(self); });
}

void ServerConn::onEvents(uint32_t events) {
  if (fd_ < 0) return;
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
    onReadable();
    if (fd_ < 0) return;
  }
  if (events & EPOLLOUT) {
    if (!flush()) close();
  }
}

void ServerConn::onReadable() {
  for (int iter = 0; iter < kMaxReadsPerEvent && fd_ >= 0 && !readPaused_; ++iter) {
    ssize_t r;
    if (inBody_ && remaining_ >= kDirectRecv) {
      r = ::recv(fd_, dest_, remaining_, 0);
      if (r > 0) {
        lastProgress_ = monotonicNs();
        t_.bytesReceived.fetch_add(static_cast<uint64_t>(r), std::memory_order_relaxed);
        dest_ += r;
        remaining_ -= static_cast<uint64_t>(r);
        if (remaining_ == 0 && !consume(nullptr, 0)) { close(); return; }  // ends the body
        continue;
      }
    } else {
      r = ::recv(fd_, ctx_.scratch.data(), ctx_.scratch.size(), 0);
      if (r > 0) {
        lastProgress_ = monotonicNs();
        t_.bytesReceived.fetch_add(static_cast<uint64_t>(r), std::memory_order_relaxed);
        if (!consume(ctx_.scratch.data(), static_cast<size_t>(r))) { close(); return; }
        continue;
      }
    }
    if (r == 0) {  // EOF
      // Quiet at a header boundary, or abandoned mid-request: done. A client that half-closed after
      // its requests still gets what it asked for: stop reading, send the rest, then close.
      if (out_.empty() || inBody_ || hdrHave_ > 0) { close(); return; }
      peerClosed_ = true;
      readPaused_ = true;
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    close();
    return;
  }
  if (fd_ >= 0 && !flush()) close();
}

bool ServerConn::consume(const uint8_t* p, size_t n) {
  for (;;) {
    if (inBody_) {
      uint64_t k = std::min<uint64_t>(n, remaining_);
      if (k > 0) {
        std::memcpy(dest_, p, k);
        dest_ += k;
        remaining_ -= k;
        p += k;
        n -= k;
      }
      if (remaining_ > 0) return true;
      if (!finishBody()) return false;
    }
    if (n == 0) return true;
    if (closeAfterFlush_) return true;  // after a rejection the rest of the stream is discarded
    size_t k = std::min<size_t>(n, kHeaderSize - hdrHave_);
    std::memcpy(hdr_ + hdrHave_, p, k);
    hdrHave_ += k;
    p += k;
    n -= k;
    if (hdrHave_ < kHeaderSize) return true;
    hdrHave_ = 0;
    if (!handleHeader()) return false;
  }
}

bool ServerConn::reject(bool v2) {
  t_.requestsRejected.fetch_add(1, std::memory_order_relaxed);
  // Answers to the requests before this one are still sent: upstream serves one request at a time, so a
  // peer receives them before it learns of the rejection. v2 then gets the rejected frame; v1 has no
  // status frame, so end-of-stream is its only signal. Either way the stream is half-closed once the
  // queue is out (closing at once would drop queued answers) and the rest of the input is discarded.
  if (v2) out_.push_back({kRejectedFrame, kStatusSize, 0, RegionRef(), nullptr});
  closeAfterFlush_ = true;
  return true;
}

bool ServerConn::finishBody() {
  inBody_ = false;
  if (bodyDevDest_ != nullptr) {
    const Region* r = bodyRef_.get();
    Status st = r->runtime->copyToDevice(r->device, bodyDevDest_, bodyStaging_.get(), bodyLen_);
    bodyStaging_.reset();
    bodyDevDest_ = nullptr;
    bodyRef_.release();
    if (!st.ok()) return reject(bodyV2_);  // not applied: the client must not see success
  }
  bodyRef_.release();
  t_.requestsServed.fetch_add(1, std::memory_order_relaxed);
  if (bodyV2_) out_.push_back({kOkFrame, kStatusSize, 0, RegionRef(), nullptr});  // applied: acknowledge
  return true;
}

bool ServerConn::handleHeader() {
  Header h = decodeHeader(hdr_);
  RegionRef ref = t_.registry().acquire(h.addr, h.size, /*remote=*/true);
  if (!ref) return reject(h.v2());
  const Region* region = ref.get();
  uint8_t* target = reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(h.addr));
  const bool onDevice = region->device >= 0 && region->runtime != nullptr;
  if (h.isWrite()) {
    inBody_ = true;
    bodyV2_ = h.v2();
    remaining_ = h.size;
    bodyRef_ = std::move(ref);
    if (onDevice) {  // device memory is not addressable from the host: receive into staging
      bodyStaging_.reset(new uint8_t[h.size]);
      bodyDevDest_ = target;
      bodyLen_ = h.size;
      dest_ = bodyStaging_.get();
    } else {
      dest_ = target;
    }
    return true;
  }
  std::unique_ptr<uint8_t[]> staged;
  const uint8_t* src = target;
  if (onDevice) {
    staged.reset(new uint8_t[h.size]);
    if (!region->runtime->copyToHost(region->device, staged.get(), target, h.size).ok()) return reject(h.v2());
    src = staged.get();
  }
  if (h.v2()) out_.push_back({kOkFrame, kStatusSize, 0, RegionRef(), nullptr});
  out_.push_back({src, h.size, 0, std::move(ref), std::move(staged)});
  outBytes_ += h.size;
  t_.requestsServed.fetch_add(1, std::memory_order_relaxed);
  if (outBytes_ > kMaxQueuedOut) readPaused_ = true;
  return true;
}

bool ServerConn::flush() {
  bool blocked = false;
  while (!out_.empty()) {
    struct iovec iov[kMaxIov];
    size_t n = 0;
    uint64_t total = 0;
    for (auto it = out_.begin(); it != out_.end() && n < kMaxIov; ++it, ++n) {
      iov[n].iov_base = const_cast<uint8_t*>(it->p + it->off);
      iov[n].iov_len = it->len - it->off;
      total += iov[n].iov_len;
    }
    struct msghdr msg {};
    msg.msg_iov = iov;
    msg.msg_iovlen = n;
    ssize_t w = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) { blocked = true; break; }
      return false;
    }
    if (w > 0) lastProgress_ = monotonicNs();
    t_.bytesSent.fetch_add(static_cast<uint64_t>(w), std::memory_order_relaxed);
    uint64_t left = static_cast<uint64_t>(w);
    while (left > 0) {
      Out& o = out_.front();
      uint64_t k = std::min(left, o.len - o.off);
      o.off += k;
      left -= k;
      if (o.off == o.len) {
        if (o.ref) outBytes_ -= o.len;
        out_.pop_front();
      }
    }
    if (static_cast<uint64_t>(w) < total) { blocked = true; break; }
  }
  if (out_.empty() && closeAfterFlush_) {
    // Rejected: the status frame is out. Half-close so the client reads it rather than a reset, and
    // keep discarding its input until it closes (consume() drops everything now).
    ::shutdown(fd_, SHUT_WR);
  }
  if (out_.empty() && peerClosed_) return false;  // everything asked for before the EOF is out
  if (readPaused_ && !peerClosed_ && outBytes_ <= kMaxQueuedOut / 2) readPaused_ = false;
  wantWrite_ = blocked;
  updateInterest();
  return true;
}

void ServerConn::updateInterest() {
  if (fd_ < 0) return;
  uint32_t ev = (readPaused_ ? 0u : static_cast<uint32_t>(EPOLLIN | EPOLLRDHUP)) | (wantWrite_ ? static_cast<uint32_t>(EPOLLOUT) : 0u);
  ctx_.loop->modify(fd_, ev, this);
}

Listener::~Listener() {
  if (fd_ >= 0) ::close(fd_);
  if (spare_ >= 0) ::close(spare_);
  for (auto& kv : silent_) {  // only when close() never ran (the loop never started)
    if (kv.second->fd >= 0) ::close(kv.second->fd);
    delete kv.second;
  }
}

bool Listener::start() {
  spare_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ctx_.loop->addTicker(this);
  return ctx_.loop->add(fd_, EPOLLIN, this);
}

void Listener::close() {
  if (fd_ < 0) return;
  ctx_.loop->removeTicker(this);
  if (pausedUntil_ == 0) ctx_.loop->remove(fd_);
  ::close(fd_);
  fd_ = -1;
  if (spare_ >= 0) ::close(spare_);
  spare_ = -1;
  while (!silent_.empty()) drop(silent_.begin()->second);
}

void Listener::refuseOne() {
  if (spare_ < 0) spare_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (spare_ < 0) {
    // Nothing to give up: stop watching the listener for a moment rather than spin on it.
    ctx_.loop->remove(fd_);
    pausedUntil_ = monotonicNs() + 100000000LL;
    return;
  }
  ::close(spare_);
  spare_ = -1;
  int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd >= 0) {
    t_.serverConnsRefused.fetch_add(1, std::memory_order_relaxed);
    ::close(fd);
  }
  spare_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
}

void Listener::onTick(int64_t now) {
  // Silent connections past their deadline (the oldest first; the map is in accept order).
  const int64_t limit = static_cast<int64_t>(t_.options().firstByteTimeoutMs) * 1000000LL;
  while (!silent_.empty() && now - silent_.begin()->second->acceptedAt > limit) {
    t_.serverConnsSilent.fetch_add(1, std::memory_order_relaxed);
    drop(silent_.begin()->second);
  }
  if (pausedUntil_ == 0 || now < pausedUntil_ || fd_ < 0) return;
  pausedUntil_ = 0;
  ctx_.loop->add(fd_, EPOLLIN, this);
}

void Listener::onEvents(uint32_t) {
  roundFirstSeq_ = nextSeq_;
  for (int i = 0; i < 256 && fd_ >= 0 && pausedUntil_ == 0; ++i) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    int fd = ::accept4(fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        refuseOne();
        continue;
      }
      break;  // EAGAIN
    }
    admit(fd, reinterpret_cast<sockaddr*>(&ss));
  }
}

void Listener::admit(int fd, const sockaddr* peer) {
  if (!t_.peerAllowed(peer)) {
    t_.serverConnsRefused.fetch_add(1, std::memory_order_relaxed);
    ::close(fd);
    return;
  }
  std::string source = sourceKey(peer);
  const bool sourceFull = t_.sourceCount(source) >= t_.perPeerCap();
  const bool full = t_.serverConns.load() >= t_.options().maxServerConnections;
  if (sourceFull || full) {
    // No room: take it from the oldest connection that has not asked for anything yet (of this
    // source, when this source is at its cap). A peer that sends its request promptly keeps its slot;
    // one that connects and waits is the one to go. Without such a connection, refuse the new one.
    Silent* victim = findVictim(sourceFull ? &source : nullptr);
    if (victim == nullptr) {
      t_.serverConnsRefused.fetch_add(1, std::memory_order_relaxed);
      ::close(fd);
      return;
    }
    t_.serverConnsEvicted.fetch_add(1, std::memory_order_relaxed);
    t_.serverConnsRefused.fetch_add(1, std::memory_order_relaxed);
    drop(victim);
  }
  t_.serverConns.fetch_add(1, std::memory_order_relaxed);
  t_.serverConnsTotal.fetch_add(1, std::memory_order_relaxed);
  t_.sourceAdd(source);
  auto* s = new Silent();
  s->owner = this;
  s->fd = fd;
  s->seq = nextSeq_++;
  s->acceptedAt = monotonicNs();
  s->source = std::move(source);
  if (!ctx_.loop->add(fd, EPOLLIN | EPOLLRDHUP, s)) {
    // Cannot watch it here: let a connection loop wait for its bytes instead (the reaper has no
    // deadline for silence, but this only happens when epoll itself fails).
    t_.onServerAccepted(fd, s->source);
    delete s;
    return;
  }
  silent_.emplace(s->seq, s);
  silentBySource_[s->source].emplace(s->seq, s);
}

Listener::Silent* Listener::findVictim(const std::string* source) {
  // A connection whose bytes are already in the kernel is not silent, only not read yet: hand it over
  // instead. Connections accepted in this round of accepts are spared: their first bytes may be on
  // the wire, and the round can be longer than the slots (a flood must not evict a peer that
  // connected a moment earlier before its request is even looked at).
  for (int handed = 0; handed < 16; ++handed) {
    std::map<uint64_t, Silent*>* pool = &silent_;
    if (source != nullptr) {
      auto it = silentBySource_.find(*source);
      if (it == silentBySource_.end()) return nullptr;
      pool = &it->second;
    }
    if (pool->empty()) return nullptr;
    Silent* s = pool->begin()->second;
    if (s->seq >= roundFirstSeq_) return nullptr;
    char c;
    ssize_t r = ::recv(s->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return s;
    handOver(s);  // data, EOF or an error: the ServerConn deals with it
  }
  return nullptr;
}

void Listener::forget(Silent* s) {
  silent_.erase(s->seq);
  auto it = silentBySource_.find(s->source);
  if (it != silentBySource_.end()) {
    it->second.erase(s->seq);
    if (it->second.empty()) silentBySource_.erase(it);
  }
  s->fd = -1;
  // This round of events may still name it: delete it afterwards.
  if (!ctx_.loop->post([s] { delete s; })) delete s;
}

void Listener::drop(Silent* s) {
  int fd = s->fd;
  ctx_.loop->remove(fd);
  ::close(fd);
  t_.serverConns.fetch_sub(1, std::memory_order_relaxed);
  t_.sourceRelease(s->source);
  forget(s);
}

void Listener::handOver(Silent* s) {
  int fd = s->fd;
  std::string source = s->source;
  ctx_.loop->remove(fd);
  forget(s);
  t_.onServerAccepted(fd, std::move(source));  // its slot and source count go with it
}

void Listener::Silent::onEvents(uint32_t) {
  if (fd < 0) return;  // dropped earlier in this round of events
  // Data, EOF or an error: in every case the connection is no longer silent; the ServerConn reads it.
  owner->handOver(this);
}

}  // namespace mc::tcp
