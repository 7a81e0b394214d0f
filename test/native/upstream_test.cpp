// The upstream backend's loader and error mapping (a run against a real libtransfer_engine.so lives in
// test/engine/upstream-backend.test.ts, gated on MOONCAKE_TE_LIBRARY).
#include <gtest/gtest.h>

#include "engine.h"
#include "upstream/upstream_api.h"

using namespace mc;

TEST(Upstream, MapsUpstreamErrorCodes) {
  EXPECT_EQ(upstream::mapError(0), Code::OK);
  EXPECT_EQ(upstream::mapError(-1), Code::INVALID_ARGUMENT);
  EXPECT_EQ(upstream::mapError(-3), Code::ADDRESS_NOT_REGISTERED);
  EXPECT_EQ(upstream::mapError(-7), Code::ADDRESS_OVERLAPPED);
  EXPECT_EQ(upstream::mapError(-200), Code::METADATA);
  EXPECT_EQ(upstream::mapError(-303), Code::NOT_IMPLEMENTED);
  EXPECT_EQ(upstream::mapError(-9999), Code::PROTOCOL_ERROR);
}

TEST(Upstream, MissingLibraryNamesItAndTheVariable) {
  const upstream::Api* api = nullptr;
  Status st = upstream::loadApi("/nonexistent/libtransfer_engine.so", "", &api);
  EXPECT_EQ(st.code, Code::LIBRARY_NOT_FOUND);
  EXPECT_NE(st.message.find("libtransfer_engine.so"), std::string::npos);
  EXPECT_NE(st.message.find("MOONCAKE_TE_LIBRARY"), std::string::npos);
}

TEST(Upstream, RefusesALibraryWithoutTheCApi) {
  const upstream::Api* api = nullptr;
  Status st = upstream::loadApi(STANDIN_ASCENDCL, "", &api);  // a real shared library, but not Mooncake
  EXPECT_EQ(st.code, Code::LIBRARY_NOT_FOUND);
  EXPECT_NE(st.message.find("createTransferEngine"), std::string::npos);
}

TEST(Upstream, EngineStartReportsTheMissingLibrary) {
  EngineConfig cfg;
  cfg.localServerName = "x";
  UpstreamConfig up;
  up.library = "/nonexistent/libtransfer_engine.so";
  up.metadataServer = "P2PHANDSHAKE";
  auto e = createUpstreamEngine(cfg, up, nullptr);
  EXPECT_EQ(e->start().code, Code::LIBRARY_NOT_FOUND);
}
