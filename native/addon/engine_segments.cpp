// Peer segments: openSegment answers with what the engine learned from the descriptor, so nothing reads
// it back; closeSegment forgets the handle.
#include <memory>

#include "addon.h"
#include "engine_wrap.h"

namespace mcaddon {

namespace {

Napi::Object segmentToJs(Napi::Env env, const mc::SegmentInfo& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", s.id);
  o.Set("name", s.name);
  o.Set("protocol", s.protocol);
  o.Set("ip", s.ip);
  o.Set("dataPort", s.dataPort);
  o.Set("protoVersion", s.protoVersion);
  Napi::Array bufs = Napi::Array::New(env, s.buffers.size());
  for (size_t i = 0; i < s.buffers.size(); ++i) {
    Napi::Object b = Napi::Object::New(env);
    b.Set("name", s.buffers[i].name);
    b.Set("address", Napi::BigInt::New(env, s.buffers[i].addr));
    b.Set("length", Napi::Number::New(env, static_cast<double>(s.buffers[i].length)));
    bufs.Set(static_cast<uint32_t>(i), b);
  }
  o.Set("buffers", bufs);
  return o;
}

}  // namespace

// openSegment(name, descriptorJson, ip) -> Promise<{ id, name, protocol, ip, dataPort, protoVersion, buffers }>
Napi::Value EngineWrap::OpenSegment(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  std::string name = toString(env, info[0], "name"), desc = toString(env, info[1], "descriptor"), ip = toString(env, info[2], "ip");
  auto seg = std::make_shared<mc::SegmentInfo>();
  return call(env,
              [&e, name, desc, ip, seg] {
                int32_t id = -1;
                mc::Status st = e.openSegment(name, desc, ip, &id);
                return st.ok() ? e.segmentInfo(id, seg.get()) : st;
              },
              [seg](Napi::Env env2) { return segmentToJs(env2, *seg).As<Napi::Value>(); });
}

// closeSegment(handle) -> Promise<void>
Napi::Value EngineWrap::CloseSegment(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  int32_t id = static_cast<int32_t>(toLength(env, info[0], "segment"));
  return call(env, [&e, id] { return e.closeSegment(id); }, nullptr);
}

}  // namespace mcaddon
