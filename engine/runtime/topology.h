#pragma once
// The machine as hwloc sees it: packages, NUMA nodes, their CPUs and
// memory. It says where an engine's memory lives (the NUMA node of its
// worker's CPU, else of its links, else of the thread that started it) and
// which failure domains of a CC-NUMA server a node stands in (its package
// and NUMA node, placement tags: S12). Later also node eligibility (S19).
//
// A topology can also be described instead of discovered: an hwloc
// synthetic description ("synthetic:package:2 numa:2 core:8 pu:1") or an
// hwloc XML export. Tests place replicas on a two-socket server that way,
// and an operator can stand a one-socket box in for a bigger one. Memory is
// then bound only to NUMA nodes this machine really has.
//
// Thread: any (a Topology is plain data once loaded).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "baton/result.h"

namespace baton {

struct NumaNode {
  int os_index = 0;
  int package = -1;  ///< logical index of the package it belongs to; -1: none known
  uint64_t memory_bytes = 0;
  std::vector<int> cpus;  ///< OS indices of the processing units on this node
};

struct Topology {
  int packages = 0;
  int cores = 0;
  int pus = 0;  ///< hardware threads
  std::vector<NumaNode> numa_nodes;
  /// Described (synthetic or XML), not this machine's: its CPUs cannot be
  /// pinned to and its NUMA nodes may not exist here.
  bool described = false;

  /// Reads this machine's topology. Errors: kIo.
  static Result<Topology> discover();
  /// "" : discover(); "synthetic:DESC": hwloc's synthetic description
  /// DESC; anything else: the path of an hwloc XML file. Errors:
  /// kInvalidArgument (a description or file hwloc rejects), kIo.
  static Result<Topology> load(std::string_view source);

  /// The NUMA node (OS index) of CPU `cpu`, or -1.
  int numa_node_of_cpu(int cpu) const noexcept;
  /// The package of NUMA node `os_index`, or -1.
  int package_of(int os_index) const noexcept;
  bool has_numa_node(int os_index) const noexcept;
  bool has_cpu(int cpu) const noexcept { return numa_node_of_cpu(cpu) >= 0; }

  /// The NUMA node holding most of the CPUs this thread may run on
  /// (-1 if unknown, or if this topology is described).
  int numa_node_of_this_thread() const;

  std::string summary() const;
};

}  // namespace baton
