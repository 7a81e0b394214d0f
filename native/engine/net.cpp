#include "net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

namespace mc::net {

bool parseEndpoint(const std::string& ipIn, uint16_t port, Endpoint* out) {
  std::string ip = ipIn;
  if (ip.size() >= 2 && ip.front() == '[' && ip.back() == ']') ip = ip.substr(1, ip.size() - 2);
  std::memset(&out->addr, 0, sizeof out->addr);
  auto* v4 = reinterpret_cast<sockaddr_in*>(&out->addr);
  if (inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    out->len = sizeof(sockaddr_in);
    return true;
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&out->addr);
  if (inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    out->len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

std::string endpointToString(const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN + 8] = {0};
  if (sa->sa_family == AF_INET) {
    auto* v4 = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &v4->sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(v4->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    auto* v6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &v6->sin6_addr, buf, sizeof buf);
    return "[" + std::string(buf) + "]:" + std::to_string(ntohs(v6->sin6_port));
  }
  return "?";
}

bool setNonBlocking(int fd) {
  int flags = fcntl(fd, F_GETFL, 0);
  return flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

void setNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void setKeepAlive(int fd, int idleMs) {
  int one = 1;
  int idle = std::max(1, (idleMs + 999) / 1000);
  int intvl = std::max(1, idle / 3);
  int count = 3;
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
  // The same bound for data the peer never acknowledges (else the kernel retransmits for ~15 min).
  unsigned int userTimeoutMs = static_cast<unsigned int>(idle + count * intvl) * 1000u;
  setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &userTimeoutMs, sizeof userTimeoutMs);
}

void setCloseOnExec(int fd) {
  int flags = fcntl(fd, F_GETFD, 0);
  if (flags >= 0) fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

namespace {

int tryBind(const std::string& bindAddress, uint16_t port, int backlog) {
  Endpoint ep;
  bool dual = bindAddress.empty();
  if (dual) {
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&ep.addr);
    v6->sin6_family = AF_INET6;
    v6->sin6_addr = in6addr_any;
    v6->sin6_port = htons(port);
    ep.len = sizeof(sockaddr_in6);
  } else if (!parseEndpoint(bindAddress, port, &ep)) {
    errno = EINVAL;
    return -1;
  }
  int fd = socket(ep.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0 && dual) {  // no IPv6 in this namespace: plain IPv4 any
    return tryBind("0.0.0.0", port, backlog);
  }
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (dual) {
    int zero = 0;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&ep.addr), ep.len) != 0 || listen(fd, backlog) != 0) {
    int e = errno;
    close(fd);
    if (dual && (e == EAFNOSUPPORT || e == EADDRNOTAVAIL)) return tryBind("0.0.0.0", port, backlog);
    errno = e;
    return -1;
  }
  return fd;
}

}  // namespace

Status listenTcp(const std::string& bindAddress, uint16_t port, uint16_t minPort, uint16_t maxPort, int backlog,
                 int* fdOut, uint16_t* portOut) {
  int fd = -1;
  if (port != 0) {
    fd = tryBind(bindAddress, port, backlog);
    if (fd < 0) return Status(Code::SOCKET, "cannot listen on port " + std::to_string(port) + ": " + std::strerror(errno));
  } else {
    if (minPort != 0 && maxPort >= minPort) {
      std::mt19937 rng(std::random_device{}());
      std::uniform_int_distribution<int> dist(minPort, maxPort);
      for (int attempt = 0; attempt < 64 && fd < 0; ++attempt) fd = tryBind(bindAddress, static_cast<uint16_t>(dist(rng)), backlog);
    }
    if (fd < 0) fd = tryBind(bindAddress, 0, backlog);
    if (fd < 0) return Status(Code::SOCKET, std::string("cannot listen: ") + std::strerror(errno));
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  *portOut = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  *fdOut = fd;
  return Status();
}

}  // namespace mc::net
