// Upstream Mooncake's C API (transfer_engine_c.h), resolved at run time with dlopen so the addon builds
// and installs with no Mooncake present. Only the types and entry points the backend uses are declared
// here, with the layout of upstream's header (the request struct's 4 bytes after target_id are
// `file_id` in newer builds and padding in older ones; both read them as 0).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "../status.h"
#include "cann_libraries.h"

namespace mc::upstream {

struct transfer_request {
  int opcode;
  void* source;
  int32_t target_id;
  uint32_t file_id;  // zero: no file buffer
  uint64_t target_offset;
  uint64_t length;
};

struct transfer_status {
  int status;
  uint64_t transferred_bytes;
};

struct notify_msg {
  char* name;
  char* msg;
};

struct buffer_entry {
  void* addr;
  size_t length;
};

using engine_t = void*;

struct Api {
  void* handle = nullptr;
  std::string path;
  bool lazy = false;   // loaded with lazy binding (an Ascend build whose transport cannot run: TCP only)
  AscendProbe ascend;  // the build's Ascend transport and the CANN libraries found for it
  engine_t (*createTransferEngine)(const char*, const char*, const char*, uint64_t, int) = nullptr;
  void (*destroyTransferEngine)(engine_t) = nullptr;
  int (*getLocalIpAndPort)(engine_t, char*, size_t) = nullptr;  // optional
  void* (*installTransport)(engine_t, const char*, void**) = nullptr;
  int32_t (*openSegment)(engine_t, const char*) = nullptr;
  int32_t (*openSegmentNoCache)(engine_t, const char*) = nullptr;  // optional
  int (*closeSegment)(engine_t, int32_t) = nullptr;
  int (*registerLocalMemory)(engine_t, void*, size_t, const char*, int) = nullptr;
  int (*unregisterLocalMemory)(engine_t, void*) = nullptr;
  uint64_t (*allocateBatchID)(engine_t, size_t) = nullptr;
  int (*submitTransfer)(engine_t, uint64_t, transfer_request*, size_t) = nullptr;
  int (*submitTransferWithNotify)(engine_t, uint64_t, transfer_request*, size_t, notify_msg) = nullptr;  // optional
  int (*getTransferStatus)(engine_t, uint64_t, size_t, transfer_status*) = nullptr;
  int (*freeBatchID)(engine_t, uint64_t) = nullptr;
  notify_msg* (*getNotifsFromEngine)(engine_t, int*) = nullptr;  // optional
  int (*freeNotifsMsgBuf)(notify_msg*, int) = nullptr;           // optional
  int (*genNotifyInEngine)(engine_t, uint64_t, notify_msg) = nullptr;  // optional
};

constexpr uint64_t kInvalidBatch = UINT64_MAX;

// Loads the library once per path: `path` if given, else $MOONCAKE_TE_LIBRARY, else
// libtransfer_engine.so from the loader path and /usr/local/lib, /usr/lib. An Ascend build gets its
// CANN libraries first (probeAscend, with `runtimeLibrary` for libascendcl.so); if its transport cannot
// run it loads only with MC_FORCE_TCP set (lazily: upstream then installs TCP alone). LIBRARY_NOT_FOUND
// names the library, the variable and, for each path tried, why it was not taken.
Status loadApi(const std::string& path, const std::string& runtimeLibrary, const Api** out);

// Whether MC_FORCE_TCP is set (upstream then installs TCP only, whatever it was built with).
bool forceTcp();

// Upstream's integer error codes (error.h, negative) mapped onto ours.
Code mapError(int rc);

}  // namespace mc::upstream
