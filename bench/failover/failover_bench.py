#!/usr/bin/env python3
"""Failover time of a service group (issue #12), split into its phases.

    python3 bench/failover/failover_bench.py [--build build] [--rounds 5] [--sizes-kib 4,256,65536]
                                             [--standby | --standby-instances]
                                             [--transport memif|shm|mixed [--stream-fetches]] [--memif-zero-copy]
                                             [--app-heap-mib M] [--provision mkdir|none]
                                             [--no-liveness] [--kill-blade]
                                             [--blades N] [--spin] [--keep]

A 4-blade chassis (memif unless --transport says otherwise) runs group kv (baton-kv, committing a durable
batch every 20 ms) with blades 3 and 4 as the spare pool. Each round
SIGKILLs the application wherever it runs (once it has run 3 s, the
group's start timeout, so every round is a failover of its own) and
measures, from the daemons' own event timestamps and the application's
log:

  detection   kill -> the node's failover manager sees the application gone
  decision    -> the coordinator assigns the group to another node
  dispatch    -> the chosen node has the assignment (a daemon note)
  provision   -> its provision hook ran (here: mkdir; --provision none: no hook)
  load        -> the load (the request `batonctl load` makes) took the segment
                 over and fetched it
  start       -> the application runs and has opened (restored) its state
                 (its own clock reading then: baton-kv's serving_at_us)
  total       kill -> the application holds its restored state

With --kill-blade each round SIGKILLs the batond of the blade the group
runs on instead (its application ends with it), and "detection" ends at
the first other blade's "node N down"; the blade is restarted (empty)
after the round. When the killed blade was the coordinator, the decision
includes a new coordinator's report round.

Baselines measured in the same run: spawning /bin/true and waiting for it
(what any process start costs here), and reading a file of the segment's
size (what getting the state back from a local disk's page cache costs).
With --standby, blades 3 and 4 are also the group's hot standbys (S16):
each keeps the segment's newest generation ready in memory, and the load
on the one chosen takes that memory over instead of fetching it; only the
rounds whose load did so count (a failover goes elsewhere once both
standbys failed within the start timeout). With --standby-instances, the
application also runs ahead of time on blades 3 and 4, waiting to be
promoted (S16's standby instance): only the rounds that promoted one count,
and "start" is the promoted instance's open (from when batond answered
the last load: its thread promotes the instance then).
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from baton_chassis import events, group_node, restart_blade, sh, sock  # noqa: E402
from baton_chassis import wait as wait_for  # noqa: E402


def wait(pred, what="condition"):
    """wait_for() at a 5 ms step; its TimeoutError ends the bench (main)."""
    return wait_for(pred, 30.0, what, every=0.005)


def kv_pid(chassis, blade):
    try:
        out = sh("pgrep", "-f", f"baton-kv --socket {sock(chassis, blade)}")
        return int(out.split()[0])
    except subprocess.CalledProcessError:
        return None


BLADES = 4  # --blades


def baselines(size):
    t = []
    for _ in range(20):
        t0 = time.perf_counter()
        subprocess.run(["/bin/true"], check=True)
        t.append((time.perf_counter() - t0) * 1e3)
    spawn = statistics.median(t)
    with tempfile.NamedTemporaryFile(dir="/dev/shm", delete=True) as f:
        f.write(os.urandom(1 << 20) * max(1, size // (1 << 20)) if size >= (1 << 20) else os.urandom(size))
        f.flush()
        t = []
        for _ in range(20):
            t0 = time.perf_counter()
            with open(f.name, "rb") as r:
                while r.read(1 << 20):
                    pass
            t.append((time.perf_counter() - t0) * 1e3)
    return spawn, statistics.median(t)


def spares():
    """The spare pool: blades 3 and 4 of four (the last blade of fewer)."""
    return [BLADES - 1, BLADES] if BLADES >= 4 else [BLADES]


def standbys():
    """Hot standbys: the spares; with two blades both, so that every failover finds one."""
    return [1, 2] if BLADES == 2 else spares()


def run_size(args, size_kib):
    build = os.path.abspath(args.build)
    batonctl, kv = f"{build}/tools/batonctl", f"{build}/tools/baton-kv"
    work = tempfile.mkdtemp(prefix="baton-fobench-")
    chassis = f"{work}/chassis"
    # baton-kv's table is 256 KiB unless told fewer slots (16 bytes each,
    # beside a 16-byte header): a smaller segment is a smaller table.
    slots = 16384 if size_kib >= 256 else (size_kib * 1024 - 16) // 16
    with open(f"{work}/groups.toml", "w") as g:
        g.write(f"""[[group]]
name = "kv"
segments = ["kv"]
start = "exec {kv} --socket $BATON_SOCKET --name kv --batches 1000000 --every-ms 20 --size-kib {size_kib} --slots {slots} --heap-mib {args.app_heap_mib} >{work}/kv-$BATON_NODE-$BATON_ASSIGNMENT.log 2>&1"
{f'provision = "mkdir -p {work}/n$BATON_NODE"' if args.provision == "mkdir" else ""}
home = [1]
start_timeout_ms = 3000
{f"standby = {standbys()}" if args.standby or args.standby_instances else ""}
{"standby_instances = true" if args.standby_instances else ""}
""")
    rows = []
    try:
        sh(batonctl, "chassis", "up", "--blades", str(BLADES), "--replicas", "2" if BLADES > 2 else "1",
           "--dir", chassis, "--groups", f"{work}/groups.toml", "--spares", ",".join(map(str, spares())),
           "--transport", args.transport, "--retain", str(args.retain), *(["--spin"] if args.spin else []),
           *(["--stream-fetches"] if args.stream_fetches else []),
           *(["--memif-zero-copy"] if args.memif_zero_copy else []),
           env=dict(os.environ, BATON_LIVENESS="0" if args.no_liveness else "1"))
        for r in range(args.rounds):
            node = wait(lambda: group_node(batonctl, chassis, BLADES), what="the group to run")
            pid = wait(lambda: kv_pid(chassis, node), what="the application's pid")

            def newest_log():
                logs = [f"{work}/{f}" for f in os.listdir(work) if f.startswith(f"kv-{node}-")]
                return max(logs, key=os.path.getmtime) if logs else None

            def durable_here():
                log = newest_log()
                return log and "durable" in open(log).read()

            # A failover restores what was durable: kill once there is some.
            wait(durable_here, what="a durable batch")
            # Once the group has run a start timeout long, its failover
            # episode is over: nodes it failed on before are candidates
            # again (else, with every node killed once, the coordinator
            # finds none and waits a start timeout for one).
            time.sleep(3.2)
            if args.kill_blade:
                pid = int(open(f"{chassis}/blade{node}.pid").read())
            # What the logs held before the kill: a restore is looked for
            # after it (a killed blade's application writes its last words
            # to a log that already holds its own restore).
            before = {f: os.path.getsize(f"{work}/{f}") for f in os.listdir(work) if f.startswith("kv-")}
            t_kill = time.time()
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended by itself meanwhile: no round to time
                print(f"  round {r}: the application (pid {pid}) ended before the kill, skipped", file=sys.stderr)
                continue

            # The instance that takes over writes its restore to its log: a
            # new one, or a standby instance's, written since the kill (the
            # killed instance writes nothing more; waiting ones only wait).
            def restored():
                for f in os.listdir(work):
                    path = f"{work}/{f}"
                    if f.startswith("kv-") and os.path.getmtime(path) >= t_kill:
                        with open(path) as log:
                            log.seek(before.get(f, 0))
                            text = log.read()
                        m = re.search(r"serving_at_us=(\d+)\nrestored generation=\d+ batches=\d+ in ([\d.]+) ms", text)
                        if m:
                            return f, m
                return None

            newlog, line = wait(restored, what="the restore")
            target = int(newlog.split("-")[1])
            ready = int(line.group(1)) / 1e6  # the application's own clock reading (CLOCK_REALTIME)
            time.sleep(0.1)
            ev = {}
            for b in range(1, BLADES + 1):
                if args.kill_blade and b == node:
                    continue  # dead
                for ts, text in events(batonctl, chassis, b):
                    if ts < t_kill:
                        continue
                    if b == node and text.startswith("group kv failed here"):
                        ev.setdefault("detected", ts)
                    if args.kill_blade and text.startswith(f"node {node} down"):
                        ev["detected"] = min(ts, ev.get("detected", ts))
                    if re.match(rf"group kv -> node {target} \((hot standby, )?failover", text):
                        ev.setdefault("decided", ts)
                    if b == target and text.startswith("group kv: starting here"):
                        ev.setdefault("heard", ts)
                        ev["instance"] = "its standby instance" in text
                    if b == target and text.startswith("segment kv: ownership taken"):
                        ev["promoted"] = "hot standby copy" in text
                        ev["source"] = ("hot standby" if "hot standby copy" in text
                                        else "own replica" if "this node's replica" in text
                                        else "read directly" if "read directly" in text else "fetched")
                        m = re.search(r"(\d+) KiB copied into the first stage", text)
                        if m:
                            ev["stage_copied_kib"] = int(m.group(1))
                    m = re.match(r"group kv runs here .*provisioned in (\d+) us, segments loaded in (\d+) us", text)
                    if b == target and m:
                        ev.setdefault("running", ts)
                        ev["provision_us"], ev["load_us"] = int(m.group(1)), int(m.group(2))
            promoted = ev.pop("promoted", False)
            instance = ev.pop("instance", False)
            source = ev.pop("source", "?") + (", standby instance" if instance else "")
            stage_kib = ev.pop("stage_copied_kib", None)  # own replica: what its first stage lacked
            if len(ev) < 6:
                print(f"  round {r}: events missing (found only {sorted(ev)}), skipped", file=sys.stderr)
                if args.kill_blade:
                    restart_blade(batonctl, chassis, node, BLADES)
                continue
            rows.append({
                "detection": (ev["detected"] - t_kill) * 1e3,
                "decision": (ev["decided"] - ev["detected"]) * 1e3,
                "dispatch": (ev["heard"] - ev["decided"]) * 1e3,
                "provision": ev["provision_us"] / 1e3,
                "load": ev["load_us"] / 1e3,
                "start": (ready - ev["heard"]) * 1e3 - (ev["provision_us"] + ev["load_us"]) / 1e3,
                "total": (ready - t_kill) * 1e3,
                "promoted": promoted and (instance or not args.standby_instances),
            })
            open_ms = float(line.group(2))  # of the start: the application's open alone
            print(json.dumps({"size_kib": size_kib, "round": r, "source": source,
                              **{k: round(v, 2) for k, v in rows[-1].items() if k != "promoted"},
                              "open": round(open_ms, 2),
                              **({"stage_copied_kib": stage_kib} if stage_kib is not None else {})}),
                  file=sys.stderr)
            if args.kill_blade:
                restart_blade(batonctl, chassis, node, BLADES)
    finally:
        if args.keep:  # the blades' logs (chassis down removes its directory)
            subprocess.run(f"cp {chassis}/*.log {work}/", shell=True, capture_output=True)
        subprocess.run([batonctl, "chassis", "down", "--dir", chassis], capture_output=True)
        subprocess.run(["pkill", "-KILL", "-f", f"baton-kv --socket {chassis}/"], capture_output=True)
        if args.keep:
            print(f"kept: {work} (the blades' logs: blade*.log there)", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", work])
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", default="build")
    p.add_argument("--keep", action="store_true", help="keep the chassis directory (the blades' logs) afterwards")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sizes-kib", default="4,256,65536")
    p.add_argument("--standby", action="store_true", help="blades 3 and 4 keep hot standbys of the segment")
    p.add_argument("--transport", default="memif", help="memif (default), shm or mixed")
    p.add_argument("--memif-zero-copy", action="store_true",
                   help="memif links' client ends in zero-copy mode (default: copy mode at both ends)")
    p.add_argument("--stream-fetches", action="store_true",
                   help="shm links: stream fetches through the rings instead of reading lent slots directly")
    p.add_argument("--standby-instances", action="store_true",
                   help="blades 3 and 4 keep hot standbys and a waiting instance of the application")
    p.add_argument("--provision", choices=["mkdir", "none"], default="mkdir",
                   help="the group's provision hook: mkdir (a shell and mkdir, the default) or none")
    p.add_argument("--app-heap-mib", type=int, default=0,
                   help="the application also holds this much private memory (baton-kv --heap-mib)")
    p.add_argument("--no-liveness", action="store_true",
                   help="batond watches the application's pidfd only (BATON_LIVENESS=0), not its liveness lock")
    p.add_argument("--blades", type=int, default=4, help="blades in the chassis (2..16; default 4)")
    p.add_argument("--retain", type=int, default=0,
                   help="older generations each replica keeps (chassis up --retain; with 1 or more a load from "
                        "its own replica takes a spare slot as its second stage)")
    p.add_argument("--spin", action="store_true",
                   help="chassis up --spin: workers never sleep, blade N pinned to CPU N-1 (a CPU per blade)")
    p.add_argument("--kill-blade", action="store_true",
                   help="SIGKILL the batond of the blade the group runs on (its application ends with it), "
                        "not the application alone; the blade restarts after each round")
    args = p.parse_args()
    global BLADES
    BLADES = args.blades
    phases = ["detection", "decision", "dispatch", "provision", "load", "start", "total"]
    print("| segment | " + " | ".join(phases) + " | spawn /bin/true | read the state from /dev/shm | total / (spawn + read) |")
    print("|---" * (len(phases) + 4) + "|")
    for kib in (int(x) for x in args.sizes_kib.split(",")):
        try:
            rows = run_size(args, kib)
        except TimeoutError as e:  # wait()'s or restart_blade's, after run_size took the chassis down
            raise SystemExit(f"failover_bench: timed out waiting for {e}")
        if args.standby or args.standby_instances:
            # Only the failovers that went to a standby and took its copy
            # over (once both standbys failed, one goes to another node).
            rows = [r for r in rows if r["promoted"]]
        if not rows:
            print(f"| {kib} KiB | no complete round |")
            continue
        spawn, read = baselines(kib * 1024)
        med = {k: statistics.median(r[k] for r in rows) for k in phases}
        cells = " | ".join(f"{med[k]:.1f}" for k in phases)
        size = f"{kib // 1024} MiB" if kib >= 1024 else f"{kib} KiB"
        if args.standby_instances:
            size += ", standby instance"
        elif args.standby:
            size += ", hot standby"
        print(f"| {size} ({len(rows)} rounds) | {cells} | {spawn:.2f} | {read:.2f} | {med['total'] / (spawn + read):.1f} |")


if __name__ == "__main__":
    main()
