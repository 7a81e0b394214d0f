// Upstream Mooncake's classic TCP data protocol (its transport/tcp_transport): a 24-byte request header
// {u64 size, u64 addr, u8 opcode, 7 bytes padding}, little-endian, and in v2 an 8-byte status frame
// whose high 32 bits are the magic "MCTV".
#pragma once

#include <cstdint>
#include <cstring>

namespace mc::tcp {

constexpr size_t kHeaderSize = 24;
constexpr size_t kStatusSize = 8;
constexpr uint8_t kOpRead = 0;
constexpr uint8_t kOpWrite = 1;
constexpr uint8_t kV2Flag = 0x80;
constexpr uint32_t kStatusMagic = 0x4D435456;  // "MCTV"
constexpr uint32_t kStatusOk = 0;
constexpr uint32_t kStatusAddrRejected = 1;

struct Header {
  uint64_t size = 0;
  uint64_t addr = 0;
  uint8_t opcode = 0;  // raw byte, including the v2 flag
  bool v2() const { return (opcode & kV2Flag) != 0; }
  // Upstream servers treat opcode 1 as WRITE and every other value as READ.
  bool isWrite() const { return (opcode & static_cast<uint8_t>(~kV2Flag)) == kOpWrite; }
};

inline void storeLe64(uint8_t* p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  std::memcpy(p, &v, 8);
#else
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
#endif
}
inline uint64_t loadLe64(const uint8_t* p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
#else
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
#endif
}

// Writes the header with zero padding.
inline void encodeHeader(uint8_t* out, const Header& h) {
  storeLe64(out, h.size);
  storeLe64(out + 8, h.addr);
  out[16] = h.opcode;
  std::memset(out + 17, 0, kHeaderSize - 17);
}

// Padding bytes are ignored (upstream clients leave them uninitialised).
inline Header decodeHeader(const uint8_t* in) {
  Header h;
  h.size = loadLe64(in);
  h.addr = loadLe64(in + 8);
  h.opcode = in[16];
  return h;
}

inline void encodeStatus(uint8_t* out, uint32_t code) {
  storeLe64(out, (static_cast<uint64_t>(kStatusMagic) << 32) | code);
}

enum class StatusFrame { Ok, Rejected, Malformed };

inline StatusFrame decodeStatus(const uint8_t* in, uint32_t* code = nullptr) {
  uint64_t v = loadLe64(in);
  if (static_cast<uint32_t>(v >> 32) != kStatusMagic) return StatusFrame::Malformed;
  uint32_t c = static_cast<uint32_t>(v);
  if (code) *code = c;
  return c == kStatusOk ? StatusFrame::Ok : StatusFrame::Rejected;
}

// Static frames, so server queues can point at them without allocating.
extern const uint8_t kOkFrame[kStatusSize];
extern const uint8_t kRejectedFrame[kStatusSize];

}  // namespace mc::tcp
