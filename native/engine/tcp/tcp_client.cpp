// Client side of the TCP transport: persistent, pipelined connections to one peer.
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
constexpr uint64_t kMaxSendPerCall = 8ull << 20;
constexpr uint64_t kDirectRecv = 32 * 1024;  // receive straight into the destination above this
constexpr int kMaxReadsPerEvent = 64;

bool expectsResponse(const Op* op) { return op->v2 || !op->write; }
uint64_t wireLength(const Op* op) { return kHeaderSize + (op->write ? op->length : 0); }
}  // namespace

ClientConn::ClientConn(TcpTransport& t, Peer& peer, LoopCtx& ctx) : t_(t), peer_(peer), ctx_(ctx) {
  LoopCtx* c = &ctx_;
  ctx_.loop->post([this, c] {
    c->loop->addTicker(this);
    c->clients.push_back(this);
  });
}

// Destroyed only after the loops have stopped (or never started), so it must not touch the loop.
ClientConn::~ClientConn() {
  if (fd_ >= 0) ::close(fd_);
  for (Op* op : recvq_) delete op;
  for (Op* op : sendq_) if (!op->inRecvQ) delete op;
  for (Op* op : inbox_) delete op;
  for (Op* op : recycle_) delete op;
}

void ClientConn::enqueue(std::vector<Op*>& ops, uint64_t bytes) {
  queuedBytes_.fetch_add(bytes, std::memory_order_relaxed);
  bool post = false;
  {
    std::lock_guard<std::mutex> g(mu_);
    inbox_.insert(inbox_.end(), ops.begin(), ops.end());
    if (!scheduled_) { scheduled_ = true; post = true; }
  }
  ops.clear();
  if (post && !ctx_.loop->post([this] { process(); })) {
    // The loop has stopped: nothing will ever send these.
    std::vector<Op*> orphans;
    {
      std::lock_guard<std::mutex> g(mu_);
      orphans.swap(inbox_);
      scheduled_ = false;
    }
    for (Op* op : orphans) finish(op, Code::CLOSED);
    returnOps();  // the loop is gone, so nothing else uses recycle_
  }
}

void ClientConn::scheduleScan() {
  if (scanRequested_.exchange(true)) return;
  ctx_.loop->post([this] {
    scanRequested_.store(false);
    scan(monotonicNs());
    returnOps();
  });
}

void ClientConn::returnOps() {
  if (!recycle_.empty()) t_.recycleOps(&recycle_);
}

void ClientConn::process() {
  std::vector<Op*> in;
  {
    std::lock_guard<std::mutex> g(mu_);
    in.swap(inbox_);
    scheduled_ = false;
  }
  if (!t_.running()) {
    for (Op* op : in) finish(op, Code::CLOSED);
    returnOps();
    return;
  }
  for (Op* op : in) {
    if (op->devPtr && op->write && !op->staged) {
      // Device memory is not addressable from the host: stage it on this (loop) thread.
      Status st = op->runtime->copyToHost(op->device, op->local, op->devPtr, op->length);
      if (!st.ok()) { finish(op, Code::CONTEXT); continue; }
      op->staged = true;
    }
    sendq_.push_back(op);
  }
  if (hasWork()) {
    if (fd_ < 0) startConnect();
    else if (!connecting_) flush();
  }
  returnOps();
}

void ClientConn::startConnect() {
  const net::Endpoint& ep = peer_.endpoint();
  fd_ = ::socket(ep.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) { fail(Code::CONNECT_FAILED, nullptr, false); return; }
  net::setNoDelay(fd_);
  net::setKeepAlive(fd_, t_.options().idleTimeoutMs);
  t_.clientConnects.fetch_add(1, std::memory_order_relaxed);
  connecting_ = true;
  connectDeadline_ = monotonicNs() + static_cast<int64_t>(t_.options().connectTimeoutMs) * 1000000LL;
  int r = ::connect(fd_, reinterpret_cast<const sockaddr*>(&ep.addr), ep.len);
  if (r != 0 && errno != EINPROGRESS) { fail(Code::CONNECT_FAILED, nullptr, false); return; }
  if (!ctx_.loop->add(fd_, EPOLLOUT | EPOLLIN | EPOLLRDHUP, this)) { fail(Code::CONNECT_FAILED, nullptr, false); return; }
  registered_ = true;
  wantWrite_ = true;
}

void ClientConn::onConnected() {
  connecting_ = false;
  t_.clientConns.fetch_add(1, std::memory_order_relaxed);
  lastProgress_ = monotonicNs();
  flush();
}

void ClientConn::onEvents(uint32_t events) {
  handleEvents(events);
  returnOps();
}

void ClientConn::handleEvents(uint32_t events) {
  if (fd_ < 0) return;
  if (connecting_) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) { fail(Code::CONNECT_FAILED, nullptr, false); return; }
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) onConnected();
    return;
  }
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
    onReadable();
    if (fd_ < 0) return;
  }
  if ((events & EPOLLOUT) && fd_ >= 0) flush();
}

void ClientConn::flush() {
  if (fd_ < 0 || connecting_) return;
  const unsigned maxInflight = std::max(1u, t_.options().maxInflightPerConnection);
  bool blocked = false;
  while (!sendq_.empty()) {
    struct iovec iov[kMaxIov];
    size_t n = 0;
    uint64_t total = 0;
    for (size_t i = 0; i < sendq_.size() && n + 2 <= kMaxIov && total < kMaxSendPerCall;) {
      Op* op = sendq_[i];
      if (op->sent == 0 && !op->inRecvQ) {
        Code c = op->batch->cancelCode();
        if (c != Code::OK) {  // never started: drop it without touching the wire
          sendq_.erase(sendq_.begin() + static_cast<std::ptrdiff_t>(i));
          finish(op, c);
          continue;
        }
        if (expectsResponse(op)) {
          if (recvq_.size() >= maxInflight) break;
          recvq_.push_back(op);
          op->inRecvQ = true;
        }
      }
      if (op->sent < kHeaderSize) {
        iov[n].iov_base = op->hdr + op->sent;
        iov[n].iov_len = kHeaderSize - op->sent;
        total += iov[n].iov_len;
        ++n;
      }
      if (op->write) {
        uint64_t off = op->sent > kHeaderSize ? op->sent - kHeaderSize : 0;
        if (off < op->length) {
          iov[n].iov_base = op->local + off;
          iov[n].iov_len = op->length - off;
          total += iov[n].iov_len;
          ++n;
        }
      }
      ++i;
    }
    if (n == 0) break;  // pipeline full (or everything was cancelled)
    struct msghdr msg {};
    msg.msg_iov = iov;
    msg.msg_iovlen = n;
    ssize_t w = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) { blocked = true; break; }
      // The peer may have answered (a v2 rejection) before closing: read what is there first.
      onReadable();
      if (fd_ >= 0) fail(Code::CONNECTION_LOST, recvq_.empty() ? (sendq_.empty() ? nullptr : sendq_.front()) : recvq_.front());
      return;
    }
    lastProgress_ = monotonicNs();
    t_.bytesSent.fetch_add(static_cast<uint64_t>(w), std::memory_order_relaxed);
    uint64_t left = static_cast<uint64_t>(w);
    while (left > 0 && !sendq_.empty()) {
      Op* op = sendq_.front();
      uint64_t need = wireLength(op) - op->sent;
      uint64_t k = std::min(need, left);
      op->sent += k;
      left -= k;
      if (op->sent == wireLength(op)) {
        sendq_.pop_front();
        if (!expectsResponse(op)) finish(op, Code::OK);  // v1 WRITE: done once handed to the kernel
      }
    }
    if (static_cast<uint64_t>(w) < total) { blocked = true; break; }
  }
  wantWrite_ = blocked;
  updateInterest();
}

void ClientConn::updateInterest() {
  if (fd_ < 0 || !registered_ || connecting_) return;
  uint32_t ev = EPOLLIN | EPOLLRDHUP | (wantWrite_ ? static_cast<uint32_t>(EPOLLOUT) : 0u);
  ctx_.loop->modify(fd_, ev, this);
}

void ClientConn::onReadable() {
  for (int iter = 0; iter < kMaxReadsPerEvent && fd_ >= 0; ++iter) {
    Op* head = recvq_.empty() ? nullptr : recvq_.front();
    ssize_t r;
    bool direct = head && !head->write && (!head->v2 || head->statusHave == kStatusSize) &&
                  head->length - head->recvd >= kDirectRecv;
    if (direct) {
      r = ::recv(fd_, head->local + head->recvd, head->length - head->recvd, 0);
      if (r > 0) {
        lastProgress_ = monotonicNs();
        t_.bytesReceived.fetch_add(static_cast<uint64_t>(r), std::memory_order_relaxed);
        head->recvd += static_cast<uint64_t>(r);
        if (head->recvd == head->length) {
          recvq_.pop_front();
          head->inRecvQ = false;
          finish(head, Code::OK);
        }
        continue;
      }
    } else {
      r = ::recv(fd_, ctx_.scratch.data(), ctx_.scratch.size(), 0);
      if (r > 0) {
        lastProgress_ = monotonicNs();
        t_.bytesReceived.fetch_add(static_cast<uint64_t>(r), std::memory_order_relaxed);
        if (!consume(ctx_.scratch.data(), static_cast<size_t>(r))) return;
        continue;
      }
    }
    if (r == 0) {
      if (!hasWork()) {  // the peer closed an idle connection
        fail(Code::CONNECTION_LOST, nullptr, false);
        return;
      }
      fail(Code::CONNECTION_LOST, head ? head : sendq_.front());
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    fail(Code::CONNECTION_LOST, head ? head : (sendq_.empty() ? nullptr : sendq_.front()));
    return;
  }
  if (fd_ >= 0 && !sendq_.empty()) flush();
}

bool ClientConn::consume(const uint8_t* p, size_t n) {
  while (n > 0) {
    if (recvq_.empty()) {  // bytes nobody asked for
      fail(Code::PROTOCOL_ERROR, nullptr, false);
      return false;
    }
    Op* op = recvq_.front();
    if (op->v2 && op->statusHave < kStatusSize) {
      size_t k = std::min<size_t>(n, kStatusSize - op->statusHave);
      std::memcpy(op->status + op->statusHave, p, k);
      op->statusHave = static_cast<uint8_t>(op->statusHave + k);
      p += k;
      n -= k;
      if (op->statusHave < kStatusSize) return true;
      StatusFrame f = decodeStatus(op->status);
      if (f == StatusFrame::Malformed) { fail(Code::PROTOCOL_ERROR, op); return false; }
      if (f == StatusFrame::Rejected) { fail(Code::REMOTE_REJECTED, op); return false; }
      if (op->write) {
        if (op->sent != wireLength(op)) { fail(Code::PROTOCOL_ERROR, op); return false; }
        recvq_.pop_front();
        op->inRecvQ = false;
        finish(op, Code::OK);
        continue;
      }
    }
    if (op->write) {  // cannot happen: v1 writes never wait for a response
      fail(Code::PROTOCOL_ERROR, op);
      return false;
    }
    uint64_t k = std::min<uint64_t>(n, op->length - op->recvd);
    std::memcpy(op->local + op->recvd, p, k);
    op->recvd += k;
    p += k;
    n -= k;
    if (op->recvd == op->length) {
      recvq_.pop_front();
      op->inRecvQ = false;
      finish(op, Code::OK);
    }
  }
  return true;
}

void ClientConn::finish(Op* op, Code code) {
  queuedBytes_.fetch_sub(op->length, std::memory_order_relaxed);
  if (code == Code::OK && op->devPtr && !op->write) {
    if (!op->runtime->copyToDevice(op->device, op->devPtr, op->local, op->length).ok()) code = Code::CONTEXT;
  }
  op->batch->sliceDone(op->task, code == Code::OK ? op->length : 0, code);
  op->reset();
  recycle_.push_back(op);
}

void ClientConn::fail(Code code, Op* culprit, bool allowRetry) {
  if (fd_ >= 0) {
    if (registered_) ctx_.loop->remove(fd_);
    ::close(fd_);
    if (!connecting_) t_.clientConns.fetch_sub(1, std::memory_order_relaxed);
  }
  fd_ = -1;
  registered_ = false;
  connecting_ = false;
  wantWrite_ = false;

  std::vector<Op*> all(recvq_.begin(), recvq_.end());
  for (Op* op : sendq_) if (!op->inRecvQ) all.push_back(op);
  recvq_.clear();
  sendq_.clear();

  Code collateral = (code == Code::REMOTE_REJECTED || code == Code::PROTOCOL_ERROR) ? Code::CONNECTION_LOST : code;
  if (code == Code::TIMEOUT) allowRetry = false;  // a hung peer will not answer a resend either
  const unsigned maxRetries = t_.options().retries;
  for (Op* op : all) {
    op->inRecvQ = false;
    Code cancelled = op->batch->cancelCode();
    if (op == culprit) {
      finish(op, code);
    } else if (cancelled != Code::OK) {
      finish(op, cancelled);
    } else if (allowRetry && op->retries < maxRetries && t_.running()) {
      op->retries++;
      op->sent = 0;
      op->recvd = 0;
      op->statusHave = 0;
      t_.retriesDone.fetch_add(1, std::memory_order_relaxed);
      sendq_.push_back(op);
    } else {
      finish(op, collateral);
    }
  }
  if (!sendq_.empty()) startConnect();
}

void ClientConn::scan(int64_t now) {
  if (!hasWork()) return;
  if (connecting_ && now > connectDeadline_) { fail(Code::CONNECT_FAILED, nullptr, false); return; }
  bool inflightCancelled = false;
  auto check = [&](Op* op) {
    Batch& b = *op->batch;
    if (b.deadlineNs() != 0 && now >= b.deadlineNs()) b.requestCancel(Code::TIMEOUT);
    return b.cancelCode();
  };
  for (size_t i = 0; i < sendq_.size();) {
    Op* op = sendq_[i];
    Code c = check(op);
    if (c != Code::OK && op->sent == 0 && !op->inRecvQ) {
      sendq_.erase(sendq_.begin() + static_cast<std::ptrdiff_t>(i));
      finish(op, c);
      continue;
    }
    if (c != Code::OK) inflightCancelled = true;
    ++i;
  }
  for (Op* op : recvq_) if (check(op) != Code::OK) inflightCancelled = true;
  if (inflightCancelled) {
    // Closing the socket is the only way to be sure the kernel never touches their memory again.
    fail(Code::CONNECTION_LOST, nullptr, true);
    return;
  }
  if (fd_ >= 0 && !connecting_ && hasWork() &&
      now - lastProgress_ > static_cast<int64_t>(t_.options().idleTimeoutMs) * 1000000LL) {
    fail(Code::TIMEOUT, recvq_.empty() ? sendq_.front() : recvq_.front(), false);
  }
}

void ClientConn::onTick(int64_t now) {
  scan(now);
  returnOps();
}

void ClientConn::shutdown() {
  std::vector<Op*> in;
  {
    std::lock_guard<std::mutex> g(mu_);
    in.swap(inbox_);
  }
  for (Op* op : in) sendq_.push_back(op);
  fail(Code::CLOSED, nullptr, false);
  returnOps();
  ctx_.loop->removeTicker(this);
}

Peer::Peer(TcpTransport& t, std::string key, const net::Endpoint& ep) : key_(std::move(key)), ep_(ep) {
  unsigned n = std::max(1u, t.options().connectionsPerPeer);
  size_t base = t.nextLoopIndex();
  for (unsigned i = 0; i < n; ++i) conns_.push_back(std::make_unique<ClientConn>(t, *this, t.loopFor(base + i)));
}

Peer::Peer(TcpTransport& t, std::string key, const net::Endpoint& ep, LoopCtx& ctx, unsigned connections)
    : key_(std::move(key)), ep_(ep) {
  for (unsigned i = 0; i < std::max(1u, connections); ++i) conns_.push_back(std::make_unique<ClientConn>(t, *this, ctx));
}

Peer::~Peer() = default;

ClientConn& Peer::pick() {
  size_t n = conns_.size();
  size_t start = rr_.fetch_add(1, std::memory_order_relaxed);
  ClientConn* best = conns_[start % n].get();
  uint64_t bestLoad = best->load();
  for (size_t i = 1; i < n && bestLoad > 0; ++i) {
    ClientConn* c = conns_[(start + i) % n].get();
    uint64_t l = c->load();
    if (l < bestLoad) { best = c; bestLoad = l; }
  }
  return *best;
}

}  // namespace mc::tcp
