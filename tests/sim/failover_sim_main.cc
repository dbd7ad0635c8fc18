// baton-failover-sim: the failover decisions' simulation as a command.
//
//   baton-failover-sim --seeds 100000 [--first 1] [--nodes N] [--steps S]
//   baton-failover-sim --seed 1234 --print

#include <cstdio>
#include <cstdlib>
#include <string>

#include "failover_sim.h"

int main(int argc, char** argv) {
  baton::failover::sim::Options o;
  uint64_t first = 1, count = 1000;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> uint64_t {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "baton-failover-sim: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::strtoull(argv[++i], nullptr, 10);
    };
    if (a == "--seeds") count = next();
    else if (a == "--first") first = next();
    else if (a == "--seed") { first = next(); count = 1; }
    else if (a == "--nodes") o.nodes = static_cast<int>(next());
    else if (a == "--steps") o.steps = static_cast<int>(next());
    else if (a == "--print") o.print = true;
    else {
      std::fprintf(stderr, "usage: baton-failover-sim [--seeds N] [--first S] [--seed S] [--nodes N] [--steps S] [--print]\n");
      return 2;
    }
  }
  baton::failover::sim::Stats stats;
  uint64_t failed = 0;
  for (uint64_t s = first; s < first + count; ++s)
    if (auto f = baton::failover::sim::run(s, o, &stats)) {
      std::printf("seed %llu FAILED\n%s\n", static_cast<unsigned long long>(s), f->c_str());
      ++failed;
    }
  std::printf("seeds %llu-%llu: %llu failed; assignments %llu, failovers %llu, performance moves %llu, alerts %llu, "
              "kills %llu, crashes %llu, packed beside other work %llu\n",
              static_cast<unsigned long long>(first), static_cast<unsigned long long>(first + count - 1),
              static_cast<unsigned long long>(failed), static_cast<unsigned long long>(stats.assignments),
              static_cast<unsigned long long>(stats.failovers), static_cast<unsigned long long>(stats.performance_moves),
              static_cast<unsigned long long>(stats.alerts),
              static_cast<unsigned long long>(stats.kills), static_cast<unsigned long long>(stats.crashes),
              static_cast<unsigned long long>(stats.packed));
  return failed == 0 ? 0 : 1;
}
