// Loading an optional vendor library at run time with dlopen (upstream's libtransfer_engine.so, CANN's
// libascendcl.so): which paths to try, opening them, resolving symbols, and recording why each path
// was not taken, for the LIBRARY_NOT_FOUND message.
#pragma once

#include <dlfcn.h>

#include <string>
#include <vector>

namespace mc {

// The paths to try, in order: `path` when given, else $envVar when set and non-empty, else `defaults`.
std::vector<std::string> libraryCandidates(const std::string& path, const char* envVar, std::vector<std::string> defaults);

// Resolves `name` in `handle` into a typed function pointer; false (and *out null) when it is missing.
template <typename F>
bool resolveSymbol(void* handle, const char* name, F* out) {
  *out = reinterpret_cast<F>(dlsym(handle, name));
  return *out != nullptr;
}

// Tries candidate libraries one at a time, keeping a line "\n  <path>: <reason>" for each one that
// was not taken.
class LibraryAttempts {
 public:
  // dlopen(path, flags); null, with dlerror() recorded, when it cannot be loaded.
  void* open(const std::string& path, int flags = RTLD_NOW | RTLD_LOCAL);
  // The library loaded but is not the one wanted: closes it and records `why`.
  void reject(void* handle, const std::string& path, const std::string& why);
  // The recorded lines, to append to the error message.
  const std::string& tried() const { return tried_; }
  // Records a reason for a path without loading it.
  void note(const std::string& path, const std::string& why) { tried_ += "\n  " + path + ": " + why; }

 private:
  std::string tried_;
};

}  // namespace mc
