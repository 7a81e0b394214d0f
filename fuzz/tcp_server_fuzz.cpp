// libFuzzer target: the TCP data server's request handling (native/engine/tcp/tcp_server.cpp), fed an
// arbitrary byte stream as if a remote peer had sent it.
//
// What runs is the real server connection (ServerConn: onReadable/consume/handleHeader/finishBody/
// flush, including the direct-recv path for large WRITE bodies, read pausing and the rejection paths)
// on one end of an AF_UNIX socketpair; the harness writes the input into the other end in chunks and
// reads whatever comes back. The harness thread plays the event loop: the loop is never started
// (epoll registration calls fail harmlessly), and readiness is delivered by calling onEvents directly,
// so every run is deterministic.
//
// The registry holds, at fixed addresses inside one mmap'ed arena (so the seed corpus can name them):
//   A      4 KiB host region                      BC   two adjacent 2 KiB host regions
//   PRIV   4 KiB host region, not remote-accessible BIG 256 KiB host region (direct recv, read pausing)
//   DEV    64 KiB "device" region at an address that is mapped PROT_NONE; a fake runtime copies to and
//          from a backing store inside the arena, so any direct host access to it crashes.
// Everything else in the arena (guard bands between the regions) must never change.
//
// Oracle: a reference model of the wire protocol (native/engine/tcp/wire.h: sequential requests, v2
// status frames, each request checked against the registered regions) run on the same input predicts the exact response bytes and the
// exact final memory image. Any difference aborts, as do ASan/UBSan reports. One latitude: the server
// pipelines, and sends a host READ's bytes from live memory when the socket takes them, so a WRITE
// queued behind that READ on the same connection may already show in its data (both are in flight at
// once; transfers to overlapping ranges are unordered, as they are across connections). Such a byte
// must then equal what a later WRITE in the stream put at that address.
//
// Input: byte 0 is a control byte (bits 0-2: chunk size used to feed the first 512 bytes of the stream,
// at least 4 KiB after that;
// bit 3: the fake device runtime fails its copies; bit 4: half-close the stream as soon as it is all
// sent, instead of after the answers are in). The rest is the stream. With an early half-close the
// server must still send every answer to the requests before it, unless the stream ended inside a
// request (a client abandoning a request may lose the answers still queued before it).
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "device/device_runtime.h"
#include "memory_registry.h"
#include "tcp/tcp_conn.h"
#include "tcp/tcp_transport.h"
#include "tcp/wire.h"

// The harness's own code is kept out of the coverage map: only the engine's branches guide the fuzzer.
#define HARNESS __attribute__((no_sanitize("coverage")))

namespace {

using namespace mc;

constexpr uint64_t kArenaBase = 0x200000000000ull;  // ASan HighMem, below its allocator space
constexpr uint64_t kArenaSize = 0x70000;
constexpr uint64_t kDevBase = 0x210000000000ull;  // "device" addresses: mapped PROT_NONE
constexpr uint64_t kDevSpan = 0x20000;

struct RegionSpec {
  const char* name;
  uint64_t addr;
  uint64_t length;
  bool remote;
  bool device;
};

// Offsets into the arena unless device.
const RegionSpec kRegions[] = {
    {"A", kArenaBase + 0x1000, 0x1000, true, false},
    {"B", kArenaBase + 0x3000, 0x800, true, false},
    {"C", kArenaBase + 0x3800, 0x800, true, false},
    {"PRIV", kArenaBase + 0x5000, 0x1000, false, false},
    {"BIG", kArenaBase + 0x10000, 0x40000, true, false},
    {"DEV", kDevBase + 0x1000, 0x10000, true, true},
};
// Backing store of DEV inside the arena (guarded like the rest).
constexpr uint64_t kDevBackingOff = 0x58000;

inline uint8_t pattern(uint64_t off) { return static_cast<uint8_t>((off * 131u + 7u) ^ (off >> 9)); }

uint8_t* arena() { return reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(kArenaBase)); }

bool g_failCopies = false;

// Device memory that is not host-addressable: the runtime translates device addresses into the backing
// store and aborts on any copy that leaves the device allocation.
class FakeRuntime : public DeviceRuntime {
 public:
  const std::string& name() const override { return name_; }
  const std::string& libraryPath() const override { return name_; }
  Status deviceCount(int* out) override { *out = 1; return Status(); }
  Status setDevice(int) override { return Status(); }
  Status allocate(int, uint64_t, void**) override { return Status(Code::INVALID_ARGUMENT, "no"); }
  Status release(int, void*) override { return Status(); }
  Status copyToDevice(int device, void* dst, const void* src, uint64_t n) override {
    uint8_t* host = translate(device, dst, n);
    if (g_failCopies) return Status(Code::MEMORY, "fake device copy failure");
    std::memcpy(host, src, n);
    return Status();
  }
  Status copyToHost(int device, void* dst, const void* src, uint64_t n) override {
    uint8_t* host = translate(device, const_cast<void*>(src), n);
    if (g_failCopies) return Status(Code::MEMORY, "fake device copy failure");
    std::memcpy(dst, host, n);
    return Status();
  }
  uint64_t contextSwitches() const override { return 0; }

 private:
  static uint8_t* translate(int device, void* p, uint64_t n) {
    const RegionSpec& d = kRegions[5];
    uint64_t a = reinterpret_cast<uintptr_t>(p);
    if (device != 0 || a < d.addr || n > d.length || a - d.addr > d.length - n) {
      std::fprintf(stderr, "device copy outside the device allocation: dev %d addr 0x%llx len %llu\n", device,
                   static_cast<unsigned long long>(a), static_cast<unsigned long long>(n));
      std::abort();
    }
    return arena() + kDevBackingOff + (a - d.addr);
  }
  std::string name_ = "fake";
};

// Where a region's bytes live in the arena (device regions: their backing store).
uint64_t arenaOffset(const RegionSpec& r, uint64_t addr) {
  return r.device ? kDevBackingOff + (addr - r.addr) : addr - kArenaBase;
}

struct Env {
  MemoryRegistry registry;
  FakeRuntime runtime;
  std::unique_ptr<tcp::TcpTransport> transport;  // never started: owns the counters and the registry ref
  std::vector<uint8_t> canonical;                // the arena's content between runs
  std::vector<uint8_t> expected;                 // model memory
  std::vector<uint8_t> scratch;                  // the loop's receive buffer, reused across runs
};

Env* env() {
  static Env* e = [] {
    void* p = mmap(reinterpret_cast<void*>(kArenaBase), kArenaSize, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    void* q = mmap(reinterpret_cast<void*>(kDevBase), kDevSpan, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | MAP_NORESERVE, -1, 0);
    if (p != reinterpret_cast<void*>(kArenaBase) || q != reinterpret_cast<void*>(kDevBase)) {
      std::fprintf(stderr, "cannot map the fuzz arena at its fixed address\n");
      std::abort();
    }
    auto* e = new Env();
    e->canonical.resize(kArenaSize);
    for (uint64_t i = 0; i < kArenaSize; ++i) e->canonical[i] = pattern(i);
    std::memcpy(arena(), e->canonical.data(), kArenaSize);
    e->expected = e->canonical;
    e->scratch.resize(256 * 1024);
    for (const RegionSpec& r : kRegions) {
      Code c = e->registry.add(r.addr, r.length, r.device ? "npu:0" : "cpu:0", nullptr, "", 0, r.remote,
                               r.device ? 0 : -1, r.device ? &e->runtime : nullptr);
      if (c != Code::OK) std::abort();
    }
    e->transport = std::make_unique<tcp::TcpTransport>(e->registry, tcp::Options{});
    return e;
  }();
  return e;
}

struct Dirty {
  uint64_t off, len;
};
struct WriteRec {
  uint64_t off, len;
  const uint8_t* src;
};
struct ReadRec {
  size_t outOff;
  uint64_t off, len;
  size_t writesBefore;  // WRITEs that precede this READ in the stream
};
struct Trace {
  std::vector<Dirty> dirty;
  std::vector<WriteRec> writes;  // host WRITEs, in stream order
  std::vector<ReadRec> reads;    // host READs
};

// The reference model: upstream's sequential server (native/engine/tcp/wire.h). Fills `out` with the exact bytes the
// client must receive and applies WRITEs to `mem`, recording what it touched in `tr`. Returns false when
// the stream ends inside a request (part of a header or of a WRITE body).
HARNESS bool model(const uint8_t* s, size_t n, std::vector<uint8_t>& mem, std::string* out, Trace* tr) {
  size_t pos = 0;
  while (n - pos >= tcp::kHeaderSize) {
    tcp::Header h = tcp::decodeHeader(s + pos);
    pos += tcp::kHeaderSize;
    const RegionSpec* r = nullptr;
    if (h.size > 0 && h.addr + h.size >= h.addr) {
      for (const RegionSpec& c : kRegions)
        if (c.addr <= h.addr && h.addr + h.size <= c.addr + c.length) r = &c;
    }
    if (r != nullptr && !r->remote) r = nullptr;
    auto reject = [&] {
      if (h.v2()) out->append(reinterpret_cast<const char*>(tcp::kRejectedFrame), tcp::kStatusSize);
    };
    if (r == nullptr) { reject(); return true; }  // v2: rejected frame; both: nothing more is served
    uint64_t off = arenaOffset(*r, h.addr);
    if (h.isWrite()) {
      uint64_t avail = std::min<uint64_t>(h.size, n - pos);
      if (!r->device) {  // host bytes land as they arrive, even from a truncated body
        std::memcpy(mem.data() + off, s + pos, avail);
        tr->dirty.push_back({off, avail});
        tr->writes.push_back({off, avail, s + pos});
      }
      pos += avail;
      if (avail < h.size) return false;  // stream ended inside the body
      if (r->device) {
        if (g_failCopies) { reject(); return true; }
        std::memcpy(mem.data() + off, s + pos - avail, avail);
        tr->dirty.push_back({off, avail});
      }
      if (h.v2()) out->append(reinterpret_cast<const char*>(tcp::kOkFrame), tcp::kStatusSize);
    } else {
      if (r->device && g_failCopies) { reject(); return true; }
      if (h.v2()) out->append(reinterpret_cast<const char*>(tcp::kOkFrame), tcp::kStatusSize);
      if (!r->device) tr->reads.push_back({out->size(), off, h.size, tr->writes.size()});
      out->append(reinterpret_cast<const char*>(mem.data() + off), h.size);
    }
  }
  return pos == n;
}

[[noreturn]] void fail(const char* what, size_t at = 0) {
  std::fprintf(stderr, "tcp_server_fuzz: %s (offset %zu)\n", what, at);
  std::abort();
}

// Bytes of host READs that differ from the model are accepted only where a WRITE after that READ put
// exactly that byte at that address. Returns the index of the first unexplained difference, or npos.
HARNESS size_t unexplained(const Trace& tr, const std::string& got, const std::string& want) {
  std::string patched = want;
  for (const ReadRec& r : tr.reads) {
    if (std::memcmp(got.data() + r.outOff, want.data() + r.outOff, r.len) == 0) continue;
    for (uint64_t k = 0; k < r.len; ++k) {
      size_t i = r.outOff + k;
      if (got[i] == want[i]) continue;
      uint64_t off = r.off + k;
      for (size_t w = r.writesBefore; w < tr.writes.size(); ++w) {
        const WriteRec& x = tr.writes[w];
        if (off >= x.off && off < x.off + x.len && x.src[off - x.off] == static_cast<uint8_t>(got[i])) {
          patched[i] = got[i];
          break;
        }
      }
    }
  }
  if (patched == got) return std::string::npos;
  size_t i = 0;
  while (got[i] == patched[i]) ++i;
  return i;
}

HARNESS size_t firstDifference(const uint8_t* a, const uint8_t* b, size_t n) {
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

HARNESS size_t drain(int fd, std::string* got, bool* eof) {
  size_t total = 0;
  static char buf[256 * 1024];
  for (;;) {
    ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    if (r > 0) { got->append(buf, static_cast<size_t>(r)); total += static_cast<size_t>(r); continue; }
    if (r == 0) *eof = true;
    break;
  }
  return total;
}

}  // namespace

extern "C" HARNESS int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  Env* e = env();
  static const size_t kChunks[8] = {1, 3, 8, 23, 24, 25, 512, 1 << 16};
  const size_t chunk = kChunks[data[0] & 7];
  g_failCopies = (data[0] & 8) != 0;
  const bool eagerEof = (data[0] & 16) != 0;
  const uint8_t* s = data + 1;
  const size_t n = size - 1;

  static std::string want, got;  // reused: responses can be megabytes
  want.clear();
  got.clear();
  Trace tr;
  const bool clean = model(s, n, e->expected, &want, &tr);

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) fail("socketpair");
  bool eof = false;
  {
    tcp::LoopCtx ctx;
    ctx.loop = std::make_unique<EventLoop>("fuzz");  // never started
    ctx.scratch.swap(e->scratch);
    auto conn = std::make_unique<tcp::ServerConn>(*e->transport, ctx, sv[0]);
    size_t sent = 0;
    bool halfClosed = false;
    for (int iter = 0; iter < 1000000 && !eof; ++iter) {
      bool progress = false;
      if (sent < n) {
        size_t k = std::min(n - sent, sent < 512 ? chunk : std::max<size_t>(chunk, 4096));
        ssize_t w = ::send(sv[1], s + sent, k, MSG_NOSIGNAL);
        if (w > 0) { sent += static_cast<size_t>(w); progress = true; }
      }
      if (eagerEof && sent == n && !halfClosed) {
        ::shutdown(sv[1], SHUT_WR);
        halfClosed = true;
      }
      conn->onEvents(EPOLLIN | EPOLLOUT);
      if (drain(sv[1], &got, &eof) > 0) progress = true;
      if (!progress && sent == n && !halfClosed) {
        // Everything sent and answered: end the stream like a client that is done.
        ::shutdown(sv[1], SHUT_WR);
        halfClosed = true;
        continue;
      }
      if (!progress && halfClosed) {
        // The server may legitimately keep a rejected connection half-open until the client closes.
        break;
      }
      if (iter == 999999) fail("no progress bound reached");
    }
    conn.reset();
    ctx.scratch.swap(e->scratch);
  }
  ::close(sv[1]);

  if (eagerEof && !clean && got.size() < want.size()) {
    // Abandoned inside a request right after sending it: a prefix of the answers is enough.
    want.resize(got.size());
    for (ReadRec& r : tr.reads) {
      if (r.outOff >= want.size()) r.len = 0, r.outOff = want.size();
      else r.len = std::min<uint64_t>(r.len, want.size() - r.outOff);
    }
  }
  if (got.size() != want.size()) {
    std::fprintf(stderr, "response differs: got %zu bytes, model %zu bytes\n", got.size(), want.size());
    fail("response differs from the model at byte",
         firstDifference(reinterpret_cast<const uint8_t*>(got.data()), reinterpret_cast<const uint8_t*>(want.data()),
                         std::min(got.size(), want.size())));
  }
  if (got != want) {
    size_t i = unexplained(tr, got, want);
    if (i != std::string::npos) fail("response differs from the model at byte", i);
  }
  if (std::memcmp(arena(), e->expected.data(), kArenaSize) != 0)
    fail("memory differs from the model (write outside a request's range?) at arena offset",
         firstDifference(arena(), e->expected.data(), kArenaSize));
  // Back to the canonical image for the next run.
  for (const Dirty& d : tr.dirty) {
    std::memcpy(arena() + d.off, e->canonical.data() + d.off, d.len);
    std::memcpy(e->expected.data() + d.off, e->canonical.data() + d.off, d.len);
  }
  return 0;
}
