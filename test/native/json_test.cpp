#include <gtest/gtest.h>

#include <cstring>

#include "json.h"

using mc::json::Value;

TEST(Json, KeepsFullUint64Precision) {
  Value v;
  ASSERT_TRUE(mc::json::parse(R"({"addr":18446744073709551615,"small":140245863022608})", &v));
  uint64_t a = 0, b = 0;
  ASSERT_TRUE(v.get("addr")->getU64(&a));
  ASSERT_TRUE(v.get("small")->getU64(&b));
  EXPECT_EQ(a, 18446744073709551615ULL);
  EXPECT_EQ(b, 140245863022608ULL);
  EXPECT_EQ(mc::json::write(v), R"({"addr":18446744073709551615,"small":140245863022608})");
}

TEST(Json, WritesSortedCompactKeys) {
  Value v = Value::object();
  v.set("zeta", Value::uinteger(1));
  v.set("alpha", Value::string("a\"b\n"));
  v.set("mid", Value::array());
  EXPECT_EQ(mc::json::write(v), "{\"alpha\":\"a\\\"b\\n\",\"mid\":[],\"zeta\":1}");
}

TEST(Json, RejectsMalformedInput) {
  const char* bad[] = {"", "{", "{\"a\":}", "[1,]", "{\"a\" 1}", "01", "1.", "\"\\x\"", "\"abc", "nul",
                       "{} x", "\"\\ud800\"", "-", "[1 2]"};
  for (const char* s : bad) {
    Value v;
    mc::json::ParseError err;
    EXPECT_FALSE(mc::json::parse(s, &v, &err)) << s;
    EXPECT_FALSE(err.message.empty()) << s;
  }
}

TEST(Json, BoundsNestingDepth) {
  std::string deep(100, '[');
  deep += std::string(100, ']');
  Value v;
  EXPECT_FALSE(mc::json::parse(deep, &v, nullptr, 64));
  EXPECT_TRUE(mc::json::parse(deep, &v, nullptr, 128));
}

TEST(Json, DecodesEscapesAndNumbers) {
  Value v;
  ASSERT_TRUE(mc::json::parse(R"(["\u00e9\ud83d\ude00", -5, 1.5e3, true, null])", &v));
  ASSERT_EQ(v.items().size(), 5u);
  EXPECT_EQ(v.items()[0].str(), "\xc3\xa9\xf0\x9f\x98\x80");
  int64_t neg = 0;
  EXPECT_TRUE(v.items()[1].getI64(&neg));
  EXPECT_EQ(neg, -5);
  uint64_t u;
  EXPECT_FALSE(v.items()[1].getU64(&u));
  EXPECT_DOUBLE_EQ(v.items()[2].asDouble(), 1500.0);
  EXPECT_TRUE(v.items()[4].isNull());
}

// Found by fuzz/json_fuzz.cpp: doubles did not survive write -> parse. An overflowing number (1e400,
// parsed as infinity) was written as null, -0.0 as "-0" (read back as the integer 0) and 2.0 as "2"
// (an integer). The writer now does what jsoncpp does: +-1e+9999 and a ".0" on integral doubles.
TEST(Json, DoublesSurviveARoundTrip) {
  mc::json::Value v;
  ASSERT_TRUE(mc::json::parse("[1e400,-1e400,-0.0,2.0,1e16,0.1,-1.5e-300]", &v));
  std::string text = mc::json::write(v);
  EXPECT_EQ(text, "[1e+9999,-1e+9999,-0.0,2.0,10000000000000000.0,0.10000000000000001,-1.5000000000000001e-300]");
  mc::json::Value w;
  ASSERT_TRUE(mc::json::parse(text, &w));
  ASSERT_EQ(w.items().size(), v.items().size());
  for (size_t i = 0; i < v.items().size(); ++i) {
    EXPECT_EQ(w.items()[i].type(), mc::json::Type::Double) << i;
    double a = v.items()[i].asDouble(), b = w.items()[i].asDouble();
    EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0) << i;
  }
  EXPECT_EQ(mc::json::write(w), text);
}
