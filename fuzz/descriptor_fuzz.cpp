// libFuzzer target: segment descriptors as peers publish them in the metadata store
// (native/engine/descriptor.h: decodeSegmentDesc, encodeSegmentDesc), read by every engine that
// transfers to a peer. The input is the value's text. (rpc_meta is the control plane's: fuzz/js,
// target rpc_meta.)
//
// Properties:
//   - decoding never crashes or reads out of bounds (ASan/UBSan);
//   - an accepted descriptor satisfies upstream's validation rules (named, buffers with a name, a
//     non-zero addr and length that do not wrap, a port that fits);
//   - encode(decode(x)) decodes to the same descriptor, and encoding that again gives the same text
//     (the fields the encoder drops on purpose -- an offset without a shm path, a pid without a host
//     id, an empty timestamp that it fills in -- are compared only where they survive).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "descriptor.h"

namespace {

[[noreturn]] void fail(const char* what, const std::string& a, const std::string& b = "") {
  std::fprintf(stderr, "descriptor_fuzz: %s\n  first:  %.600s\n  second: %.600s\n", what, a.c_str(), b.c_str());
  std::abort();
}

bool sameDesc(const mc::SegmentDesc& a, const mc::SegmentDesc& b) {
  if (a.name != b.name || a.protocol != b.protocol || a.tcpDataPort != b.tcpDataPort ||
      a.tcpDataHost != b.tcpDataHost || a.tcpProtoVersion != b.tcpProtoVersion || a.timestamp != b.timestamp ||
      a.buffers.size() != b.buffers.size() || a.sameHost.hostId != b.sameHost.hostId)
    return false;
  if (!a.sameHost.hostId.empty() && a.sameHost.pid != b.sameHost.pid) return false;
  for (size_t i = 0; i < a.buffers.size(); ++i) {
    const mc::BufferDesc& x = a.buffers[i];
    const mc::BufferDesc& y = b.buffers[i];
    if (x.name != y.name || x.addr != y.addr || x.length != y.length || x.shmPath != y.shmPath) return false;
    if (!x.shmPath.empty() && x.shmOffset != y.shmOffset) return false;
  }
  return true;
}

void checkSegment(std::string_view text) {
  mc::SegmentDesc d;
  mc::Status st = mc::decodeSegmentDesc(text, &d);
  if (!st.ok()) {
    if (st.code != mc::Code::MALFORMED_JSON) fail("rejection is not MALFORMED_JSON", std::string(text));
    return;
  }
  if (d.name.empty() || d.tcpDataPort > 65535) fail("accepted an invalid descriptor", std::string(text));
  for (const auto& b : d.buffers)
    if (b.name.empty() || b.addr == 0 || b.length == 0 || b.addr + b.length < b.addr)
      fail("accepted an invalid buffer", std::string(text));
  if (d.timestamp.empty()) d.timestamp = "2026-01-01 00:00:00.000000";  // the encoder would fill in the time
  std::string once = mc::encodeSegmentDesc(d);
  mc::SegmentDesc d2;
  if (!mc::decodeSegmentDesc(once, &d2).ok()) fail("encoded descriptor does not decode", std::string(text), once);
  if (!sameDesc(d, d2)) fail("decode(encode(d)) differs from d", std::string(text), once);
  std::string twice = mc::encodeSegmentDesc(d2);
  if (once != twice) fail("encode is not a fixed point", once, twice);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  checkSegment(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
