// A STAND-IN for ADXL (adxl::AdxlEngine, in CANN's libllm_datadist), for tests on machines without
// Ascend NPUs. It implements what the npu wheel's ascend_transport.so calls (nm -D --undefined-only:
// Initialize, Finalize, RegisterMem, DeregisterMem, Connect, Disconnect, TransferSync; the optional
// weak ones, GetCapability/TransferAsync/GetTransferStatus/MallocMem/FreeMem, are left out, as in
// CANN before 9.0), with the types and status numbers of upstream Mooncake's public adxl_compat.h.
//
// It moves bytes between processes over plain TCP: Initialize("ip:port") listens on that port (the
// one the transport picked in its ASCEND_BASE_PORT range), Connect dials it, TransferSync sends
// WRITE/READ frames that the peer's engine serves from its registered memory (with the option
// AutoConnect=1, which upstream sets by default, TransferSync connects by itself). Device memory (the ACL
// stand-in's, unaddressable from the host) is read and written only with aclrtMemcpy on a thread whose
// device is current, like a DMA engine bound to a context: a caller that forgot the device context
// fails. Device registrations must start on a 2 MiB boundary. Status codes: TIMEOUT when the peer does
// not answer in time, NOT_CONNECTED without (or after losing) a connection, PARAM_INVALID for
// unregistered or misaligned memory, FAILED otherwise.
//
// Test controls: ADXL_STANDIN_LOG=<file> appends one JSON line per event; a serving engine holds any
// request whose length equals ADXL_STANDIN_STALL_LEN without answering (to make the initiator time out).
// It is NOT ADXL and is never shipped; tests build it into a temporary directory.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ascend_string_standin.h"

extern "C" {
int aclrtGetDevice(int32_t*);
int aclrtSetDevice(int32_t);
int aclrtGetPhyDevIdByLogicDevId(int32_t, int32_t*);
int aclrtMemcpy(void*, size_t, const void*, size_t, int);
}

namespace adxl {

using Status = uint32_t;
constexpr Status SUCCESS = 0, PARAM_INVALID = 103900, TIMEOUT = 103901, NOT_CONNECTED = 103902, ALREADY_CONNECTED = 103903,
                 FAILED = 503900;
enum MemType { MEM_DEVICE, MEM_HOST };
enum TransferOp { READ, WRITE };
struct MemDesc {
  uintptr_t addr;
  size_t len;
  uint8_t reserved[128];
};
struct TransferOpDesc {
  uintptr_t local_addr;
  uintptr_t remote_addr;
  size_t len;
};

class AdxlEngine {
 public:
  AdxlEngine();
  ~AdxlEngine();
  Status Initialize(const ge::AscendString& local_engine, const std::map<ge::AscendString, ge::AscendString>& options);
  void Finalize();
  Status RegisterMem(const MemDesc& mem, MemType type, void*& handle);
  Status DeregisterMem(void* handle);
  Status Connect(const ge::AscendString& remote, int32_t timeout_ms);
  Status Disconnect(const ge::AscendString& remote, int32_t timeout_ms);
  Status TransferSync(const ge::AscendString& remote, TransferOp op, const std::vector<TransferOpDesc>& descs, int32_t timeout_ms);

 private:
  class AdxlEngineImpl;
  std::unique_ptr<AdxlEngineImpl> impl_;
};

namespace {

constexpr uint64_t k2MiB = 2ull << 20;
constexpr size_t kChunk = 4u << 20;
enum FrameOp : uint32_t { HELLO = 1, OP_WRITE = 2, OP_READ = 3 };
struct Frame {
  uint32_t op;
  uint32_t pad;
  uint64_t addr;
  uint64_t len;
};

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void logEvent(const std::string& json) {
  const char* path = std::getenv("ADXL_STANDIN_LOG");
  if (!path || !*path) return;
  int fd = ::open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) return;
  std::string line = "{\"pid\":" + std::to_string(getpid()) + "," + json + "}\n";
  (void)!::write(fd, line.data(), line.size());
  ::close(fd);
}

std::string q(const std::string& s) { return "\"" + s + "\""; }

bool splitEndpoint(const std::string& name, std::string* ip, int* port) {
  auto colon = name.rfind(':');
  if (name.empty() || name[0] == '[') return false;  // IPv6 is not stood in
  *ip = colon == std::string::npos ? name : name.substr(0, colon);
  *port = colon == std::string::npos ? 0 : std::atoi(name.c_str() + colon + 1);
  return true;
}

// Sends or receives exactly n bytes before deadlineMs: SUCCESS, TIMEOUT or NOT_CONNECTED.
Status io(int fd, void* buf, size_t n, bool out, int64_t deadlineMs) {
  auto* p = static_cast<uint8_t*>(buf);
  while (n > 0) {
    int64_t left = deadlineMs - nowMs();
    if (left <= 0) return TIMEOUT;
    pollfd pfd{fd, static_cast<short>(out ? POLLOUT : POLLIN), 0};
    int r = ::poll(&pfd, 1, static_cast<int>(left > 200 ? 200 : left));
    if (r == 0) continue;
    if (r < 0) return NOT_CONNECTED;
    ssize_t k = out ? ::send(fd, p, n, MSG_NOSIGNAL) : ::recv(fd, p, n, 0);
    if (k <= 0) return NOT_CONNECTED;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return SUCCESS;
}

struct Region {
  uintptr_t addr;
  size_t len;
  MemType type;
};

struct Conn {
  int fd;
  std::mutex m;  // one request at a time on a connection
};

}  // namespace

class AdxlEngine::AdxlEngineImpl {
 public:
  std::string name;
  int device = -1;
  int listenFd = -1;
  std::atomic<bool> stopping{false};
  std::thread acceptor;
  std::mutex mu;
  std::vector<std::unique_ptr<Region>> regions;
  std::map<std::string, std::shared_ptr<Conn>> conns;
  std::vector<std::thread> servers;
  std::vector<int> serverFds;
  uint64_t stallLen = 0;
  bool autoConnect = false;  // option "AutoConnect" = "1": TransferSync connects by itself

  // The registered region holding [addr, addr+len), or null.
  const Region* find(uintptr_t addr, size_t len) {
    std::lock_guard<std::mutex> g(mu);
    for (auto& r : regions) if (addr >= r->addr && len <= r->len && addr - r->addr <= r->len - len) return r.get();
    return nullptr;
  }

  // Copies between registered memory and a host buffer (device memory only through ACL).
  static bool copyOut(const Region* r, void* host, uintptr_t addr, size_t n) {
    if (r->type == MEM_HOST) return std::memcpy(host, reinterpret_cast<void*>(addr), n), true;
    return aclrtMemcpy(host, n, reinterpret_cast<void*>(addr), n, 2 /* device to host */) == 0;
  }
  static bool copyIn(const Region* r, uintptr_t addr, const void* host, size_t n) {
    if (r->type == MEM_HOST) return std::memcpy(reinterpret_cast<void*>(addr), host, n), true;
    return aclrtMemcpy(reinterpret_cast<void*>(addr), n, host, n, 1 /* host to device */) == 0;
  }

  // One connection from a peer engine, on its own thread, with this engine's device current.
  void serve(int fd) {
    aclrtSetDevice(device);
    std::vector<uint8_t> bounce(kChunk);
    const int64_t forever = INT64_MAX / 2;
    Frame f{};
    while (!stopping && io(fd, &f, sizeof f, false, forever) == SUCCESS) {
      if (f.op == HELLO) {
        std::string peer(f.len < 256 ? f.len : 0, '\0');
        if (io(fd, peer.data(), peer.size(), false, forever) != SUCCESS) break;
        Status ok = SUCCESS;
        if (io(fd, &ok, sizeof ok, true, forever) != SUCCESS) break;
        logEvent("\"event\":\"accept\",\"engine\":" + q(name) + ",\"peer\":" + q(peer));
        continue;
      }
      if (stallLen != 0 && f.len == stallLen) {  // test control: never answer; wait for the initiator to give up
        pollfd pfd{fd, POLLRDHUP, 0};
        while (!stopping && (::poll(&pfd, 1, 200) == 0 || !(pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)))) {}
        logEvent("\"event\":\"stalled\",\"engine\":" + q(name) + ",\"bytes\":" + std::to_string(f.len));
        break;
      }
      const Region* r = find(f.addr, f.len);
      Status st = r ? SUCCESS : PARAM_INVALID;
      if (f.op == OP_WRITE) {
        for (uint64_t done = 0; done < f.len;) {
          size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, f.len - done));
          if (io(fd, bounce.data(), n, false, forever) != SUCCESS) return closeServer(fd);
          if (st == SUCCESS && !copyIn(r, f.addr + done, bounce.data(), n)) st = FAILED;
          done += n;
        }
        if (io(fd, &st, sizeof st, true, forever) != SUCCESS) break;
      } else if (f.op == OP_READ) {
        if (io(fd, &st, sizeof st, true, forever) != SUCCESS || st != SUCCESS) continue;
        for (uint64_t done = 0; done < f.len;) {
          size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, f.len - done));
          if (!copyOut(r, bounce.data(), f.addr + done, n)) std::memset(bounce.data(), 0, n);
          if (io(fd, bounce.data(), n, true, forever) != SUCCESS) return closeServer(fd);
          done += n;
        }
      } else {
        break;
      }
      logEvent("\"event\":\"serve\",\"engine\":" + q(name) + ",\"op\":" + q(f.op == OP_WRITE ? "write" : "read") +
               ",\"bytes\":" + std::to_string(f.len) + ",\"status\":" + std::to_string(st));
    }
    closeServer(fd);
  }

  void closeServer(int fd) { ::shutdown(fd, SHUT_RDWR); }

  void acceptLoop() {
    while (!stopping) {
      pollfd pfd{listenFd, POLLIN, 0};
      if (::poll(&pfd, 1, 200) <= 0) continue;
      int fd = ::accept(listenFd, nullptr, nullptr);
      if (fd < 0) continue;
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      std::lock_guard<std::mutex> g(mu);
      serverFds.push_back(fd);
      servers.emplace_back([this, fd] { serve(fd); });
    }
  }

  std::shared_ptr<Conn> conn(const std::string& remote) {
    std::lock_guard<std::mutex> g(mu);
    auto it = conns.find(remote);
    return it == conns.end() ? nullptr : it->second;
  }

  void drop(const std::string& remote) {
    std::lock_guard<std::mutex> g(mu);
    auto it = conns.find(remote);
    if (it == conns.end()) return;
    ::close(it->second->fd);
    conns.erase(it);
  }
};

AdxlEngine::AdxlEngine() : impl_(new AdxlEngineImpl) {}
AdxlEngine::~AdxlEngine() { Finalize(); }

Status AdxlEngine::Initialize(const ge::AscendString& local_engine, const std::map<ge::AscendString, ge::AscendString>& options) {
  auto& I = *impl_;
  I.name = local_engine.GetString();
  if (aclrtGetDevice(&I.device) != 0) {
    logEvent("\"event\":\"initialize\",\"engine\":" + q(I.name) + ",\"status\":" + std::to_string(FAILED) + ",\"why\":\"no device context\"");
    return FAILED;  // ADXL binds to the device current on the calling thread
  }
  int32_t phy = -1;
  aclrtGetPhyDevIdByLogicDevId(I.device, &phy);
  if (const char* s = std::getenv("ADXL_STANDIN_STALL_LEN")) I.stallLen = std::strtoull(s, nullptr, 10);
  std::string ip;
  int port = 0;
  if (!splitEndpoint(I.name, &ip, &port)) return PARAM_INVALID;
  if (port > 0) {
    I.listenFd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(I.listenFd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    if (::inet_pton(AF_INET, ip.c_str(), &a.sin_addr) != 1 || ::bind(I.listenFd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(I.listenFd, 64) != 0) {
      ::close(I.listenFd);
      I.listenFd = -1;
      return FAILED;
    }
    I.acceptor = std::thread([&I] { I.acceptLoop(); });
  }
  std::string opts;
  for (const auto& [k, v] : options) {
    if (std::string(k.GetString()) == "AutoConnect") I.autoConnect = std::string(v.GetString()) == "1";
  }
  for (const auto& [k, v] : options) opts += std::string(opts.empty() ? "" : ",") + q(k.GetString()) + ":" + q(v.GetString());
  logEvent("\"event\":\"initialize\",\"engine\":" + q(I.name) + ",\"device\":" + std::to_string(I.device) + ",\"phy\":" +
           std::to_string(phy) + ",\"port\":" + std::to_string(port) + ",\"options\":{" + opts + "},\"status\":0");
  return SUCCESS;
}

void AdxlEngine::Finalize() {
  auto& I = *impl_;
  if (I.stopping.exchange(true)) return;
  if (I.acceptor.joinable()) I.acceptor.join();
  if (I.listenFd >= 0) ::close(I.listenFd);
  std::vector<std::thread> servers;
  {
    std::lock_guard<std::mutex> g(I.mu);
    for (int fd : I.serverFds) ::shutdown(fd, SHUT_RDWR);
    for (auto& [_, c] : I.conns) ::close(c->fd);
    I.conns.clear();
    servers.swap(I.servers);
  }
  for (auto& t : servers) t.join();
  for (int fd : I.serverFds) ::close(fd);
  I.serverFds.clear();
}

Status AdxlEngine::RegisterMem(const MemDesc& mem, MemType type, void*& handle) {
  auto& I = *impl_;
  Status st = SUCCESS;
  if (mem.len == 0) st = PARAM_INVALID;
  if (type == MEM_DEVICE && mem.addr % k2MiB != 0) st = PARAM_INVALID;  // HCCS needs 2 MiB-aligned device memory
  logEvent("\"event\":\"register\",\"engine\":" + q(I.name) + ",\"type\":" + q(type == MEM_DEVICE ? "device" : "host") +
           ",\"addr\":" + std::to_string(mem.addr) + ",\"len\":" + std::to_string(mem.len) + ",\"status\":" + std::to_string(st));
  if (st != SUCCESS) return st;
  std::lock_guard<std::mutex> g(I.mu);
  I.regions.push_back(std::make_unique<Region>(Region{mem.addr, mem.len, type}));
  handle = I.regions.back().get();
  return SUCCESS;
}

Status AdxlEngine::DeregisterMem(void* handle) {
  auto& I = *impl_;
  std::lock_guard<std::mutex> g(I.mu);
  for (auto it = I.regions.begin(); it != I.regions.end(); ++it) {
    if (it->get() == handle) { I.regions.erase(it); return SUCCESS; }
  }
  return PARAM_INVALID;
}

Status AdxlEngine::Connect(const ge::AscendString& remote, int32_t timeout_ms) {
  auto& I = *impl_;
  const std::string name = remote.GetString();
  auto finish = [&](Status st) {
    logEvent("\"event\":\"connect\",\"engine\":" + q(I.name) + ",\"remote\":" + q(name) + ",\"status\":" + std::to_string(st));
    return st;
  };
  if (I.conn(name)) return finish(ALREADY_CONNECTED);
  std::string ip;
  int port = 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  if (!splitEndpoint(name, &ip, &port) || port <= 0 || ::inet_pton(AF_INET, ip.c_str(), &a.sin_addr) != 1) return finish(PARAM_INVALID);
  a.sin_port = htons(static_cast<uint16_t>(port));
  const int64_t deadline = nowMs() + (timeout_ms > 0 ? timeout_ms : 1000);
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno != EINPROGRESS) { ::close(fd); return finish(FAILED); }
  pollfd pfd{fd, POLLOUT, 0};
  int r = ::poll(&pfd, 1, static_cast<int>(std::max<int64_t>(0, deadline - nowMs())));
  int err = 0;
  socklen_t len = sizeof err;
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (r <= 0 || err != 0) { ::close(fd); return finish(r == 0 ? TIMEOUT : FAILED); }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  Frame hello{HELLO, 0, 0, I.name.size()};
  Status ack = FAILED;
  Status st = io(fd, &hello, sizeof hello, true, deadline);
  if (st == SUCCESS) st = io(fd, I.name.data(), I.name.size(), true, deadline);
  if (st == SUCCESS) st = io(fd, &ack, sizeof ack, false, deadline);
  if (st != SUCCESS || ack != SUCCESS) { ::close(fd); return finish(st == TIMEOUT ? TIMEOUT : FAILED); }
  auto c = std::make_shared<Conn>();
  c->fd = fd;
  std::lock_guard<std::mutex> g(I.mu);
  I.conns[name] = c;
  return finish(SUCCESS);
}

Status AdxlEngine::Disconnect(const ge::AscendString& remote, int32_t) {
  auto& I = *impl_;
  if (!I.conn(remote.GetString())) return NOT_CONNECTED;
  I.drop(remote.GetString());
  return SUCCESS;
}

Status AdxlEngine::TransferSync(const ge::AscendString& remote, TransferOp op, const std::vector<TransferOpDesc>& descs, int32_t timeout_ms) {
  auto& I = *impl_;
  const std::string name = remote.GetString();
  uint64_t bytes = 0;
  auto finish = [&](Status st) {
    logEvent("\"event\":\"transfer\",\"engine\":" + q(I.name) + ",\"remote\":" + q(name) + ",\"op\":" + q(op == WRITE ? "write" : "read") +
             ",\"requests\":" + std::to_string(descs.size()) + ",\"bytes\":" + std::to_string(bytes) + ",\"status\":" + std::to_string(st));
    if (st == TIMEOUT || st == NOT_CONNECTED) I.drop(name);  // the stream is out of step: the link is gone
    return st;
  };
  auto c = I.conn(name);
  if (!c && I.autoConnect) {
    Status st = Connect(remote, timeout_ms);
    if (st != SUCCESS && st != ALREADY_CONNECTED) return finish(st);
    c = I.conn(name);
  }
  if (!c) return finish(NOT_CONNECTED);
  for (const auto& d : descs) if (!I.find(d.local_addr, d.len)) return finish(PARAM_INVALID);
  std::lock_guard<std::mutex> g(c->m);
  const int64_t deadline = nowMs() + (timeout_ms > 0 ? timeout_ms : 1000);
  std::vector<uint8_t> bounce(kChunk);
  for (const auto& d : descs) {
    const Region* local = I.find(d.local_addr, d.len);
    Frame f{op == WRITE ? OP_WRITE : OP_READ, 0, d.remote_addr, d.len};
    if (Status st = io(c->fd, &f, sizeof f, true, deadline)) return finish(st);
    Status peer = FAILED;
    if (op == WRITE) {
      for (uint64_t done = 0; done < d.len;) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, d.len - done));
        if (!AdxlEngineImpl::copyOut(local, bounce.data(), d.local_addr + done, n)) return finish(FAILED);  // e.g. no device context
        if (Status st = io(c->fd, bounce.data(), n, true, deadline)) return finish(st);
        done += n;
      }
      if (Status st = io(c->fd, &peer, sizeof peer, false, deadline)) return finish(st);
      if (peer != SUCCESS) return finish(peer);
    } else {
      if (Status st = io(c->fd, &peer, sizeof peer, false, deadline)) return finish(st);
      if (peer != SUCCESS) return finish(peer);
      for (uint64_t done = 0; done < d.len;) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, d.len - done));
        if (Status st = io(c->fd, bounce.data(), n, false, deadline)) return finish(st);
        if (!AdxlEngineImpl::copyIn(local, d.local_addr + done, bounce.data(), n)) return finish(FAILED);
        done += n;
      }
    }
    bytes += d.len;
  }
  return finish(SUCCESS);
}

}  // namespace adxl

extern "C" const char mooncake_node_cann_standin[] = "adxl";
