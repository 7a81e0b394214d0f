#include "cann_libraries.h"

#include <dlfcn.h>
#include <link.h>
#include <sys/stat.h>

#include <mutex>

#include "../device/device_runtime.h"

namespace mc::upstream {

namespace {

// What the Ascend Direct transport of upstream's npu wheel links (readelf -d ascend_transport.so).
const char* const kCannLibraries[] = {"libascendcl.so", "libllm_datadist.so", "libmetadef.so"};

bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

std::string dirOf(const std::string& p) {
  auto slash = p.rfind('/');
  return slash == std::string::npos ? "" : p.substr(0, slash);
}

// The file a handle was loaded from (the loader's search result for a bare name).
std::string loadedPath(void* h, const std::string& fallback) {
  struct link_map* lm = nullptr;
  if (dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_name && *lm->l_name) return lm->l_name;
  return fallback;
}

std::string standinKind(void* h) {
  auto* marker = static_cast<const char*>(dlsym(h, "mooncake_node_cann_standin"));
  return marker ? std::string(marker) : std::string();
}

// Loads one CANN library (kept loaded for the process: the wheel will need it). Null when absent.
void* loadOne(const std::vector<std::string>& candidates, CannLibrary* out) {
  for (const auto& c : candidates) {
    if (c.find('/') != std::string::npos && !exists(c)) continue;
    void* h = dlopen(c.c_str(), RTLD_LAZY | RTLD_LOCAL);
    if (!h) continue;
    out->path = loadedPath(h, c);
    out->standin = standinKind(h);
    return h;
  }
  return nullptr;
}

}  // namespace

AscendProbe prepareAscend(const std::string& enginePath, const std::string& runtimeLibrary) {
  static std::mutex mu;  // dlerror() is per thread, but keep probes from interleaving their loads
  std::lock_guard<std::mutex> g(mu);
  AscendProbe probe;
  std::string dir = dirOf(enginePath);
  if (dir.empty()) {
    // A bare name: find where the loader takes it from.
    if (void* h = dlopen(enginePath.c_str(), RTLD_LAZY | RTLD_NOLOAD)) {
      dir = dirOf(loadedPath(h, ""));
      dlclose(h);
    }
  }
  const std::string transport = (dir.empty() ? std::string(".") : dir) + "/ascend_transport.so";
  if (!exists(transport)) return probe;
  probe.present = true;

  std::string cannDir;
  std::string missing;
  for (const char* name : kCannLibraries) {
    CannLibrary lib;
    lib.name = name;
    std::vector<std::string> candidates;
    if (lib.name == "libascendcl.so") {
      candidates = ascendRuntimeCandidates(runtimeLibrary);
    } else {
      if (!cannDir.empty()) candidates.push_back(cannDir + "/" + name);
      candidates.push_back(name);
    }
    void* h = loadOne(candidates, &lib);
    if (h && lib.name == "libascendcl.so") cannDir = dirOf(lib.path);
    if (!h) missing += std::string(missing.empty() ? "" : ", ") + name;
    probe.cann.push_back(lib);
  }

  probe.missing = missing;
  return probe;
}

std::string ascendProblem(const AscendProbe& probe, const std::string& loaderError) {
  if (!probe.missing.empty()) {
    return "CANN's " + probe.missing + " not found (install CANN >= 8.3.RC1 and source its set_env.sh, or point "
           "MOONCAKE_ASCENDCL_LIBRARY at its libascendcl.so): " + loaderError;
  }
  return "the CANN libraries found lack functions the Ascend transport calls (ADXL needs CANN >= 8.3.RC1): " + loaderError;
}

}  // namespace mc::upstream
