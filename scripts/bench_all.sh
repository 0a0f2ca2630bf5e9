#!/usr/bin/env bash
# Measures ringtrain and its peers in interleaved rounds on this machine and regenerates
# docs/bench/ (ours.json, peers.json, gemm.svg, mlp.svg); prints the table for
# docs/BENCHMARKS.md. Needs the Python packages in scripts/requirements-peers.txt, and an
# otherwise idle machine (no builds running).
#
#   scripts/bench_all.sh [ROUNDS]      (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
work=target/bench-rounds
rm -rf "$work"
mkdir -p "$work"
cargo build --release --benches --example sgemm
crit=() peers=()
for r in $(seq 1 "$rounds"); do
  echo "== round $r of $rounds"
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 scripts/peers.py --out "$work/peers-$r.json"
  rm -rf target/criterion
  RINGTRAIN_BENCH_QUICK=1 cargo bench --bench gemm -- --noplot
  cargo bench --bench train_step -- --noplot
  cp -r target/criterion "$work/criterion-$r"
  # The same GEMM timed with peers.py's protocol, for a number-for-number comparison.
  target/release/examples/sgemm --json-out "$work/sgemm-$r.json"
  crit+=("$work/criterion-$r") peers+=("$work/peers-$r.json")
done
python3 scripts/bench_report.py --criterion "${crit[@]}" --peers "${peers[@]}" --out docs/bench
