// The data listener: accepts connections, holds each one until its first bytes arrive (a silent
// connection is the one to give up when slots run out, and is closed after firstByteTimeoutMs), and
// refuses what the process cannot hold.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "tcp_conn.h"

namespace mc::tcp {

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
    // No room: take it from the oldest connection that has not asked for anything yet (see
    // findVictim for whose). A peer that sends its request promptly keeps its slot; one that connects
    // and waits is the one to go. Without such a connection, refuse the new one.
    Silent* victim = findVictim(source, sourceFull);
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

Listener::Silent* Listener::findVictim(const std::string& source, bool sourceFull) {
  for (int handed = 0; handed < 16; ++handed) {
    // Whose connection goes: at the address's own cap, one of the address's own. Else the address
    // holding the most connections gives one up, unless it holds no more than the newcomer's: then
    // the newcomer's own address does. So a flood from some addresses never pushes out a peer from
    // another address that has fewer connections, however fast it reconnects.
    const std::string* from = &source;
    if (!sourceFull) {
      const unsigned mine = t_.sourceCount(source);
      unsigned most = 0;
      for (auto& kv : silentBySource_) {
        unsigned c = t_.sourceCount(kv.first);
        if (c > most) { most = c; from = &kv.first; }
      }
      if (most <= mine) from = &source;
    }
    auto it = silentBySource_.find(*from);
    if (it == silentBySource_.end() || it->second.empty()) return nullptr;
    Silent* s = it->second.begin()->second;
    // A connection whose bytes are already in the kernel is not silent, only not read yet: hand it
    // over instead, and look again.
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
