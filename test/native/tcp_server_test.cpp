// The TCP data server, driven by a raw client socket (what a remote peer can send).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "memory_registry.h"
#include "tcp/tcp_transport.h"
#include "tcp/wire.h"

using namespace mc;

namespace {

uint64_t addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }

struct Server {
  MemoryRegistry registry;
  std::vector<uint8_t> mem = std::vector<uint8_t>(4096);
  std::unique_ptr<tcp::TcpTransport> t;
  Server() {
    for (size_t i = 0; i < mem.size(); ++i) mem[i] = static_cast<uint8_t>(i * 7 + 1);
    EXPECT_EQ(registry.add(addr(mem.data()), mem.size(), "cpu:0"), Code::OK);
    tcp::Options o;
    o.bindAddress = "127.0.0.1";
    t = std::make_unique<tcp::TcpTransport>(registry, o);
    EXPECT_TRUE(t->start().ok());
  }
  ~Server() { t->stop(); }

  // Sends `req` in one write, then reads until the server ends the stream (or 5 s pass).
  std::string exchange(const std::vector<uint8_t>& req) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(t->port());
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    EXPECT_EQ(send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
    std::string got;
    char buf[4096];
    for (;;) {
      ssize_t r = recv(fd, buf, sizeof buf, 0);
      if (r <= 0) break;
      got.append(buf, static_cast<size_t>(r));
    }
    close(fd);
    return got;
  }
};

void header(std::vector<uint8_t>* out, uint64_t size, uint64_t a, uint8_t op) {
  uint8_t h[tcp::kHeaderSize];
  tcp::encodeHeader(h, tcp::Header{size, a, op});
  out->insert(out->end(), h, h + sizeof h);
}

}  // namespace

// Found by fuzz/tcp_server_fuzz.cpp: a v1 rejection closed the connection at once, dropping the answers
// already queued for the requests before it. Upstream serves requests one at a time, so a peer gets
// those answers before the close; so must ours.
TEST(TcpServer, V1RejectionKeepsEarlierAnswers) {
  Server s;
  std::vector<uint8_t> req;
  header(&req, 16, addr(s.mem.data()) + 32, tcp::kOpRead);   // legal
  header(&req, 16, addr(s.mem.data()) + 4090, tcp::kOpRead); // runs past the region: rejected
  header(&req, 16, addr(s.mem.data()), tcp::kOpRead);        // after the rejection: never served
  std::string got = s.exchange(req);
  ASSERT_EQ(got.size(), 16u);
  EXPECT_EQ(std::memcmp(got.data(), s.mem.data() + 32, 16), 0);
  EXPECT_EQ(s.t->stats().requestsRejected, 1u);
}

TEST(TcpServer, V2RejectionKeepsEarlierAnswers) {
  Server s;
  std::vector<uint8_t> req;
  header(&req, 8, addr(s.mem.data()), tcp::kOpRead | tcp::kV2Flag);
  header(&req, 8, addr(s.mem.data()) + 8192, tcp::kOpRead | tcp::kV2Flag);
  header(&req, 8, addr(s.mem.data()), tcp::kOpRead | tcp::kV2Flag);
  std::string got = s.exchange(req);
  std::string want(reinterpret_cast<const char*>(tcp::kOkFrame), tcp::kStatusSize);
  want.append(reinterpret_cast<const char*>(s.mem.data()), 8);
  want.append(reinterpret_cast<const char*>(tcp::kRejectedFrame), tcp::kStatusSize);
  EXPECT_EQ(got, want);
}
