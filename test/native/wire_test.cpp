#include <gtest/gtest.h>

#include "tcp/wire.h"

using namespace mc::tcp;

TEST(Wire, HeaderLayoutIsUpstreams) {
  uint8_t buf[kHeaderSize];
  std::memset(buf, 0xAA, sizeof buf);
  encodeHeader(buf, Header{0x0102030405060708ULL, 0x1122334455667788ULL, static_cast<uint8_t>(kOpWrite | kV2Flag)});
  const uint8_t expect[kHeaderSize] = {0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x88, 0x77, 0x66, 0x55,
                                       0x44, 0x33, 0x22, 0x11, 0x81, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(std::memcmp(buf, expect, kHeaderSize), 0);
}

TEST(Wire, PaddingIsIgnoredAndOpcodesFollowUpstream) {
  uint8_t buf[kHeaderSize];
  std::memset(buf, 0xEE, sizeof buf);  // garbage padding, as upstream clients send
  storeLe64(buf, 4096);
  storeLe64(buf + 8, 0x7f0000001000ULL);
  buf[16] = 0x80;
  Header h = decodeHeader(buf);
  EXPECT_EQ(h.size, 4096u);
  EXPECT_EQ(h.addr, 0x7f0000001000ULL);
  EXPECT_TRUE(h.v2());
  EXPECT_FALSE(h.isWrite());
  buf[16] = 7;  // any value other than 1 is a READ
  EXPECT_FALSE(decodeHeader(buf).isWrite());
  EXPECT_FALSE(decodeHeader(buf).v2());
  buf[16] = 1;
  EXPECT_TRUE(decodeHeader(buf).isWrite());
}

TEST(Wire, StatusFrames) {
  const uint8_t ok[] = {0x00, 0x00, 0x00, 0x00, 0x56, 0x54, 0x43, 0x4D};
  const uint8_t rej[] = {0x01, 0x00, 0x00, 0x00, 0x56, 0x54, 0x43, 0x4D};
  EXPECT_EQ(std::memcmp(kOkFrame, ok, 8), 0);
  EXPECT_EQ(std::memcmp(kRejectedFrame, rej, 8), 0);
  uint8_t buf[8];
  encodeStatus(buf, 1);
  EXPECT_EQ(std::memcmp(buf, rej, 8), 0);
  EXPECT_EQ(decodeStatus(ok), StatusFrame::Ok);
  EXPECT_EQ(decodeStatus(rej), StatusFrame::Rejected);
  const uint8_t junk[] = {0, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(decodeStatus(junk), StatusFrame::Malformed);
}
