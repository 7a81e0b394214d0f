// The engine config object from lib/engine/native.ts, read with the option names TransferEngineOptions
// uses (lib/engine/options.ts), into the engine's settings (engine_config.h).
#include <string>

#include "addon.h"
#include "engine_wrap.h"

namespace mcaddon {

namespace {

bool has(Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  return !v.IsUndefined() && !v.IsNull();
}

template <typename T>
void readUint(Napi::Env env, Napi::Object o, const char* key, T* out) {
  if (has(o, key)) *out = static_cast<T>(toLength(env, o.Get(key), key));
}

void readString(Napi::Object o, const char* key, std::string* out) {
  Napi::Value v = o.Get(key);
  if (v.IsString()) *out = v.As<Napi::String>().Utf8Value();
}

mc::EngineConfig engineConfig(Napi::Env env, Napi::Object o) {
  mc::EngineConfig cfg;
  cfg.localServerName = toString(env, o.Get("localServerName"), "localServerName");
  if (o.Get("sameHostFastPath").IsBoolean()) cfg.sameHostFastPath = o.Get("sameHostFastPath").As<Napi::Boolean>().Value();
  readString(o, "ascendRuntimeLibrary", &cfg.ascendRuntimeLibrary);
  readString(o, "advertiseAddress", &cfg.advertiseHost);
  mc::TransportOptions& t = cfg.transport;
  readUint(env, o, "ioThreads", &t.ioThreads);
  readUint(env, o, "connectionsPerPeer", &t.connectionsPerPeer);
  readUint(env, o, "maxInflightPerConnection", &t.maxInflightPerConnection);
  readUint(env, o, "retries", &t.retries);
  readUint(env, o, "maxServerConnections", &t.maxServerConnections);
  readUint(env, o, "maxServerConnectionsPerPeer", &t.maxServerConnectionsPerPeer);
  readUint(env, o, "metricsMaxPeers", &t.metricsMaxPeers);
  readUint(env, o, "firstByteTimeoutMs", &t.firstByteTimeoutMs);
  readUint(env, o, "sliceSize", &t.sliceSize);
  readUint(env, o, "idleTimeoutMs", &t.idleTimeoutMs);
  readUint(env, o, "connectTimeoutMs", &t.connectTimeoutMs);
  readUint(env, o, "tcpProtoVersion", &t.protoVersion);
  readUint(env, o, "dataPort", &t.port);
  readUint(env, o, "minPort", &t.minPort);
  readUint(env, o, "maxPort", &t.maxPort);
  readString(o, "bindAddress", &t.bindAddress);
  Napi::Value allow = o.Get("allowedPeers");
  if (allow.IsArray()) {
    Napi::Array a = allow.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) t.allowedPeers.push_back(toString(env, a.Get(i), "allowedPeers[]"));
  }
  return cfg;
}

mc::UpstreamConfig upstreamConfig(Napi::Env env, Napi::Object o) {
  mc::UpstreamConfig up;
  readString(o, "library", &up.library);
  up.metadataServer = toString(env, o.Get("metadataServer"), "metadataServer");
  readString(o, "protocol", &up.protocol);
  readString(o, "advertiseAddress", &up.ipOrHost);
  readUint(env, o, "rpcPort", &up.rpcPort);
  readString(o, "device", &up.device);
  return up;
}

}  // namespace

std::unique_ptr<mc::Engine> engineFromConfig(Napi::Env env, Napi::Object o, mc::CompletionSink* sink, mc::EngineConfig* cfg) {
  *cfg = engineConfig(env, o);
  std::string backend = "builtin";
  readString(o, "backend", &backend);
  if (backend == "builtin") return mc::createBuiltinEngine(*cfg, sink);
  if (backend == "mooncake") return mc::createUpstreamEngine(*cfg, upstreamConfig(env, o), sink);
  throwStatus(env, mc::Status(mc::Code::INVALID_ARGUMENT, "unknown backend '" + backend + "'"));
}

}  // namespace mcaddon
