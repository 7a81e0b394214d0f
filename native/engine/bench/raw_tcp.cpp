#include "raw_tcp.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <chrono>
#include <thread>
#include <vector>

namespace mc::bench {

Status runRawTcp(unsigned streams, uint64_t blockSize, uint64_t bufferSize, double seconds, uint64_t ioSize, RawTcpResult* out) {
  if (streams == 0 || blockSize == 0 || seconds <= 0) return Status(Code::INVALID_ARGUMENT, "bad raw tcp bench parameters");
  // Bulk I/O by default (at least 8 MiB per send/recv, what the engine's writev batches reach), over
  // the same working set as the engine bench, each stream walking its own stripe of the buffers.
  const uint64_t io = ioSize != 0 ? ioSize : std::max<uint64_t>(blockSize, 8ull << 20);
  const uint64_t blocks = std::max<uint64_t>(1, bufferSize / io / streams);
  blockSize = io;
  std::vector<uint8_t> sendBuf(blocks * blockSize * streams, 0x5A), recvBuf(blocks * blockSize * streams, 0);
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (lfd < 0 || bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || listen(lfd, 64) != 0) {
    if (lfd >= 0) close(lfd);
    return Status(Code::SOCKET, "raw tcp bench: cannot listen");
  }
  socklen_t len = sizeof sa;
  getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &len);

  std::vector<int> senders, receivers;
  for (unsigned i = 0; i < streams; ++i) {
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      close(c);
      for (int fd : senders) close(fd);
      for (int fd : receivers) close(fd);
      close(lfd);
      return Status(Code::SOCKET, "raw tcp bench: cannot connect");
    }
    int s = accept(lfd, nullptr, nullptr);
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    senders.push_back(c);
    receivers.push_back(s);
  }
  close(lfd);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> received{0};
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < streams; ++i) {
    uint8_t* sendStripe = sendBuf.data() + i * blocks * blockSize;
    uint8_t* recvStripe = recvBuf.data() + i * blocks * blockSize;
    threads.emplace_back([&, fd = senders[i], sendStripe] {
      for (uint64_t k = 0; !stop.load(std::memory_order_relaxed); k = (k + 1) % blocks) {
        const uint8_t* block = sendStripe + k * blockSize;
        uint64_t off = 0;
        while (off < blockSize) {
          ssize_t n = send(fd, block + off, blockSize - off, MSG_NOSIGNAL);
          if (n <= 0) return;
          off += static_cast<uint64_t>(n);
        }
      }
    });
    threads.emplace_back([&, fd = receivers[i], recvStripe] {
      for (uint64_t k = 0;; k = (k + 1) % blocks) {
        uint8_t* block = recvStripe + k * blockSize;
        uint64_t off = 0;
        while (off < blockSize) {
          ssize_t n = recv(fd, block + off, blockSize - off, 0);
          if (n <= 0) return;
          off += static_cast<uint64_t>(n);
          received.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
        }
      }
    });
  }
  // Warm up briefly, then measure.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  uint64_t start = received.load();
  auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  uint64_t end = received.load();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stop.store(true);
  for (int fd : senders) shutdown(fd, SHUT_RDWR);
  for (int fd : receivers) shutdown(fd, SHUT_RDWR);
  for (auto& t : threads) t.join();
  for (int fd : senders) close(fd);
  for (int fd : receivers) close(fd);
  out->bytes = end - start;
  out->seconds = secs;
  return Status();
}

Status runMemcpy(uint64_t blockSize, uint64_t bufferSize, double seconds, RawTcpResult* out) {
  if (blockSize == 0 || seconds <= 0) return Status(Code::INVALID_ARGUMENT, "bad memcpy bench parameters");
  const uint64_t blocks = std::max<uint64_t>(1, bufferSize / blockSize);
  std::vector<uint8_t> src(blocks * blockSize, 0x5A), dst(blocks * blockSize, 0);
  uint64_t bytes = 0;
  auto t0 = std::chrono::steady_clock::now();
  auto end = t0 + std::chrono::duration<double>(seconds);
  for (uint64_t k = 0;; k = (k + 1) % blocks) {
    std::memcpy(dst.data() + k * blockSize, src.data() + k * blockSize, blockSize);
    bytes += blockSize;
    if ((k & 63) == 0 && std::chrono::steady_clock::now() >= end) break;
  }
  out->bytes = bytes;
  out->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return Status();
}

}  // namespace mc::bench
