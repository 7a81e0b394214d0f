#include <gtest/gtest.h>

#include "descriptor.h"

TEST(Descriptor, ParsesTheLiveUpstreamCapture) {
  // Exactly what upstream's transfer_engine_bench (0.3.13.post1) published.
  const char* live =
      R"({"buffers":[{"addr":140362473537536,"length":100663296,"name":"127.0.0.1:17011"}],"name":"127.0.0.1:17011","protocol":"tcp","tcp_data_port":16173,"tcp_proto_version":2,"timestamp":"2026-11-25 08:25:57.730727"})";
  mc::SegmentDesc d;
  ASSERT_TRUE(mc::decodeSegmentDesc(live, &d).ok());
  EXPECT_EQ(d.name, "127.0.0.1:17011");
  EXPECT_EQ(d.protocol, "tcp");
  EXPECT_EQ(d.tcpDataPort, 16173u);
  EXPECT_EQ(d.tcpProtoVersion, 2u);
  ASSERT_EQ(d.buffers.size(), 1u);
  EXPECT_EQ(d.buffers[0].addr, 140362473537536ULL);
  EXPECT_EQ(d.buffers[0].length, 100663296ULL);
  // Re-encoding with the same timestamp gives back the same bytes.
  EXPECT_EQ(mc::encodeSegmentDesc(d), live);
}

TEST(Descriptor, ParsesTheWheelsExtraFields) {
  // What the 0.3.13.post1 wheel publishes: rdma_server_name and tcp_data_host were added upstream.
  const char* wheel =
      R"({"buffers":[{"addr":140362473537536,"length":4096,"name":"127.0.0.1:17099"}],"name":"127.0.0.1:17099","protocol":"tcp","rdma_server_name":"","tcp_data_host":"127.0.0.1","tcp_data_port":16156,"tcp_proto_version":2,"timestamp":"2026-11-25 08:25:57.730727"})";
  mc::SegmentDesc d;
  ASSERT_TRUE(mc::decodeSegmentDesc(wheel, &d).ok());
  EXPECT_EQ(d.tcpDataHost, "127.0.0.1");
  EXPECT_EQ(d.tcpDataPort, 16156u);
  EXPECT_NE(mc::encodeSegmentDesc(d).find(R"("tcp_data_host":"127.0.0.1","tcp_data_port":16156)"), std::string::npos);
}

TEST(Descriptor, MissingVersionMeansV1) {
  mc::SegmentDesc d;
  ASSERT_TRUE(mc::decodeSegmentDesc(R"({"buffers":[],"name":"n","protocol":"tcp","tcp_data_port":1})", &d).ok());
  EXPECT_EQ(d.tcpProtoVersion, 1u);
}

TEST(Descriptor, RejectsWhatUpstreamRejects) {
  const char* bad[] = {
      R"({"buffers":[{"addr":0,"length":1,"name":"n"}],"name":"n","protocol":"tcp"})",
      R"({"buffers":[{"addr":1,"length":0,"name":"n"}],"name":"n","protocol":"tcp"})",
      R"({"buffers":[{"addr":1,"length":1,"name":""}],"name":"n","protocol":"tcp"})",
      R"({"buffers":[{"addr":"1","length":1,"name":"n"}],"name":"n","protocol":"tcp"})",
      R"({"buffers":[],"protocol":"tcp"})",
      R"({"buffers":[],"name":"n"})",
      R"({"buffers":{},"name":"n","protocol":"tcp"})",
      R"({"buffers":[],"name":"n","protocol":"tcp","tcp_data_port":70000})",
      R"({"buffers":[{"addr":18446744073709551615,"length":2,"name":"n"}],"name":"n","protocol":"tcp"})",
      R"([1,2])",
      "not json",
  };
  for (const char* s : bad) {
    mc::SegmentDesc d;
    mc::Status st = mc::decodeSegmentDesc(s, &d);
    EXPECT_EQ(st.code, mc::Code::MALFORMED_JSON) << s;
  }
}

TEST(Descriptor, TimestampLooksLikeUpstreams) {
  std::string ts = mc::currentDateTime();
  ASSERT_EQ(ts.size(), 26u);
  EXPECT_EQ(ts[4], '-');
  EXPECT_EQ(ts[10], ' ');
  EXPECT_EQ(ts[19], '.');
}
