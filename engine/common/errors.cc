#include "baton/result.h"

namespace baton {

const char* errc_name(Errc code) noexcept {
  switch (code) {
    case Errc::kOk: return "ok";
    case Errc::kInvalidArgument: return "invalid argument";
    case Errc::kNotFound: return "not found";
    case Errc::kExists: return "already exists";
    case Errc::kNoMemory: return "out of memory";
    case Errc::kTimeout: return "timed out";
    case Errc::kUnavailable: return "unavailable";
    case Errc::kIo: return "i/o error";
    case Errc::kCorrupt: return "corrupt data";
    case Errc::kFenced: return "fenced (ownership moved to a newer epoch)";
    case Errc::kBusy: return "busy";
    case Errc::kInternal: return "internal error";
    case Errc::kPermission: return "permission denied";
  }
  return "unknown error";
}

}  // namespace baton
