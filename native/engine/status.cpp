#include "status.h"

namespace mc {

const char* codeName(Code c) {
  switch (c) {
    case Code::OK: return "OK";
    case Code::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case Code::TOO_MANY_REQUESTS: return "TOO_MANY_REQUESTS";
    case Code::ADDRESS_NOT_REGISTERED: return "ADDRESS_NOT_REGISTERED";
    case Code::BATCH_BUSY: return "BATCH_BUSY";
    case Code::DEVICE_NOT_FOUND: return "DEVICE_NOT_FOUND";
    case Code::ADDRESS_OVERLAPPED: return "ADDRESS_OVERLAPPED";
    case Code::NOT_SUPPORTED_TRANSPORT: return "NOT_SUPPORTED_TRANSPORT";
    case Code::DNS: return "DNS";
    case Code::SOCKET: return "SOCKET";
    case Code::MALFORMED_JSON: return "MALFORMED_JSON";
    case Code::REJECT_HANDSHAKE: return "REJECT_HANDSHAKE";
    case Code::METADATA: return "METADATA";
    case Code::ENDPOINT: return "ENDPOINT";
    case Code::CONTEXT: return "CONTEXT";
    case Code::NUMA: return "NUMA";
    case Code::CLOCK: return "CLOCK";
    case Code::MEMORY: return "MEMORY";
    case Code::NOT_IMPLEMENTED: return "NOT_IMPLEMENTED";
    case Code::CLOSED: return "CLOSED";
    case Code::ABORTED: return "ABORTED";
    case Code::TIMEOUT: return "TIMEOUT";
    case Code::REMOTE_REJECTED: return "REMOTE_REJECTED";
    case Code::REGION_BUSY: return "REGION_BUSY";
    case Code::SEGMENT_NOT_FOUND: return "SEGMENT_NOT_FOUND";
    case Code::CONNECTION_LOST: return "CONNECTION_LOST";
    case Code::CONNECT_FAILED: return "CONNECT_FAILED";
    case Code::PROTOCOL_ERROR: return "PROTOCOL_ERROR";
    case Code::INVALID_REMOTE_ADDRESS: return "INVALID_REMOTE_ADDRESS";
    case Code::LIBRARY_NOT_FOUND: return "LIBRARY_NOT_FOUND";
    case Code::BATCH_NOT_FOUND: return "BATCH_NOT_FOUND";
  }
  return "UNKNOWN";
}

}  // namespace mc
