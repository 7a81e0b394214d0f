#include "status.h"

namespace mc {

const char* codeName(Code c) {
  switch (c) {
#define MC_STATUS_NAME(name, value) \
  case Code::name:                  \
    return #name;
    MC_STATUS_CODES(MC_STATUS_NAME)
#undef MC_STATUS_NAME
  }
  return "UNKNOWN";
}

}  // namespace mc
