#!/usr/bin/env python3
"""The GPT benchmark's table and plot from scripts/bench_gpt.sh's JSON lines: for each
shape and thread count, the median over rounds of each implementation's tokens/s, and
ringtrain's ratio to PyTorch. Writes <input>.svg beside the input; prints the table.

    python3 scripts/gpt_report.py docs/bench/gpt.jsonl
"""

import json
import statistics
import sys
from collections import defaultdict


def shape_name(s):
    return f"d{s['d_model']} L{s['layers']} H{s['heads']} T{s['block']} B{s['batch']}"


def main(path):
    runs = defaultdict(list)
    devices = {}
    for line in open(path):
        r = json.loads(line)
        impl = r["impl"] if "gpu" not in r.get("device", "") else "ringtrain-gpu"
        key = (shape_name(r["shape"]), r["threads"] if impl != "ringtrain-gpu" else 0, impl)
        runs[key].append(r["tokens_per_sec"])
        devices[impl] = r.get("device", r.get("version", ""))
    rows = []
    shapes = sorted({k[0] for k in runs}, key=lambda s: int(s.split()[0][1:]))
    print("| shape | threads | ringtrain tokens/s | PyTorch tokens/s | ringtrain / PyTorch |")
    print("| --- | --- | --- | --- | --- |")
    for shape in shapes:
        for threads in (1, 2):
            ours = runs.get((shape, threads, "ringtrain"))
            peer = runs.get((shape, threads, "pytorch"))
            if not ours or not peer:
                continue
            o, p = statistics.median(ours), statistics.median(peer)
            rows.append((shape, threads, o, p))
            print(f"| {shape} | {threads} | {o:,.0f} | {p:,.0f} | {o / p:.2f}x |")
    for (shape, _, impl), v in sorted(runs.items()):
        if impl == "ringtrain-gpu":
            print(f"| {shape} | {devices[impl]} | {statistics.median(v):,.0f} | | |")
    write_svg(path.rsplit(".", 1)[0] + ".svg", rows)


def write_svg(path, rows, target=1.2):
    """One bar per (shape, threads): ringtrain's tokens/s over PyTorch's, with lines at
    parity and at the target; the absolute figures are written under each bar."""
    if not rows:
        return
    w, h, pad, bar = 130 * len(rows) + 90, 340, 60, 60
    top = max(max(o / p for _, _, o, p in rows), target) * 1.2
    y = lambda v: h - pad - (h - 2 * pad) * v / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
             f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="13">GPT training step: ringtrain tokens/s / PyTorch tokens/s (CPU)</text>']
    for v, label, dash in [(1.0, "PyTorch", ""), (target, f"target {target}x", ' stroke-dasharray="4 3"')]:
        parts.append(f'<line x1="50" y1="{y(v):.1f}" x2="{w - 10}" y2="{y(v):.1f}" stroke="#888"{dash}/>')
        parts.append(f'<text x="{w - 12}" y="{y(v) - 3:.1f}" text-anchor="end" fill="#555">{label}</text>')
    for i, (shape, threads, o, p) in enumerate(rows):
        x = 70 + i * 130
        r = o / p
        parts.append(f'<rect x="{x}" y="{y(r):.1f}" width="{bar}" height="{h - pad - y(r):.1f}" fill="#1f77b4"/>')
        parts.append(f'<text x="{x + bar / 2}" y="{y(r) - 4:.1f}" text-anchor="middle" font-weight="bold">{r:.2f}x</text>')
        dims = " ".join(shape.split()[:2])
        parts.append(f'<text x="{x + bar / 2}" y="{h - pad + 14}" text-anchor="middle">{dims}, {threads} thread{"s" if threads > 1 else ""}</text>')
        parts.append(f'<text x="{x + bar / 2}" y="{h - pad + 28}" text-anchor="middle" fill="#555">{o:,.0f} vs {p:,.0f}</text>')
    parts.append(f'<line x1="50" y1="{h - pad}" x2="{w - 10}" y2="{h - pad}" stroke="black"/>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
