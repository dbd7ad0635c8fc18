#!/usr/bin/env python3
"""Plots baton-e2e runs as an SVG: each figure as a ratio to its same-run baseline.

    build/bench/baton-e2e > run1.txt   (repeat)
    tools/plot_e2e.py run1.txt run2.txt ... > docs/img/e2e-ratios.svg
"""
import json
import sys

def load(path):
    m = {}
    for line in open(path):
        if line.startswith("{"):
            j = json.loads(line)
            m[(j["metric"], j["subject"])] = j["value"]
    return m

runs = [load(p) for p in sys.argv[1:]]
if not runs:
    sys.exit("usage: plot_e2e.py RUN.txt...")
bars = [
    ("4 KiB p50", lambda r: r[("latency_p50", "baton_commit_4k")] / r[("latency_p50", "raw_memif_4k_ack")], 1.5),
    ("4 KiB p99", lambda r: r[("latency_p99", "baton_commit_4k")] / r[("latency_p99", "raw_memif_4k_ack")], 1.5),
    ("4 KiB p99.9", lambda r: r[("latency_p999", "baton_commit_4k")] / r[("latency_p999", "raw_memif_4k_ack")], None),
    ("64 MiB GB/s", lambda r: r[("throughput", "baton_commit")] / r[("throughput", "raw_memif")], 0.9),
]
W, H, left, top, bw = 640, 300, 60, 30, 110
scale = 60  # px per 1.0x
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<text x="{left}" y="18" font-size="14">Baton / raw memif, same run (lower is better for latency, higher for GB/s)</text>']
base = top + 4 * scale
for k in range(5):
    y = base - k * scale
    out.append(f'<line x1="{left}" y1="{y}" x2="{W-10}" y2="{y}" stroke="#ddd"/>')
    out.append(f'<text x="{left-8}" y="{y+4}" text-anchor="end">{k}.0x</text>')
for i, (label, f, target) in enumerate(bars):
    x0 = left + 20 + i * (bw + 30)
    vals = [f(r) for r in runs]
    w = bw / len(vals)
    for j, v in enumerate(vals):
        h = min(v, 4.2) * scale
        colour = "#4a7ebb" if label.startswith("4 KiB") else "#5aa05a"
        out.append(f'<rect x="{x0 + j*w:.1f}" y="{base-h:.1f}" width="{w-3:.1f}" height="{h:.1f}" fill="{colour}"/>')
        out.append(f'<text x="{x0 + j*w + w/2:.1f}" y="{base-h-4:.1f}" text-anchor="middle" font-size="10">{v:.2f}</text>')
    if target is not None:
        ty = base - target * scale
        out.append(f'<line x1="{x0-4}" y1="{ty}" x2="{x0+bw+4}" y2="{ty}" stroke="#c33" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{x0+bw/2}" y="{base+16}" text-anchor="middle">{label}</text>')
out.append(f'<text x="{left}" y="{H-8}" font-size="10" fill="#c33">dashed: target from the issue</text>')
out.append("</svg>")
print("\n".join(out))
