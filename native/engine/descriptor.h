// Upstream Mooncake's segment descriptor, stored under mooncake/ram/<name>. Decoding follows upstream's
// validation rules; encoding writes what upstream peers parse. (The rpc_meta entry beside it is read
// and written by the control plane: lib/metadata/rpc-meta.ts.)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "status.h"

namespace mc {

struct BufferDesc {
  std::string name;  // upstream TCP sets it to the segment name
  uint64_t addr = 0;
  uint64_t length = 0;
  // mooncake-node extension, ignored by upstream: the buffer lives in shared memory that a peer on the
  // same host may map (see SameHostInfo).
  std::string shmPath;
  uint64_t shmOffset = 0;
};

// Extension that lets a peer on the same host copy with memcpy instead of TCP. Published under the
// top-level key "mcnode_shm" that upstream's decoder ignores.
struct SameHostInfo {
  std::string hostId;  // boot id + user namespace; equal ids mean "same kernel, same /dev/shm"
  uint32_t pid = 0;
};

struct SegmentDesc {
  std::string name;
  std::string protocol = "tcp";
  uint32_t tcpDataPort = 0;
  // Host of the data listener (upstream 0.3.13+); empty: peers use rpc_meta's ip_or_host_name.
  std::string tcpDataHost;
  uint32_t tcpProtoVersion = 1;  // absent means 1
  std::vector<BufferDesc> buffers;
  std::string timestamp;
  SameHostInfo sameHost;  // empty hostId when not advertised
};

// Returns MALFORMED_JSON with a message for anything upstream would reject ("Corrupted segment descriptor").
Status decodeSegmentDesc(std::string_view text, SegmentDesc* out);
// Compact, sorted-key JSON with bare integers and a fresh local-time timestamp when desc.timestamp is empty.
std::string encodeSegmentDesc(const SegmentDesc& desc);

// "YYYY-MM-DD HH:MM:SS.ffffff" in local time, as upstream's getCurrentDateTime.
std::string currentDateTime();

}  // namespace mc
