// Engine status codes. Values below 1000 are upstream Mooncake's Status::Code numbers (error.h uses the
// same numbers negated); values from 1000 are mooncake-node additions. The TypeScript layer maps each
// value to a stable string code (lib/errors.ts, which cannot load the addon to read this list); the
// binding's codeNames() hands this list over, and test/engine/bad-input.test.ts holds the two equal.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

namespace mc {

// The one list of codes, as (name, number); enum, names and the binding's codeNames() are built from it.
#define MC_STATUS_CODES(X)                                                                    \
  X(OK, 0)                                                                                    \
  X(INVALID_ARGUMENT, 1)                                                                      \
  X(TOO_MANY_REQUESTS, 2)                                                                     \
  X(ADDRESS_NOT_REGISTERED, 3)                                                                \
  X(BATCH_BUSY, 4)                                                                            \
  X(DEVICE_NOT_FOUND, 6)                                                                      \
  X(ADDRESS_OVERLAPPED, 7)                                                                    \
  X(NOT_SUPPORTED_TRANSPORT, 8)                                                               \
  X(DNS, 101)                                                                                 \
  X(SOCKET, 102)                                                                              \
  X(MALFORMED_JSON, 103)                                                                      \
  X(REJECT_HANDSHAKE, 104)                                                                    \
  X(METADATA, 200)                                                                            \
  X(ENDPOINT, 201)                                                                            \
  X(CONTEXT, 202)                                                                             \
  X(NUMA, 300)                                                                                \
  X(CLOCK, 301)                                                                               \
  X(MEMORY, 302)                                                                              \
  X(NOT_IMPLEMENTED, 999)                                                                     \
  /* mooncake-node additions */                                                               \
  X(CLOSED, 1000)                 /* the engine (or the batch's connection) was closed */     \
  X(ABORTED, 1001)                /* cancelled by the caller (AbortSignal) */                 \
  X(TIMEOUT, 1002)                /* a deadline passed */                                     \
  X(REMOTE_REJECTED, 1003)        /* the peer refused the address range (TCP v2 status 1) */  \
  X(REGION_BUSY, 1004)            /* the region is used by a transfer in flight */            \
  X(SEGMENT_NOT_FOUND, 1005)      /* unknown segment handle or name */                        \
  X(CONNECTION_LOST, 1006)        /* the peer closed or reset the connection mid-request */   \
  X(CONNECT_FAILED, 1007)         /* could not connect to the peer's data port */             \
  X(PROTOCOL_ERROR, 1008)         /* the peer sent bytes that do not follow the protocol */   \
  X(INVALID_REMOTE_ADDRESS, 1009) /* the range is outside every buffer the peer published */  \
  X(LIBRARY_NOT_FOUND, 1010)      /* a run-time loaded library is missing */                  \
  X(BATCH_NOT_FOUND, 1011)        /* unknown batch id */

enum class Code : int32_t {
#define MC_STATUS_ENUM(name, value) name = value,
  MC_STATUS_CODES(MC_STATUS_ENUM)
#undef MC_STATUS_ENUM
};

const char* codeName(Code c);

// A status with an optional human-readable message (for control-plane calls; the data path uses Code).
struct Status {
  Code code = Code::OK;
  std::string message;
  Status() = default;
  Status(Code c) : code(c) {}  // NOLINT: implicit on purpose
  Status(Code c, std::string m) : code(c), message(std::move(m)) {}
  bool ok() const { return code == Code::OK; }
};

// Per-task states, numbered as upstream's TransferStatusEnum.
enum class TaskState : uint8_t {
  WAITING = 0,
  PENDING = 1,
  INVALID = 2,
  CANCELED = 3,
  COMPLETED = 4,
  TIMEOUT = 5,
  FAILED = 6,
};

inline bool isTerminal(TaskState s) {
  return s == TaskState::COMPLETED || s == TaskState::FAILED || s == TaskState::TIMEOUT ||
         s == TaskState::CANCELED || s == TaskState::INVALID;
}

}  // namespace mc
