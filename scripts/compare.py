#!/usr/bin/env python3
"""ringtrain against its peers on this machine, in one command: SGEMM beside numpy
(OpenBLAS), and the MLP, CNN and GPT training steps beside PyTorch, at 1 thread and at
all threads. Runs are interleaved (each round runs every work, ours then the peer's, at
each thread count), so drift in the machine's speed touches both sides alike. Prints the
ratio table docs/BENCHMARKS.md records, headed with the commit and the machine, and
writes every run as a JSON line and the ratios as an SVG plot.

    cargo build --release --example sgemm --example step_bench
    python3 scripts/compare.py                       # ~4 minutes on 2 cores, 3 rounds
    python3 scripts/compare.py --rounds 5 --threads 1,2,4 --works cnn,gpt
    python3 scripts/compare.py --dtype bf16   # bf16 GEMM and steps against PyTorch's bf16

Needs numpy and torch (scripts/requirements-peers.txt; matplotlib for the plot) in the
Python that runs it. The machine should be otherwise idle: no builds running.

A ratio is ringtrain's throughput over the peer's (above 1: ringtrain is faster), taken
in each round from the two runs side by side; the table gives the median over rounds
and the range. With --dtype bf16 (or f16) the peer is PyTorch in that dtype (torch.mm on
bf16 tensors; training steps under torch.autocast), and each round also runs ringtrain
in f32, for a second table: ringtrain's bf16 over its own f32.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SGEMM_SIZES = [256, 512, 1024, 1536, 2048]
STEPS = {"mlp": ["--steps", "40"], "cnn": ["--steps", "20"], "gpt": ["--steps", "30"]}


def run_json(cmd, env=None):
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr}")
    return res.stdout


def sgemm_ours(binary, threads, min_time, dtype="f32"):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sgemm.json")
        run_json([binary, "--threads", str(threads), "--min-time", str(min_time),
                  "--sizes", ",".join(map(str, SGEMM_SIZES)), "--json-out", path,
                  "--dtype", dtype])
        with open(path) as f:
            rows = json.load(f)["gemm"]
    return {row["n"]: row["gflops"] for row in rows}


def sgemm_numpy(python, threads, min_time):
    # A fresh process, so that OpenBLAS's thread count is set before numpy loads it;
    # OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE make current OpenBLAS slower (BENCHMARKS.md).
    shapes = [f"{n}x{n}x{n}/nn" for n in SGEMM_SIZES]
    code = ("import json, sys; sys.path.insert(0, %r); import gemm_shapes as g; "
            "print(json.dumps(g.numpy_gflops(%r, %d, %r)))" % (HERE, shapes, threads, min_time))
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    out = json.loads(run_json([python, "-c", code], env=env))
    return {n: out[s][0] for n, s in zip(SGEMM_SIZES, shapes)}


def sgemm_torch(python, threads, min_time, dtype):
    shapes = [f"{n}x{n}x{n}/nn" for n in SGEMM_SIZES]
    code = ("import json, sys; sys.path.insert(0, %r); import gemm_shapes as g; "
            "print(json.dumps(g.torch_gflops(%r, %d, %r, %r)))"
            % (HERE, shapes, threads, min_time, dtype))
    out = json.loads(run_json([python, "-c", code]))
    return {n: out[s][0] for n, s in zip(SGEMM_SIZES, shapes)}


def step(cmd, work, threads, precision="f32"):
    line = json.loads(run_json(cmd + ["--model", work, "--threads", str(threads),
                                      "--precision", precision] + STEPS[work]))
    return line["samples_per_sec"], line


def machine():
    info = {"system": platform.platform(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
                                           "avx512_fp16", "amx_tile") if f in flags]
                break
    except OSError:
        info["cpu"] = platform.processor()
    return info


def commit():
    def git(*args):
        return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True).stdout
    rev = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return rev + ("-dirty" if git("status", "--porcelain", "--untracked-files=no").strip() else "")


def peer_versions(python):
    code = ("import json, numpy, torch; from numpy import __version__ as nv; "
            "import threadpoolctl as t\n"
            "blas = [i.get('version') for i in t.threadpool_info() if i.get('internal_api') == 'openblas']\n"
            "print(json.dumps({'numpy': nv, 'openblas': blas[0] if blas else None, "
            "'torch': torch.__version__}))")
    res = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:  # threadpoolctl is optional
        code = "import json, numpy, torch; print(json.dumps({'numpy': numpy.__version__, 'torch': torch.__version__}))"
        res = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"numpy and torch are needed in {python}:\n{res.stderr}")
    return json.loads(res.stdout)


def label(work):
    return f"SGEMM n = {work[6:]}" if work.startswith("sgemm-") else {
        "mlp": "MLP 784-512-256-10 step", "cnn": "CNN step (zoo::Cnn)",
        "gpt": "GPT step (d 64, 2 layers, block 64)"}[work]


def peer_name(work, dtype="f32"):
    if dtype != "f32":
        return f"torch.mm {dtype}" if work.startswith("sgemm-") else f"PyTorch autocast {dtype}"
    return "numpy/OpenBLAS" if work.startswith("sgemm-") else "PyTorch"


def ratio_table(ratios, works, threads, name):
    print("| work | against | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in threads) + " |")
    print("| --- | --- |" + " ---: |" * len(threads))
    for w in works:
        cells = []
        for t in threads:
            v = ratios.get((w, t))
            cells.append(f"{statistics.median(v):.2f}x ({min(v):.2f}-{max(v):.2f})" if v else "")
        print(f"| {label(w)} | {name(w)} | " + " | ".join(cells) + " |")


def report(rows, header, threads, svg):
    dtype = header.get("dtype", "f32")
    ratios = {}  # (work, threads) -> [per-round ratio]
    own = {}  # the same, ringtrain in `dtype` over ringtrain in f32
    by_round = {}
    for r in rows:
        by_round.setdefault((r["work"], r["threads"], r["round"]), {})[r["impl"]] = r["value"]
    for (work, t, _), pair in by_round.items():
        if "ringtrain" in pair and "peer" in pair:
            ratios.setdefault((work, t), []).append(pair["ringtrain"] / pair["peer"])
        if "ringtrain" in pair and "ringtrain-f32" in pair:
            own.setdefault((work, t), []).append(pair["ringtrain"] / pair["ringtrain-f32"])
    works = list(dict.fromkeys(r["work"] for r in rows))
    print()
    print(f"Commit {header['commit']}, {header['machine'].get('cpu', '?')} "
          f"({header['machine']['cpus']} CPUs; {', '.join(header['machine'].get('isa', []))}), "
          f"{header['date']}; peers: {', '.join(f'{k} {v}' for k, v in header['peers'].items() if v)}; "
          f"{header['rounds']} interleaved rounds; ringtrain in {dtype}. Ratio = ringtrain's "
          "throughput / the other's (median over rounds, range in brackets).")
    print()
    ratio_table(ratios, works, threads, lambda w: peer_name(w, dtype))
    if own:
        print()
        ratio_table(own, works, threads, lambda w: f"ringtrain f32")
    if svg:
        plot(ratios, works, threads, header, svg)


def plot(ratios, works, threads, header, svg):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(threads)
    for i, t in enumerate(threads):
        xs = [j + (i - (len(threads) - 1) / 2) * width for j in range(len(works))]
        meds = [statistics.median(ratios.get((w, t), [0])) for w in works]
        lo = [m - min(ratios.get((w, t), [0])) for w, m in zip(works, meds)]
        hi = [max(ratios.get((w, t), [0])) - m for w, m in zip(works, meds)]
        ax.bar(xs, meds, width, yerr=[lo, hi], capsize=3, label=f"{t} thread{'s' if t > 1 else ''}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(1.2, color="grey", linewidth=0.8, linestyle="--", label="1.2x")
    ax.set_xticks(range(len(works)))
    ax.set_xticklabels([label(w).replace(" step", "").replace("SGEMM ", "") for w in works],
                       rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("ringtrain / peer throughput")
    ax.set_title(f"ringtrain vs numpy (SGEMM) and PyTorch (steps), commit {header['commit']}",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(svg)
    print(f"wrote {svg}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}",
                    help="thread counts, comma-separated [default: 1 and all CPUs]")
    ap.add_argument("--works", default="sgemm,mlp,cnn,gpt",
                    help="any of sgemm, mlp, cnn, gpt, comma-separated")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per SGEMM size")
    ap.add_argument("--python", default=sys.executable, help="the Python with numpy and torch")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "examples"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench", "compare.jsonl"))
    ap.add_argument("--svg", default=os.path.join(ROOT, "docs", "bench", "compare.svg"))
    ap.add_argument("--report-only", action="store_true", help="re-print the table of --out")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"],
                    help="ringtrain's GEMM inputs and training precision, and the peer's")
    a = ap.parse_args()
    threads = sorted({int(t) for t in a.threads.split(",")})
    works = a.works.split(",")
    if a.report_only:
        with open(a.out) as f:
            lines = [json.loads(line) for line in f]
        header, rows = lines[0], lines[1:]
        report(rows, header, header["threads"], a.svg)
        return
    sgemm_bin = os.path.join(a.bin, "sgemm")
    step_bin = os.path.join(a.bin, "step_bench")
    for b in (sgemm_bin, step_bin):
        if not os.path.exists(b):
            sys.exit(f"{b} not found: cargo build --release --example sgemm --example step_bench")
    header = {"commit": commit(), "machine": machine(), "peers": peer_versions(a.python),
              "date": datetime.date.today().isoformat(), "rounds": a.rounds, "threads": threads,
              "dtype": a.dtype}
    half = a.dtype != "f32"
    rows = []
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp_out = a.out + ".tmp"
    with open(tmp_out, "w") as out:
        out.write(json.dumps(header) + "\n")

        def record(work, impl, t, rnd, value, detail=None):
            row = {"work": work, "impl": impl, "threads": t, "round": rnd, "value": value}
            if detail:
                row["detail"] = detail
            rows.append(row)
            out.write(json.dumps(row) + "\n")
            out.flush()

        for rnd in range(1, a.rounds + 1):
            for t in threads:
                for work in works:
                    if work == "sgemm":
                        ours = sgemm_ours(sgemm_bin, t, a.min_time, a.dtype)
                        if half:
                            peer = sgemm_torch(a.python, t, a.min_time, a.dtype)
                            f32 = sgemm_ours(sgemm_bin, t, a.min_time)
                        else:
                            peer = sgemm_numpy(a.python, t, a.min_time)
                        for n in SGEMM_SIZES:
                            record(f"sgemm-{n}", "ringtrain", t, rnd, ours[n])
                            record(f"sgemm-{n}", "peer", t, rnd, peer[n])
                            if half:
                                record(f"sgemm-{n}", "ringtrain-f32", t, rnd, f32[n])
                    elif work in STEPS:
                        v, d = step([step_bin], work, t, a.dtype)
                        record(work, "ringtrain", t, rnd, v, d)
                        peer_cmd = [a.python, os.path.join(HERE, "step_peer.py")]
                        v, d = step(peer_cmd, work, t, a.dtype)
                        record(work, "peer", t, rnd, v, d)
                        if half:
                            v, d = step([step_bin], work, t)
                            record(work, "ringtrain-f32", t, rnd, v, d)
                    else:
                        sys.exit(f"unknown work {work!r}: sgemm, mlp, cnn or gpt")
                    print(f"round {rnd}/{a.rounds}, {t} thread(s): {work} done", file=sys.stderr)
    os.replace(tmp_out, a.out)  # a run stopped halfway leaves the last complete file
    report(rows, header, threads, a.svg)


if __name__ == "__main__":
    main()
