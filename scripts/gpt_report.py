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


def write_svg(path, rows):
    """Grouped bars: ringtrain and PyTorch tokens/s, each group a (shape, threads)."""
    if not rows:
        return
    w, h, pad, bar = 120 * len(rows) + 80, 320, 50, 36
    top = max(max(o, p) for _, _, o, p in rows) * 1.15
    y = lambda v: h - pad - (h - 2 * pad) * v / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
             f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="13">GPT training step, tokens/s (higher is better)</text>']
    for i, (shape, threads, o, p) in enumerate(rows):
        x0 = 60 + i * 120
        for j, (v, colour) in enumerate([(o, "#1f77b4"), (p, "#ff7f0e")]):
            x = x0 + j * (bar + 4)
            parts.append(f'<rect x="{x}" y="{y(v):.1f}" width="{bar}" height="{h - pad - y(v):.1f}" fill="{colour}"/>')
            parts.append(f'<text x="{x + bar / 2}" y="{y(v) - 3:.1f}" text-anchor="middle">{v / 1000:.1f}k</text>')
        parts.append(f'<text x="{x0 + bar}" y="{h - pad + 14}" text-anchor="middle">{shape.split()[0]} {shape.split()[1]}</text>')
        parts.append(f'<text x="{x0 + bar}" y="{h - pad + 27}" text-anchor="middle">{threads} thread{"s" if threads > 1 else ""}: {o / p:.2f}x</text>')
    parts.append(f'<line x1="50" y1="{h - pad}" x2="{w - 10}" y2="{h - pad}" stroke="black"/>')
    parts.append(f'<rect x="{w - 170}" y="30" width="10" height="10" fill="#1f77b4"/><text x="{w - 155}" y="39">ringtrain (CPU)</text>')
    parts.append(f'<rect x="{w - 170}" y="46" width="10" height="10" fill="#ff7f0e"/><text x="{w - 155}" y="55">PyTorch (CPU)</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
