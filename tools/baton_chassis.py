"""What the Python tools that drive a chassis on this machine share
(tools/failover_campaign.py, bench/failover/failover_bench.py): running
batonctl, waiting for a condition, reading a blade's events, finding the
blade a service group runs on, and restarting a blade until the others
have heard it.

A chassis is what `batonctl chassis up --dir DIR` made: blade N's batond
listens on DIR/bladeN.sock and its pid is in DIR/bladeN.pid.
"""
import json
import subprocess
import time


def sh(*args, **kw):
    """Runs a command and returns its stdout; a non-zero exit raises."""
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def wait(pred, timeout=30.0, what="condition", every=0.01):
    """pred()'s first true value within `timeout` seconds, looked at every
    `every` seconds; TimeoutError(what) if none came."""
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise TimeoutError(what)


def sock(chassis, blade):
    return f"{chassis}/blade{blade}.sock"


def events(batonctl, chassis, blade):
    """Blade `blade`'s events: (unix seconds, text), oldest first."""
    out = sh(batonctl, "events", "--json", "--socket", sock(chassis, blade))
    return [(e["unix_us"] / 1e6, e["event"]) for e in json.loads(out)]


def group_node(batonctl, chassis, blades, skip=()):
    """The node the chassis' first service group runs on, as the first live
    blade that answers says (blades 1..`blades`, those in `skip` not
    asked: their batond is down), or None while it runs nowhere."""
    for b in range(1, blades + 1):
        if b in skip:
            continue
        try:
            out = sh(batonctl, "groups", "--json", "--socket", sock(chassis, b), timeout=5)
            g = json.loads(out)["groups"][0]
            if g["state"] == "running":
                return g["node"]
        except Exception:  # down, stopped, restarting: ask the next
            pass
    return None


def restart_blade(batonctl, chassis, node, blades, skip=(), timeout=30.0):
    """Restarts blade `node` (empty: `batonctl chassis restart`) and waits
    until every other live blade has heard it come up."""
    t = time.time()
    sh(batonctl, "chassis", "restart", "--blade", str(node), "--dir", chassis)
    others = [b for b in range(1, blades + 1) if b != node and b not in skip]
    wait(lambda: all(any(ts >= t and text.startswith(f"node {node} up") for ts, text in events(batonctl, chassis, b))
                     for b in others),
         timeout, f"blade {node} to rejoin")
