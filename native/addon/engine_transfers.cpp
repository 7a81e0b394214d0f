// Transfers: submit (synchronous; completes through the hub) and cancel.
#include <cmath>

#include "addon.h"
#include "engine_wrap.h"

namespace mcaddon {

namespace {

template <typename T>
T typedArg(const Napi::CallbackInfo& info, size_t i, napi_typedarray_type type, const char* what) {
  Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) {
    throwStatus(info.Env(), mc::Status(mc::Code::INVALID_ARGUMENT, std::string(what) + " has the wrong array type"));
  }
  return v.As<T>();
}

}  // namespace

// Arrays from `first`: opcodes Uint8Array, segments Int32Array, locals BigUint64Array,
// remotes BigUint64Array, lengths Float64Array -- all the same length.
std::vector<mc::TransferRequest> EngineWrap::requests(const Napi::CallbackInfo& info, size_t first) {
  Napi::Env env = info.Env();
  auto ops = typedArg<Napi::Uint8Array>(info, first, napi_uint8_array, "opcodes");
  auto segs = typedArg<Napi::Int32Array>(info, first + 1, napi_int32_array, "segments");
  auto locals = typedArg<Napi::BigUint64Array>(info, first + 2, napi_biguint64_array, "locals");
  auto remotes = typedArg<Napi::BigUint64Array>(info, first + 3, napi_biguint64_array, "remotes");
  auto lens = typedArg<Napi::Float64Array>(info, first + 4, napi_float64_array, "lengths");
  size_t n = ops.ElementLength();
  if (segs.ElementLength() != n || locals.ElementLength() != n || remotes.ElementLength() != n ||
      lens.ElementLength() != n) {
    throwStatus(env, mc::Status(mc::Code::INVALID_ARGUMENT, "request arrays differ in length"));
  }
  std::vector<mc::TransferRequest> reqs(n);
  for (size_t i = 0; i < n; ++i) {
    double l = lens[i];
    if (!(l >= 0 && l <= 9007199254740991.0) || std::floor(l) != l) {
      throwStatus(env, mc::Status(mc::Code::INVALID_ARGUMENT, "length must be a safe non-negative integer"), static_cast<int64_t>(i));
    }
    reqs[i] = {ops[i], segs[i], locals[i], remotes[i], static_cast<uint64_t>(l)};
  }
  return reqs;
}

// submit(token, opcodes, segments, locals, remotes, lengths, timeoutMs): throws (naming the offending
// request's index) when a request is invalid, and then nothing started.
Napi::Value EngineWrap::Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  double tok = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  if (!(tok >= 1 && tok <= 9007199254740991.0)) throwStatus(env, mc::Status(mc::Code::INVALID_ARGUMENT, "bad token"));
  std::vector<mc::TransferRequest> reqs = requests(info, 1);
  int64_t timeoutMs = info[6].IsNumber() ? static_cast<int64_t>(info[6].As<Napi::Number>().DoubleValue()) : 0;
  size_t bad = 0;
  mc::Status st = e.submitAsync(static_cast<uint64_t>(tok), reqs.data(), reqs.size(), timeoutMs, &bad);
  if (!st.ok()) throwStatus(env, st, static_cast<int64_t>(bad));
  hub_->submitted(env);
  return env.Undefined();
}

// cancel(token, reason: 'abort' | 'timeout')
Napi::Value EngineWrap::Cancel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) return env.Undefined();
  double tok = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  bool timeout = info[1].IsString() && info[1].As<Napi::String>().Utf8Value() == "timeout";
  if (tok >= 1) engine_->cancel(static_cast<uint64_t>(tok), timeout ? mc::Code::TIMEOUT : mc::Code::ABORTED);
  return env.Undefined();
}

}  // namespace mcaddon
