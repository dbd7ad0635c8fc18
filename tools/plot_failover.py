#!/usr/bin/env python3
"""Plots failover_bench.py runs as an SVG: kill to serving, split into phases.

    python3 bench/failover/failover_bench.py --rounds 8 --sizes-kib 65536 --provision none 2> run1.txt
    tools/plot_failover.py "64 MiB, own replica=run1.txt" "64 MiB, standby instance=run2.txt" > docs/img/failover-phases.svg

Each argument is LABEL=FILE, FILE holding the bench's per-round JSON lines
(its standard error). One bar per argument: the median of each phase over
the rounds that loaded as the bar's most common source (a round that
fetched instead is another path), stacked; the total is the median of the
rounds' totals, so the segments need not add up to it exactly. A dashed
line marks each target passed with --target MS (repeatable).
"""
import json
import statistics
import sys

PHASES = [("detection", "#c33"), ("decision", "#e98b2a"), ("dispatch", "#d4b12a"),
          ("provision", "#7a7a7a"), ("load", "#4a7ebb"), ("start", "#5aa469")]


def load(path):
    rounds = []
    for line in open(path):
        line = line.strip()
        if line.startswith("{") and '"round"' in line:
            rounds.append(json.loads(line))
    if not rounds:
        sys.exit(f"plot_failover.py: no rounds in {path}")
    sources = [r.get("source", "?") for r in rounds]
    common = max(set(sources), key=sources.count)
    return [r for r in rounds if r.get("source", "?") == common]


def main(argv):
    targets, bars = [], []
    it = iter(argv)
    for a in it:
        if a == "--target":
            targets.append(float(next(it)))
            continue
        label, sep, path = a.partition("=")
        if not sep:
            sys.exit("usage: plot_failover.py [--target MS] LABEL=FILE...")
        rounds = load(path)
        phases = [(name, max(0.0, statistics.median(r[name] for r in rounds)), colour) for name, colour in PHASES]
        total = statistics.median(r["total"] for r in rounds)
        bars.append((f"{label} ({len(rounds)} rounds)", phases, total))
    if not bars:
        sys.exit("usage: plot_failover.py [--target MS] LABEL=FILE...")
    longest = max([max(t, sum(p[1] for p in ph)) for _, ph, t in bars] + targets)
    W, left, top, bh, gap = 760, 260, 62, 26, 18
    H = top + len(bars) * (bh + gap) + 60
    scale = (W - left - 70) / longest
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-size="14">Failover, SIGKILL to the application serving its state (ms, medians)</text>']
    step = 5 if longest <= 40 else 10 if longest <= 100 else 50
    axis_y = top + len(bars) * (bh + gap)
    for ms in range(0, int(longest) + step, step):
        x = left + ms * scale
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{axis_y}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle" font-size="10">{ms}</text>')
    for i, (label, phases, total) in enumerate(bars):
        y = top + i * (bh + gap)
        out.append(f'<text x="{left - 8}" y="{y + bh / 2 + 4}" text-anchor="end">{label}</text>')
        x = left
        for name, v, colour in phases:
            w = v * scale
            if w > 0:
                out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bh}" fill="{colour}"><title>{name} {v:.1f} ms</title></rect>')
            x += w
        end = max(total, sum(v for _, v, _ in phases))
        out.append(f'<text x="{left + end * scale + 6:.1f}" y="{y + bh / 2 + 4}" font-size="11">{total:.1f} ms</text>')
    for t in targets:
        x = left + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{top - 10}" x2="{x:.1f}" y2="{axis_y}" stroke="#333" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x:.1f}" y="{top - 14}" text-anchor="middle" font-size="10">target {t:g}</text>')
    lx = 10
    for name, colour in PHASES:
        out.append(f'<rect x="{lx}" y="{H - 22}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{lx + 16}" y="{H - 12}">{name}</text>')
        lx += 110
    out.append("</svg>")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
