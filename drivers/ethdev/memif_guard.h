#pragma once
// Works around defects of DPDK's memif PMD that batond cannot fix in DPDK:
// the munmap() guard below, and (each described where it is declared)
// descriptors kept open, connects that do not wait, and the interposers
// of memif_guard.cc behind them.
//
// Guards data-path bursts against the memif PMD unmapping its shared regions
// underneath them.
//
// When a memif peer dies, the PMD's handler on the EAL interrupt thread clears
// the connected flag and munmap()s the regions at once, while a burst already
// inside eth_memif_rx/tx on the worker still reads them: the survivor gets
// SIGSEGV in ~8% of peer kills here. The link-state callback never fires for
// memif, and checking link state before a burst cannot close the window. So
// the engine interposes munmap(): an unmap by a thread that can unmap a
// memif port's regions waits until no guarded burst is in flight, and bursts
// do not start while such an unmap is pending. (Dekker-style handshake on
// two seq_cst atomics.)
//
// Only those threads: in a primary process the PMD unmaps its regions in
// memif_disconnect alone, which runs in its control-channel handlers (the
// EAL interrupt thread) and in a port's stop (batond stops and closes memif
// ports in an EAL alarm, i.e. on that thread too, or, should the alarm not
// run, in a PortControl scope). Every other unmap (a segment's memory, a client's
// channel) goes straight to the kernel: guarded, it had every burst of the
// process skipped while it ran, and a skipped burst is a lost control
// frame. A failover manager's report sent as its application died (the
// session thread unmapping the client's channel meanwhile) was lost so,
// and the decision waited for the next report, 250 ms later, in about 1
// failover in 30.

#include <atomic>

namespace baton::ethdev {

struct MemifGuard {
  static std::atomic<int> bursts;
  static std::atomic<int> unmaps;

  /// Enters a burst; false if an unmap is pending (skip this burst). Thread: worker.
  static bool enter() noexcept {
    bursts.fetch_add(1);
    if (unmaps.load() == 0) return true;
    bursts.fetch_sub(1);
    return false;
  }
  static void exit() noexcept { bursts.fetch_sub(1); }

  /// While one is in scope on a thread, that thread's unmaps wait for the
  /// bursts in flight (as the interrupt thread's always do): it stops a
  /// memif port. Thread: any.
  struct PortControl {
    PortControl() noexcept { ++depth; }
    ~PortControl() { --depth; }
    PortControl(const PortControl&) = delete;
    PortControl& operator=(const PortControl&) = delete;
    static thread_local int depth;
  };
  /// Whether an unmap by the calling thread may take a memif port's
  /// regions, and so must wait for the bursts in flight. Thread: any.
  static bool guards_unmaps() noexcept { return PortControl::depth > 0 || on_interrupt_thread(); }

  /// Keeps `fd` open whatever closes it through libc: DPDK's own file of a
  /// memory list, which a memif zero-copy client hands its server. The PMD
  /// (DPDK 22.11 to this day) closes that descriptor once connected, though
  /// it is the EAL's, and a reconnection then sends the server its stale
  /// number: whatever file took it since (a segment's memfd, say), which
  /// the server maps as the client's memory (a restarted server died of
  /// SIGBUS at its next connection in the kill test).
  /// Thread: any.
  static void keep_open(int fd) noexcept;
  static bool kept_open(int fd) noexcept;

  /// Whether the calling thread is the EAL interrupt thread, which runs
  /// memif's control channel and EAL alarms.
  static bool on_interrupt_thread() noexcept;

  /// While one is in scope on a thread, that thread's connects do not wait
  /// (the interposed connect(), memif_guard.cc): a memif client's start
  /// connects to its server's socket with a blocking connect(), which waits
  /// for as long as the server's backlog (one connection: DPDK listens with
  /// 1) stays full, i.e. while its EAL interrupt thread does not accept.
  /// On the interrupt thread (a restart) that froze every memif channel of
  /// the process; at start-up, batond never got to serve. Now such a start
  /// fails as one whose server is not there yet, and is retried.
  /// Thread: the one that starts the port.
  struct NoWaitConnect {
    NoWaitConnect() noexcept { active = true; }
    ~NoWaitConnect() { active = false; }
    NoWaitConnect(const NoWaitConnect&) = delete;
    NoWaitConnect& operator=(const NoWaitConnect&) = delete;
    static thread_local bool active;
  };
};

}  // namespace baton::ethdev
