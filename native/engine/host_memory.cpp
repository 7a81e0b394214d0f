#include "host_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace mc {

HostAllocation::~HostAllocation() {
  if (data_ != nullptr) munmap(data_, length_);
  if (fd_ >= 0) close(fd_);
}

Status HostAllocation::create(uint64_t length, bool shareable, std::shared_ptr<HostAllocation>* out) {
  if (length == 0) return Status(Code::INVALID_ARGUMENT, "size must be positive");
  // Pages are taken when first touched, and a memfd's size is not charged up front: without this check
  // an allocation larger than the machine would succeed and the process be killed once it is used.
  const long pages = sysconf(_SC_PHYS_PAGES), pageSize = sysconf(_SC_PAGESIZE);
  const uint64_t physical = pages > 0 && pageSize > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(pageSize) : 0;
  if (physical != 0 && length > physical) {
    return Status(Code::MEMORY, "size " + std::to_string(length) + " is more than this machine's memory (" + std::to_string(physical) + " bytes)");
  }
  std::shared_ptr<HostAllocation> a(new HostAllocation());
  a->length_ = length;
  if (shareable) {
    a->fd_ = static_cast<int>(syscall(SYS_memfd_create, "mooncake-node", MFD_CLOEXEC));
    if (a->fd_ < 0) return Status(Code::MEMORY, std::string("memfd_create failed: ") + std::strerror(errno));
    if (ftruncate(a->fd_, static_cast<off_t>(length)) != 0) {
      return Status(Code::MEMORY, std::string("cannot size shared memory: ") + std::strerror(errno));
    }
    void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, a->fd_, 0);
    if (p == MAP_FAILED) return Status(Code::MEMORY, std::string("mmap failed: ") + std::strerror(errno));
    a->data_ = static_cast<uint8_t*>(p);
    a->shmPath_ = "/proc/" + std::to_string(getpid()) + "/fd/" + std::to_string(a->fd_);
  } else {
    void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return Status(Code::MEMORY, std::string("mmap failed: ") + std::strerror(errno));
    a->data_ = static_cast<uint8_t*>(p);
  }
  *out = std::move(a);
  return Status();
}

std::string localHostId() {
  std::string boot;
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::getline(f, boot);
  char ns[128] = {0};
  ssize_t n = readlink("/proc/self/ns/user", ns, sizeof ns - 1);
  std::string userNs = n > 0 ? std::string(ns, static_cast<size_t>(n)) : "";
  return boot + "/" + userNs + "/" + std::to_string(getuid());
}

}  // namespace mc
