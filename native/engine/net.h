// Small socket helpers shared by the TCP transport's client and server sides.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>

#include "status.h"

namespace mc::net {

struct Endpoint {
  sockaddr_storage addr{};
  socklen_t len = 0;
};

// Numeric IPv4 or IPv6 (optionally in brackets) only; name resolution belongs to the control plane.
bool parseEndpoint(const std::string& ip, uint16_t port, Endpoint* out);
std::string endpointToString(const sockaddr* sa);

bool setNonBlocking(int fd);
void setNoDelay(int fd);
// TCP keepalive probes after idleMs of silence (whole seconds, at least 1), then every idle/3, 3
// tries, and TCP_USER_TIMEOUT for unacknowledged data to match: a peer that vanished without a FIN
// (link cut, host crash) is found in about twice idleMs, even on an idle connection or one whose last
// bytes are stuck in the kernel's send queue. A live peer's kernel answers probes and acknowledges
// data, so live connections stay.
void setKeepAlive(int fd, int idleMs);
void setCloseOnExec(int fd);

// Binds a listening socket. bindAddress empty means dual-stack [::] (falling back to 0.0.0.0). With
// port 0 and a range [minPort, maxPort], tries random ports in the range first, as upstream does, then
// any ephemeral port. Returns the fd and the chosen port.
Status listenTcp(const std::string& bindAddress, uint16_t port, uint16_t minPort, uint16_t maxPort, int backlog,
                 int* fdOut, uint16_t* portOut);

}  // namespace mc::net
