// What the engine tells about itself (data port, descriptor, counters, metrics, backend) and the
// upstream backend's notify channel.
#include "addon.h"
#include "engine_wrap.h"
#include "metrics_js.h"

namespace mcaddon {

Napi::Value EngineWrap::DataPort(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), live(info.Env()).dataPort());
}

Napi::Value EngineWrap::LocalDescriptor(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), live(info.Env()).localDescriptor());
}

Napi::Value EngineWrap::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  for (const auto& kv : live(env).stats()) o.Set(kv.first, Napi::Number::New(env, kv.second));
  o.Set("pendingBatches", Napi::Number::New(env, hub_ ? static_cast<double>(hub_->pending()) : 0));
  return o;
}

// metrics() -> the per-peer counters and latency histogram (see metrics_js.h).
Napi::Value EngineWrap::Metrics(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return metricsToJs(env, live(env).metrics());
}

Napi::Value EngineWrap::Backend(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), live(info.Env()).backendName());
}

Napi::Value EngineWrap::BackendInfo(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), live(info.Env()).backendInfo());
}

Napi::Value EngineWrap::LocalEndpoint(const Napi::CallbackInfo& info) {
  std::string ep;
  mc::Status st = live(info.Env()).localEndpoint(&ep);
  if (!st.ok()) throwStatus(info.Env(), st);
  return Napi::String::New(info.Env(), ep);
}

// sendNotify(segment, name, msg) -> Promise<void>: for backends with their own handshake daemon.
Napi::Value EngineWrap::SendNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  int32_t seg = static_cast<int32_t>(toLength(env, info[0], "segment"));
  std::string name = toString(env, info[1], "name"), msg = toString(env, info[2], "msg");
  return call(env, [&e, seg, name, msg] { return e.sendNotify(seg, name, msg); }, nullptr);
}

// takeNotifies() -> [name, msg][]
Napi::Value EngineWrap::TakeNotifies(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<std::pair<std::string, std::string>> list;
  mc::Status st = live(env).takeNotifies(&list);
  if (!st.ok()) throwStatus(env, st);
  Napi::Array out = Napi::Array::New(env, list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    Napi::Array pair = Napi::Array::New(env, 2);
    pair.Set(0u, list[i].first);
    pair.Set(1u, list[i].second);
    out.Set(static_cast<uint32_t>(i), pair);
  }
  return out;
}

}  // namespace mcaddon
