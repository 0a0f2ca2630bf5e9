#!/usr/bin/env bash
# Times ringtrain's WGSL GEMM (examples/gpu_gemm) and burn's wgpu matmul
# (bench/burn-matmul) on the same adapter in interleaved rounds, then regenerates
# docs/bench/gpu_gemm.{json,svg} and prints the table for docs/BENCHMARKS.md.
# burn takes ~20 minutes to build on 2 cores the first time; run on an otherwise idle
# machine. Needs matplotlib for the plot.
#
#   scripts/bench_gpu.sh [ROUNDS] [SIZES]     (defaults: 3, 256,512,1024,2048,4096)
#   WGPU_BACKEND=vulkan scripts/bench_gpu.sh 3 64,128,256,512   # lavapipe
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
sizes=${2:-256,512,1024,2048,4096}
work=target/bench-gpu-rounds
rm -rf "$work"
mkdir -p "$work"
cargo build --release --example gpu_gemm
(cd bench/burn-matmul && cargo build --release)
ours=() burn=()
for r in $(seq 1 "$rounds"); do
  echo "== round $r of $rounds"
  target/release/examples/gpu_gemm --sizes "$sizes" --json-out "$work/ours-$r.json"
  bench/burn-matmul/target/release/burn-matmul --sizes "$sizes" --json-out "$work/burn-$r.json"
  ours+=("$work/ours-$r.json") burn+=("$work/burn-$r.json")
done
python3 scripts/gpu_gemm_report.py --ours "${ours[@]}" --burn "${burn[@]}" --out docs/bench
