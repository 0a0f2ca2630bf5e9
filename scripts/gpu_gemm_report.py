#!/usr/bin/env python3
"""Combine interleaved rounds of examples/gpu_gemm (ringtrain's WGSL GEMM) and
bench/burn-matmul (burn's wgpu matmul) into docs/bench/gpu_gemm.json, a markdown table
(printed) and docs/bench/gpu_gemm.svg. A measurement script, not a test; CI does not run
it. scripts/bench_gpu.sh runs both programs in rounds and then this:

    python3 scripts/gpu_gemm_report.py --ours R1.json R2.json .. --burn B1.json B2.json .. \
        --out docs/bench

Both programs write the same schema: {library, adapter, calls_per_sample,
gemm: [{n, gflops, gflops_median, best_ms, median_ms, samples, ...}]}. Across rounds the
best of the best times and the median of the medians are kept, as bench_report.py does
for the CPU figures.
"""

import argparse
import json
import os
import statistics


def load(paths):
    reports = []
    for p in paths:
        with open(p) as f:
            reports.append(json.load(f))
    return reports


def combine(reports):
    """{n: (best_gflops, median_gflops)} over rounds, plus the library and adapter."""
    by_n = {}
    for r in reports:
        for row in r["gemm"]:
            by_n.setdefault(row["n"], []).append(row)
    out = {}
    for n, rows in sorted(by_n.items()):
        best = max(row["gflops"] for row in rows)
        median = statistics.median(row["gflops_median"] for row in rows)
        out[n] = (best, median)
    adapters = sorted({r["adapter"] for r in reports})
    return {"library": reports[0]["library"], "adapters": adapters, "gemm": out}


def table(ours, burn):
    lines = [
        f"| n | {ours['library']} best | median | {burn['library']} best | median | ratio (best) | ratio (median) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, (ob, om) in ours["gemm"].items():
        if n not in burn["gemm"]:
            continue
        bb, bm = burn["gemm"][n]
        lines.append(f"| {n} | {ob:.2f} | {om:.2f} | {bb:.2f} | {bm:.2f} | {ob / bb:.2f} | {om / bm:.2f} |")
    return "\n".join(lines)


def plot(ours, burn, svg):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for lib, style in ((ours, "o-"), (burn, "s--")):
        ns = list(lib["gemm"])
        ax.plot(ns, [lib["gemm"][n][0] for n in ns], style, label=f"{lib['library']} (best)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n (C = A B, square, f32)")
    ax.set_ylabel("GFLOP/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"GEMM on {', '.join(ours['adapters'])}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(svg, format="svg", metadata={"Date": None})
    print(f"wrote {svg}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ours", nargs="+", required=True, help="gpu_gemm --json-out files")
    ap.add_argument("--burn", nargs="+", required=True, help="burn-matmul --json-out files")
    ap.add_argument("--out", required=True, help="directory for gpu_gemm.json and gpu_gemm.svg")
    args = ap.parse_args()
    ours, burn = combine(load(args.ours)), combine(load(args.burn))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_gemm.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"ours": ours, "burn": burn}, f, indent=1)
    os.replace(path + ".tmp", path)
    print(table(ours, burn))
    plot(ours, burn, os.path.join(args.out, "gpu_gemm.svg"))


if __name__ == "__main__":
    main()
