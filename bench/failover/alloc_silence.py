#!/usr/bin/env python3
"""Do large segments, made and deleted, silence a chassis's links?

    python3 bench/failover/alloc_silence.py [--build build] [--mib 512] [--rounds 6] [--batches 1]

A 3-blade memif chassis (replication factor 2: every blade allocates). A
client on blade 1 (baton-kv) makes a segment of --mib MiB, commits it
--batches times (the first whole, the others deltas: a few slots each) and
ends; batonctl deletes it; --rounds times, 0.6 s apart. Meanwhile the
links of blades 1 and 2 are polled (`batonctl status --json`, every few
ms): the longest silence each saw from each peer. Printed with the "node N
down" events blade 2 logged (a silence past the failure detector's
timeout makes the view drop a live node), and each blade's own count of
gaps between its data path's polls.
"""
import argparse
import json
import os
import subprocess
import tempfile
import threading
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", default="build")
    p.add_argument("--mib", type=int, default=512)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--batches", type=int, default=1)
    a = p.parse_args()
    build = os.path.abspath(a.build)
    ctl, kv = f"{build}/tools/batonctl", f"{build}/tools/baton-kv"
    d = tempfile.mkdtemp(prefix="baton-silence-") + "/chassis"
    subprocess.run([ctl, "chassis", "up", "--blades", "3", "--dir", d], check=True, capture_output=True)
    worst, stop = {}, threading.Event()

    def poll():
        while not stop.is_set():
            for b in (1, 2):
                try:
                    out = subprocess.run([ctl, "status", "--json", "--socket", f"{d}/blade{b}.sock"],
                                         capture_output=True, text=True, timeout=5).stdout
                    for link in json.loads(out)["links"]:
                        k = f"{b}<-{link['peer']}"
                        worst[k] = max(worst.get(k, 0), link["silent_ms"])
                except (subprocess.TimeoutExpired, ValueError, KeyError):
                    pass
            time.sleep(0.003)

    try:
        t = threading.Thread(target=poll)
        t.start()
        time.sleep(1)
        idle = max(worst.values(), default=0)
        worst.clear()
        t0 = time.time()
        for r in range(a.rounds):
            subprocess.run([kv, "--socket", f"{d}/blade1.sock", "--name", f"big{r}", "--size-kib", str(a.mib * 1024),
                            "--batches", str(a.batches), "--every-ms", "1"], capture_output=True, timeout=300)
            subprocess.run([ctl, "delete", "--socket", f"{d}/blade1.sock", f"big{r}"], capture_output=True, timeout=60)
            time.sleep(0.6)
        stop.set()
        t.join()
        events = subprocess.run([ctl, "events", "--socket", f"{d}/blade2.sock"], capture_output=True, text=True).stdout
        down = [e for e in events.splitlines() if " down (silent for " in e]
        print(f"idle: longest silence {idle} ms; {a.rounds} x {a.mib} MiB made ({a.batches} commits) and deleted in {time.time() - t0:.1f} s: "
              f"longest silence (blade<-peer, ms) {dict(sorted(worst.items()))}; 'node down' events on blade 2: {len(down)}")
        for e in down:
            print("  ", e)
        # Each blade's own view: gaps between its data path's polls longer
        # than half the failure timeout (its log says when: "no poll for").
        for b in (1, 2, 3):
            node = json.loads(subprocess.run([ctl, "status", "--json", "--socket", f"{d}/blade{b}.sock"],
                                             capture_output=True, text=True).stdout)["node"]
            print(f"   blade {b}: {node['stalls']} poll gaps past half the failure timeout, "
                  f"longest {node['longest_stall_ms']} ms")
    finally:
        stop.set()
        subprocess.run([ctl, "chassis", "down", "--dir", d], capture_output=True)
        subprocess.run(["rm", "-rf", os.path.dirname(d)])


if __name__ == "__main__":
    main()
