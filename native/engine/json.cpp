#include "json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace mc::json {

Value Value::boolean(bool b) { Value v; v.type_ = Type::Bool; v.b_ = b; return v; }
Value Value::integer(int64_t x) {
  if (x >= 0) return uinteger(static_cast<uint64_t>(x));
  Value v; v.type_ = Type::Int; v.i_ = x; return v;
}
Value Value::uinteger(uint64_t x) { Value v; v.type_ = Type::UInt; v.u_ = x; return v; }
Value Value::number(double x) { Value v; v.type_ = Type::Double; v.d_ = x; return v; }
Value Value::string(std::string s) { Value v; v.type_ = Type::String; v.str_ = std::move(s); return v; }
Value Value::array() { Value v; v.type_ = Type::Array; return v; }
Value Value::object() { Value v; v.type_ = Type::Object; return v; }

bool Value::getU64(uint64_t* out) const {
  if (type_ == Type::UInt) { *out = u_; return true; }
  if (type_ == Type::Int) return false;  // negative
  return false;
}

bool Value::getI64(int64_t* out) const {
  if (type_ == Type::Int) { *out = i_; return true; }
  if (type_ == Type::UInt && u_ <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    *out = static_cast<int64_t>(u_);
    return true;
  }
  return false;
}

double Value::asDouble() const {
  switch (type_) {
    case Type::Int: return static_cast<double>(i_);
    case Type::UInt: return static_cast<double>(u_);
    case Type::Double: return d_;
    default: return 0;
  }
}

const Value* Value::get(const std::string& key) const {
  if (type_ != Type::Object) return nullptr;
  auto it = obj_.find(key);
  return it == obj_.end() ? nullptr : &it->second;
}

Value& Value::set(const std::string& key, Value v) {
  type_ = Type::Object;
  return obj_[key] = std::move(v);
}

Value& Value::push(Value v) {
  type_ = Type::Array;
  arr_.push_back(std::move(v));
  return arr_.back();
}

namespace {

class Parser {
 public:
  Parser(std::string_view s, int max_depth) : s_(s), max_depth_(max_depth) {}

  bool run(Value* out, ParseError* err) {
    skipWs();
    if (!value(out, 0)) return fail(err);
    skipWs();
    if (pos_ != s_.size()) { msg_ = "trailing characters"; return fail(err); }
    return true;
  }

 private:
  bool fail(ParseError* err) {
    if (err) { err->offset = pos_; err->message = msg_.empty() ? "malformed JSON" : msg_; }
    return false;
  }
  void skipWs() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }
  bool literal(const char* lit) {
    size_t n = 0;
    while (lit[n]) ++n;
    if (s_.substr(pos_, n) != std::string_view(lit, n)) { msg_ = "invalid literal"; return false; }
    pos_ += n;
    return true;
  }
  bool value(Value* out, int depth) {
    if (depth > max_depth_) { msg_ = "nesting too deep"; return false; }
    if (pos_ >= s_.size()) { msg_ = "unexpected end of input"; return false; }
    char c = s_[pos_];
    switch (c) {
      case '{': return object(out, depth);
      case '[': return array(out, depth);
      case '"': { std::string str; if (!string(&str)) return false; *out = Value::string(std::move(str)); return true; }
      case 't': if (!literal("true")) return false; *out = Value::boolean(true); return true;
      case 'f': if (!literal("false")) return false; *out = Value::boolean(false); return true;
      case 'n': if (!literal("null")) return false; *out = Value(); return true;
      default: return number(out);
    }
  }
  bool object(Value* out, int depth) {
    ++pos_;  // {
    *out = Value::object();
    skipWs();
    if (pos_ < s_.size() && s_[pos_] == '}') { ++pos_; return true; }
    for (;;) {
      skipWs();
      if (pos_ >= s_.size() || s_[pos_] != '"') { msg_ = "expected object key"; return false; }
      std::string key;
      if (!string(&key)) return false;
      skipWs();
      if (pos_ >= s_.size() || s_[pos_] != ':') { msg_ = "expected ':'"; return false; }
      ++pos_;
      skipWs();
      Value v;
      if (!value(&v, depth + 1)) return false;
      out->set(key, std::move(v));  // last duplicate wins, as in jsoncpp
      skipWs();
      if (pos_ >= s_.size()) { msg_ = "unexpected end of input"; return false; }
      if (s_[pos_] == ',') { ++pos_; continue; }
      if (s_[pos_] == '}') { ++pos_; return true; }
      msg_ = "expected ',' or '}'";
      return false;
    }
  }
  bool array(Value* out, int depth) {
    ++pos_;  // [
    *out = Value::array();
    skipWs();
    if (pos_ < s_.size() && s_[pos_] == ']') { ++pos_; return true; }
    for (;;) {
      skipWs();
      Value v;
      if (!value(&v, depth + 1)) return false;
      out->push(std::move(v));
      skipWs();
      if (pos_ >= s_.size()) { msg_ = "unexpected end of input"; return false; }
      if (s_[pos_] == ',') { ++pos_; continue; }
      if (s_[pos_] == ']') { ++pos_; return true; }
      msg_ = "expected ',' or ']'";
      return false;
    }
  }
  static void appendUtf8(std::string* out, uint32_t cp) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  bool hex4(uint32_t* out) {
    if (pos_ + 4 > s_.size()) { msg_ = "truncated \\u escape"; return false; }
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
      else { msg_ = "bad \\u escape"; return false; }
    }
    *out = v;
    return true;
  }
  bool string(std::string* out) {
    ++pos_;  // opening quote
    for (;;) {
      if (pos_ >= s_.size()) { msg_ = "unterminated string"; return false; }
      char c = s_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) { msg_ = "control character in string"; return false; }
      if (c != '\\') { out->push_back(c); continue; }
      if (pos_ >= s_.size()) { msg_ = "unterminated escape"; return false; }
      char e = s_[pos_++];
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          uint32_t cp;
          if (!hex4(&cp)) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t lo;
            if (pos_ + 2 > s_.size() || s_[pos_] != '\\' || s_[pos_ + 1] != 'u') { msg_ = "lone surrogate"; return false; }
            pos_ += 2;
            if (!hex4(&lo)) return false;
            if (lo < 0xDC00 || lo > 0xDFFF) { msg_ = "bad surrogate pair"; return false; }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            msg_ = "lone surrogate";
            return false;
          }
          appendUtf8(out, cp);
          break;
        }
        default: msg_ = "bad escape"; return false;
      }
    }
  }
  bool number(Value* out) {
    size_t start = pos_;
    bool neg = false;
    if (s_[pos_] == '-') { neg = true; ++pos_; }
    if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') { msg_ = "unexpected character"; pos_ = start; return false; }
    if (s_[pos_] == '0' && pos_ + 1 < s_.size() && s_[pos_ + 1] >= '0' && s_[pos_ + 1] <= '9') { msg_ = "leading zero"; return false; }
    bool integral = true, overflow = false;
    uint64_t acc = 0;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      uint64_t d = static_cast<uint64_t>(s_[pos_] - '0');
      if (acc > (std::numeric_limits<uint64_t>::max() - d) / 10) overflow = true;
      else acc = acc * 10 + d;
      ++pos_;
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      integral = false;
      ++pos_;
      if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') { msg_ = "bad fraction"; return false; }
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') { msg_ = "bad exponent"; return false; }
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    }
    if (integral && !overflow) {
      if (!neg) { *out = Value::uinteger(acc); return true; }
      if (acc <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) + 1ULL) {
        *out = Value::integer(acc == static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) + 1ULL
                                  ? std::numeric_limits<int64_t>::min()
                                  : -static_cast<int64_t>(acc));
        return true;
      }
    }
    std::string tmp(s_.substr(start, pos_ - start));
    *out = Value::number(std::strtod(tmp.c_str(), nullptr));
    return true;
  }

  std::string_view s_;
  size_t pos_ = 0;
  int max_depth_;
  std::string msg_;
};

void writeString(const std::string& s, std::string* out) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\b': *out += "\\b"; break;
      case '\f': *out += "\\f"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          *out += buf;
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

void writeValue(const Value& v, std::string* out) {
  switch (v.type()) {
    case Type::Null: *out += "null"; break;
    case Type::Bool: *out += v.asBool() ? "true" : "false"; break;
    case Type::Int: { int64_t x = 0; v.getI64(&x); *out += std::to_string(x); break; }
    case Type::UInt: { uint64_t x = 0; v.getU64(&x); *out += std::to_string(x); break; }
    case Type::Double: {
      // As jsoncpp writes doubles, so that one reads back as the same double: infinities (a number
      // too large for a double parses as one) as +-1e+9999, and a ".0" on integral values, which would
      // otherwise come back as integers (and -0.0 as 0).
      double d = v.asDouble();
      if (std::isnan(d)) { *out += "null"; break; }
      if (std::isinf(d)) { *out += d < 0 ? "-1e+9999" : "1e+9999"; break; }
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.17g", d);
      *out += buf;
      if (std::strpbrk(buf, ".e") == nullptr) *out += ".0";
      break;
    }
    case Type::String: writeString(v.str(), out); break;
    case Type::Array: {
      out->push_back('[');
      bool first = true;
      for (const auto& item : v.items()) {
        if (!first) out->push_back(',');
        first = false;
        writeValue(item, out);
      }
      out->push_back(']');
      break;
    }
    case Type::Object: {
      out->push_back('{');
      bool first = true;
      for (const auto& [k, item] : v.members()) {
        if (!first) out->push_back(',');
        first = false;
        writeString(k, out);
        out->push_back(':');
        writeValue(item, out);
      }
      out->push_back('}');
      break;
    }
  }
}

}  // namespace

bool parse(std::string_view text, Value* out, ParseError* err, int max_depth) {
  Parser p(text, max_depth);
  Value v;
  if (!p.run(&v, err)) return false;
  *out = std::move(v);
  return true;
}

std::string write(const Value& v) {
  std::string out;
  writeValue(v, &out);
  return out;
}

}  // namespace mc::json
