#include "runtime/topology.h"

#include <hwloc.h>
#include <sched.h>

#include <memory>

namespace baton {
namespace {

struct TopologyDeleter {
  void operator()(hwloc_topology_t t) const noexcept { hwloc_topology_destroy(t); }
};

}  // namespace

Result<Topology> Topology::discover() {
  hwloc_topology_t raw = nullptr;
  if (hwloc_topology_init(&raw) != 0) return fail(Errc::kIo, "hwloc_topology_init failed");
  std::unique_ptr<hwloc_topology, TopologyDeleter> topo(raw);
  if (hwloc_topology_load(raw) != 0) return fail(Errc::kIo, "hwloc_topology_load failed");
  Topology t;
  t.packages = hwloc_get_nbobjs_by_type(raw, HWLOC_OBJ_PACKAGE);
  t.cores = hwloc_get_nbobjs_by_type(raw, HWLOC_OBJ_CORE);
  t.pus = hwloc_get_nbobjs_by_type(raw, HWLOC_OBJ_PU);
  const int nodes = hwloc_get_nbobjs_by_type(raw, HWLOC_OBJ_NUMANODE);
  for (int i = 0; i < nodes; ++i) {
    hwloc_obj_t node = hwloc_get_obj_by_type(raw, HWLOC_OBJ_NUMANODE, i);
    NumaNode n;
    n.os_index = static_cast<int>(node->os_index);
    n.memory_bytes = node->attr != nullptr ? node->attr->numanode.local_memory : 0;
    int cpu;
    hwloc_bitmap_foreach_begin(cpu, node->cpuset) n.cpus.push_back(cpu);
    hwloc_bitmap_foreach_end();
    t.numa_nodes.push_back(std::move(n));
  }
  return t;
}

int Topology::numa_node_of_this_thread() const {
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
  std::string s = std::to_string(packages) + " package(s), " + std::to_string(cores) + " core(s), " +
                  std::to_string(pus) + " PU(s), " + std::to_string(numa_nodes.size()) + " NUMA node(s):";
  for (const auto& n : numa_nodes)
    s += " [node " + std::to_string(n.os_index) + ": " + std::to_string(n.cpus.size()) + " CPUs, " +
         std::to_string(n.memory_bytes >> 20) + " MiB]";
  return s;
}

}  // namespace baton
