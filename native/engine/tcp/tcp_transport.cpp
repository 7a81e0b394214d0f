#include "tcp_transport.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "tcp_conn.h"

namespace mc::tcp {

namespace {
constexpr size_t kScratchSize = 256 * 1024;
}

TcpTransport::TcpTransport(MemoryRegistry& registry, Options opts) : registry_(registry), opts_(std::move(opts)) {}

TcpTransport::~TcpTransport() {
  stop();
  for (Op* op : pool_) delete op;
}

Status TcpTransport::start() {
  unsigned n = std::max(1u, opts_.ioThreads);
  for (unsigned i = 0; i < n; ++i) {
    auto ctx = std::make_unique<LoopCtx>();
    ctx->loop = std::make_unique<EventLoop>("mc-tcp-" + std::to_string(i));
    ctx->scratch.resize(kScratchSize);
    Status st = ctx->loop->start();
    if (!st.ok()) return st;
    LoopCtx* c = ctx.get();
    c->reaper = std::make_unique<ServerReaper>(*this, *c);
    c->loop->runSync([c] { c->loop->addTicker(c->reaper.get()); });
    loops_.push_back(std::move(ctx));
  }
  int fd = -1;
  Status st = net::listenTcp(opts_.bindAddress, opts_.port, opts_.minPort, opts_.maxPort, 1024, &fd, &port_);
  if (!st.ok()) {
    for (auto& ctx : loops_) ctx->loop->stop();
    return st;
  }
  listener_ = std::make_unique<Listener>(*this, *loops_[0], fd);
  bool ok = false;
  loops_[0]->loop->runSync([&] { ok = listener_->start(); });
  if (!ok) {
    for (auto& ctx : loops_) ctx->loop->stop();
    return Status(Code::SOCKET, "cannot watch the data listener");
  }
  running_.store(true);
  return Status();
}

void TcpTransport::stop() {
  if (!running_.exchange(false)) return;
  loops_[0]->loop->runSync([&] { listener_->close(); });
  for (auto& ctx : loops_) {
    LoopCtx* c = ctx.get();
    c->loop->runSync([c] {
      for (ClientConn* conn : c->clients) conn->shutdown();
      std::vector<ServerConn*> servers;
      for (auto& kv : c->servers) servers.push_back(kv.first);
      for (ServerConn* s : servers) s->close();
    });
  }
  for (auto& ctx : loops_) ctx->loop->stop();
  for (auto& ctx : loops_) {
    ctx->servers.clear();
    ctx->clients.clear();
  }
  std::lock_guard<std::mutex> g(peersMu_);
  peers_.clear();
}

std::shared_ptr<Peer> TcpTransport::peer(const std::string& ip, uint16_t port, Status* st) {
  if (!running_.load()) { *st = Status(Code::CLOSED, "transport stopped"); return nullptr; }
  net::Endpoint ep;
  if (port == 0 || !net::parseEndpoint(ip, port, &ep)) {
    *st = Status(Code::INVALID_ARGUMENT, "bad peer address " + ip + ":" + std::to_string(port));
    return nullptr;
  }
  std::string key = net::endpointToString(reinterpret_cast<const sockaddr*>(&ep.addr));
  std::lock_guard<std::mutex> g(peersMu_);
  auto it = peers_.find(key);
  if (it != peers_.end()) return it->second;
  auto p = std::make_shared<Peer>(*this, key, ep);
  peers_.emplace(key, p);
  return p;
}

uint32_t TcpTransport::sliceCount(uint64_t length) const {
  uint64_t s = std::max<uint64_t>(opts_.sliceSize, 4096);
  uint64_t n = (length + s - 1) / s;
  return static_cast<uint32_t>(std::max<uint64_t>(1, n));
}

void TcpTransport::takeOps(size_t n, std::vector<Op*>* out) {
  {
    std::lock_guard<std::mutex> g(poolMu_);
    while (n > 0 && !pool_.empty()) {
      out->push_back(pool_.back());
      pool_.pop_back();
      --n;
    }
  }
  for (; n > 0; --n) out->push_back(new Op());
}

void TcpTransport::recycleOps(std::vector<Op*>* ops) {
  constexpr size_t kMaxPooled = 1 << 14;
  {
    std::lock_guard<std::mutex> g(poolMu_);
    while (!ops->empty() && pool_.size() < kMaxPooled) {
      pool_.push_back(ops->back());
      ops->pop_back();
    }
  }
  for (Op* op : *ops) delete op;
  ops->clear();
}

Dispatcher::Dispatcher(TcpTransport& t, size_t expectedOps) : t_(t) { t_.takeOps(expectedOps, &spare_); }

Op* Dispatcher::newOp() {
  if (spare_.empty()) t_.takeOps(16, &spare_);
  Op* op = spare_.back();
  spare_.pop_back();
  return op;
}

Dispatcher::Lane& Dispatcher::lane(ClientConn* c) {
  for (Lane& l : lanes_) if (l.conn == c) return l;
  lanes_.push_back(Lane{c, {}, 0});
  return lanes_.back();
}

// Least loaded connection, counting what this submission already gave it.
ClientConn* Dispatcher::pick(Peer& peer) {
  auto& conns = peer.conns();
  size_t n = conns.size();
  ClientConn* rotated = &peer.pick();  // rotates the starting point between submissions
  size_t start = 0;
  for (size_t i = 0; i < n; ++i) if (conns[i].get() == rotated) { start = i; break; }
  ClientConn* best = nullptr;
  uint64_t bestLoad = UINT64_MAX;
  for (size_t i = 0; i < n; ++i) {
    ClientConn* c = conns[(start + i) % n].get();
    uint64_t load = c->load();
    for (const Lane& l : lanes_) if (l.conn == c) load += l.bytes;
    if (load < bestLoad) { best = c; bestLoad = load; }
  }
  return best;
}

void Dispatcher::add(Peer& peer, const std::shared_ptr<Batch>& batch, uint32_t task, bool write, uint8_t* local,
                     uint64_t remote, uint64_t length, bool v2, const Region* localRegion) {
  const bool onDevice = localRegion != nullptr && localRegion->device >= 0 && localRegion->runtime != nullptr;
  const uint64_t sliceSize = std::max<uint64_t>(t_.options().sliceSize, 4096);
  uint32_t slices = t_.sliceCount(length);
  uint64_t sliceLen = slices == 1 ? length : sliceSize;
  for (uint32_t s = 0; s < slices; ++s) {
    uint64_t off = static_cast<uint64_t>(s) * sliceLen;
    uint64_t len = std::min(sliceLen, length - off);
    Op* op = newOp();
    op->batch = batch;
    op->task = task;
    op->write = write;
    op->v2 = v2;
    op->local = local + off;
    op->remote = remote + off;
    op->length = len;
    if (onDevice) {
      op->devPtr = local + off;
      op->device = localRegion->device;
      op->runtime = localRegion->runtime;
      op->staging.reset(new uint8_t[len]);
      op->local = op->staging.get();
    }
    Header h;
    h.size = len;
    h.addr = remote + off;
    h.opcode = static_cast<uint8_t>((write ? kOpWrite : kOpRead) | (v2 ? kV2Flag : 0));
    encodeHeader(op->hdr, h);
    Lane& l = lane(pick(peer));
    l.ops.push_back(op);
    l.bytes += len;
  }
}

void Dispatcher::flush() {
  for (Lane& l : lanes_) if (!l.ops.empty()) l.conn->enqueue(l.ops, l.bytes);
  lanes_.clear();
  if (!spare_.empty()) t_.recycleOps(&spare_);
}

void TcpTransport::kick() {
  std::vector<std::shared_ptr<Peer>> peers;
  {
    std::lock_guard<std::mutex> g(peersMu_);
    for (auto& kv : peers_) peers.push_back(kv.second);
  }
  for (auto& p : peers)
    for (auto& c : p->conns()) c->scheduleScan();
}

Stats TcpTransport::stats() const {
  Stats s;
  s.bytesSent = bytesSent.load();
  s.bytesReceived = bytesReceived.load();
  s.requestsServed = requestsServed.load();
  s.requestsRejected = requestsRejected.load();
  s.serverConnections = serverConns.load();
  s.serverConnectionsTotal = serverConnsTotal.load();
  s.serverConnectionsRefused = serverConnsRefused.load();
  s.serverConnectionsTimedOut = serverConnsTimedOut.load();
  s.serverConnectionsEvicted = serverConnsEvicted.load();
  s.serverConnectionsSilent = serverConnsSilent.load();
  s.clientConnections = clientConns.load();
  s.clientConnects = clientConnects.load();
  s.retries = retriesDone.load();
  return s;
}

bool TcpTransport::peerAllowed(const sockaddr* sa) const {
  if (opts_.allowedPeers.empty()) return true;
  // Compared as binary addresses, so any spelling of an IPv6 address (and IPv4-mapped peers) match.
  in_addr v4{};
  in6_addr v6{};
  bool isV4 = false;
  if (sa->sa_family == AF_INET) {
    v4 = reinterpret_cast<const sockaddr_in*>(sa)->sin_addr;
    isV4 = true;
  } else if (sa->sa_family == AF_INET6) {
    v6 = reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&v6)) {
      std::memcpy(&v4, &v6.s6_addr[12], 4);
      isV4 = true;
    }
  } else {
    return false;
  }
  for (const std::string& allowed : opts_.allowedPeers) {
    in_addr a4{};
    in6_addr a6{};
    if (inet_pton(AF_INET, allowed.c_str(), &a4) == 1) {
      if (isV4 && a4.s_addr == v4.s_addr) return true;
    } else if (inet_pton(AF_INET6, allowed.c_str(), &a6) == 1) {
      if (IN6_IS_ADDR_V4MAPPED(&a6)) {
        if (isV4 && std::memcmp(&a6.s6_addr[12], &v4, 4) == 0) return true;
      } else if (!isV4 && std::memcmp(&a6, &v6, sizeof a6) == 0) {
        return true;
      }
    }
  }
  return false;
}

void TcpTransport::onServerAccepted(int fd, std::string source) {
  LoopCtx* ctx = &loopFor(nextLoopIndex());
  bool posted = ctx->loop->post([this, ctx, fd, source] {
    auto conn = std::make_unique<ServerConn>(*this, *ctx, fd, source);
    ServerConn* raw = conn.get();
    ctx->servers.emplace(raw, std::move(conn));
    if (!raw->start()) raw->close();
  });
  if (!posted) {
    serverConns.fetch_sub(1, std::memory_order_relaxed);
    sourceRelease(source);
    ::close(fd);
  }
}

unsigned TcpTransport::perPeerCap() const {
  if (opts_.maxServerConnectionsPerPeer > 0) return opts_.maxServerConnectionsPerPeer;
  // A quarter of the slots, at least 64 (and never more than all of them).
  return std::min(opts_.maxServerConnections, std::max(64u, opts_.maxServerConnections / 4));
}

unsigned TcpTransport::sourceCount(const std::string& key) {
  std::lock_guard<std::mutex> g(sourcesMu_);
  auto it = sources_.find(key);
  return it == sources_.end() ? 0 : it->second;
}

void TcpTransport::sourceAdd(const std::string& key) {
  std::lock_guard<std::mutex> g(sourcesMu_);
  ++sources_[key];
}

void TcpTransport::sourceRelease(const std::string& key) {
  if (key.empty()) return;
  std::lock_guard<std::mutex> g(sourcesMu_);
  auto it = sources_.find(key);
  if (it == sources_.end()) return;
  if (--it->second == 0) sources_.erase(it);
}

std::string sourceKey(const sockaddr* sa) {
  uint8_t b[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0};
  if (sa->sa_family == AF_INET) {
    std::memcpy(b + 12, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, 4);
  } else if (sa->sa_family == AF_INET6) {
    std::memcpy(b, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, 16);
  } else {
    return std::string("?");
  }
  return std::string(reinterpret_cast<const char*>(b), sizeof b);
}

}  // namespace mc::tcp
