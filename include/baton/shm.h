#pragma once
// shm driver (issue #11, first step): a link between two processes (or two
// nodes of one process) through a shared region, a file in /dev/shm or on
// hugetlbfs. The region holds two single-producer/single-consumer rings of
// frame slots, one each way; a frame is published by a release store of the
// ring's tail after its bytes are in the slot, and received in place (the
// RxFrame points into the slot until release_rx()). Nothing travels through
// the kernel after the mapping.
//
// Crash safety: a side that dies mid-write has published nothing (the tail
// moves last); one that dies mid-read has released nothing (the head moves
// on release), and its next incarnation reads those frames again, which the
// engine's protocol tells from new ones. A side that restarts attaches to
// the rings where they are. A region whose geometry or format differs (a
// crashed run of another build) is reinitialised. Each side records its
// process id and start time: the other sees it gone (its process dead, a
// zombie, its pid reused, or its Link destroyed) and reports the link down,
// and a new process may take that side.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "baton/driver_sdk.h"
#include "baton/result.h"

namespace baton::shm {

struct Config {
  std::string path;          ///< the region's file (created if missing)
  int side = 0;              ///< 0 or 1: which end of the region this is (the two ends must differ)
  uint16_t peer = 0;         ///< node id at the other end
  uint32_t max_frame = 16384 + 256;
  uint32_t slots = 256;      ///< frames in flight each way
};

/// Opens one end of the link. Errors: kInvalidArgument (bad config), kIo.
/// Thread: control.
Result<std::unique_ptr<Link>> open(const Config& c);

/// Both ends over a fresh region at `path`, for tests: the first reaches
/// node_b (on node_a), the second node_a.
Result<std::pair<std::unique_ptr<Link>, std::unique_ptr<Link>>> pair(const std::string& path, uint16_t node_a,
                                                                      uint16_t node_b, uint32_t max_frame = 16384 + 256,
                                                                      uint32_t slots = 256);

}  // namespace baton::shm
