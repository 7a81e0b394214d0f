#include "same_host.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace mc {

SharedMappings::~SharedMappings() {
  for (auto& m : maps_) munmap(m.local, m.length);
  if (pidfd_ >= 0) close(pidfd_);
}

std::unique_ptr<SharedMappings> SharedMappings::open(const SegmentDesc& desc, const std::string& localHostId) {
  if (desc.sameHost.hostId.empty() || desc.sameHost.hostId != localHostId || desc.sameHost.pid == 0) return nullptr;
  auto out = std::unique_ptr<SharedMappings>(new SharedMappings());
  // A pidfd tells us when the peer exits; without one (old kernels) the fast path is not used.
  out->pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, static_cast<pid_t>(desc.sameHost.pid), 0));
  if (out->pidfd_ < 0) return nullptr;
  for (const auto& b : desc.buffers) {
    if (b.shmPath.empty()) continue;
    int fd = ::open(b.shmPath.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) continue;  // not ours to open (another user, another namespace): TCP it is
    void* p = mmap(nullptr, b.length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(b.shmOffset));
    ::close(fd);
    if (p == MAP_FAILED) continue;
    out->maps_.push_back({b.addr, b.length, static_cast<uint8_t*>(p)});
  }
  if (out->maps_.empty()) return nullptr;
  return out;
}

uint8_t* SharedMappings::translate(uint64_t remote, uint64_t length) const {
  for (const auto& m : maps_) {
    if (remote >= m.remote && remote + length <= m.remote + m.length) return m.local + (remote - m.remote);
  }
  return nullptr;
}

bool SharedMappings::peerAlive() const {
  struct pollfd p {};
  p.fd = pidfd_;
  p.events = POLLIN;
  return poll(&p, 1, 0) == 0;  // readable once the process has exited
}

}  // namespace mc
