// A small JSON value, parser and compact writer for the metadata formats the engine reads and writes
// (segment descriptors, rpc_meta, handshake bodies). Integers keep full 64-bit precision, objects keep
// keys sorted (as upstream's jsoncpp writer does), and the parser bounds depth and never throws.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mc::json {

enum class Type : uint8_t { Null, Bool, Int, UInt, Double, String, Array, Object };

class Value {
 public:
  Value() = default;
  static Value boolean(bool b);
  static Value integer(int64_t v);
  static Value uinteger(uint64_t v);
  static Value number(double v);
  static Value string(std::string s);
  static Value array();
  static Value object();

  Type type() const { return type_; }
  bool isNull() const { return type_ == Type::Null; }
  bool isString() const { return type_ == Type::String; }
  bool isObject() const { return type_ == Type::Object; }
  bool isArray() const { return type_ == Type::Array; }
  bool isIntegral() const { return type_ == Type::Int || type_ == Type::UInt; }

  // Checked accessors: false when the value has another type or does not fit.
  bool getU64(uint64_t* out) const;
  bool getI64(int64_t* out) const;
  const std::string& str() const { return str_; }
  bool asBool() const { return b_; }
  double asDouble() const;

  const std::vector<Value>& items() const { return arr_; }
  const std::map<std::string, Value>& members() const { return obj_; }
  const Value* get(const std::string& key) const;  // nullptr when absent or not an object

  Value& set(const std::string& key, Value v);  // objects
  Value& push(Value v);                         // arrays

 private:
  Type type_ = Type::Null;
  bool b_ = false;
  int64_t i_ = 0;
  uint64_t u_ = 0;
  double d_ = 0;
  std::string str_;
  std::vector<Value> arr_;
  std::map<std::string, Value> obj_;
};

struct ParseError {
  size_t offset = 0;
  std::string message;
};

// Parses exactly one JSON value (surrounding whitespace allowed). Returns false with *err filled on
// malformed input, nesting deeper than max_depth, or trailing garbage.
bool parse(std::string_view text, Value* out, ParseError* err = nullptr, int max_depth = 64);

// Compact output: no spaces, keys in sorted order, integers exact, strings escaped like jsoncpp.
std::string write(const Value& v);

}  // namespace mc::json
