// libFuzzer target: the engine's JSON reader and writer (native/engine/json.h), which read segment
// descriptors and rpc_meta from the metadata store.
//
// Properties, for any input:
//   - parse never crashes, never reads out of bounds (ASan) and never recurses past max_depth;
//   - when it accepts the text, write(value) parses again to exactly the same value (same types, same
//     integers, bit-identical doubles, same strings and keys), and writing that again gives the same
//     text (the writer's output is a fixed point);
//   - a rejection reports an offset inside the input.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "json.h"

namespace {

using mc::json::Type;
using mc::json::Value;

bool same(const Value& a, const Value& b) {
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case Type::Null: return true;
    case Type::Bool: return a.asBool() == b.asBool();
    case Type::Int: { int64_t x = 0, y = 0; a.getI64(&x); b.getI64(&y); return x == y; }
    case Type::UInt: { uint64_t x = 0, y = 0; a.getU64(&x); b.getU64(&y); return x == y; }
    case Type::Double: {
      double x = a.asDouble(), y = b.asDouble();
      return std::memcmp(&x, &y, sizeof x) == 0;
    }
    case Type::String: return a.str() == b.str();
    case Type::Array: {
      if (a.items().size() != b.items().size()) return false;
      for (size_t i = 0; i < a.items().size(); ++i)
        if (!same(a.items()[i], b.items()[i])) return false;
      return true;
    }
    case Type::Object: {
      if (a.members().size() != b.members().size()) return false;
      auto i = a.members().begin();
      auto j = b.members().begin();
      for (; i != a.members().end(); ++i, ++j)
        if (i->first != j->first || !same(i->second, j->second)) return false;
      return true;
    }
  }
  return false;
}

[[noreturn]] void fail(const char* what, const std::string& a, const std::string& b) {
  std::fprintf(stderr, "json_fuzz: %s\n  first:  %.400s\n  second: %.400s\n", what, a.c_str(), b.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  Value v;
  mc::json::ParseError err;
  if (!mc::json::parse(text, &v, &err)) {
    if (err.offset > size) fail("error offset past the end", std::to_string(err.offset), err.message);
    return 0;
  }
  std::string once = mc::json::write(v);
  Value w;
  if (!mc::json::parse(once, &w, &err)) fail("writer output does not parse", std::string(text), once);
  if (!same(v, w)) fail("parse(write(v)) differs from v", std::string(text), once);
  std::string twice = mc::json::write(w);
  if (once != twice) fail("write is not a fixed point", once, twice);
  return 0;
}
