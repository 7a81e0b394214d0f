// A STAND-IN for CANN's libmetadef: only ge::AscendString, the one class the npu wheel's
// ascend_transport.so takes from it (nm -D --undefined-only). Not CANN; tests build it.
#include "ascend_string_standin.h"

namespace ge {

AscendString::AscendString(const char* name) {
  if (name != nullptr) name_ = std::make_shared<std::string>(name);
}

const char* AscendString::GetString() const { return name_ ? name_->c_str() : ""; }

bool AscendString::operator<(const AscendString& other) const {
  if (!name_ || !other.name_) return !name_ && other.name_;
  return *name_ < *other.name_;
}

bool AscendString::operator==(const AscendString& other) const { return !(*this < other) && !(other < *this); }

}  // namespace ge

extern "C" const char mooncake_node_cann_standin[] = "metadef";
