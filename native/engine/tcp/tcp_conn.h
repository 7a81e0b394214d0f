// Connection classes of the TCP transport (internal to native/engine/tcp).
#pragma once

#include <sys/uio.h>

#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "tcp_transport.h"

namespace mc::tcp {

// A client connection to one peer. Lives as long as its Peer; reconnects on demand.
class ClientConn : public EventHandler, public Ticker {
 public:
  ClientConn(TcpTransport& t, Peer& peer, LoopCtx& ctx);
  ~ClientConn() override;

  // Any thread. Takes ownership of the ops.
  void enqueue(std::vector<Op*>& ops, uint64_t bytes);
  uint64_t load() const { return queuedBytes_.load(std::memory_order_relaxed); }
  void scheduleScan();

  // Loop thread.
  void onEvents(uint32_t events) override;
  void onTick(int64_t now) override;
  void shutdown();  // fail everything with CLOSED and close the socket

 private:
  void process();
  void handleEvents(uint32_t events);
  void startConnect();
  void onConnected();
  void flush();
  void onReadable();
  bool consume(const uint8_t* p, size_t n);  // false when the connection was failed
  void updateInterest();
  void finish(Op* op, Code code);  // reports the slice and parks the op for the pool
  void returnOps();                 // hands parked ops back to the transport's pool
  // Closes the socket. culprit ends with `code`; ops of cancelled batches end with their cancel code;
  // the rest are resent on a new connection (up to opts.retries times) or end with `code`.
  void fail(Code code, Op* culprit, bool allowRetry = true);
  void scan(int64_t now);
  bool hasWork() const { return !sendq_.empty() || !recvq_.empty(); }

  TcpTransport& t_;
  Peer& peer_;
  LoopCtx& ctx_;
  int fd_ = -1;
  bool connecting_ = false;
  bool wantWrite_ = false;
  bool registered_ = false;
  int64_t connectDeadline_ = 0;
  int64_t lastProgress_ = 0;
  std::deque<Op*> sendq_;  // not fully written yet
  std::deque<Op*> recvq_;  // awaiting a response, in order
  std::vector<Op*> recycle_;  // finished ops, returned to the pool in bulk
  size_t v1WritesInSendq_ = 0;

  std::mutex mu_;
  std::vector<Op*> inbox_;
  bool scheduled_ = false;
  std::atomic<uint64_t> queuedBytes_{0};
  std::atomic<bool> scanRequested_{false};
};

class Peer {
 public:
  Peer(TcpTransport& t, std::string key, const net::Endpoint& ep);
  ~Peer();
  const std::string& key() const { return key_; }
  const net::Endpoint& endpoint() const { return ep_; }
  std::vector<std::unique_ptr<ClientConn>>& conns() { return conns_; }
  // Least-loaded connection, starting the search at a rotating index.
  ClientConn& pick();

 private:
  std::string key_;
  net::Endpoint ep_;
  std::vector<std::unique_ptr<ClientConn>> conns_;
  std::atomic<size_t> rr_{0};
};

// One accepted data connection.
class ServerConn : public EventHandler {
 public:
  ServerConn(TcpTransport& t, LoopCtx& ctx, int fd);
  ~ServerConn() override;
  bool start();
  void onEvents(uint32_t events) override;
  void close();

 private:
  struct Out {
    const uint8_t* p;
    uint64_t len;
    uint64_t off;
    RegionRef ref;  // keeps a READ's region registered until its bytes are sent
    std::unique_ptr<uint8_t[]> owned;  // staging copy of device memory
  };
  void onReadable();
  bool consume(const uint8_t* p, size_t n);  // false when the connection must close
  bool handleHeader();
  bool reject(bool v2);  // queues a v2 rejection (and closes after it); false for v1 (close now)
  bool finishBody();      // false when the connection must close
  bool flush();  // false when the connection must close
  void updateInterest();

  TcpTransport& t_;
  LoopCtx& ctx_;
  int fd_;
  uint8_t hdr_[kHeaderSize];
  size_t hdrHave_ = 0;
  // WRITE body in progress.
  bool inBody_ = false;
  bool bodyV2_ = false;
  uint8_t* dest_ = nullptr;
  uint64_t remaining_ = 0;
  RegionRef bodyRef_;
  std::unique_ptr<uint8_t[]> bodyStaging_;  // device WRITE: bytes land here, then go to the device
  uint8_t* bodyDevDest_ = nullptr;
  uint64_t bodyLen_ = 0;
  std::deque<Out> out_;
  uint64_t outBytes_ = 0;
  bool readPaused_ = false;
  bool closeAfterFlush_ = false;
  bool wantWrite_ = false;
};

class Listener : public EventHandler {
 public:
  Listener(TcpTransport& t, LoopCtx& ctx, int fd) : t_(t), ctx_(ctx), fd_(fd) {}
  ~Listener() override;
  bool start();
  void onEvents(uint32_t events) override;
  void close();

 private:
  TcpTransport& t_;
  LoopCtx& ctx_;
  int fd_;
};

}  // namespace mc::tcp
