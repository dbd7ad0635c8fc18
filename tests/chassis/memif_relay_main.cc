// baton-memif-relay: a memif wire through another process, for the driver
// conformance suite. Both ends of a memif pair cannot live in one process
// (a client reconnecting to a server of its own process blocks the EAL
// interrupt thread that would accept it), so the suite opens two memif
// servers and this process joins them: a client of each, forwarding every
// frame from one to the other, both ways, in order.
//
//   baton-memif-relay --a DEVARGS --b DEVARGS   (both role=client)
//
// It holds one burst per direction: until the far side takes it, it reads
// no more from the near side, so a receiver that does not read pushes back
// on the sender through both rings, as a direct memif pair does. Once both
// links were up, it exits when either goes down (its peer went away), so the
// other side sees its own link go down as well: memif tells a peer's loss.

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "baton/ethdev.h"
#include "runtime/futex.h"

namespace {

volatile sig_atomic_t stop = 0;
void on_signal(int) { stop = 1; }

/// Frames read from one link, waiting to be taken by the other.
struct Pending {
  std::vector<std::vector<std::byte>> frames;
  size_t sent = 0;
  bool empty() const { return sent == frames.size(); }
};

/// Moves what `from` received to `to`, keeping what `to` would not take.
bool forward(baton::Link& from, baton::Link& to, Pending& p) {
  bool moved = false;
  if (p.empty()) {
    p.frames.clear();
    p.sent = 0;
    baton::RxFrame rx[32];
    const uint16_t n = from.rx_burst(rx, 32);
    for (uint16_t i = 0; i < n; ++i) p.frames.emplace_back(rx[i].bytes.begin(), rx[i].bytes.end());
    from.release_rx(rx, n);
  }
  while (!p.empty()) {
    baton::TxFrame tx[32];
    uint16_t n = 0;
    for (size_t i = p.sent; i < p.frames.size() && n < 32; ++i) tx[n++] = {{p.frames[i].data(), p.frames[i].size()}, {}};
    const uint16_t took = to.tx_burst(tx, n);
    p.sent += took;
    moved |= took > 0;
    if (took < n) break;
  }
  return moved;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dev_a, dev_b;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--a") dev_a = v;
    else if (k == "--b") dev_b = v;
  }
  if (dev_a.empty() || dev_b.empty()) {
    std::fprintf(stderr, "usage: baton-memif-relay --a DEVARGS --b DEVARGS\n");
    return 64;
  }
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  baton::ethdev::PortConfig pa, pb;
  pa.device = dev_a;
  pa.peer = 1;
  pb.device = dev_b;
  pb.peer = 2;
  auto a = baton::ethdev::open_port(pa);
  auto b = baton::ethdev::open_port(pb);
  if (!a || !b) {
    std::fprintf(stderr, "baton-memif-relay: %s\n", (!a ? a : b).error().to_string().c_str());
    return 1;
  }
  Pending ab, ba;
  bool were_up = false;
  uint64_t idle_since = baton::now_ns();
  while (!stop) {
    const uint64_t now = baton::now_ns();
    (*a)->service(now);
    (*b)->service(now);
    const bool up = (*a)->up() && (*b)->up();
    if (up) were_up = true;
    if (were_up && !up) {  // one side went away: let the other see it too
      std::fprintf(stderr, "baton-memif-relay: %s went down; exiting\n", (*a)->up() ? "b" : "a");
      return 0;
    }
    const bool moved = forward(**a, **b, ab) | forward(**b, **a, ba);
    if (moved) idle_since = now;
    else if (now - idle_since > 1'000'000) usleep(50);  // idle: let the test's threads have the cores
  }
  return 0;
}
