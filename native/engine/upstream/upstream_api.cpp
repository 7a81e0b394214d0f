#include "upstream_api.h"

#include <dlfcn.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

namespace mc::upstream {

namespace {

template <typename F>
void sym(void* h, const char* name, F* out) {
  *out = reinterpret_cast<F>(dlsym(h, name));
}

}  // namespace

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

Status loadApi(const std::string& path, const Api** out) {
  static std::mutex mu;
  static std::vector<std::unique_ptr<Api>> loaded;
  std::lock_guard<std::mutex> g(mu);
  std::vector<std::string> candidates;
  if (!path.empty()) candidates.push_back(path);
  else if (const char* env = std::getenv("MOONCAKE_TE_LIBRARY"); env && *env) candidates.push_back(env);
  else candidates = {"libtransfer_engine.so", "/usr/local/lib/libtransfer_engine.so", "/usr/lib/libtransfer_engine.so"};
  for (auto& a : loaded) for (const auto& c : candidates) if (a->path == c) { *out = a.get(); return Status(); }
  std::string errors;
  for (const auto& c : candidates) {
    void* h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      errors += "\n  " + c + ": " + (e ? e : "not found");
      continue;
    }
    auto api = std::make_unique<Api>();
    api->handle = h;
    api->path = c;
    sym(h, "createTransferEngine", &api->createTransferEngine);
    sym(h, "destroyTransferEngine", &api->destroyTransferEngine);
    sym(h, "getLocalIpAndPort", &api->getLocalIpAndPort);
    sym(h, "installTransport", &api->installTransport);
    sym(h, "openSegment", &api->openSegment);
    sym(h, "openSegmentNoCache", &api->openSegmentNoCache);
    sym(h, "closeSegment", &api->closeSegment);
    sym(h, "registerLocalMemory", &api->registerLocalMemory);
    sym(h, "unregisterLocalMemory", &api->unregisterLocalMemory);
    sym(h, "allocateBatchID", &api->allocateBatchID);
    sym(h, "submitTransfer", &api->submitTransfer);
    sym(h, "submitTransferWithNotify", &api->submitTransferWithNotify);
    sym(h, "getTransferStatus", &api->getTransferStatus);
    sym(h, "freeBatchID", &api->freeBatchID);
    sym(h, "getNotifsFromEngine", &api->getNotifsFromEngine);
    sym(h, "freeNotifsMsgBuf", &api->freeNotifsMsgBuf);
    sym(h, "genNotifyInEngine", &api->genNotifyInEngine);
    std::string missing;
    auto need = [&](const void* p, const char* n) { if (!p) missing += std::string(missing.empty() ? "" : ", ") + n; };
    need(reinterpret_cast<const void*>(api->createTransferEngine), "createTransferEngine");
    need(reinterpret_cast<const void*>(api->destroyTransferEngine), "destroyTransferEngine");
    need(reinterpret_cast<const void*>(api->installTransport), "installTransport");
    need(reinterpret_cast<const void*>(api->openSegment), "openSegment");
    need(reinterpret_cast<const void*>(api->closeSegment), "closeSegment");
    need(reinterpret_cast<const void*>(api->registerLocalMemory), "registerLocalMemory");
    need(reinterpret_cast<const void*>(api->unregisterLocalMemory), "unregisterLocalMemory");
    need(reinterpret_cast<const void*>(api->allocateBatchID), "allocateBatchID");
    need(reinterpret_cast<const void*>(api->submitTransfer), "submitTransfer");
    need(reinterpret_cast<const void*>(api->getTransferStatus), "getTransferStatus");
    need(reinterpret_cast<const void*>(api->freeBatchID), "freeBatchID");
    if (!missing.empty()) {
      dlclose(h);
      errors += "\n  " + c + ": not Mooncake's transfer engine C API (missing " + missing + ")";
      continue;
    }
    loaded.push_back(std::move(api));
    *out = loaded.back().get();
    return Status();
  }
  return Status(Code::LIBRARY_NOT_FOUND,
                "cannot load upstream Mooncake's libtransfer_engine.so (a Mooncake build that ships the shared library "
                "with the transports you need); point MOONCAKE_TE_LIBRARY (or the `library` option) at it. Tried:" + errors);
}

}  // namespace mc::upstream
