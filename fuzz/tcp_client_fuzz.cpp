// libFuzzer target: the TCP data client (native/engine/tcp/tcp_client.cpp) against a hostile target
// whose answers are the fuzz input: wrong or partial status frames, short and long READ payloads,
// unsolicited bytes, then a FIN, a reset or silence.
//
// What runs is the real client connection (ClientConn: connect, flush, onReadable, consume, fail and
// its retries, the idle timeout) dispatched by the real Dispatcher, on an event loop this thread
// drives itself (EventLoop::init + pollOnce), connected over an AF_UNIX socket to the harness, which
// plays the target: it reads every request the client sends, then writes the input's answer stream
// in chunks and ends the connection as the control byte says. Any later connection (the client's
// retry) is closed at once. An operation still pending at the end is driven to its idle timeout by a
// tick far in the future, so every run ends.
//
// Local memory: a fixed-address arena, guard | LOCAL (256 KiB) | guard; the operations' local ranges
// lie in LOCAL. Oracle (any difference aborts, as do ASan/UBSan reports):
//   - the client sends exactly each request's header (and a WRITE's local bytes), in order;
//   - every operation ends (COMPLETED or FAILED with a transfer error code), none twice;
//   - a reference model of the answer stream (sequential, as upstream's server answers) predicts which
//     operations complete: those must complete, a READ holding exactly its bytes of the stream, and
//     every other one must fail;
//   - no byte of the arena outside the READs' local ranges changes.
//
// Input: byte 0 control (bits 0-1: operations - 1; bit 2: v2 framing; bits 3-4: ending 0 FIN, 1 reset,
// 2 silence, 3 FIN; bits 5-7: chunk size for the first 512 bytes of the answer stream, at least 4 KiB
// after them); then 4 bytes per operation (bit 0 of the first: WRITE; the next two: length - 1,
// little-endian; the last: where in the operation's quarter of LOCAL); the rest is the answer stream.
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "batch.h"
#include "event_loop.h"
#include "memory_registry.h"
#include "tcp/tcp_conn.h"
#include "tcp/tcp_transport.h"
#include "tcp/wire.h"

#define HARNESS __attribute__((no_sanitize("coverage")))

namespace {

using namespace mc;

constexpr uint64_t kArenaBase = 0x220000000000ull;
constexpr uint64_t kArenaSize = 0x48000;
constexpr uint64_t kLocalOff = 0x4000;
constexpr uint64_t kLocalLen = 0x40000;

uint8_t* arena() { return reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(kArenaBase)); }
inline uint8_t pattern(uint64_t off) { return static_cast<uint8_t>((off * 167u + 13u) ^ (off >> 7)); }

[[noreturn]] HARNESS void fail(const char* what, long a = 0, long b = 0) {
  std::fprintf(stderr, "tcp_client_fuzz: %s (%ld, %ld)\n", what, a, b);
  std::abort();
}

struct Env {
  MemoryRegistry registry;
  std::unique_ptr<tcp::TcpTransport> transport;  // started: the client's pool, options and counters
  int listener = -1;
  net::Endpoint ep;
  std::vector<uint8_t> canonical;
  std::vector<uint8_t> scratch;
};

HARNESS Env* env() {
  static Env* e = [] {
    void* p = mmap(reinterpret_cast<void*>(kArenaBase), kArenaSize, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != reinterpret_cast<void*>(kArenaBase)) fail("cannot map the arena at its fixed address");
    auto* e = new Env();
    e->canonical.resize(kArenaSize);
    for (uint64_t i = 0; i < kArenaSize; ++i) e->canonical[i] = pattern(i);
    e->scratch.resize(256 * 1024);
    tcp::Options o;
    o.bindAddress = "127.0.0.1";
    o.idleTimeoutMs = 1000;
    o.connectionsPerPeer = 1;
    e->transport = std::make_unique<tcp::TcpTransport>(e->registry, o);
    if (!e->transport->start().ok()) fail("cannot start the transport");
    // The target: an abstract AF_UNIX listener (no file to clean up).
    e->listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::snprintf(un.sun_path + 1, sizeof un.sun_path - 1, "mc-client-fuzz-%d", static_cast<int>(getpid()));
    socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + std::strlen(un.sun_path + 1));
    if (::bind(e->listener, reinterpret_cast<sockaddr*>(&un), len) != 0 || ::listen(e->listener, 16) != 0) fail("listen", errno);
    std::memcpy(&e->ep.addr, &un, len);
    e->ep.len = len;
    return e;
  }();
  return e;
}

struct OpSpec {
  bool write;
  uint64_t len;
  uint64_t localOff;  // within LOCAL
  uint64_t remote;
};

enum class Outcome { Ok, Fail, Any };
struct Prediction {
  Outcome outcome = Outcome::Fail;
  size_t dataAt = 0;  // READ data offset in the answer stream (Ok)
};

// Upstream's server answers requests one after another; the client reads answers in request order.
// Ops that expect an answer: every v2 op, and v1 READs. A v1 WRITE completes once sent.
HARNESS std::vector<Prediction> model(const std::vector<OpSpec>& ops, bool v2, const uint8_t* s, size_t n) {
  std::vector<Prediction> out(ops.size());
  size_t pos = 0;
  bool broken = false;
  for (size_t i = 0; i < ops.size(); ++i) {
    const OpSpec& op = ops[i];
    if (!v2 && op.write) { out[i].outcome = Outcome::Ok; continue; }
    if (broken) continue;  // the connection failed earlier: Fail
    if (v2) {
      if (n - pos < tcp::kStatusSize) { broken = true; continue; }
      tcp::StatusFrame f = tcp::decodeStatus(s + pos);
      pos += tcp::kStatusSize;
      if (f != tcp::StatusFrame::Ok) { broken = true; continue; }
      if (op.write) { out[i].outcome = Outcome::Ok; continue; }
    }
    if (n - pos < op.len) { broken = true; continue; }
    out[i].outcome = Outcome::Ok;
    out[i].dataAt = pos;
    pos += op.len;
  }
  return out;
}

HARNESS void drainInto(int fd, std::string* got, bool* eof) {
  char buf[65536];
  for (;;) {
    ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r > 0) { got->append(buf, static_cast<size_t>(r)); continue; }
    if (r == 0) *eof = true;
    break;
  }
}

}  // namespace

extern "C" HARNESS int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  Env* e = env();
  const uint8_t ctl = data[0];
  const size_t nOps = 1 + (ctl & 3);
  const bool v2 = (ctl & 4) != 0;
  const int ending = (ctl >> 3) & 3;  // 0/3 FIN, 1 reset, 2 silence
  static const size_t kChunks[8] = {1, 3, 8, 9, 64, 512, 4096, 65536};
  const size_t chunk = kChunks[ctl >> 5];
  if (size < 1 + 4 * nOps) return 0;
  std::vector<OpSpec> ops;
  for (size_t i = 0; i < nOps; ++i) {
    const uint8_t* p = data + 1 + 4 * i;
    OpSpec op;
    op.write = (p[0] & 1) != 0;
    op.len = 1 + (static_cast<uint64_t>(p[1]) | (static_cast<uint64_t>(p[2]) << 8));
    // Each operation has its own quarter of LOCAL (READs into overlapping ranges would overwrite
    // each other's bytes, which is the caller's business, not the client's).
    op.localOff = i * (kLocalLen / 4) + (static_cast<uint64_t>(p[3]) * 251u) % (kLocalLen / 4 - op.len + 1);
    op.remote = 0x100000 + i * 0x20000;
    ops.push_back(op);
  }
  const uint8_t* answer = data + 1 + 4 * nOps;
  const size_t answerLen = size - 1 - 4 * nOps;
  const std::vector<Prediction> want = model(ops, v2, answer, answerLen);

  std::memcpy(arena(), e->canonical.data(), kArenaSize);
  uint8_t* local = arena() + kLocalOff;
  // What the client must send: each header, and a WRITE's local bytes.
  std::string expected;
  for (const OpSpec& op : ops) {
    uint8_t h[tcp::kHeaderSize];
    tcp::encodeHeader(h, tcp::Header{op.len, op.remote, static_cast<uint8_t>((op.write ? tcp::kOpWrite : tcp::kOpRead) | (v2 ? tcp::kV2Flag : 0))});
    expected.append(reinterpret_cast<char*>(h), sizeof h);
    if (op.write) expected.append(reinterpret_cast<const char*>(local + op.localOff), op.len);
  }

  tcp::TcpTransport& t = *e->transport;
  {
    tcp::LoopCtx ctx;
    ctx.loop = std::make_unique<EventLoop>("fuzz-client");
    if (!ctx.loop->init().ok()) fail("loop init");
    ctx.scratch.swap(e->scratch);
    auto peer = std::make_unique<tcp::Peer>(t, "fuzz", e->ep, ctx, 1);
    auto batch = std::make_shared<Batch>(1, nOps, 0, nullptr);
    size_t first = 0;
    if (!batch->reserve(nOps, &first)) fail("reserve");
    {
      tcp::Dispatcher d(t, nOps);
      for (size_t i = 0; i < nOps; ++i) {
        batch->beginTask(i, ops[i].len, t.sliceCount(ops[i].len), RegionRef());
        d.add(*peer, batch, static_cast<uint32_t>(i), ops[i].write, local + ops[i].localOff, ops[i].remote, ops[i].len, v2);
      }
    }
    int server = -1;
    std::string got;
    bool eof = false;
    size_t sent = 0;
    bool ended = false;
    bool forced = false;
    int idle = 0;
    for (int iter = 0; iter < 200000 && !batch->allTerminal(); ++iter) {
      ctx.loop->pollOnce(0);
      for (;;) {  // the first connection is the one under test; a retry's is closed at once
        int fd = ::accept4(e->listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        if (server < 0 && !ended) server = fd;
        else ::close(fd);
      }
      bool progress = false;
      if (server >= 0) {
        size_t before = got.size();
        drainInto(server, &got, &eof);
        progress = got.size() != before;
        if (got.size() >= expected.size() && sent < answerLen) {
          // The chunk size applies to the first 512 bytes (status frames and their splits); past them,
          // at least 4 KiB at a time.
          size_t k = std::min(sent < 512 ? chunk : std::max<size_t>(chunk, 4096), answerLen - sent);
          ssize_t w = ::send(server, answer + sent, k, MSG_NOSIGNAL | MSG_DONTWAIT);
          if (w > 0) { sent += static_cast<size_t>(w); progress = true; }
        }
        if (got.size() >= expected.size() && sent == answerLen && !ended) {
          ended = true;
          progress = true;
          if (ending == 1) {
            linger lg{1, 0};
            setsockopt(server, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            ::close(server);
            server = -1;
          } else if (ending != 2) {
            ::shutdown(server, SHUT_WR);
          }
        }
      }
      idle = progress ? 0 : idle + 1;
      if (idle > 50 && !forced && (ended || sent == answerLen)) {
        // Nothing moves any more: what is still pending waits for an answer that never comes.
        forced = true;
        for (auto& c : peer->conns()) c->onTick(monotonicNs() + 3600LL * 1000000000LL);
      }
    }
    if (!batch->allTerminal()) fail("an operation never settled");
    if (got.compare(0, std::string::npos, expected) != 0) fail("the client did not send exactly the requests", static_cast<long>(got.size()), static_cast<long>(expected.size()));

    for (size_t i = 0; i < nOps; ++i) {
      Task& task = batch->task(i);
      auto state = static_cast<TaskState>(task.state.load());
      Code code = static_cast<Code>(task.error.load());
      if (want[i].outcome == Outcome::Ok) {
        if (state != TaskState::COMPLETED) fail("an operation the answers complete did not complete", static_cast<long>(i), static_cast<long>(code));
        if (!ops[i].write && std::memcmp(local + ops[i].localOff, answer + want[i].dataAt, ops[i].len) != 0)
          fail("a completed READ does not hold its bytes of the answer", static_cast<long>(i));
      } else {
        if (state != TaskState::FAILED && state != TaskState::TIMEOUT) fail("an operation the answers fail did not fail", static_cast<long>(i), static_cast<long>(state));
        if (code != Code::CONNECTION_LOST && code != Code::PROTOCOL_ERROR && code != Code::REMOTE_REJECTED && code != Code::TIMEOUT &&
            code != Code::CONNECT_FAILED)
          fail("an operation failed with an unexpected code", static_cast<long>(i), static_cast<long>(code));
      }
    }
    // Nothing outside the READs' local ranges changed: compare every gap between them.
    std::vector<std::pair<uint64_t, uint64_t>> reads;
    for (const OpSpec& op : ops)
      if (!op.write) reads.push_back({kLocalOff + op.localOff, kLocalOff + op.localOff + op.len});
    std::sort(reads.begin(), reads.end());
    uint64_t from = 0;
    for (size_t i = 0; i <= reads.size(); ++i) {
      uint64_t to = i < reads.size() ? reads[i].first : kArenaSize;
      if (to > from && std::memcmp(arena() + from, e->canonical.data() + from, to - from) != 0) {
        uint64_t at = from;
        while (arena()[at] == e->canonical[at]) ++at;
        fail("a byte outside the READs' local ranges changed at arena offset", static_cast<long>(at));
      }
      if (i < reads.size()) from = std::max(from, reads[i].second);
    }

    peer.reset();
    if (server >= 0) ::close(server);
    ctx.scratch.swap(e->scratch);
  }
  return 0;
}
