#include "addon.h"

#include <cmath>
#include <random>

#include "bench/raw_tcp.h"
#include "engine_wrap.h"
#include "host_memory.h"
#include "promise_worker.h"

namespace mcaddon {

Addon::Addon(Napi::Env env, Napi::Object exports) {
  std::random_device rd;
  engineTag.lower = (static_cast<uint64_t>(rd()) << 32) | rd();
  engineTag.upper = (static_cast<uint64_t>(rd()) << 32) | rd();
  DefineAddon(exports, {
                           InstanceMethod("setErrorFactory", &Addon::SetErrorFactory),
                           InstanceMethod("codeNames", &Addon::CodeNames),
                           InstanceMethod("hostId", &Addon::HostId),
                           InstanceMethod("rawTcpBench", &Addon::RawTcpBench),
                       });
  exports.Set("Engine", EngineWrap::Define(env));
}

Napi::Value Addon::SetErrorFactory(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "setErrorFactory expects a function");
  errorFactory = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Value Addon::CodeNames(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
#define MC_STATUS_ENTRY(name, value) out.Set(#name, Napi::Number::New(env, value));
  MC_STATUS_CODES(MC_STATUS_ENTRY)
#undef MC_STATUS_ENTRY
  return out;
}

Napi::Value Addon::HostId(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), mc::localHostId()); }

namespace {

// A bounded blocking call (the run lasts `seconds`), so a worker on the libuv pool is right.
class RawTcpWorker final : public PromiseWorker {
 public:
  // streams == 0: the single-threaded memcpy reference instead of TCP.
  RawTcpWorker(Napi::Env env, unsigned streams, uint64_t block, uint64_t buffer, double seconds, uint64_t io)
      : PromiseWorker(env, "mooncake-node:raw-tcp-bench"), streams_(streams), block_(block), buffer_(buffer), seconds_(seconds), io_(io) {}

 protected:
  mc::Status Run() override {
    return streams_ == 0 ? mc::bench::runMemcpy(block_, buffer_, seconds_, &result_)
                         : mc::bench::runRawTcp(streams_, block_, buffer_, seconds_, io_, &result_);
  }
  Napi::Value Result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("bytes", Napi::Number::New(env, static_cast<double>(result_.bytes)));
    o.Set("seconds", Napi::Number::New(env, result_.seconds));
    return o;
  }

 private:
  unsigned streams_;
  uint64_t block_;
  uint64_t buffer_;
  double seconds_;
  uint64_t io_;
  mc::bench::RawTcpResult result_;
};

}  // namespace

// rawTcpBench(streams, blockSize, bufferSize, seconds, ioSize?) -> Promise<{ bytes, seconds }>; streams 0 = memcpy;
// ioSize: bytes per send/recv call (default: max(blockSize, 8 MiB), bulk)
Napi::Value Addon::RawTcpBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  unsigned streams = static_cast<unsigned>(toLength(env, info[0], "streams"));
  uint64_t block = toLength(env, info[1], "blockSize");
  uint64_t buffer = toLength(env, info[2], "bufferSize");
  double seconds = info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : 1;
  uint64_t io = info[4].IsUndefined() ? 0 : toLength(env, info[4], "ioSize");
  return (new RawTcpWorker(env, streams, block, buffer, seconds, io))->start();
}

Napi::Error makeError(Napi::Env env, const mc::Status& st, int64_t index) {
  Addon* addon = env.GetInstanceData<Addon>();
  std::string msg = st.message.empty() ? mc::codeName(st.code) : st.message;
  if (addon && !addon->errorFactory.IsEmpty()) {
    Napi::Value e = addon->errorFactory.Call({Napi::Number::New(env, static_cast<int32_t>(st.code)),
                                              Napi::String::New(env, msg),
                                              Napi::Number::New(env, static_cast<double>(index))});
    return Napi::Error(env, e);
  }
  Napi::Error err = Napi::Error::New(env, msg);
  err.Set("status", Napi::Number::New(env, static_cast<int32_t>(st.code)));
  err.Set("code", Napi::String::New(env, mc::codeName(st.code)));
  return err;
}

void throwStatus(Napi::Env env, const mc::Status& st, int64_t index) { throw makeError(env, st, index); }

uint64_t toU64(Napi::Env env, const Napi::Value& v, const char* what) {
  if (v.IsBigInt()) {
    bool lossless = true;
    uint64_t x = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throwStatus(env, mc::Status(mc::Code::INVALID_ARGUMENT, std::string(what) + " must be an unsigned 64-bit bigint"));
    return x;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d >= 0 && d <= 9007199254740991.0 && std::floor(d) == d) return static_cast<uint64_t>(d);
  }
  throwStatus(env, mc::Status(mc::Code::INVALID_ARGUMENT, std::string(what) + " must be a bigint or a safe non-negative integer"));
}

uint64_t toLength(Napi::Env env, const Napi::Value& v, const char* what) {
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d >= 0 && d <= 9007199254740991.0 && std::floor(d) == d) return static_cast<uint64_t>(d);
  }
  throwStatus(env, mc::Status(mc::Code::INVALID_ARGUMENT, std::string(what) + " must be a safe non-negative integer"));
}

std::string toString(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsString()) throwStatus(env, mc::Status(mc::Code::INVALID_ARGUMENT, std::string(what) + " must be a string"));
  return v.As<Napi::String>().Utf8Value();
}

}  // namespace mcaddon

using MooncakeNodeAddon = mcaddon::Addon;
NODE_API_ADDON(MooncakeNodeAddon)
