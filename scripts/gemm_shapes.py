#!/usr/bin/env python3
"""SGEMM on the products a network's layers run, ringtrain beside numpy (OpenBLAS),
interleaved: each round times every shape with `examples/sgemm --shapes` and then with
numpy, with the same protocol (2 warm-up calls, then single calls until 0.5 s and 3 calls
have passed; best and median). Prints the table docs/BENCHMARKS.md records.

    cargo build --release --example sgemm
    python3 scripts/gemm_shapes.py --threads 1 --rounds 3   # the GPT's products (numpy needed)
    python3 scripts/gemm_shapes.py --shapes 128x512x784/nt,512x784x128/tn

A shape is MxNxK/ab: C (m x n) = op(A) op(B) with k the inner size, `a` and `b` each `n`
(row-major) or `t` (transposed), as a layer's forward (`/nt`: X W^T), input gradient
(`/nn`: G W) and weight gradient (`/tn`: G^T X) pass them.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# The small GPT of docs/BENCHMARKS.md (batch 16 x block 64 = 1024 rows, d_model 64,
# 4 d MLP, vocabulary 94) and the large one (1024 rows, d_model 384), each layer's
# forward, input gradient and weight gradient.
GPT = ",".join(
    f"{p}"
    for d, vocab in [(64, 94), (384, 94)]
    for out, inp in [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d), (vocab, d)]
    for p in (f"1024x{out}x{inp}/nt", f"1024x{inp}x{out}/nn", f"{out}x{inp}x1024/tn")
)


def parse(shape):
    dims, _, layout = shape.partition("/")
    m, n, k = (int(v) for v in dims.split("x"))
    layout = layout or "nn"
    return m, n, k, layout[0] == "t", layout[1] == "t"


def numpy_gflops(shapes, threads, min_time):
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    import numpy as np  # after the thread count is set

    rng = np.random.default_rng(0)
    out = {}
    for shape in shapes:
        m, n, k, ta, tb = parse(shape)
        a = rng.random((k, m) if ta else (m, k), dtype=np.float32)
        b = rng.random((n, k) if tb else (k, n), dtype=np.float32)
        a, b = (a.T if ta else a), (b.T if tb else b)
        out[shape] = gflops(lambda: a @ b, 2.0 * m * n * k, min_time)
    return out


def gflops(product, flops, min_time):
    """(best, median) GFLOP/s of `product()`: 2 warm-up calls, then calls until 3 and
    `min_time` seconds have been timed."""
    for _ in range(2):
        product()
    times, total = [], 0.0
    while len(times) < 3 or total < min_time:
        start = time.perf_counter()
        product()
        dt = time.perf_counter() - start
        times.append(dt)
        total += dt
    return (flops / min(times) / 1e9, flops / statistics.median(times) / 1e9)


def torch_gflops(shapes, threads, min_time, dtype):
    """torch.mm's GFLOP/s (best, median) in `dtype` ("bf16", "f16" or "f32"), timed as
    numpy_gflops times numpy's."""
    import torch

    torch.set_num_threads(threads)
    dt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    gen = torch.Generator().manual_seed(0)
    out = {}
    for shape in shapes:
        m, n, k, ta, tb = parse(shape)
        a = torch.rand((k, m) if ta else (m, k), generator=gen).to(dt)
        b = torch.rand((n, k) if tb else (k, n), generator=gen).to(dt)
        a, b = (a.T if ta else a), (b.T if tb else b)
        out[shape] = gflops(lambda: torch.mm(a, b), 2.0 * m * n * k, min_time)
    return out


def ringtrain_gflops(binary, shapes, threads, min_time):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sgemm.json")
        subprocess.run(
            [binary, "--threads", str(threads), "--min-time", str(min_time),
             "--shapes", ",".join(shapes), "--json-out", path],
            check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
            rows = json.load(f)["gemm"]
    out = {}
    for shape, row in zip(shapes, rows):
        out[shape] = (row["gflops"], row["gflops_median"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=GPT)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--binary", default="target/release/examples/sgemm")
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: cargo build --release --example sgemm")
    shapes = args.shapes.split(",")
    ours = {s: [] for s in shapes}
    peer = {s: [] for s in shapes}
    for r in range(args.rounds):
        for s, v in ringtrain_gflops(args.binary, shapes, args.threads, args.min_time).items():
            ours[s].append(v)
        # numpy in a fresh process per round, so its thread count is set before import.
        code = (
            "import json, sys; sys.path.insert(0, %r); import gemm_shapes as g; "
            "print(json.dumps(g.numpy_gflops(%r, %d, %r)))"
            % (os.path.dirname(os.path.abspath(__file__)), shapes, args.threads, args.min_time))
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"numpy run failed (is numpy installed for {sys.executable}?):\n{res.stderr}")
        for s, v in json.loads(res.stdout).items():
            peer[s].append(v)
        print(f"round {r + 1} of {args.rounds} done", file=sys.stderr)
    print(f"| product | ringtrain GFLOP/s | numpy GFLOP/s | ratio |  ({args.threads} thread(s), "
          f"median over {args.rounds} rounds of each run's best)")
    print("| --- | ---: | ---: | ---: |")
    for s in shapes:
        a = statistics.median(v[0] for v in ours[s])
        b = statistics.median(v[0] for v in peer[s])
        print(f"| {s} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
