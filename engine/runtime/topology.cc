#include "runtime/topology.h"

#include <hwloc.h>
#include <sched.h>

#include <cerrno>
#include <cstring>
#include <memory>

namespace baton {
namespace {

struct TopologyDeleter {
  void operator()(hwloc_topology_t t) const noexcept { hwloc_topology_destroy(t); }
};

// Reads what Baton needs out of a loaded hwloc topology.
Topology read(hwloc_topology_t raw, bool described) {
  Topology t;
  t.described = described;
  t.packages = hwloc_get_nbobjs_by_type(raw, HWLOC_OBJ_PACKAGE);
  t.cores = hwloc_get_nbobjs_by_type(raw, HWLOC_OBJ_CORE);
  t.pus = hwloc_get_nbobjs_by_type(raw, HWLOC_OBJ_PU);
  const int nodes = hwloc_get_nbobjs_by_type(raw, HWLOC_OBJ_NUMANODE);
  for (int i = 0; i < nodes; ++i) {
    hwloc_obj_t node = hwloc_get_obj_by_type(raw, HWLOC_OBJ_NUMANODE, i);
    NumaNode n;
    n.os_index = static_cast<int>(node->os_index);
    n.memory_bytes = node->attr != nullptr ? node->attr->numanode.local_memory : 0;
    // A NUMA node hangs off the object whose memory it is: a package, a
    // die or group inside one, or the machine (no package).
    if (hwloc_obj_t pkg = hwloc_get_ancestor_obj_by_type(raw, HWLOC_OBJ_PACKAGE, node); pkg != nullptr)
      n.package = static_cast<int>(pkg->logical_index);
    int cpu;
    hwloc_bitmap_foreach_begin(cpu, node->cpuset) n.cpus.push_back(cpu);
    hwloc_bitmap_foreach_end();
    t.numa_nodes.push_back(std::move(n));
  }
  return t;
}

}  // namespace

Result<Topology> Topology::discover() { return load(""); }

Result<Topology> Topology::load(std::string_view source) {
  hwloc_topology_t raw = nullptr;
  if (hwloc_topology_init(&raw) != 0) return fail(Errc::kIo, "hwloc_topology_init failed");
  std::unique_ptr<hwloc_topology, TopologyDeleter> topo(raw);
  constexpr std::string_view kSynthetic = "synthetic:";
  const bool described = !source.empty();
  if (source.starts_with(kSynthetic)) {
    const std::string desc(source.substr(kSynthetic.size()));
    if (hwloc_topology_set_synthetic(raw, desc.c_str()) != 0)
      return fail(Errc::kInvalidArgument, "hwloc rejects the synthetic topology \"", desc,
                  "\" (levels such as \"package:2 numa:2 core:8 pu:1\")");
  } else if (described) {
    const std::string path(source);
    if (hwloc_topology_set_xml(raw, path.c_str()) != 0)
      return fail(Errc::kInvalidArgument, "hwloc cannot read the topology XML file ", path, ": ", std::strerror(errno));
  }
  if (hwloc_topology_load(raw) != 0)
    return fail(described ? Errc::kInvalidArgument : Errc::kIo, "hwloc_topology_load failed",
                described ? " for " + std::string(source) : std::string());
  Topology t = read(raw, described);
  if (t.numa_nodes.empty() || t.pus == 0)
    return fail(Errc::kInvalidArgument, "the topology has no NUMA node or no processing unit");
  return t;
}

int Topology::numa_node_of_cpu(int cpu) const noexcept {
  for (const auto& n : numa_nodes)
    for (int c : n.cpus)
      if (c == cpu) return n.os_index;
  return -1;
}

int Topology::package_of(int os_index) const noexcept {
  for (const auto& n : numa_nodes)
    if (n.os_index == os_index) return n.package;
  return -1;
}

bool Topology::has_numa_node(int os_index) const noexcept {
  for (const auto& n : numa_nodes)
    if (n.os_index == os_index) return true;
  return false;
}

int Topology::numa_node_of_this_thread() const {
  if (described) return -1;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
  int best = -1;
  size_t best_count = 0;
  for (const auto& n : numa_nodes) {
    size_t count = 0;
    for (int cpu : n.cpus)
      if (cpu < CPU_SETSIZE && CPU_ISSET(cpu, &set)) ++count;
    if (count > best_count) {
      best = n.os_index;
      best_count = count;
    }
  }
  return best;
}

std::string Topology::summary() const {
  std::string s = std::string(described ? "described: " : "") + std::to_string(packages) + " package(s), " +
                  std::to_string(cores) + " core(s), " + std::to_string(pus) + " PU(s), " +
                  std::to_string(numa_nodes.size()) + " NUMA node(s):";
  for (const auto& n : numa_nodes)
    s += " [node " + std::to_string(n.os_index) + (n.package >= 0 ? " in package " + std::to_string(n.package) : "") +
         ": " + std::to_string(n.cpus.size()) + " CPUs, " + std::to_string(n.memory_bytes >> 20) + " MiB]";
  return s;
}

}  // namespace baton
