#pragma once
// One request of batond's client protocol (engine/ipc/messages.h), built as
// the library would, for tests that speak the raw socket protocol
// (hostile-client and daemon tests).

#include <cstdint>
#include <cstring>
#include <string>

#include "ipc/messages.h"

namespace baton::test {

inline ipc::Request request(ipc::Op op, const std::string& name = "", uint64_t size = 0) {
  ipc::Request r{};
  r.magic = ipc::kMagic;
  r.version = ipc::kVersion;
  r.op = static_cast<uint16_t>(op);
  r.size = size;
  r.name_len = static_cast<uint8_t>(name.size());
  std::memcpy(r.name, name.data(), name.size());
  return r;
}

}  // namespace baton::test
