#!/usr/bin/env python3
"""A random kill campaign against a service group (issue #12): the failover
manager, its runner and the engine together, in a 4-blade chassis.

    python3 tools/failover_campaign.py [--build build] [--cycles 30] [--seed 1]
                                       [--standby-instances] [--transport memif|shm|mixed]
                                       [--size-kib 1024] [--keep]

Group kv runs baton-kv (a durable batch every 20 ms; each batch applies 64
deterministic updates, so its state is a function of its update count)
with blades 3 and 4 as the spare pool and two replicas. Each cycle draws
one fault from the seed:

  kill-app          SIGKILL the application wherever it runs
  kill-blade        SIGKILL the batond of the blade it runs on (the
                    application ends with it); the blade restarts, empty,
                    once the group runs elsewhere
  kill-app-and-peer SIGKILL the application, then 0-60 ms later the batond
                    of another blade (perhaps the one its failover goes to)
  kill-peer         SIGKILL the batond of a blade it does not run on, and
                    restart it 0.2-2 s later (no failover: the owner
                    re-replicates)
  stall-blade       SIGSTOP the batond it runs under for 0.2-3 s, then
                    SIGCONT: past the failure timeout the group fails
                    over while the old owner is frozen, and the old owner
                    (and its instance) wake up fenced

At most one batond is dead at a time, and the next fault waits until the
group has committed a durable batch since the last restart (one failure
at a time, what a replica set of two survives). After every fault, once
an instance has restored:

  I1  it restored at least the newest batch any instance was told was
      durable before the fault (a durable generation is never lost);
  I2  its restored state (baton-kv --dump's restored.bin: the header and
      the table) is exactly the state after a whole batch: the table the
      update sequence leaves after that many updates, with the batch
      count to match (a restore is exactly a committed generation);
  I3  no batch number was reported durable by two instances (an old
      owner acknowledged after its successor took over, which I1 alone
      cannot see: every instance computes the same bytes).

The schedule (faults, their targets and pauses) follows from the seed; the
timing of the processes does not, so a failing seed replays the same
schedule, not the same interleaving. Exit status 1 on any violation, 2 if
the group did not run again within 60 s of a fault. A summary line per
cycle and a last line with the counts go to stdout.
"""
import argparse
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

from baton_chassis import group_node, restart_blade, sh, sock, wait

BLADES = 4
SLOTS = 16384          # baton-kv's default table: 16-byte slots after a 16-byte header
KEYS = SLOTS * 3 // 4  # the keys it puts into it
MASK = (1 << 64) - 1


class Layout:
    """Where baton-kv's table puts each key: a key's slot is fixed at its
    first put, and the first KEYS updates put every key once, in order
    (the multiplier is prime to KEYS)."""

    def __init__(self):
        self.pos = {}
        taken = [False] * SLOTS
        for u in range(KEYS):
            k = self.key(u)
            i = ((k * 0x9E3779B97F4A7C15) & MASK) % SLOTS
            while taken[i]:
                i = (i + 1) % SLOTS
            taken[i] = True
            self.pos[k] = i
        assert len(self.pos) == KEYS

    @staticmethod
    def key(u):
        return ((u * 2654435761) & MASK) % KEYS + 1

    def check(self, blob):
        """'' if `blob` (baton-kv's state: its header and table) is exactly
        the state after a whole batch, else why not."""
        if len(blob) != 16 + SLOTS * 16:
            return f"restored.bin holds {len(blob)} bytes, not a header and {SLOTS} slots"
        batches, updates = struct.unpack_from("<QQ", blob, 0)
        if updates != batches * 64:
            return f"{updates} updates after {batches} batches (64 each)"
        want = bytearray(16 + SLOTS * 16)
        struct.pack_into("<QQ", want, 0, batches, updates)
        for u in range(max(0, updates - KEYS), updates):
            k = self.key(u)
            struct.pack_into("<QQ", want, 16 + 16 * self.pos[k], k, u)
        if blob != want:
            first = next(i for i in range(len(want)) if blob[i] != want[i])
            return f"the table differs from the state after {batches} batches from byte {first}"
        return ""


class Campaign:
    def __init__(self, args):
        self.args = args
        build = os.path.abspath(args.build)
        self.batonctl, self.kv = f"{build}/tools/batonctl", f"{build}/tools/baton-kv"
        self.work = tempfile.mkdtemp(prefix="baton-focampaign-")
        self.chassis = f"{self.work}/chassis"
        self.rng = random.Random(args.seed)
        self.layout = Layout()
        self.seen = {}       # log -> bytes already looked at for restores
        self.checked = set() # (log, where in it) of the restores checked
        self.dead = set()    # blades whose batond is down
        self.read_to = {}    # log -> (bytes read by durable(), the newest durable batch in them)
        self.reported = {}   # batch -> the logs that reported it durable (durable())
        self.counts = {"faults": 0, "restores": 0, "violations": 0}

    # --- the chassis -------------------------------------------------------

    def up(self):
        with open(f"{self.work}/groups.toml", "w") as g:
            # Each instance dumps into a directory of its own, named by its
            # shell's pid (exec keeps it), as is its log.
            g.write(f"""[[group]]
name = "kv"
segments = ["kv"]
start = "d={self.work}/i-$BATON_NODE-$$; mkdir -p $d; exec {self.kv} --socket $BATON_SOCKET --name kv --batches 100000000 --every-ms 20 --size-kib {self.args.size_kib} --dump $d >$d.log 2>&1"
home = [1]
start_timeout_ms = 3000
{"standby = [3, 4]" if self.args.standby_instances else ""}
{"standby_instances = true" if self.args.standby_instances else ""}
""")
        sh(self.batonctl, "chassis", "up", "--blades", str(BLADES), "--replicas", "2", "--dir", self.chassis,
           "--groups", f"{self.work}/groups.toml", "--spares", "3,4", "--transport", self.args.transport)

    def down(self):
        if self.args.keep:  # `chassis down` removes the chassis directory: keep what each blade saw
            for b in range(1, BLADES + 1):
                if b in self.dead:
                    continue
                try:
                    out = sh(self.batonctl, "events", "--json", "--socket", sock(self.chassis, b), timeout=5)
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired):  # stopped or gone: none
                    out = ""
                with open(f"{self.work}/events-blade{b}.json", "w") as f:
                    f.write(out)
        subprocess.run([self.batonctl, "chassis", "down", "--dir", self.chassis], capture_output=True)
        subprocess.run(["pkill", "-KILL", "-f", f"{self.kv} --socket {self.chassis}/"], capture_output=True)
        if self.args.keep:
            print(f"campaign: kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def where(self):
        """The blade the group runs on, as any live blade says, or None."""
        return group_node(self.batonctl, self.chassis, BLADES, skip=self.dead)

    def app_pid(self, blade):
        try:
            out = sh("pgrep", "-f", f"{self.kv} --socket {sock(self.chassis, blade)}")
        except subprocess.CalledProcessError:
            return None
        for pid in map(int, out.split()):
            try:  # the running instance, not a standby waiting to be promoted
                env = open(f"/proc/{pid}/environ", "rb").read()
            except OSError:
                continue
            if b"BATON_ROLE=standby" not in env or self.promoted(pid):
                return pid
        return None

    def promoted(self, pid):
        log = f"{self.work}/i-{self.blade_of(pid)}-{pid}.log"
        return os.path.exists(log) and "standby: promoted" in open(log).read()

    @staticmethod
    def blade_of(pid):
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        for e in env:
            if e.startswith(b"BATON_NODE="):
                return int(e[len(b"BATON_NODE="):])
        return 0

    def kill_blade(self, b):
        pid = int(open(f"{self.chassis}/blade{b}.pid").read())
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.dead.add(b)

    def restart(self, b):
        restart_blade(self.batonctl, self.chassis, b, BLADES, skip=self.dead)
        self.dead.discard(b)

    # --- what the instances said ------------------------------------------

    def logs(self):
        return [f"{self.work}/{f}" for f in os.listdir(self.work) if f.startswith("i-") and f.endswith(".log")]

    def durable(self):
        """The newest batch any instance was told was durable. Each log is
        read once, from where the last call stopped, to a line's end; the
        instances that reported each batch are kept (check_durable_once)."""
        for log in self.logs():
            at, best = self.read_to.get(log, (0, 0))
            with open(log) as f:
                f.seek(at)
                text = f.read()
            whole = text[:text.rfind("\n") + 1]
            for m in re.finditer(r"^batch=(\d+) generation=\d+ durable$", whole, re.M):
                best = max(best, int(m.group(1)))
                self.reported.setdefault(int(m.group(1)), set()).add(os.path.basename(log))
            self.read_to[log] = (at + len(whole.encode()), best)
        return max((best for _, best in self.read_to.values()), default=0)

    def mark(self):
        for log in self.logs():
            self.seen[log] = os.path.getsize(log)

    def restores(self):
        """Every restore since mark(): (log, where in it, batches), a fresh
        start as batches -1."""
        out = []
        for log in self.logs():
            start = self.seen.get(log, 0)
            with open(log) as f:
                f.seek(start)
                text = f.read()
            for m in re.finditer(r"^(?:restored generation=\d+ batches=(\d+) in|fresh start)", text, re.M):
                out.append((log, start + m.start(), int(m.group(1)) if m.group(1) else -1))
        return out

    def new_restore(self):
        """The first restore since mark() not checked yet, or None."""
        return next((r for r in self.restores() if r[:2] not in self.checked), None)

    def check_later(self, durable_before):
        """Restores after the one a fault's cycle checked (a second failover:
        the first target died too), each against the same bound."""
        self.settle()
        for r in self.restores():
            if r[:2] not in self.checked:
                print(f"  and then {os.path.basename(r[0])} restored batch {r[2]}", flush=True)
                self.check_restore(r, durable_before)

    def violation(self, what):
        self.counts["violations"] += 1
        print(f"campaign: VIOLATION (seed {self.args.seed}): {what}", flush=True)

    def check_restore(self, found, durable_before):
        log, _, batches = found
        self.checked.add(found[:2])
        self.counts["restores"] += 1
        if batches < durable_before:
            self.violation(f"{os.path.basename(log)} restored batch {batches}; batch {durable_before} was durable (I1)")
        if batches < 0:
            return
        dump = log[:-len(".log")] + "/restored.bin"
        try:
            blob = wait(lambda: os.path.exists(dump) and open(dump, "rb").read(), 5, f"{dump}")
        except TimeoutError:
            self.violation(f"{dump} was not written")
            return
        why = self.layout.check(blob)
        if why:
            self.violation(f"{os.path.basename(log)}: not a committed state: {why} (I2)")

    def check_durable_once(self):
        self.durable()  # reads what the logs gained since
        twice = {b: sorted(ls) for b, ls in self.reported.items() if len(ls) > 1}
        for b, ls in sorted(twice.items())[:5]:
            self.violation(f"batch {b} reported durable by {', '.join(ls)} (I3)")

    # --- the campaign ------------------------------------------------------

    def settle(self):
        """The group runs, and has committed a durable batch since."""
        node = wait(self.where, 60, "the group to run")
        d = self.durable()
        wait(lambda: self.durable() > d, 30, "a durable batch")
        return node

    def cycle(self, n):
        node = self.settle()
        time.sleep(self.rng.uniform(0.0, 0.5))
        pid = self.app_pid(node)
        fault = self.rng.choice(["kill-app", "kill-app", "kill-blade", "kill-app-and-peer", "kill-peer",
                                 "stall-blade"])
        others = [b for b in range(1, BLADES + 1) if b != node]
        peer = self.rng.choice(others)
        delay = self.rng.uniform(0.0, 0.06)
        back = self.rng.uniform(0.2, 2.0)
        stall = self.rng.uniform(0.2, 3.0)
        if pid is None:
            print(f"cycle {n}: no application process on blade {node} yet; skipped", flush=True)
            return
        durable_before = self.durable()
        self.mark()
        self.counts["faults"] += 1
        t0 = time.time()
        restart = []
        if fault == "kill-app":
            os.kill(pid, signal.SIGKILL)
        elif fault == "kill-blade":
            self.kill_blade(node)
            restart.append(node)
        elif fault == "kill-app-and-peer":
            os.kill(pid, signal.SIGKILL)
            time.sleep(delay)
            self.kill_blade(peer)
            restart.append(peer)
        elif fault == "stall-blade":
            bpid = int(open(f"{self.chassis}/blade{node}.pid").read())
            os.kill(bpid, signal.SIGSTOP)
            time.sleep(stall)
            os.kill(bpid, signal.SIGCONT)
            # A failover, if the stall outlasted the failure timeout: its
            # restore is checked; else the group runs on where it was.
            try:
                found = wait(self.new_restore, 5, "a restore")
            except TimeoutError:
                print(f"cycle {n}: stall-blade {node} for {stall:.2f} s: rode out, the group runs on", flush=True)
                self.check_later(durable_before)
                self.check_durable_once()
                return
            self.check_restore(found, durable_before)
            print(f"cycle {n}: stall-blade {node} for {stall:.2f} s: restored batch {found[2]} on blade "
                  f"{os.path.basename(found[0]).split('-')[1]} (durable before: {durable_before})", flush=True)
            self.check_later(durable_before)
            self.check_durable_once()
            return
        else:  # kill-peer
            self.kill_blade(peer)
            time.sleep(back)
            self.restart(peer)
            print(f"cycle {n}: kill-peer {peer} (back after {back:.2f} s): the group ran on at blade "
                  f"{self.settle()}", flush=True)
            self.check_later(durable_before)
            self.check_durable_once()
            return
        try:
            found = wait(self.new_restore, 60, "an instance to restore")
        except TimeoutError:
            print(f"campaign: the group did not run again within 60 s of {fault} (seed {self.args.seed}, "
                  f"cycle {n})", flush=True)
            raise
        took = time.time() - t0
        self.check_restore(found, durable_before)
        log, _, batches = found
        print(f"cycle {n}: {fault} (blade {node}{f', peer {peer}' if restart and peer in restart else ''}): "
              f"restored batch {batches} on blade {os.path.basename(log).split('-')[1]} in {took * 1e3:.0f} ms "
              f"(durable before: {durable_before})", flush=True)
        for b in restart:
            self.restart(b)
        self.check_later(durable_before)
        self.check_durable_once()

    def run(self):
        print(f"campaign: {self.args.cycles} cycles, seed {self.args.seed}, {BLADES} blades over "
              f"{self.args.transport}, {self.args.size_kib} KiB segment"
              f"{', standby instances on 3 and 4' if self.args.standby_instances else ''}", flush=True)
        self.up()
        stuck = False
        try:
            for n in range(self.args.cycles):
                try:
                    self.cycle(n)
                except TimeoutError as e:
                    print(f"campaign: stuck in cycle {n}: waiting for {e}", flush=True)
                    stuck = True
                    break
            self.check_durable_once()
        finally:
            self.down()
        c = self.counts
        print(f"campaign: {c['faults']} faults, {c['restores']} restores checked, {c['violations']} violations"
              f"{', stuck' if stuck else ''}", flush=True)
        return 1 if c["violations"] else 2 if stuck else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", default="build")
    p.add_argument("--cycles", type=int, default=30)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--standby-instances", action="store_true",
                   help="blades 3 and 4 keep hot standbys and a waiting instance of the application")
    p.add_argument("--transport", default="memif", help="memif (default), shm or mixed")
    p.add_argument("--size-kib", type=int, default=1024, help="the segment (at least 257: the table and its header)")
    p.add_argument("--keep", action="store_true", help="keep the instances' logs and dumps, and each blade's events (events-bladeN.json)")
    args = p.parse_args()
    if args.size_kib * 1024 < 16 + SLOTS * 16:
        p.error("--size-kib must hold the table (257 or more)")
    sys.exit(Campaign(args).run())


if __name__ == "__main__":
    main()
