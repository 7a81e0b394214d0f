// Server side of the TCP transport: serves READ/WRITE requests strictly inside one registered region.
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
// Device memory goes through host staging this much at a time, so a request for a whole (large)
// device region never makes the server allocate that much per connection.
constexpr uint64_t kDeviceChunk = 4ull << 20;
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
    if (inBody_ && bodyRoom() >= kDirectRecv) {
      r = ::recv(fd_, dest_, bodyRoom(), 0);
      if (r > 0) {
        lastProgress_ = monotonicNs();
        t_.bytesReceived.fetch_add(static_cast<uint64_t>(r), std::memory_order_relaxed);
        dest_ += r;
        remaining_ -= static_cast<uint64_t>(r);
        stageOut();
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
      uint64_t k = std::min<uint64_t>(n, bodyRoom());
      if (k > 0) {
        std::memcpy(dest_, p, k);
        dest_ += k;
        remaining_ -= k;
        p += k;
        n -= k;
        stageOut();
      }
      if (remaining_ > 0) {
        if (n == 0) return true;
        continue;  // the staging chunk was full and went to the device: more of the body follows
      }
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

uint64_t ServerConn::bodyRoom() const {
  if (bodyDevDest_ == nullptr) return remaining_;
  return std::min<uint64_t>(remaining_, bodyStagingCap_ - static_cast<uint64_t>(dest_ - bodyStaging_.get()));
}

void ServerConn::stageOut() {
  if (bodyDevDest_ == nullptr) return;
  const uint64_t have = static_cast<uint64_t>(dest_ - bodyStaging_.get());
  if (have < bodyStagingCap_ && remaining_ > 0) return;  // the staging chunk is not full yet
  if (!bodyDevFailed_ && have > 0) {
    const Region* r = bodyRef_.get();
    bodyDevFailed_ = !r->runtime->copyToDevice(r->device, bodyDevDest_, bodyStaging_.get(), have).ok();
  }
  bodyDevDest_ += have;
  dest_ = bodyStaging_.get();
}

bool ServerConn::finishBody() {
  inBody_ = false;
  if (bodyDevDest_ != nullptr) {  // a device WRITE: its last chunk went out in stageOut()
    const bool failed = bodyDevFailed_;
    bodyStaging_.reset();
    bodyDevDest_ = nullptr;
    bodyDevFailed_ = false;
    bodyRef_.release();
    if (failed) return reject(bodyV2_);  // not (all) applied: the client must not see success
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
    if (onDevice) {  // device memory is not addressable from the host: receive into staging, by chunks
      bodyStagingCap_ = std::min<uint64_t>(h.size, kDeviceChunk);
      bodyStaging_.reset(new uint8_t[bodyStagingCap_]);
      bodyDevDest_ = target;
      bodyDevFailed_ = false;
      dest_ = bodyStaging_.get();
    } else {
      dest_ = target;
    }
    return true;
  }
  Out data{target, h.size, 0, std::move(ref), nullptr};
  if (onDevice) {
    // The first chunk is staged now, so a failing runtime still gets a clean rejection; the rest
    // follows chunk by chunk as the socket takes it (see stageNext).
    const uint64_t cap = std::min<uint64_t>(h.size, kDeviceChunk);
    data.owned.reset(new uint8_t[cap]);
    if (!region->runtime->copyToHost(region->device, data.owned.get(), target, cap).ok()) return reject(h.v2());
    data.p = data.owned.get();
    data.dev = target;
    data.chunkEnd = cap;
  }
  if (h.v2()) out_.push_back({kOkFrame, kStatusSize, 0, RegionRef(), nullptr});
  out_.push_back(std::move(data));
  outBytes_ += h.size;
  t_.requestsServed.fetch_add(1, std::memory_order_relaxed);
  if (outBytes_ > kMaxQueuedOut) readPaused_ = true;
  return true;
}

bool ServerConn::stageNext(Out& o) {
  const Region* r = o.ref.get();
  const uint64_t n = std::min<uint64_t>(kDeviceChunk, o.len - o.off);
  if (!r->runtime->copyToHost(r->device, o.owned.get(), o.dev + o.off, n).ok()) return false;
  o.chunkStart = o.off;
  o.chunkEnd = o.off + n;
  return true;
}

bool ServerConn::flush() {
  bool blocked = false;
  while (!out_.empty()) {
    // A device READ sends from its staging chunk; once that is out, the next chunk is staged. A
    // copy that fails half-way cannot be reported any more (the OK frame is out): close.
    Out& front = out_.front();
    if (front.dev != nullptr && front.off == front.chunkEnd && front.off < front.len && !stageNext(front)) return false;
    struct iovec iov[kMaxIov];
    size_t n = 0;
    uint64_t total = 0;
    for (auto it = out_.begin(); it != out_.end() && n < kMaxIov; ++it, ++n) {
      const bool partial = it->dev != nullptr && it->chunkEnd < it->len;
      iov[n].iov_base = const_cast<uint8_t*>(it->p + (it->off - it->chunkStart));
      iov[n].iov_len = (it->dev != nullptr ? it->chunkEnd : it->len) - it->off;
      total += iov[n].iov_len;
      if (partial) { ++n; break; }  // the rest of it is not staged yet: nothing after it may go first
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

}  // namespace mc::tcp
