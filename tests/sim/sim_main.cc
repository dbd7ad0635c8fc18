// baton-sim: the deterministic simulation as a command, for long campaigns
// and for replaying one seed with its schedule.
//
//   baton-sim --seeds 100000 [--first 1] [--nodes 4] [--rf 2] [--actions 60] [--shards 1] [--segments 2]
//   baton-sim --seed 1234 --print

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "world.h"

int main(int argc, char** argv) {
  baton::sim::Options o;
  uint64_t first = 1, count = 1000;
  bool one = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> uint64_t {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "baton-sim: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::strtoull(argv[++i], nullptr, 10);
    };
    if (a == "--seeds") count = next();
    else if (a == "--first") first = next();
    else if (a == "--seed") { first = next(); count = 1; one = true; }
    else if (a == "--nodes") o.nodes = static_cast<int>(next());
    else if (a == "--rf") o.replication_factor = static_cast<uint32_t>(next());
    else if (a == "--actions") o.actions = static_cast<int>(next());
    else if (a == "--shards") o.shards = static_cast<int>(next());
    else if (a == "--segments") o.segments = static_cast<int>(next());
    else if (a == "--no-faults-in-calls") o.faults_in_calls = false;
    else if (a == "--no-standbys") o.standbys = false;
    else if (a == "--no-cow") o.cow = false;
    else if (a == "--no-direct") o.direct = false;
    else if (a == "--same-chunks") o.mixed_chunks = false;
    else if (a == "--no-races") o.races = false;
    else if (a == "--token-waits") o.token_waits = true;  // the default since session 52
    else if (a == "--no-token-waits") o.token_waits = false;
    else if (a == "--print") o.print = true;
    else {
      std::fprintf(stderr, "usage: baton-sim [--seeds N] [--first S] [--seed S] [--nodes N] [--rf R] "
                           "[--actions A] [--shards K] [--segments S] [--no-faults-in-calls] [--no-standbys] "
                           "[--no-cow] [--no-direct] [--same-chunks] [--no-races] [--no-token-waits] [--print]\n");
      return 2;
    }
  }
  if (o.nodes < 2 || o.nodes > 16 || o.replication_factor < 1 || o.replication_factor > 4 || o.shards < 1 ||
      o.shards > 8 || o.segments < 1 || o.segments > 16) {
    std::fprintf(stderr, "baton-sim: --nodes 2..16, --rf 1..4, --shards 1..8, --segments 1..16\n");
    return 2;
  }
  baton::sim::Stats total;
  uint64_t failed = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t seed = first; seed < first + count; ++seed) {
    const auto out = baton::sim::run_seed(seed, o);
    total.add(out.stats);
    if (!out.ok) {
      ++failed;
      std::printf("seed %lu FAILED: %s\n", static_cast<unsigned long>(seed), out.violation.c_str());
      if (one || failed == 1) std::printf("schedule:\n%s", out.schedule.c_str());
      std::fflush(stdout);
    }
    if ((seed - first + 1) % 1000 == 0)
      std::fprintf(stderr, "%lu seeds, %lu failed\n", static_cast<unsigned long>(seed - first + 1),
                   static_cast<unsigned long>(failed));
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s\nseeds %lu..%lu: %lu failed, %.1f s\n", total.to_string().c_str(),
              static_cast<unsigned long>(first), static_cast<unsigned long>(first + count - 1),
              static_cast<unsigned long>(failed), s);
  return failed == 0 ? 0 : 1;
}
