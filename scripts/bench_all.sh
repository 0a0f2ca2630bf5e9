#!/usr/bin/env bash
# Measures ringtrain and its peers back to back on this machine and regenerates
# docs/bench/ (ours.json, peers.json, gemm.svg, mlp.svg); prints the table for
# docs/BENCHMARKS.md. Needs the Python packages in scripts/requirements-peers.txt.
# The machine should be otherwise idle (no builds running).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --benches
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 scripts/peers.py --out docs/bench/peers.json
RINGTRAIN_BENCH_QUICK=1 cargo bench --bench gemm
cargo bench --bench train_step
python3 scripts/bench_report.py --criterion target/criterion --peers docs/bench/peers.json --out docs/bench
