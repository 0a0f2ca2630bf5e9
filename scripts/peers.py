#!/usr/bin/env python3
"""Measure the peers ringtrain is compared against, on this machine, and plot GEMM results.

This is a measurement script, not a test. It is not run by CI.

Install (tested; only PyPI is reachable, so torch is the CUDA wheel, ~4 GB, ~1 min):

    pip install -r scripts/requirements-peers.txt
    # equivalently: pip install numpy==2.4.6 threadpoolctl==3.8.0 matplotlib==3.11.2 torch==2.15.0
    # (`pip install --no-deps torch` does not work: import fails on libcudart.so.13)

Measure (OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE must be unset: they make current OpenBLAS slower):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 scripts/peers.py --out docs/bench/peers.json

Plot ours vs peers (ours.json is written by hand from criterion results,
schema {"gemm": [{"n": 256, "gflops": 123.4}, ...]}):

    python3 scripts/peers.py --plot --ours ours.json --peers docs/bench/peers.json \
        --svg docs/bench/gemm.svg

What is measured:
  1. numpy (its bundled OpenBLAS) SGEMM, float32, C = A @ B, square n x n, one thread
     (threadpoolctl.threadpool_limits(1)). GFLOP/s = 2 n^3 / best time; also median.
     -> "gemm" (same schema as ours) plus "blas" (OpenBLAS version / core type in use).
  2. torch.mm SGEMM, same sizes, torch.set_num_threads(1) (MKL) -> "gemm_torch".
  3. PyTorch CPU training step of an MLP 784-512-256-10 (ReLU), batch 128, SGD lr 0.01
     momentum 0.9, cross-entropy, random inputs/labels (fixed seed), at 1 and 2 threads
     -> "mlp": samples/s and ms/step (best and median of several timed runs).

The machine should be otherwise idle: CPU use by others is sampled (/proc/stat) before measuring,
recorded as host.cpu_busy_before (warning above 10%); CPU time used by other processes during
the run is recorded as host.others_cpu_s (warning above 5% of the elapsed time).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

SIZES = [256, 512, 1024, 1536, 2048]
OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def warn(msg):
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- machine info

def cpu_info():
    info = {"machine": platform.machine(), "nproc": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        for line in text.splitlines():
            key, _, val = line.partition(":")
            key, val = key.strip(), val.strip()
            if key == "model name" and "model_name" not in info:
                info["model_name"] = val
            elif key == "cpu family" and "cpu_family" not in info:
                info["cpu_family"] = val
            elif key == "model" and "model" not in info:
                info["model"] = val
            elif key == "flags" and "flags" not in info:
                flags = set(val.split())
                info["flags"] = sorted(f for f in flags
                                       if f in ("avx", "avx2", "fma") or f.startswith("avx512"))
    except OSError:
        pass
    return info


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _stat_snap():
    """(total, idle) jiffies summed over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return sum(v[:8]), idle


class OthersMeter:
    """CPU seconds used by other processes between start() and stop():
    all busy CPU time on the machine minus this process's own CPU time."""

    def start(self):
        try:
            self.t0, self.i0 = _stat_snap()
        except (OSError, ValueError, IndexError):
            self.t0 = None
        self.own0 = time.process_time()
        self.wall0 = time.perf_counter()

    def stop(self):
        if self.t0 is None:
            return None
        t1, i1 = _stat_snap()
        hz = os.sysconf("SC_CLK_TCK")
        busy_s = ((t1 - self.t0) - (i1 - self.i0)) / hz
        others = max(0.0, busy_s - (time.process_time() - self.own0))
        return {"others_cpu_s": round(others, 2),
                "elapsed_s": round(time.perf_counter() - self.wall0, 1)}


def cpu_busy(interval=0.5):
    """Fraction of all CPUs busy (by anything) over `interval` seconds, from /proc/stat."""
    snap = _stat_snap
    try:
        t0, i0 = snap()
        time.sleep(interval)
        t1, i1 = snap()
    except (OSError, ValueError, IndexError):
        return None
    return round(1.0 - (i1 - i0) / max(t1 - t0, 1), 3)


def check_idle(wait_s=0.0):
    """Warn when something else is using the CPU before we start measuring.

    With wait_s > 0, first wait up to wait_s seconds for the CPUs to become idle."""
    busy = cpu_busy()
    deadline = time.monotonic() + wait_s
    while busy is not None and busy > 0.1 and time.monotonic() < deadline:
        busy = cpu_busy(1.0)
    if busy is not None and busy > 0.1:
        warn(f"{busy:.0%} of the CPUs busy before measuring: another process is running; "
             "numbers may be low/noisy")
    return busy


# --------------------------------------------------------------------------- timing helpers

def time_repeated(fn, min_time=0.5, min_reps=3, max_reps=5000, warmup=2):
    """Run fn() `warmup` times, then time single calls until min_time and min_reps are met."""
    for _ in range(warmup):
        fn()
    times = []
    total = 0.0
    while len(times) < max_reps and (len(times) < min_reps or total < min_time):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    return times


def gemm_row(n, times):
    flops = 2.0 * n ** 3
    best, med = min(times), statistics.median(times)
    return {"n": n, "gflops": flops / best / 1e9, "gflops_median": flops / med / 1e9,
            "best_ms": best * 1e3, "median_ms": med * 1e3, "reps": len(times)}


# --------------------------------------------------------------------------- 1. numpy/OpenBLAS

def bench_numpy(sizes, min_time):
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        blas = [
            {k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads",
                                   "threading_layer", "prefix", "filepath")}
            for d in threadpool_info() if d.get("user_api") == "blas"
        ]
        if not blas:
            warn("threadpoolctl found no BLAS library; numpy is not using a BLAS?")
        for b in blas:
            if b["num_threads"] != 1:
                warn(f"BLAS {b['prefix']} still has num_threads={b['num_threads']}")
        rng = np.random.default_rng(0)
        for n in sizes:
            a = rng.standard_normal((n, n), dtype=np.float32)
            b = rng.standard_normal((n, n), dtype=np.float32)
            c = np.empty((n, n), dtype=np.float32)
            times = time_repeated(lambda: np.matmul(a, b, out=c), min_time=min_time)
            rows.append(gemm_row(n, times))
            print(f"  numpy  n={n:5d}  {rows[-1]['gflops']:7.1f} GFLOP/s", flush=True)
    return {"numpy_version": np.__version__, "blas": blas, "gemm": rows}


# --------------------------------------------------------------------------- 2/3. torch

def bench_torch_gemm(torch, sizes, min_time):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    rows = []
    with torch.no_grad():
        for n in sizes:
            a = torch.randn(n, n, generator=g)
            b = torch.randn(n, n, generator=g)
            c = torch.empty(n, n)
            times = time_repeated(lambda: torch.mm(a, b, out=c), min_time=min_time)
            rows.append(gemm_row(n, times))
            print(f"  torch  n={n:5d}  {rows[-1]['gflops']:7.1f} GFLOP/s", flush=True)
    return rows


def mlp_model(nn):
    """ringtrain's zoo::mlp(784, [512, 256], 10)."""
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def cnn_model(nn):
    """ringtrain's zoo::Cnn::new((1, 28, 28), 10), layer for layer."""
    return nn.Sequential(nn.Unflatten(1, (1, 28, 28)),
                         nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def bench_torch_step(torch, name, make_model, threads, steps, trials, warmup, batch=128):
    nn = torch.nn
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = make_model(nn)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    nb = 8  # a small pool of distinct random batches, generated outside the timed loop
    xs = torch.randn(nb, batch, 784)
    ys = torch.randint(0, 10, (nb, batch))

    def step(i):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xs[i % nb]), ys[i % nb])
        loss.backward()
        opt.step()
        return loss

    for i in range(warmup):
        step(i)
    per_step = []
    for _ in range(trials):
        t0 = time.perf_counter()
        for i in range(steps):
            loss = step(i)
        last_loss = loss.item()
        per_step.append((time.perf_counter() - t0) / steps)
    best, med = min(per_step), statistics.median(per_step)
    row = {"threads": threads, "batch": batch, "steps": steps, "trials": trials,
           "ms_per_step": best * 1e3, "ms_per_step_median": med * 1e3,
           "samples_per_s": batch / best, "samples_per_s_median": batch / med,
           "final_loss": last_loss}
    print(f"  {name:6} threads={threads}  {row['samples_per_s']:9.0f} samples/s  "
          f"{row['ms_per_step']:6.3f} ms/step", flush=True)
    return row


def bench_torch(sizes, min_time, threads_list, steps, trials, warmup, models):
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - report any import failure, keep numpy results
        warn(f"torch unavailable ({e!r}); skipping torch measurements")
        return {"error": repr(e)}
    out = {"torch_version": torch.__version__,
           "torch_blas": "mkl" if torch.backends.mkl.is_available() else "unknown",
           "torch_mkldnn": torch.backends.mkldnn.is_available(),
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    out["gemm_torch"] = bench_torch_gemm(torch, sizes, min_time)
    makers = {"mlp": mlp_model, "cnn": cnn_model}
    for name in models:
        # A CNN step costs ~20x an MLP step: fewer steps per trial, same trials.
        n = steps if name == "mlp" else max(steps // 20, 5)
        out[name] = [bench_torch_step(torch, name, makers[name], t, n, trials, warmup)
                     for t in threads_list]
    return out


# --------------------------------------------------------------------------- measure CLI

def measure(args):
    bad = {k: os.environ[k] for k in OPENBLAS_ENV if k in os.environ}
    if bad:
        warn(f"{bad} set in the environment; current OpenBLAS is slower with these. Re-run as: "
             "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 scripts/peers.py ...")
    sizes = args.sizes
    result = {
        "schema": "ringtrain-peers/1",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpu": cpu_info(), "python": platform.python_version(),
                 "platform": platform.platform(), "openblas_env": bad,
                 "cpu_busy_before": check_idle(args.wait_idle), "loadavg_start": loadavg()},
    }
    cpu = result["host"]["cpu"]
    print(f"CPU: {cpu.get('model_name')} (family {cpu.get('cpu_family')} model "
          f"{cpu.get('model')}), SIMD flags: {' '.join(cpu.get('flags', []))}", flush=True)

    meter = OthersMeter()
    meter.start()
    np_res = bench_numpy(sizes, args.min_time)
    result["numpy_version"] = np_res["numpy_version"]
    result["blas"] = np_res["blas"]
    result["gemm"] = np_res["gemm"]
    if not args.no_torch:
        result.update(bench_torch(sizes, args.min_time, args.threads, args.steps, args.trials,
                                  args.warmup_steps, args.models))
    result["host"]["loadavg_end"] = loadavg()
    others = meter.stop() or {}
    result["host"].update(others)
    if others and others["others_cpu_s"] > 0.05 * others["elapsed_s"]:
        warn(f"other processes used {others['others_cpu_s']} CPU-s during the "
             f"{others['elapsed_s']} s run: numbers are probably low/noisy; re-run when idle")

    print_table(result)
    if args.out:
        d = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(d, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"wrote {args.out}")


def print_table(r):
    print()
    for b in r.get("blas", []):
        print(f"BLAS: {b['internal_api']} {b['version']}  core type/kernel: {b['architecture']}"
              f"  threads: {b['num_threads']}  ({os.path.basename(b['filepath'] or '')})")
    if "torch_version" in r:
        print(f"torch {r['torch_version']}  BLAS: {r['torch_blas']}  "
              f"cpu capability: {r['torch_cpu_capability']}")
    print()
    torch_by_n = {row["n"]: row for row in r.get("gemm_torch", [])}
    print("SGEMM 1 thread, GFLOP/s (best / median)")
    print(f"{'n':>6} | {'numpy/OpenBLAS':>17} | {'torch/MKL':>17}")
    for row in r["gemm"]:
        t = torch_by_n.get(row["n"])
        tcol = f"{t['gflops']:7.1f} / {t['gflops_median']:7.1f}" if t else f"{'-':>17}"
        print(f"{row['n']:>6} | {row['gflops']:7.1f} / {row['gflops_median']:7.1f} | {tcol}")
    titles = {"mlp": "PyTorch MLP 784-512-256-10", "cnn": "PyTorch CNN (ringtrain's zoo::Cnn)"}
    for name, title in titles.items():
        if not r.get(name):
            continue
        print()
        print(f"{title} train step, batch 128, SGD momentum (best / median)")
        print(f"{'threads':>7} | {'samples/s':>19} | {'ms/step':>15}")
        for m in r[name]:
            print(f"{m['threads']:>7} | {m['samples_per_s']:8.0f} / {m['samples_per_s_median']:8.0f}"
                  f" | {m['ms_per_step']:6.3f} / {m['ms_per_step_median']:6.3f}")
    h = r["host"]
    print(f"\nCPU busy before start: {h.get('cpu_busy_before')}   other processes' CPU-s "
          f"during run: {h.get('others_cpu_s')}   elapsed: {h.get('elapsed_s')} s")


# --------------------------------------------------------------------------- plot CLI

def gemm_series(rows):
    pts = []
    for row in rows or []:
        try:
            pts.append((int(row["n"]), float(row["gflops"])))
        except (KeyError, TypeError, ValueError):
            warn(f"skipping malformed gemm entry {row!r}")
    return sorted(pts)


def plot(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(args.ours) as f:
        ours = json.load(f)
    with open(args.peers) as f:
        peers = json.load(f)

    lines = [(args.ours_label, gemm_series(ours.get("gemm")), "o-")]
    blas = (peers.get("blas") or [{}])[0]
    np_label = "numpy / OpenBLAS"
    if blas.get("version"):
        np_label += f" {blas['version']} ({blas.get('architecture')})"
    lines.append((np_label, gemm_series(peers.get("gemm")), "s--"))
    if peers.get("gemm_torch"):
        lines.append((f"torch {peers.get('torch_version', '')} / MKL",
                      gemm_series(peers["gemm_torch"]), "^--"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    all_n = set()
    for label, pts, style in lines:
        if not pts:
            warn(f"no gemm data for {label!r}")
            continue
        ns, gf = zip(*pts)
        all_n.update(ns)
        ax.plot(ns, gf, style, label=label)
    ax.set_xlabel("n (square SGEMM, n x n x n)")
    ax.set_ylabel("GFLOP/s (single thread)")
    if all_n:
        ax.set_xticks(sorted(all_n))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    cpu = peers.get("host", {}).get("cpu", {}).get("model_name", "")
    ax.set_title(f"SGEMM float32, 1 thread{' - ' + cpu if cpu else ''}")
    ax.legend()
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(args.svg))
    os.makedirs(d, exist_ok=True)
    fig.savefig(args.svg, format="svg", metadata={"Date": None})  # reproducible file
    print(f"wrote {args.svg}")


# --------------------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="measure mode: write the peers JSON here")
    p.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="GEMM sizes n")
    p.add_argument("--min-time", type=float, default=0.5,
                   help="seconds of timed GEMM calls per size (at least 3 calls)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="torch thread counts for the MLP step")
    p.add_argument("--steps", type=int, default=200, help="MLP steps per timed trial")
    p.add_argument("--trials", type=int, default=5, help="MLP timed trials (best reported)")
    p.add_argument("--warmup-steps", type=int, default=20, help="MLP warm-up steps")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="first wait up to this long for other processes to leave the CPU idle")
    p.add_argument("--no-torch", action="store_true", help="skip the torch measurements")
    p.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"],
                   help="training steps to time with torch")
    p.add_argument("--plot", action="store_true", help="plot mode: draw an SVG from JSONs")
    p.add_argument("--ours", help="plot mode: our JSON ({'gemm': [{'n':..,'gflops':..}]})")
    p.add_argument("--ours-label", default="ringtrain", help="plot mode: legend for ours")
    p.add_argument("--peers", help="plot mode: the peers JSON written by measure mode")
    p.add_argument("--svg", help="plot mode: output SVG path")
    args = p.parse_args(argv)
    if args.plot:
        if not (args.ours and args.peers and args.svg):
            p.error("--plot needs --ours, --peers and --svg")
        plot(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
