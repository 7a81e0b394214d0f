// ge::AscendString as CANN's libmetadef exports it, for the stand-ins only. The layout is fixed by
// what callers compile inline: the npu wheel's ascend_transport.so imports only the constructor from
// `const char*` and operator< (nm -D), and copies and destroys the object inline, so the object must
// be exactly CANN's one member, a std::shared_ptr<std::string> (CANN's public graph/ascend_string.h).
#pragma once

#include <memory>
#include <string>

namespace ge {

class AscendString {
 public:
  AscendString() = default;
  AscendString(const char* name);  // NOLINT: implicit, as CANN's
  const char* GetString() const;
  bool operator<(const AscendString& other) const;
  bool operator==(const AscendString& other) const;

 private:
  std::shared_ptr<std::string> name_;
};

}  // namespace ge
