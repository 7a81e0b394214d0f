// Registration and device memory: registerBuffer, registerAddress, allocateManaged, allocateDevice,
// copyDevice, unregister. Every call returns a Promise.
#include "addon.h"
#include "engine_wrap.h"
#include "host_memory.h"
#include "managed_view.h"

namespace mcaddon {

namespace {

mc::Status invalid(const std::string& m) { return mc::Status(mc::Code::INVALID_ARGUMENT, m); }

// The (pointer, length) of JS memory, or an error.
mc::Status viewOf(const Napi::Value& v, uint8_t** data, size_t* len) {
  Napi::ArrayBuffer ab;
  size_t off = 0, n = 0;
  if (v.IsArrayBuffer()) {
    ab = v.As<Napi::ArrayBuffer>();
    if (!ab.IsDetached()) n = ab.ByteLength();
  } else if (v.IsTypedArray()) {
    Napi::TypedArray ta = v.As<Napi::TypedArray>();
    ab = ta.ArrayBuffer();
    off = ta.ByteOffset();
    n = ta.ByteLength();
  } else if (v.IsDataView()) {
    Napi::DataView dv = v.As<Napi::DataView>();
    ab = dv.ArrayBuffer();
    off = dv.ByteOffset();
    n = dv.ByteLength();
  } else {
    return invalid("memory must be an ArrayBuffer, a TypedArray, a Buffer or a DataView");
  }
  if (ab.IsDetached()) return invalid("the ArrayBuffer is detached");
  if (n == 0 || ab.Data() == nullptr) return invalid("cannot register empty memory");
  *data = static_cast<uint8_t*>(ab.Data()) + off;
  *len = n;
  return mc::Status();
}

mc::RegisterOptions registerOptions(const Napi::CallbackInfo& info, size_t location, size_t remote) {
  mc::RegisterOptions o;
  o.location = info[location].IsString() ? info[location].As<Napi::String>().Utf8Value() : "cpu:0";
  o.remoteAccessible = !info[remote].IsBoolean() || info[remote].As<Napi::Boolean>().Value();
  return o;
}

// Copies between a JS view and registered device memory on a pool thread. The view stays referenced and
// the region stays registered until the copy is done.
class DeviceCopyWorker final : public PromiseWorker {
 public:
  DeviceCopyWorker(Napi::Env env, mc::RegionRef ref, bool toDevice, uint8_t* devicePtr, uint8_t* host, uint64_t n)
      : PromiseWorker(env, "mooncake-node:device-copy"), ref_(std::move(ref)), toDevice_(toDevice), dev_(devicePtr), host_(host), n_(n) {}

 protected:
  mc::Status Run() override {
    const mc::Region* r = ref_.get();
    return toDevice_ ? r->runtime->copyToDevice(r->device, dev_, host_, n_) : r->runtime->copyToHost(r->device, host_, dev_, n_);
  }
  void Settled(Napi::Env, bool) override { ref_.release(); }

 private:
  mc::RegionRef ref_;
  bool toDevice_;
  uint8_t* dev_;
  uint8_t* host_;
  uint64_t n_;
};

}  // namespace

// registerBuffer(view: ArrayBuffer | ArrayBufferView, location, remoteAccessible) -> Promise<bigint address>.
// The view stays referenced (pinned) until unregistered.
Napi::Value EngineWrap::RegisterBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  uint8_t* data = nullptr;
  size_t len = 0;
  mc::Status vs = viewOf(info[0], &data, &len);
  if (!vs.ok()) throwStatus(env, vs);
  mc::RegisterOptions o = registerOptions(info, 1, 2);
  uint64_t addr = reinterpret_cast<uint64_t>(data);
  auto view = std::make_shared<Napi::Reference<Napi::Value>>(Napi::Persistent(info[0]));
  return call(env, [&e, addr, len, o] { return e.registerMemory(addr, len, o); },
              [this, addr, view](Napi::Env env2) {
                if (!closed_) pinned_.emplace(addr, Napi::Persistent(view->Value()));
                return Napi::BigInt::New(env2, addr).As<Napi::Value>();
              },
              info[0]);
}

// registerAddress(address: bigint, length: number, location, remoteAccessible) -> Promise<void>
Napi::Value EngineWrap::RegisterAddress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  uint64_t addr = toU64(env, info[0], "address");
  uint64_t len = toLength(env, info[1], "length");
  mc::RegisterOptions o = registerOptions(info, 2, 3);
  return call(env, [&e, addr, len, o] { return e.registerMemory(addr, len, o); }, nullptr);
}

// allocateManaged(size, shareable, location) -> Promise<{ buffer?: ArrayBuffer, address: bigint, shmPath }>.
// `buffer` is left out when this Node cannot view that many bytes at once.
Napi::Value EngineWrap::AllocateManaged(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  uint64_t size = toLength(env, info[0], "size");
  bool shareable = info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  std::shared_ptr<mc::HostAllocation> mem;
  mc::Status st = mc::HostAllocation::create(size, shareable, &mem);
  if (!st.ok()) throwStatus(env, st);
  mc::RegisterOptions o;
  o.location = info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "cpu:0";
  o.owner = mem;
  o.shmPath = mem->shmPath();
  uint64_t addr = reinterpret_cast<uint64_t>(mem->data());
  auto result = [mem, addr](Napi::Env env2) -> Napi::Value {
    Napi::Object out = Napi::Object::New(env2);
    Napi::Value view = managedView(env2, mem);  // absent when too large for a JS view on this Node
    if (!view.IsEmpty()) out.Set("buffer", view);
    out.Set("address", Napi::BigInt::New(env2, addr));
    out.Set("shmPath", Napi::String::New(env2, mem->shmPath()));
    return out;
  };
  return call(env, [&e, addr, size, o] { return e.registerMemory(addr, size, o); }, result);
}

// allocateDevice(location "npu:N", size) -> Promise<{ address: bigint, length, device }>. The memory is
// freed when the region is unregistered (and no transfer uses it).
Napi::Value EngineWrap::AllocateDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  std::string location = toString(env, info[0], "location");
  uint64_t size = toLength(env, info[1], "size");
  if (size == 0) throwStatus(env, invalid("size must be positive"));
  mc::RegisterOptions o;
  o.location = location;
  mc::Status st = mc::resolveDevice(config_, location, &o);
  if (!st.ok()) throwStatus(env, st);
  if (o.runtime == nullptr) throwStatus(env, invalid("location must name a device, e.g. npu:0"));
  void* ptr = nullptr;
  st = o.runtime->allocate(o.device, size, &ptr);
  if (!st.ok()) throwStatus(env, st);
  mc::DeviceRuntime* rt = o.runtime;
  int device = o.device;
  o.owner = std::shared_ptr<void>(ptr, [rt, device](void* p) { rt->release(device, p); });
  uint64_t addr = reinterpret_cast<uint64_t>(ptr);
  auto result = [addr, size, device](Napi::Env env2) -> Napi::Value {
    Napi::Object out = Napi::Object::New(env2);
    out.Set("address", Napi::BigInt::New(env2, addr));
    out.Set("length", Napi::Number::New(env2, static_cast<double>(size)));
    out.Set("device", Napi::Number::New(env2, device));
    return out;
  };
  return call(env, [&e, addr, size, o] { return e.registerMemory(addr, size, o); }, result);  // on failure the owner frees it
}

// copyDevice(toDevice: boolean, deviceAddress: bigint, view: ArrayBufferView) -> Promise<void>
Napi::Value EngineWrap::CopyDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  bool toDevice = info[0].ToBoolean().Value();
  uint64_t addr = toU64(env, info[1], "deviceAddress");
  if (!info[2].IsTypedArray() && !info[2].IsDataView()) throwStatus(env, invalid("host memory must be a Buffer, TypedArray or DataView"));
  uint8_t* host = nullptr;
  size_t n = 0;
  if (!viewOf(info[2], &host, &n).ok()) throwStatus(env, invalid("host memory is empty or detached"));
  mc::RegionRef ref = e.acquireLocal(addr, n);
  if (!ref) throwStatus(env, mc::Status(mc::Code::ADDRESS_NOT_REGISTERED, "the device range is not inside one registered region"));
  if (ref.get()->device < 0 || ref.get()->runtime == nullptr) throwStatus(env, invalid("the region is host memory, not device memory"));
  auto* w = new DeviceCopyWorker(env, std::move(ref), toDevice, reinterpret_cast<uint8_t*>(addr), host, n);
  w->keep(info[2]);
  return w->start();
}

// unregister(address) -> Promise<void>
Napi::Value EngineWrap::Unregister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mc::Engine& e = live(env);
  uint64_t addr = toU64(env, info[0], "address");
  return call(env, [&e, addr] { return e.unregisterMemory(addr); }, [this, addr](Napi::Env env2) {
    pinned_.erase(addr);
    return env2.Undefined();
  });
}

}  // namespace mcaddon
