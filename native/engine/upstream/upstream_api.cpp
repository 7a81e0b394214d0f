#include "upstream_api.h"

#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

#include "../shared_library.h"

namespace mc::upstream {

Code mapError(int rc) {
  switch (rc) {
    case 0: return Code::OK;
    case -1: return Code::INVALID_ARGUMENT;
    case -2: return Code::TOO_MANY_REQUESTS;
    case -3: return Code::ADDRESS_NOT_REGISTERED;
    case -4: return Code::BATCH_BUSY;
    case -6: return Code::DEVICE_NOT_FOUND;
    case -7: return Code::ADDRESS_OVERLAPPED;
    case -101: return Code::DNS;
    case -102: return Code::SOCKET;
    case -103: return Code::MALFORMED_JSON;
    case -104: return Code::REJECT_HANDSHAKE;
    case -200: return Code::METADATA;
    case -201: return Code::ENDPOINT;
    case -202: return Code::CONTEXT;
    case -300: return Code::NUMA;
    case -301: return Code::CLOCK;
    case -302: return Code::MEMORY;
    case -303: return Code::NOT_IMPLEMENTED;
    default: return Code::PROTOCOL_ERROR;  // a code this version of the mapping does not know
  }
}

namespace {

void resolveAll(void* h, Api* api) {
  resolveSymbol(h, "createTransferEngine", &api->createTransferEngine);
  resolveSymbol(h, "destroyTransferEngine", &api->destroyTransferEngine);
  resolveSymbol(h, "getLocalIpAndPort", &api->getLocalIpAndPort);
  resolveSymbol(h, "installTransport", &api->installTransport);
  resolveSymbol(h, "openSegment", &api->openSegment);
  resolveSymbol(h, "openSegmentNoCache", &api->openSegmentNoCache);
  resolveSymbol(h, "closeSegment", &api->closeSegment);
  resolveSymbol(h, "registerLocalMemory", &api->registerLocalMemory);
  resolveSymbol(h, "unregisterLocalMemory", &api->unregisterLocalMemory);
  resolveSymbol(h, "allocateBatchID", &api->allocateBatchID);
  resolveSymbol(h, "submitTransfer", &api->submitTransfer);
  resolveSymbol(h, "submitTransferWithNotify", &api->submitTransferWithNotify);
  resolveSymbol(h, "getTransferStatus", &api->getTransferStatus);
  resolveSymbol(h, "freeBatchID", &api->freeBatchID);
  resolveSymbol(h, "getNotifsFromEngine", &api->getNotifsFromEngine);
  resolveSymbol(h, "freeNotifsMsgBuf", &api->freeNotifsMsgBuf);
  resolveSymbol(h, "genNotifyInEngine", &api->genNotifyInEngine);
}

// The required entry points that are missing, comma separated (empty: the C API is complete).
std::string missingEntryPoints(const Api& api) {
  std::string missing;
  auto need = [&](const void* p, const char* n) { if (!p) missing += std::string(missing.empty() ? "" : ", ") + n; };
  need(reinterpret_cast<const void*>(api.createTransferEngine), "createTransferEngine");
  need(reinterpret_cast<const void*>(api.destroyTransferEngine), "destroyTransferEngine");
  need(reinterpret_cast<const void*>(api.installTransport), "installTransport");
  need(reinterpret_cast<const void*>(api.openSegment), "openSegment");
  need(reinterpret_cast<const void*>(api.closeSegment), "closeSegment");
  need(reinterpret_cast<const void*>(api.registerLocalMemory), "registerLocalMemory");
  need(reinterpret_cast<const void*>(api.unregisterLocalMemory), "unregisterLocalMemory");
  need(reinterpret_cast<const void*>(api.allocateBatchID), "allocateBatchID");
  need(reinterpret_cast<const void*>(api.submitTransfer), "submitTransfer");
  need(reinterpret_cast<const void*>(api.getTransferStatus), "getTransferStatus");
  need(reinterpret_cast<const void*>(api.freeBatchID), "freeBatchID");
  return missing;
}

}  // namespace

bool forceTcp() { return std::getenv("MC_FORCE_TCP") != nullptr; }

Status loadApi(const std::string& path, const std::string& runtimeLibrary, const Api** out) {
  static std::mutex mu;
  static std::vector<std::unique_ptr<Api>> loaded;
  std::lock_guard<std::mutex> g(mu);
  const std::vector<std::string> candidates = libraryCandidates(
      path, "MOONCAKE_TE_LIBRARY", {"libtransfer_engine.so", "/usr/local/lib/libtransfer_engine.so", "/usr/lib/libtransfer_engine.so"});
  for (auto& a : loaded) for (const auto& c : candidates) if (a->path == c) { *out = a.get(); return Status(); }
  LibraryAttempts attempts;
  for (const auto& c : candidates) {
    auto api = std::make_unique<Api>();
    api->path = c;
    api->ascend = prepareAscend(c, runtimeLibrary);
    void* h = nullptr;
    if (!api->ascend.present) {
      h = attempts.open(c);
      if (!h) continue;
    } else {
      dlerror();
      h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (h) {
        api->ascend.usable = true;
      } else {
        const char* e = dlerror();
        api->ascend.problem = ascendProblem(api->ascend, e ? e : "unknown loader error");
        if (!forceTcp()) {
          // Creating an engine would install the Ascend transport and call CANN functions that are
          // not there: with lazy binding that ends the process, so refuse here instead.
          attempts.note(c, "an Ascend build whose transport cannot run here: " + api->ascend.problem +
                               ". To use only upstream's TCP transport with this build, set MC_FORCE_TCP=1");
          continue;
        }
        // TCP only: bind lazily, the Ascend transport's CANN calls are never made.
        h = attempts.open(c, RTLD_LAZY | RTLD_LOCAL);
        if (!h) continue;
        api->lazy = true;
      }
    }
    api->handle = h;
    resolveAll(h, api.get());
    std::string missing = missingEntryPoints(*api);
    if (!missing.empty()) {
      attempts.reject(h, c, "not Mooncake's transfer engine C API (missing " + missing + ")");
      continue;
    }
    loaded.push_back(std::move(api));
    *out = loaded.back().get();
    return Status();
  }
  return Status(Code::LIBRARY_NOT_FOUND,
                "cannot load upstream Mooncake's libtransfer_engine.so (install the mooncake-transfer-engine-npu wheel "
                "on Ascend hosts, or another Mooncake build that ships the library with the transports you need); "
                "point MOONCAKE_TE_LIBRARY (or the `library` option) at it. Tried:" + attempts.tried());
}

}  // namespace mc::upstream
