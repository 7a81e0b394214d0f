#include "managed_view.h"

#include <atomic>

namespace mcaddon {

namespace {

// What the ArrayBuffer's finalizer holds. Two owners: the finalizer and the call creating the view.
// Node does not agree with itself on who owns the finalizer hint when creating an external buffer
// fails: Node 20 refuses a length above buffer.constants.MAX_LENGTH by calling the finalizer at once
// and then returning an error, while node-addon-api's ArrayBuffer::New frees the hint again on that
// error (the "double free" abort of a 5 GiB managed buffer). Counting both owners makes either order,
// and a runtime that never calls the finalizer on failure, free it exactly once.
struct ViewHold {
  std::shared_ptr<mc::HostAllocation> mem;
  std::atomic<int> owners{2};
};

void release(ViewHold* h) {
  if (h->owners.fetch_sub(1) == 1) delete h;
}

void finalizeView(napi_env, void*, void* hint) { release(static_cast<ViewHold*>(hint)); }

}  // namespace

Napi::Value managedView(Napi::Env env, const std::shared_ptr<mc::HostAllocation>& mem) {
  auto* hold = new ViewHold{mem};
  napi_value ab = nullptr;
  napi_status st = napi_create_external_arraybuffer(env, mem->data(), mem->length(), finalizeView, hold, &ab);
  if (st != napi_ok) {
    // Refused (too large for this Node): drop the exception it left and the view's reference to the
    // memory now, even if a late finalizer still holds the (then empty) hold.
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value ignored;
      napi_get_and_clear_last_exception(env, &ignored);
    }
    hold->mem.reset();
    release(hold);
    return Napi::Value();
  }
  release(hold);
  return Napi::Value(env, ab);
}

}  // namespace mcaddon
