#!/usr/bin/env python3
"""Plot `cargo run --release --example allreduce -- --json-out FILE` as
docs/bench/allreduce.svg (bus bandwidth against message size, one line per group size,
ring solid and the naive gather-then-broadcast baseline dashed, memcpy dotted) and print
the table for docs/BENCHMARKS.md. A measurement script, not a test; CI does not run it.

    python3 scripts/allreduce_report.py FILE --out docs/bench

With the JSON files of `mpirun -np N ... allreduce --mpi --json-out FILE` (one per N),
`--mpi` plots docs/bench/allreduce_mpi.svg instead: MPI_Allreduce, ringtrain's ring over
MPI and its MPI_Iallreduce mode, one colour per process count.

    python3 scripts/allreduce_report.py --mpi ar-mpi-2.json ar-mpi-4.json --out docs/bench
"""

import argparse
import json
import os
import shutil


def human(b):
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if b >= 1 << shift and b % (1 << shift) == 0:
            return f"{b >> shift}{unit}"
    return str(b)


def table(report):
    lines = [
        "| peers | size | ring us | ring busbw GB/s | naive us | naive busbw GB/s | ring / naive | memcpy GB/s | ring busbw / memcpy |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        naive_t = r.get("baseline_time_us")
        naive = f"{naive_t:.1f} | {r['baseline_busbw_gbs']:.2f} | {naive_t / r['ring_time_us']:.2f}x" if naive_t else "- | - | -"
        lines.append(
            f"| {r['peers']} | {human(r['bytes'])} | {r['ring_time_us']:.1f} | {r['ring_busbw_gbs']:.2f} | "
            f"{naive} | {r['memcpy_gbs']:.2f} | {r['ring_busbw_gbs'] / r['memcpy_gbs']:.2f} |"
        )
    return "\n".join(lines)


def plot(report, svg):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    peers = sorted({r["peers"] for r in report["rows"]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, n in enumerate(peers):
        rows = [r for r in report["rows"] if r["peers"] == n]
        sizes = [r["bytes"] for r in rows]
        ax.plot(sizes, [r["ring_busbw_gbs"] for r in rows], "o-", color=colors[i], label=f"ring, {n} peers")
        if rows[0].get("baseline_busbw_gbs") is not None:
            ax.plot(sizes, [r["baseline_busbw_gbs"] for r in rows], "s--", color=colors[i], alpha=0.6,
                    label=f"naive, {n} peers")
    first = [r for r in report["rows"] if r["peers"] == peers[0]]
    ax.plot([r["bytes"] for r in first], [r["memcpy_gbs"] for r in first], "k:", label="memcpy, 1 thread")
    finish(fig, ax, first, f"In-process all-reduce, {report['cores']} cores", 2, svg)


def finish(fig, ax, rows, title, legend_cols, svg):
    """Bandwidth against message size (log 2, ticks at the sizes of `rows`), saved."""
    ax.set_xscale("log", base=2)
    ax.set_xticks([r["bytes"] for r in rows])
    ax.set_xticklabels([human(r["bytes"]) for r in rows])
    ax.set_xlabel("message size (bytes, f32)")
    ax.set_ylabel("bus bandwidth, GB/s")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=legend_cols)
    fig.tight_layout()
    fig.savefig(svg, format="svg", metadata={"Date": None})
    print(f"wrote {svg}")


def mpi_table(reports):
    lines = [
        "| processes | size | MPI_Allreduce us | busbw GB/s | ring over MPI us | busbw GB/s | MPI_Iallreduce mode us | busbw GB/s | ring / MPI_Allreduce speed |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for report in reports:
        for r in report["rows"]:
            lines.append(
                f"| {r['processes']} | {human(r['bytes'])} | {r['mpi_allreduce_time_us']:.1f} | {r['mpi_allreduce_busbw_gbs']:.2f} | "
                f"{r['ring_time_us']:.1f} | {r['ring_busbw_gbs']:.2f} | {r['native_time_us']:.1f} | {r['native_busbw_gbs']:.2f} | "
                f"{r['mpi_allreduce_time_us'] / r['ring_time_us']:.2f}x |"
            )
    return "\n".join(lines)


def mpi_plot(reports, svg):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, report in enumerate(reports):
        rows = report["rows"]
        sizes = [r["bytes"] for r in rows]
        n = report["processes"]
        ax.plot(sizes, [r["mpi_allreduce_busbw_gbs"] for r in rows], "-",
                color=colors[i], linewidth=2.5, alpha=0.45, label=f"MPI_Allreduce, {n} processes")
        ax.plot(sizes, [r["ring_busbw_gbs"] for r in rows], "o-", color=colors[i], label=f"ringtrain ring over MPI, {n}")
        ax.plot(sizes, [r["native_busbw_gbs"] for r in rows], "s:", color=colors[i], alpha=0.8,
                label=f"ringtrain MPI_Iallreduce mode, {n}")
    title = f"All-reduce across MPI processes on one {reports[0]['cores']}-core machine ({reports[0]['library']})"
    finish(fig, ax, reports[0]["rows"], title, 1, svg)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", help="the example's --json-out file(s)")
    ap.add_argument("--mpi", action="store_true", help="the files come from `allreduce --mpi`")
    ap.add_argument("--out", required=True, help="directory for the JSON copies and the SVG")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.mpi:
        reports = []
        for path in args.json:
            with open(path) as f:
                loaded = json.load(f)
            # One run's report, or the combined file this script writes.
            reports.extend(loaded if isinstance(loaded, list) else [loaded])
        reports.sort(key=lambda r: r["processes"])
        with open(os.path.join(args.out, "allreduce_mpi.json"), "w") as f:
            json.dump(reports, f, indent=1)
        print(mpi_table(reports))
        mpi_plot(reports, os.path.join(args.out, "allreduce_mpi.svg"))
        return
    with open(args.json[0]) as f:
        report = json.load(f)
    shutil.copyfile(args.json[0], os.path.join(args.out, "allreduce.json"))
    print(table(report))
    plot(report, os.path.join(args.out, "allreduce.svg"))


if __name__ == "__main__":
    main()
