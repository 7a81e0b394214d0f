// The CANN libraries an Ascend build of upstream Mooncake links (its ascend_transport.so needs
// libascendcl.so, libllm_datadist.so and libmetadef.so). The loader satisfies a library's DT_NEEDED
// entry with an already loaded object of the same SONAME, so loading them first, from the directory
// of the Ascend runtime mooncake-node uses, makes the wheel load without LD_LIBRARY_PATH and share one
// runtime with mooncake-node's NPU memory. Loading the engine with every symbol bound then tells
// whether the Ascend transport can run, before upstream creates an engine that would call into it (a
// missing function called through lazy binding ends the process).
#pragma once

#include <string>
#include <vector>

namespace mc::upstream {

struct CannLibrary {
  std::string name;     // e.g. "libascendcl.so"
  std::string path;     // where it was loaded from; empty when it could not be loaded
  std::string standin;  // the stand-in kind ("empty", "acl", ...) when it is a mooncake-node test stand-in
};

struct AscendProbe {
  bool present = false;  // the build has an Ascend transport (ascend_transport.so beside the library)
  bool usable = false;   // the library loaded with every symbol bound (set by the loader)
  std::string problem;   // why not, in words that name the missing library or symbol
  std::string missing;   // CANN libraries that could not be loaded, comma separated
  std::vector<CannLibrary> cann;
};

// For the library at `enginePath`: when its directory holds ascend_transport.so, loads the CANN
// libraries (libascendcl.so found as the Ascend runtime finds it, from `runtimeLibrary`,
// $MOONCAKE_ASCENDCL_LIBRARY, the loader path or CANN's install directories; the others from the same
// directory, else the loader path). Whether the transport can run shows when the library is then
// loaded with every symbol bound (ascend_transport.so uses symbols of libtransfer_engine.so, so it
// cannot be probed alone).
AscendProbe prepareAscend(const std::string& enginePath, const std::string& runtimeLibrary);

// Why the Ascend transport cannot run, given the loader's error for the bound load.
std::string ascendProblem(const AscendProbe& probe, const std::string& loaderError);

}  // namespace mc::upstream
