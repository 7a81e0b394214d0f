#include "shared_library.h"

#include <cstdlib>

namespace mc {

std::vector<std::string> libraryCandidates(const std::string& path, const char* envVar, std::vector<std::string> defaults) {
  if (!path.empty()) return {path};
  if (const char* env = std::getenv(envVar); env && *env) return {env};
  return defaults;
}

void* LibraryAttempts::open(const std::string& path, int flags) {
  void* h = dlopen(path.c_str(), flags);
  if (!h) {
    const char* e = dlerror();
    tried_ += "\n  " + path + ": " + (e ? e : "not found");
  }
  return h;
}

void LibraryAttempts::reject(void* handle, const std::string& path, const std::string& why) {
  dlclose(handle);
  note(path, why);
}

}  // namespace mc
