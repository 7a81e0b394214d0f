// Engine status codes. Values below 1000 are upstream Mooncake's Status::Code numbers (error.h uses the
// same numbers negated); values from 1000 are mooncake-node additions. The TypeScript layer maps each
// value to a stable string code (lib/errors.ts); keep both lists in sync (test/engine/errors.test.ts
// checks it through the binding's codeNames()).
#pragma once

#include <cstdint>
#include <string>
#include <utility>

namespace mc {

enum class Code : int32_t {
  OK = 0,
  INVALID_ARGUMENT = 1,
  TOO_MANY_REQUESTS = 2,
  ADDRESS_NOT_REGISTERED = 3,
  BATCH_BUSY = 4,
  DEVICE_NOT_FOUND = 6,
  ADDRESS_OVERLAPPED = 7,
  NOT_SUPPORTED_TRANSPORT = 8,
  DNS = 101,
  SOCKET = 102,
  MALFORMED_JSON = 103,
  REJECT_HANDSHAKE = 104,
  METADATA = 200,
  ENDPOINT = 201,
  CONTEXT = 202,
  NUMA = 300,
  CLOCK = 301,
  MEMORY = 302,
  NOT_IMPLEMENTED = 999,
  // mooncake-node additions.
  CLOSED = 1000,             // the engine (or the batch's connection) was closed
  ABORTED = 1001,            // cancelled by the caller (AbortSignal)
  TIMEOUT = 1002,            // a deadline passed
  REMOTE_REJECTED = 1003,    // the peer refused the address range (TCP v2 status 1)
  REGION_BUSY = 1004,        // the region is used by a transfer in flight
  SEGMENT_NOT_FOUND = 1005,  // unknown segment handle or name
  CONNECTION_LOST = 1006,    // the peer closed or reset the connection mid-request
  CONNECT_FAILED = 1007,     // could not connect to the peer's data port
  PROTOCOL_ERROR = 1008,     // the peer sent bytes that do not follow the wire protocol
  INVALID_REMOTE_ADDRESS = 1009,  // the range is outside every buffer the peer published
  LIBRARY_NOT_FOUND = 1010,  // a run-time loaded library (upstream engine, device runtime) is missing
  BATCH_NOT_FOUND = 1011,    // unknown batch id
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
