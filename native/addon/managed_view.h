// JS views over engine-allocated host memory.
#pragma once

#include <napi.h>

#include <memory>

#include "host_memory.h"

namespace mcaddon {

// An external ArrayBuffer over the whole allocation that keeps it alive until collected, or an empty
// value (with no exception pending) when this Node cannot make an ArrayBuffer that large (Node 20's
// external buffers stop at buffer.constants.MAX_LENGTH, 4 GiB). The memory stays usable without one.
Napi::Value managedView(Napi::Env env, const std::shared_ptr<mc::HostAllocation>& mem);

}  // namespace mcaddon
