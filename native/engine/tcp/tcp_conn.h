// Connection classes of the TCP transport (internal to native/engine/tcp).
#pragma once

#include <sys/uio.h>

#include <deque>
#include <map>
#include <string>
#include <unordered_map>
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
  // With `connections` connections on one given loop (a harness driving that loop itself).
  Peer(TcpTransport& t, std::string key, const net::Endpoint& ep, LoopCtx& ctx, unsigned connections);
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
  // `source` is the peer's sourceKey(), released when the connection closes ("" for none).
  ServerConn(TcpTransport& t, LoopCtx& ctx, int fd, std::string source = std::string());
  ~ServerConn() override;
  bool start();
  void onEvents(uint32_t events) override;
  void close();
  // Mid-request (part of a header or body received, a response not fully sent, or a rejection not yet
  // closed by the client) with no byte moved for longer than limitNs. Idle between requests is fine.
  bool stalled(int64_t now, int64_t limitNs) const;

 private:
  struct Out {
    const uint8_t* p;
    uint64_t len;
    uint64_t off;
    RegionRef ref;  // keeps a READ's region registered until its bytes are sent
    std::unique_ptr<uint8_t[]> owned;  // staging copy of device memory (one chunk at a time)
    uint8_t* dev = nullptr;            // device READ: the device address of byte 0
    uint64_t chunkStart = 0;           // device READ: bytes [chunkStart, chunkEnd) are in `owned`
    uint64_t chunkEnd = 0;
  };
  void onReadable();
  bool consume(const uint8_t* p, size_t n);  // false when the connection must close
  bool handleHeader();
  bool reject(bool v2);  // queues a v2 rejection frame; half-closes once earlier answers are out
  bool finishBody();      // false when the connection must close
  uint64_t bodyRoom() const;  // body bytes that can land at dest_ now (device: room in the staging chunk)
  void stageOut();            // device WRITE: a full (or the last) staging chunk goes to the device
  bool stageNext(Out& o);     // device READ: stages the entry's next chunk; false if the copy failed
  bool flush();  // false when the connection must close
  void updateInterest();

  void releaseSlot();

  TcpTransport& t_;
  LoopCtx& ctx_;
  int fd_;
  std::string source_;
  uint8_t hdr_[kHeaderSize];
  size_t hdrHave_ = 0;
  // WRITE body in progress.
  bool inBody_ = false;
  bool bodyV2_ = false;
  uint8_t* dest_ = nullptr;
  uint64_t remaining_ = 0;
  RegionRef bodyRef_;
  std::unique_ptr<uint8_t[]> bodyStaging_;  // device WRITE: bytes land here, then go to the device
  uint64_t bodyStagingCap_ = 0;
  uint8_t* bodyDevDest_ = nullptr;           // where the next staged chunk goes
  bool bodyDevFailed_ = false;               // a chunk's copy failed: reject once the body is in
  std::deque<Out> out_;
  uint64_t outBytes_ = 0;
  bool readPaused_ = false;
  bool closeAfterFlush_ = false;
  bool peerClosed_ = false;  // EOF seen with answers still queued: close once they are sent
  bool wantWrite_ = false;
  int64_t lastProgress_ = 0;
};

// Per loop: closes server connections that stalled mid-request for longer than idleTimeoutMs, so a
// peer that vanished without a FIN (link cut, host crash) or stopped reading cannot pin a registered
// region (unregister would say REGION_BUSY forever) nor hold a connection slot.
class ServerReaper : public Ticker {
 public:
  ServerReaper(TcpTransport& t, LoopCtx& ctx) : t_(t), ctx_(ctx) {}
  void onTick(int64_t now) override;

 private:
  TcpTransport& t_;
  LoopCtx& ctx_;
  int64_t nextScan_ = 0;
};

// The data listener. It also holds every accepted connection until its first bytes arrive: such a
// "silent" connection has not asked for anything yet, so it is the one to give up when slots run out
// (the oldest silent one of the address holding the most connections, or of the newcomer's own
// address), and it is closed after firstByteTimeoutMs. Once its bytes arrive it is handed to a loop as
// a ServerConn. Everything here runs on the listener's loop, so silent connections need no locking.
class Listener : public EventHandler, public Ticker {
 public:
  Listener(TcpTransport& t, LoopCtx& ctx, int fd) : t_(t), ctx_(ctx), fd_(fd) {}
  ~Listener() override;
  bool start();
  void onEvents(uint32_t events) override;
  void onTick(int64_t now) override;
  void close();

 private:
  struct Silent : EventHandler {
    Listener* owner = nullptr;
    int fd = -1;
    uint64_t seq = 0;
    int64_t acceptedAt = 0;
    std::string source;
    void onEvents(uint32_t events) override;
  };
  // Out of descriptors (EMFILE/ENFILE): refuse one pending connection with the reserved descriptor.
  // Without it the level-triggered listener stays readable and the loop spins.
  void refuseOne();
  void admit(int fd, const sockaddr* peer);
  // The silent connection to give up for a new one from `source`, or nullptr.
  Silent* findVictim(const std::string& source, bool sourceFull);
  // Takes a silent connection out of the bookkeeping; its object is deleted after this round of events.
  void forget(Silent* s);
  void drop(Silent* s);      // closes it and gives back its slot
  void handOver(Silent* s);  // its first bytes arrived: becomes a ServerConn

  TcpTransport& t_;
  LoopCtx& ctx_;
  int fd_;
  int spare_ = -1;            // a reserved descriptor (/dev/null), given up to accept-and-close
  int64_t pausedUntil_ = 0;   // listener unwatched until then (no spare left)
  uint64_t nextSeq_ = 0;
  std::map<uint64_t, Silent*> silent_;                                      // all, oldest first
  std::unordered_map<std::string, std::map<uint64_t, Silent*>> silentBySource_;  // per source, oldest first
};

}  // namespace mc::tcp
