// Per-environment addon state (worker_threads safe): no static Napi handles anywhere in the addon.
#pragma once

#include <napi.h>

#include "status.h"

namespace mcaddon {

class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports);

  Napi::FunctionReference errorFactory;  // (status, message, index) => MooncakeError, set by lib/engine/native.ts
  napi_type_tag engineTag;               // random per load: two copies of the addon never mix objects

 private:
  Napi::Value SetErrorFactory(const Napi::CallbackInfo& info);
  Napi::Value CodeNames(const Napi::CallbackInfo& info);
  Napi::Value HostId(const Napi::CallbackInfo& info);
  Napi::Value RawTcpBench(const Napi::CallbackInfo& info);
};

// Builds the package's MooncakeError (through the registered factory) for a status.
Napi::Error makeError(Napi::Env env, const mc::Status& st, int64_t index = -1);
[[noreturn]] void throwStatus(Napi::Env env, const mc::Status& st, int64_t index = -1);

// Argument helpers that throw INVALID_ARGUMENT MooncakeErrors.
uint64_t toU64(Napi::Env env, const Napi::Value& v, const char* what);
uint64_t toLength(Napi::Env env, const Napi::Value& v, const char* what);
std::string toString(Napi::Env env, const Napi::Value& v, const char* what);

}  // namespace mcaddon
