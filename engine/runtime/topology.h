#pragma once
// The machine as hwloc sees it: NUMA nodes, their CPUs and memory. Used to
// place segments near the worker, and later for node eligibility (S19:
// cores, memory) and for replica placement across NUMA domains (S12).

#include <cstdint>
#include <string>
#include <vector>

#include "baton/result.h"

namespace baton {

struct NumaNode {
  int os_index = 0;
  uint64_t memory_bytes = 0;
  std::vector<int> cpus;  ///< OS indices of the processing units on this node
};

struct Topology {
  int packages = 0;
  int cores = 0;
  int pus = 0;  ///< hardware threads
  std::vector<NumaNode> numa_nodes;

  /// Reads the topology with hwloc. Errors: kIo. Thread: control.
  static Result<Topology> discover();

  /// The NUMA node holding most of the CPUs this thread may run on
  /// (-1 if unknown). Thread: any.
  int numa_node_of_this_thread() const;

  std::string summary() const;
};

}  // namespace baton
