#!/usr/bin/env python3
"""Turn criterion results and peers JSONs into docs/bench/: ours.json, peers.json, a
markdown table of ratios (printed), and SVG plots. A measurement script, not a test; CI
does not run it. scripts/bench_all.sh runs it after interleaved rounds of measurements:

    python3 scripts/bench_report.py --criterion R1/criterion R2/criterion .. \
        --peers R1/peers.json R2/peers.json .. --out docs/bench

Reads the benches of benches/gemm.rs (group sgemm/<isa>/1t) and benches/train_step.rs
(group mlp_train_step/<isa>, ids 1t, 2t). Within a round, "best" is the fastest
per-iteration time over criterion's samples and "median" the median, as scripts/peers.py
reports them. Across rounds, the best of the bests and the median of the medians are kept,
for ours and the peers alike: on a shared (virtual) machine, the best of interleaved
rounds is the figure least disturbed by neighbours.
"""

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def samples(path):
    """Per-iteration seconds of every criterion sample in `path/new/sample.json`."""
    with open(os.path.join(path, "new", "sample.json")) as f:
        s = json.load(f)
    return [t / i * 1e-9 for t, i in zip(s["times"], s["iters"])]


def find_group(root, prefix):
    groups = sorted(d for d in os.listdir(root) if d.startswith(prefix))
    if not groups:
        sys.exit(f"no criterion group {prefix}* under {root}: run the benches first")
    return os.path.join(root, groups[0]), groups[0][len(prefix):]


def ours_from_criterion(root):
    gemm_dir, isa = find_group(root, "sgemm_")
    isa = isa.rsplit("_", 1)[0]
    gemm = []
    for n in sorted((int(d) for d in os.listdir(gemm_dir) if d.isdigit())):
        t = samples(os.path.join(gemm_dir, str(n)))
        flops = 2.0 * n ** 3
        gemm.append({"n": n, "gflops": flops / min(t) / 1e9,
                     "gflops_median": flops / statistics.median(t) / 1e9})
    mlp_dir, _ = find_group(root, "mlp_train_step_")
    mlp = []
    for d in sorted(os.listdir(mlp_dir)):
        if d.endswith("t") and d[:-1].isdigit():
            t = samples(os.path.join(mlp_dir, d))
            mlp.append({"threads": int(d[:-1]), "batch": 128,
                        "samples_per_s": 128 / min(t),
                        "samples_per_s_median": 128 / statistics.median(t)})
    return {"isa": isa, "gemm": gemm, "mlp": mlp}


def combine(rounds, key, id_key, best, median):
    """Best of bests and median of medians of the `key` rows of several rounds."""
    by_id = {}
    for r in rounds:
        for row in r.get(key, []):
            by_id.setdefault(row[id_key], []).append(row)
    out = []
    for ident in sorted(by_id):
        rows = by_id[ident]
        merged = dict(rows[0])
        merged[best] = max(x[best] for x in rows)
        merged[median] = statistics.median(x[median] for x in rows)
        merged["rounds"] = len(rows)
        out.append(merged)
    return out


def combine_rounds(rounds):
    merged = dict(rounds[0])
    merged["gemm"] = combine(rounds, "gemm", "n", "gflops", "gflops_median")
    merged["mlp"] = combine(rounds, "mlp", "threads", "samples_per_s", "samples_per_s_median")
    if any("gemm_torch" in r for r in rounds):
        merged["gemm_torch"] = combine(rounds, "gemm_torch", "n", "gflops", "gflops_median")
    return merged


def table(ours, peers):
    rows = ["| n | ringtrain best / median | OpenBLAS best / median | ratio (best, median) |",
            "| ---: | ---: | ---: | ---: |"]
    theirs = {r["n"]: r for r in peers.get("gemm", [])}
    for r in ours["gemm"]:
        p = theirs.get(r["n"])
        if not p:
            continue
        rows.append(f"| {r['n']} | {r['gflops']:.1f} / {r['gflops_median']:.1f} | "
                    f"{p['gflops']:.1f} / {p['gflops_median']:.1f} | "
                    f"{r['gflops'] / p['gflops']:.2f}, {r['gflops_median'] / p['gflops_median']:.2f} |")
    rows += ["", "| threads | ringtrain samples/s best / median | PyTorch best / median | ratio (best, median) |",
             "| ---: | ---: | ---: | ---: |"]
    torch = {r["threads"]: r for r in peers.get("mlp", [])}
    for r in ours["mlp"]:
        p = torch.get(r["threads"])
        if not p:
            continue
        rows.append(f"| {r['threads']} | {r['samples_per_s']:.0f} / {r['samples_per_s_median']:.0f} | "
                    f"{p['samples_per_s']:.0f} / {p['samples_per_s_median']:.0f} | "
                    f"{r['samples_per_s'] / p['samples_per_s']:.2f}, "
                    f"{r['samples_per_s_median'] / p['samples_per_s_median']:.2f} |")
    return "\n".join(rows)


def plot_mlp(ours, peers, svg):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    torch = {r["threads"]: r for r in peers.get("mlp", [])}
    threads = [r["threads"] for r in ours["mlp"] if r["threads"] in torch]
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.38
    xs = range(len(threads))
    ax.bar([x - width / 2 for x in xs], [r["samples_per_s_median"] for r in ours["mlp"] if r["threads"] in torch],
           width, label=f"ringtrain ({ours['isa']})")
    ax.bar([x + width / 2 for x in xs], [torch[t]["samples_per_s_median"] for t in threads],
           width, label=f"PyTorch {peers.get('torch_version', '')}")
    ax.set_xticks(list(xs), [f"{t} thread{'s' if t > 1 else ''}" for t in threads])
    ax.set_ylabel("samples/s (median)")
    ax.set_title("MLP training step (784-512-256-10, batch 128, SGD momentum)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(svg, format=os.path.splitext(svg)[1][1:] or "svg", metadata={"Date": None} if svg.endswith(".svg") else None)
    print(f"wrote {svg}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criterion", nargs="+", default=["target/criterion"])
    ap.add_argument("--peers", nargs="+", default=["docs/bench/peers.json"])
    ap.add_argument("--out", default="docs/bench")
    args = ap.parse_args()
    ours = combine_rounds([ours_from_criterion(d) for d in args.criterion])
    peer_rounds = []
    for path in args.peers:
        with open(path) as f:
            peer_rounds.append(json.load(f))
    peers = combine_rounds(peer_rounds)
    os.makedirs(args.out, exist_ok=True)
    paths = {}
    for name, data in (("ours", ours), ("peers", peers)):
        paths[name] = os.path.join(args.out, f"{name}.json")
        with open(paths[name] + ".tmp", "w") as f:
            json.dump(data, f, indent=1)
        os.replace(paths[name] + ".tmp", paths[name])
    print(f"rounds: {len(args.criterion)} of ours, {len(args.peers)} of the peers")
    print(table(ours, peers))
    import peers as peers_mod
    peers_mod.plot(argparse.Namespace(ours=paths["ours"], ours_label=f"ringtrain ({ours['isa']})",
                                      peers=paths["peers"], svg=os.path.join(args.out, "gemm.svg")))
    plot_mlp(ours, peers, os.path.join(args.out, "mlp.svg"))


if __name__ == "__main__":
    main()
